"""
The fake Omise's search (``kplus_fsm.adapters.fake._search``, ``GET /search``)
against what Omise documents and records (issue 13): order and page size,
amounts in THB, natural-language booleans, the text query, every documented
filter, the pessimistic switches; through the official ``omise`` client and
raw HTTP. Expected values are written out from the sources, never derived from
the fake's code.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fake_support import (
    FIXTURES,
    WithFake,
    WithQuietFake,
    assert_error,
    create,
    create_charge,
    ids,
    loopback,
    make_quiet,
)

from kplus_fsm.adapters.fake import FakeOmise
from kplus_fsm.adapters.fake._objects import pretty_json_bytes
from kplus_fsm.testing import FakeClock

#: Every filter the charge scope documents (omise.co *Search query and filters*
#: table; the charge search reference's parameter list), written out by hand.
DOCUMENTED_FILTERS = {
    "acquirer_reference_number": "ARN1",
    "amount": "1500",
    "authorized": "true",
    "capture": "true",
    "capture_id": "x",
    "captured": "true",
    "captured_at": "2026-01-01",
    "card_last_digits": "4242",
    "created": "2026-01-01..2026-12-31",
    "currency": "thb",
    "customer_present": "false",
    "disputed": "false",
    "failure_code": "payment_expired",
    "failure_message": "payment expired",
    "installment_terms": "3",
    "is_installment": "false",
    "refund_amount": "0",
    "refunded": "false",
    "reversed": "false",
    "safe": "true",
    "scheduled": "false",
    "source_of_fund": "offsite",
    "source_type": "mobile_banking_kbank",
    "status": "pending",
    "voided": "false",
}


class TestSearchOrder(WithQuietFake):
    """ "most recently created charges appearing first" (reverse_chronological), 30 per page."""

    def test_newest_first_30_per_page(
        self, http: httpx.Client, fake: FakeOmise, official: Any
    ) -> None:
        made = []
        for n in range(31):
            made.append(create(http, f"pay-order-{n}")["id"])
            fake.advance_clock(1)
        raw = http.get("/search", params={"scope": "charge"}).json()
        assert (raw["order"], raw["per_page"], raw["total"], raw["total_pages"]) == (
            "reverse_chronological",
            30,
            31,
            2,
        )
        assert ids(raw) == made[::-1][:30]
        second = http.get("/search", params={"scope": "charge", "page": 2}).json()
        assert ids(second) == [made[0]]
        via_sdk = official.Search.execute("charge")
        assert ids(via_sdk) == made[::-1][:30]

    def test_order_is_honoured(self, http: httpx.Client, fake: FakeOmise, official: Any) -> None:
        made = []
        for n in range(3):
            made.append(create(http, f"pay-chrono-{n}")["id"])
            fake.advance_clock(1)
        raw = http.get("/search", params={"scope": "charge", "order": "chronological"}).json()
        assert (raw["order"], ids(raw)) == ("chronological", made)
        assert ids(official.Search.execute("charge", order="chronological")) == made
        assert ids(official.Search.execute("charge", order="reverse_chronological")) == made[::-1]

    def test_same_second_newest_created_first(self, http: httpx.Client) -> None:
        made = [create(http, f"pay-tie-{n}")["id"] for n in range(3)]  # one clock second
        assert ids(http.get("/search", params={"scope": "charge"}).json()) == made[::-1]


class TestAmountInBaseUnits(WithQuietFake):
    """ "a charge created with amount=100000 … is searchable as filters[amount]=1000"."""

    def test_amount_in_thb(self, http: httpx.Client, official: Any) -> None:
        small = create(http, "pay-small", 2_000)["id"]  # THB 20
        mid = create(http, "pay-mid", 150_050)["id"]  # THB 1,500.50
        big = create(http, "pay-big", 10_000_000)["id"]  # THB 100,000
        cases = {
            "20": [small],
            "1500.5": [mid],
            "1500.50": [mid],
            "150050": [],  # satang: nothing
            "1000..2000": [mid],
            "..1500.5": [mid, small],
            "100000..": [big],
            "20..100000": [big, mid, small],
        }
        for value, expected in cases.items():
            raw = http.get("/search", params={"scope": "charge", "filters[amount]": value}).json()
            assert ids(raw) == expected, value
            via_sdk = official.Search.execute("charge", filters={"amount": value})
            assert ids(via_sdk) == expected, value

    def test_bad_amounts_are_refused(self, http: httpx.Client) -> None:
        for value in ("twenty", "..", "1..x", "NaN"):
            bad = http.get("/search", params={"scope": "charge", "filters[amount]": value})
            assert (bad.status_code, bad.json()["code"]) == (400, "invalid_filter"), value


class TestBooleans(WithQuietFake):
    """ "some natural language equivalents are acceptable in place of true and false"."""

    @pytest.mark.parametrize(
        ("value", "paid_only"),
        [
            ("yes", True),
            ("on", True),
            ("true", True),
            ("no", False),
            ("off", False),
            ("false", False),
        ],
    )
    def test_captured(
        self, http: httpx.Client, fake: FakeOmise, official: Any, value: str, paid_only: bool
    ) -> None:
        paid = create(http, "pay-captured")["id"]
        fake.mark_as_paid(paid)
        open_ = create(http, "pay-open")["id"]
        expected = [paid] if paid_only else [open_]
        raw = http.get("/search", params={"scope": "charge", "filters[captured]": value})
        assert raw.status_code == 200, raw.text
        assert ids(raw.json()) == expected
        assert ids(official.Search.execute("charge", filters={"captured": value})) == expected

    def test_other_words_are_refused(self, http: httpx.Client, official: Any) -> None:
        bad = http.get("/search", params={"scope": "charge", "filters[captured]": "maybe"})
        assert (bad.status_code, bad.json()["code"]) == (400, "invalid_filter")
        with pytest.raises(official.errors.BaseError):
            official.Search.execute("charge", filters={"captured": "maybe"})


class TestTextQuery(WithQuietFake):
    """The query string "is found across one of a set of attributes" (description, …)."""

    def test_a_word_inside_the_description(self, http: httpx.Client, official: Any) -> None:
        woo = create(http, "pay-woo", description="WooCommerce Order id 85")["id"]
        dash = create(http, "pay-dash", description="Order-123")["id"]
        create(http, "pay-other", description="a gift card")
        for query in ("order", "ORDER", "Order 85", "85"):
            expected = [woo] if any(ch.isdigit() for ch in query) else [dash, woo]
            raw = http.get("/search", params={"scope": "charge", "query": query}).json()
            assert ids(raw) == expected, query
            assert ids(official.Search.execute("charge", query=query)) == expected, query

    def test_metadata_values_id_and_currency(self, http: httpx.Client, official: Any) -> None:
        charge = create(http, "order-2026-0001")
        for query in ("order-2026-0001", charge["id"], "0001"):
            assert ids(http.get("/search", params={"scope": "charge", "query": query}).json()) == [
                charge["id"]
            ], query
        assert ids(official.Search.execute("charge", query="thb")) == [charge["id"]]
        assert (
            http.get("/search", params={"scope": "charge", "query": "orders"}).json()["total"] == 0
        )


class TestFilters(WithQuietFake):
    """filters[voided] and the other documented filters are accepted."""

    def test_voided_answers_like_the_recording(self, http: httpx.Client) -> None:
        """An account without voided charges answers exactly omise-php's recorded search."""
        create(http, "pay-not-voided")
        response = http.get(
            "/search",
            params={
                "scope": "charge",
                "query": "",
                "filters[voided]": "true",
                "page": 1,
                "order": "reverse_chronological",
            },
        )
        recorded = (FIXTURES / "omise-php" / "search-voided-get.json").read_bytes()
        assert pretty_json_bytes(response.json()) == recorded

    def test_every_documented_filter_is_accepted(self, http: httpx.Client, official: Any) -> None:
        create(http, "pay-filters")
        for name, value in DOCUMENTED_FILTERS.items():
            raw = http.get("/search", params={"scope": "charge", f"filters[{name}]": value})
            assert raw.status_code == 200, (name, raw.text)
            official.Search.execute("charge", filters={name: value})

    def test_filters_select_k_plus_charges(self, http: httpx.Client, fake: FakeOmise) -> None:
        paid = create(http, "pay-f-paid")["id"]
        fake.mark_as_paid(paid)
        ended = create(http, "pay-f-ended")["id"]
        fake.expire(ended)
        pending = create(http, "pay-f-pending")["id"]
        expected = {
            "status=pending": [pending],
            "status=successful": [paid],
            "failure_code=payment_expired": [ended],
            "paid=yes": [paid],
            "voided=no": [pending, ended, paid],
            "source_type=mobile_banking_kbank": [pending, ended, paid],
            "card_last_digits=4242": [],
            "customer_present=on": [],
            "created=2026-01-01": [pending, ended, paid],
            "created=2025-01-01..2025-12-31": [],
        }
        for spec, want in expected.items():
            name, value = spec.split("=")
            got = http.get("/search", params={"scope": "charge", f"filters[{name}]": value})
            assert ids(got.json()) == want, spec
        unknown = http.get("/search", params={"scope": "charge", "filters[colour]": "red"})
        assert (unknown.status_code, unknown.json()["code"]) == (400, "invalid_filter")


class TestSearchSwitches(WithQuietFake):
    """Pessimistic search: metadata not indexed; an index lag (listing stays consistent)."""

    def test_metadata_not_indexed(self, clock: FakeClock) -> None:
        with make_quiet(clock, search_metadata=False) as fake, loopback(fake) as http:
            charge = create(http, "order-hidden", description="order for Somchai")
            found = http.get("/search", params={"scope": "charge", "query": "order-hidden"})
            assert found.json()["total"] == 0
            by_words = http.get("/search", params={"scope": "charge", "query": "somchai"})
            assert ids(by_words.json()) == [charge["id"]]
            assert http.get("/_fake/options").json()["search_metadata"] is False

    def test_index_lag(self, clock: FakeClock) -> None:
        with make_quiet(clock, search_lag=30) as fake, loopback(fake) as http:
            charge = create(http, "order-lagging")
            search = {"scope": "charge", "query": "order-lagging"}
            assert http.get("/search", params=search).json()["total"] == 0
            listed = http.get("/charges", params={"limit": 100}).json()
            assert ids(listed) == [charge["id"]]  # the listing is consistent at once
            fake.advance_clock(29)
            assert http.get("/search", params=search).json()["total"] == 0
            fake.advance_clock(1)
            assert ids(http.get("/search", params=search).json()) == [charge["id"]]

    def test_switched_over_http(self, http: httpx.Client, fake: FakeOmise) -> None:
        changed = http.post("/_fake/options", json={"search_lag": 5, "search_metadata": "no"})
        assert changed.status_code == 200, changed.text
        assert (changed.json()["search_lag"], changed.json()["search_metadata"]) == (5.0, False)
        assert (fake.options.search_lag, fake.options.search_metadata) == (5.0, False)
        create(http, "order-x")
        assert http.get("/search", params={"scope": "charge"}).json()["total"] == 0
        fake.advance_clock(5)
        assert (
            http.get("/search", params={"scope": "charge", "query": "order-x"}).json()["total"] == 0
        )  # metadata is not indexed
        assert http.get("/search", params={"scope": "charge"}).json()["total"] == 1


class TestSearch(WithFake):
    """Search through the transport: query, filters, newest first."""

    def test_search(self, api: httpx.Client, fake: FakeOmise) -> None:
        """query finds words of the id, description or metadata; filters; newest first."""
        first = create_charge(api, "pay_search_1", description="order 1")
        fake.advance_clock(1)
        second = create_charge(api, "pay_search_2")
        fake.mark_as_paid(second["id"])
        found = api.get("/search", params={"scope": "charge", "query": "pay_search_1"}).json()
        assert set(found) == {
            "object", "export", "data", "page", "per_page", "total", "total_pages", "filters",
            "location", "order", "query", "scope", "aggregate_level",
        }  # fmt: skip
        assert (found["object"], found["scope"], found["query"]) == (
            "search",
            "charge",
            "pay_search_1",
        )
        assert (found["page"], found["per_page"], found["total"], found["total_pages"]) == (
            1,
            30,
            1,
            1,
        )
        assert found["order"] == "reverse_chronological"
        assert [c["id"] for c in found["data"]] == [first["id"]]
        by_id = api.get("/search", params={"scope": "charge", "query": second["id"]}).json()
        assert [c["id"] for c in by_id["data"]] == [second["id"]]
        by_description = api.get("/search", params={"scope": "charge", "query": "order 1"}).json()
        assert by_description["total"] == 1
        # "pay_search" is not a word of "pay_search_1": words are whole.
        assert (
            api.get("/search", params={"scope": "charge", "query": "pay_search"}).json()["total"]
            == 0
        )
        paid = api.get(
            "/search", params={"scope": "charge", "filters[status]": "successful"}
        ).json()
        assert [c["id"] for c in paid["data"]] == [second["id"]]
        ranged = api.get(
            "/search", params={"scope": "charge", "filters[amount]": "1000..2000"}
        ).json()
        assert ranged["total"] == 2
        everything = api.get("/search", params={"scope": "charge", "per_page": 1, "page": 2}).json()
        assert (everything["total"], everything["total_pages"]) == (2, 2)
        assert [c["id"] for c in everything["data"]] == [first["id"]]  # newest first
        beyond = api.get("/search", params={"scope": "charge", "page": 9}).json()
        assert (beyond["page"], beyond["data"], beyond["total"]) == (9, [], 2)
        assert_error(api.get("/search", params={"scope": "customer"}), 400, "invalid_scope")
        assert_error(
            api.get("/search", params={"scope": "charge", "filters[colour]": "red"}),
            400,
            "invalid_filter",
        )
        assert_error(api.get("/search", params={"scope": "charge", "page": 0}), 400, "invalid_page")
