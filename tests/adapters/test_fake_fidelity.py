"""
The fake Omise against what Omise documents and records (issue 13): each
confirmed point through the official ``omise`` Python client *and* raw HTTP
(httpx) against the fake on loopback, then every switch.

Expected values are written out here, from the sources (the Opn/omise.co docs
pages and the official SDKs' recorded fixtures under ``tests/fixtures``), never
derived from the fake's code.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import omise  # type: ignore[import-untyped]
import pytest

from kplus_fsm.adapters.fake import (
    FakeOmise,
    FakeOmiseError,
    FakeOmiseServer,
    FakeOptions,
    RetryPolicy,
    start_server,
)
from kplus_fsm.adapters.fake._objects import pretty_json_bytes
from kplus_fsm.testing import FakeClock

SK = "skey_test_5zFIDELITYsecretKEY0"
PK = "pkey_test_5zFIDELITYpublicKEY0"
WEBHOOK_SECRET = base64.b64encode(b"whsec-fidelity-test-secret-bytes").decode()
FIXTURES = Path(__file__).parent.parent / "fixtures" / "omise"
FAST = RetryPolicy(max_attempts=2, backoff=0.02, max_backoff=0.05)

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


def form(payment_id: str, amount: int = 150_000, **extra: str) -> dict[str, str]:
    return {
        "amount": str(amount),
        "currency": "THB",
        "return_uri": "https://shop.example/r",
        "source[type]": "mobile_banking_kbank",
        "metadata[payment_id]": payment_id,
        **extra,
    }


def make(clock: FakeClock, **switches: Any) -> FakeOmise:
    return FakeOmise(
        secret_key=SK, public_key=PK, clock=clock, seed=13, retry=FAST, sweep_interval=0.05,
        **switches,
    )  # fmt: skip


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeOmise]:
    with make(clock) as f:
        yield f


@pytest.fixture
def server(fake: FakeOmise) -> Iterator[FakeOmiseServer]:
    with start_server(fake) as running:
        yield running


@pytest.fixture
def http(server: FakeOmiseServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, auth=(SK, ""), trust_env=False) as client:
        yield client


@pytest.fixture
def official(server: FakeOmiseServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The official ``omise`` client, pointed at the loopback fake."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(omise, "api_main", server.url)
    monkeypatch.setattr(omise, "api_vault", server.url)
    monkeypatch.setattr(omise, "api_secret", SK)
    monkeypatch.setattr(omise, "api_public", PK)
    monkeypatch.setattr(omise, "api_version", "2019-05-29")
    return omise


@contextlib.contextmanager
def loopback(fake: FakeOmise) -> Iterator[httpx.Client]:
    """Raw HTTP to ``fake`` served on 127.0.0.1."""
    with (
        start_server(fake) as server,
        httpx.Client(base_url=server.url, auth=(SK, ""), trust_env=False) as http,
    ):
        yield http


def in_process(fake: FakeOmise) -> httpx.Client:
    """Raw HTTP to ``fake`` through its transport (no socket)."""
    return httpx.Client(transport=fake.transport(), base_url="https://api.omise.co", auth=(SK, ""))


def create(http: httpx.Client, payment_id: str, amount: int = 150_000, **extra: str) -> Any:
    response = http.post("/charges", data=form(payment_id, amount, **extra))
    assert response.status_code == 200, response.text
    return response.json()


def ids(found: Any) -> list[str]:
    return [c["id"] for c in found["data"]] if isinstance(found, dict) else [c.id for c in found]


# --- 1. search order and page size ---------------------------------------------------------


class TestSearchOrder:
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


# --- 2. amount in the base unit ------------------------------------------------------------


class TestAmountInBaseUnits:
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


# --- 3. natural-language booleans ------------------------------------------------------------


class TestBooleans:
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


# --- 4. query is a text search ---------------------------------------------------------------


class TestTextQuery:
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


# --- 5. every documented filter ----------------------------------------------------------------


class TestFilters:
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


# --- 6. error anchors ----------------------------------------------------------------------------


class TestErrorObjects:
    """``location`` anchors use hyphens (omise-go's recorded 404, omise.co's errors page)."""

    def test_not_found_matches_the_recorded_fixture(self, http: httpx.Client) -> None:
        recorded = json.loads((FIXTURES / "omise-go" / "charges-404-get.json").read_text())
        response = http.get("/charges/chrg_test_missing")
        assert response.status_code == 404
        body = response.json()
        assert list(body) == list(recorded)  # the same keys, in the same order
        assert body["code"] == recorded["code"] == "not_found"
        assert body["location"].split("#")[1] == recorded["location"].split("#")[1] == "not-found"
        assert body["location"] == "https://www.omise.co/api-errors#not-found"

    def test_through_the_official_client(
        self, official: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        seen: list[dict[str, Any]] = []
        original = official.errors._raise_from_data

        def spy(data: dict[str, Any]) -> None:
            seen.append(data)
            original(data)

        monkeypatch.setattr(official.errors, "_raise_from_data", spy)
        with pytest.raises(official.errors.NotFoundError):
            official.Charge.retrieve("chrg_test_missing")
        monkeypatch.setattr(official, "api_secret", "skey_test_wrong")
        with pytest.raises(official.errors.AuthenticationFailureError):
            official.Charge.retrieve("chrg_test_missing")
        assert [d["location"] for d in seen] == [
            "https://www.omise.co/api-errors#not-found",
            "https://www.omise.co/api-errors#authentication-failure",
        ]


# --- 7. backend_error is a 400 --------------------------------------------------------------


class TestBackendError:
    """ "An error occurred communicating with the provider … Please try again" under 400."""

    @pytest.mark.parametrize(("kind", "made"), [("error", 0), ("commit_then_error", 1)])
    def test_on_a_create(
        self, http: httpx.Client, fake: FakeOmise, official: Any, kind: Any, made: int
    ) -> None:
        fake.inject_fault("POST /charges", kind, code="backend_error")
        response = http.post("/charges", data=form("pay-backend"))
        assert response.status_code == 400
        body = response.json()
        assert (body["code"], body["location"]) == (
            "backend_error",
            "https://www.omise.co/api-errors#backend-error",
        )
        assert len(fake.charges()) == made
        fake.inject_fault("POST /charges", kind, code="backend_error")
        with pytest.raises(official.errors.BaseError):
            official.Charge.create(
                amount=150_000,
                currency="thb",
                return_uri="https://shop.example/r",
                source={"type": "mobile_banking_kbank"},
                metadata={"payment_id": "pay-backend-sdk"},
            )
        assert len(fake.charges()) == 2 * made

    def test_over_the_control_route(self, http: httpx.Client, fake: FakeOmise) -> None:
        added = http.post(
            "/_fake/faults",
            json={"route": "POST /charges", "kind": "commit_then_error", "code": "backend_error"},
        )
        assert added.status_code == 200
        assert http.post("/charges", data=form("pay-b2")).status_code == 400
        assert [c["metadata"]["payment_id"] for c in fake.charges()] == ["pay-b2"]


# --- switches --------------------------------------------------------------------------------


class TestSearchSwitches:
    """Pessimistic search: metadata not indexed; an index lag (listing stays consistent)."""

    def test_metadata_not_indexed(self, clock: FakeClock) -> None:
        with make(clock, search_metadata=False) as fake, loopback(fake) as http:
            charge = create(http, "order-hidden", description="order for Somchai")
            found = http.get("/search", params={"scope": "charge", "query": "order-hidden"})
            assert found.json()["total"] == 0
            by_words = http.get("/search", params={"scope": "charge", "query": "somchai"})
            assert ids(by_words.json()) == [charge["id"]]
            assert http.get("/_fake/options").json()["search_metadata"] is False

    def test_index_lag(self, clock: FakeClock) -> None:
        with make(clock, search_lag=30) as fake, loopback(fake) as http:
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


class TestExpiryModels:
    """The bank timeout (default, LIKELY) and the lifetime model; silent or announced."""

    def test_bank_timeout_is_the_default(
        self, http: httpx.Client, fake: FakeOmise, clock: FakeClock
    ) -> None:
        charge = create(http, "pay-abandoned")
        created = dt.datetime.fromisoformat(charge["created_at"])
        assert dt.datetime.fromisoformat(charge["expires_at"]) - created == dt.timedelta(days=7)
        assert fake.advance_clock(dt.timedelta(minutes=9, seconds=59)) == []
        assert fake.advance_clock(1) == [charge["id"]]
        ended = http.get(f"/charges/{charge['id']}").json()
        assert (ended["status"], ended["failure_code"], ended["failure_message"]) == (
            "failed",
            "payment_expired",
            "payment expired",
        )
        assert (ended["expired"], ended["expired_at"], ended["paid"]) == (False, None, False)
        assert ended["expires_at"] == charge["expires_at"]
        assert ended["source"]["charge_status"] == "failed"
        events = http.get(f"/charges/{charge['id']}/events").json()["data"]
        assert [(e["key"], e["data"]["status"]) for e in events] == [
            ("charge.create", "pending"),
            ("charge.complete", "failed"),
        ]

    def test_lifetime_model(self, clock: FakeClock) -> None:
        with make(clock, expiry_model="lifetime") as fake, loopback(fake) as http:
            charge = create(http, "pay-lifetime")
            created = dt.datetime.fromisoformat(charge["created_at"])
            expires = dt.datetime.fromisoformat(charge["expires_at"])
            assert expires - created == dt.timedelta(minutes=10)
            fake.advance_clock(dt.timedelta(hours=1))  # the sweep runs long after
            ended = http.get(f"/charges/{charge['id']}").json()
            assert (ended["status"], ended["failure_code"], ended["expired"]) == (
                "expired",
                None,
                True,
            )
            assert ended["expired_at"] == ended["expires_at"] == charge["expires_at"]

    @pytest.mark.parametrize("model", ["bank_timeout", "lifetime"])
    def test_silent_expiry(self, clock: FakeClock, model: Any) -> None:
        with make(clock, expiry_model=model, expiry_webhook=False) as fake, in_process(fake) as api:
            charge = create(api, "pay-silent")
            fake.advance_clock(dt.timedelta(hours=1))
            ended = api.get(f"/charges/{charge['id']}").json()
            assert ended["status"] == ("failed" if model == "bank_timeout" else "expired")
            events = api.get(f"/charges/{charge['id']}/events").json()["data"]
            assert [e["key"] for e in events] == ["charge.create"]

    def test_bank_timeout_after_the_lifetime(self, clock: FakeClock) -> None:
        """A lifetime shorter than the bank's window: expired at expires_at."""
        with make(clock, charge_lifetime=dt.timedelta(minutes=5)) as fake, in_process(fake) as api:
            charge = create(api, "pay-short")
            fake.advance_clock(dt.timedelta(minutes=20))
            assert api.get(f"/charges/{charge['id']}").json()["status"] == "expired"

    def test_expire_endpoint_refused_for_k_plus(
        self, http: httpx.Client, fake: FakeOmise, official: Any
    ) -> None:
        charge = create(http, "pay-expire")
        refused = http.post(f"/charges/{charge['id']}/expire")
        assert refused.status_code == 400
        assert refused.json()["code"] == "failed_expire"
        assert http.get(f"/charges/{charge['id']}").json()["status"] == "pending"
        with pytest.raises(official.errors.BaseError):
            official.Charge.retrieve(charge["id"]).expire()
        # The test control always works, as the expiry model ends a charge.
        ended = http.post(f"/_fake/charges/{charge['id']}/expire").json()
        assert (ended["status"], ended["failure_code"]) == ("failed", "payment_expired")
        again = http.post(f"/_fake/charges/{charge['id']}/expire")
        assert (again.status_code, again.json()["code"]) == (400, "failed_expire")

    def test_expire_endpoint_switched_on(self, http: httpx.Client, fake: FakeOmise) -> None:
        fake.set_options(expire_endpoint=True)
        charge = create(http, "pay-expire-on")
        done = http.post(f"/charges/{charge['id']}/expire").json()
        assert (done["status"], done["expired"]) == ("expired", True)
        assert done["expires_at"] == done["expired_at"]

    def test_the_control_under_the_lifetime_model(
        self, http: httpx.Client, fake: FakeOmise
    ) -> None:
        fake.set_options(expiry_model="lifetime")
        charge = create(http, "pay-control")
        ended = fake.expire(charge["id"])
        assert ended["status"] == "expired"
        assert ended["expires_at"] == ended["expired_at"] == ended["created_at"]  # moved to now
        assert charge["expires_at"] != ended["expires_at"]


class TestAccount:
    """K PLUS not enabled, or an API version before 2017-11-02: service_not_found."""

    def test_kplus_disabled(self, http: httpx.Client, fake: FakeOmise, official: Any) -> None:
        fake.set_options(kplus_enabled=False)
        refused = http.post("/charges", data=form("pay-disabled"))
        assert (refused.status_code, refused.json()["code"]) == (404, "service_not_found")
        source = http.post(
            "/sources", data={"amount": "2000", "currency": "THB", "type": "mobile_banking_kbank"}
        )
        assert source.json()["code"] == "service_not_found"
        with pytest.raises(official.errors.BaseError, match="not enabled"):
            official.Source.create(amount=2000, currency="thb", type="mobile_banking_kbank")
        assert fake.charges() == []

    def test_old_api_version(self, http: httpx.Client, fake: FakeOmise, official: Any) -> None:
        headers = {"Omise-Version": "2015-11-17"}
        refused = http.post("/charges", data=form("pay-old"), headers=headers)
        assert (refused.status_code, refused.json()["code"]) == (404, "service_not_found")
        assert (
            http.post(
                "/charges", data=form("pay-new"), headers={"Omise-Version": "2017-11-02"}
            ).status_code
            == 200
        )
        official.api_version = "2014-07-27"
        with pytest.raises(official.errors.BaseError, match="2017-11-02"):
            official.Charge.create(
                amount=2000,
                currency="thb",
                return_uri="https://r",
                source={"type": "mobile_banking_kbank"},
            )
        fake.set_options(api_version="2015-11-17")  # the account's default, no header
        assert http.post("/charges", data=form("pay-default")).json()["code"] == "service_not_found"


class TestThrottling:
    """429 by rate, with Retry-After (an assumption: Omise publishes no numbers)."""

    def test_rate_limit_with_retry_after(self, http: httpx.Client, fake: FakeOmise) -> None:
        fake.set_options(rate_limit=0.01, rate_burst=2)  # one request per 100 s after two
        assert http.get("/charges").status_code == 200
        assert http.get("/charges").status_code == 200
        throttled = http.get("/charges")
        assert throttled.status_code == 429
        assert throttled.json()["code"] == "too_many_requests"
        assert 1 <= int(throttled.headers["Retry-After"]) <= 100
        assert http.get("/_fake/options").status_code == 200  # controls are never throttled
        fake.set_options(retry_after_header=False)
        assert "Retry-After" not in http.get("/charges").headers
        fake.set_options(rate_limit=None)
        assert http.get("/charges").status_code == 200


class TestWebhookBodies:
    """Pretty-printed as Omise's recorded delivery; charge.update on PATCH."""

    def test_the_printer_rewrites_the_recorded_payload_byte_for_byte(self) -> None:
        event = json.loads((FIXTURES / "omise-php" / "event-get.json").read_text())
        payload = event["webhook_deliveries"][0]["payload"]
        assert pretty_json_bytes(json.loads(payload)).decode() == payload

    def test_the_printer_leaves_strings_alone(self) -> None:
        """Only structural empty arrays are spread over three lines; strings never change."""
        tricky = {"a": [], "b": {"c": [[], [1, []]], "d": "x: []", "e": "[]", "f": 'q": []'}}
        text = pretty_json_bytes(tricky).decode()
        assert json.loads(text) == tricky
        assert text.count("[\n\n") == 3
        assert '"d": "x: []",' in text
        assert '"e": "[]",' in text

    def test_deliveries_are_pretty_and_keyed_as_recorded(self, clock: FakeClock) -> None:
        bodies: list[bytes] = []

        def receive(request: httpx.Request) -> httpx.Response:
            bodies.append(request.read())
            return httpx.Response(200)

        with (
            make(clock, webhook_receiver=receive, webhook_secrets=[WEBHOOK_SECRET]) as fake,
            in_process(fake) as api,
        ):
            create(api, "pay-pretty")
            fake.flush()
        recorded = json.loads((FIXTURES / "omise-php" / "event-get.json").read_text())
        recorded_payload = recorded["webhook_deliveries"][0]["payload"]
        [body] = bodies
        text = body.decode()
        assert text.startswith('{\n  "object": "event",\n')
        assert '"webhook_deliveries": [\n\n  ],' in text
        assert text.endswith("\n}\n")
        assert list(json.loads(text)) == list(json.loads(recorded_payload))

    def test_charge_update(self, http: httpx.Client, fake: FakeOmise, official: Any) -> None:
        charge = create(http, "pay-update")
        sdk_charge = official.Charge.retrieve(charge["id"])
        sdk_charge.description = "Another description"
        sdk_charge.update()
        updated = http.get(f"/charges/{charge['id']}").json()
        assert updated["description"] == "Another description"
        patched = http.patch(f"/charges/{charge['id']}", json={"metadata": {"note": "x"}}).json()
        assert patched["metadata"] == {"note": "x"}
        keys = [e["key"] for e in fake.events(charge["id"])]
        assert keys == ["charge.create", "charge.update", "charge.update"]


class TestChargeFields:
    """The newer fields of Omise's 2025 recordings."""

    def test_newer_fields(self, http: httpx.Client, fake: FakeOmise) -> None:
        charge = create(http, "pay-fields")
        for field, value in {
            "authorization_type": None,
            "authorized_amount": 150_000,
            "captured_amount": 150_000,
            "linked_account": None,
            "merchant_advice": None,
            "merchant_advice_code": None,
            "authorized_at": None,
            "multi_capture": False,
        }.items():
            assert charge[field] == value, field
        paid = fake.mark_as_paid(charge["id"])
        assert paid["authorized_at"] == paid["paid_at"] is not None
        assert {"qr_settings", "promotion_code"} <= set(charge["source"])


class TestOptions:
    """Every switch: the constructor, set_options, /_fake/options; bad values refused."""

    def test_defaults(self, http: httpx.Client) -> None:
        assert http.get("/_fake/options").json() == {
            "object": "fake_options",
            "expiry_model": "bank_timeout",
            "charge_lifetime": 7 * 24 * 3600.0,
            "bank_timeout": 600.0,
            "expiry_webhook": True,
            "expire_endpoint": False,
            "search_metadata": True,
            "search_lag": 0.0,
            "kplus_enabled": True,
            "api_version": "2019-05-29",
            "rate_limit": None,
            "rate_burst": 10,
            "retry_after_header": True,
        }

    def test_every_switch_over_http(self, http: httpx.Client, fake: FakeOmise) -> None:
        body = {
            "expiry_model": "lifetime",
            "charge_lifetime": 120,
            "bank_timeout": 60,
            "expiry_webhook": "off",
            "expire_endpoint": "yes",
            "search_metadata": False,
            "search_lag": 2.5,
            "kplus_enabled": "true",
            "api_version": "2017-11-02",
            "rate_limit": 50,
            "rate_burst": 3,
            "retry_after_header": "no",
        }
        answer = http.post("/_fake/options", json=body).json()
        assert answer["charge_lifetime"] == 120.0
        assert fake.options == FakeOptions(
            expiry_model="lifetime",
            charge_lifetime=dt.timedelta(seconds=120),
            bank_timeout=dt.timedelta(seconds=60),
            expiry_webhook=False,
            expire_endpoint=True,
            search_metadata=False,
            search_lag=2.5,
            kplus_enabled=True,
            api_version="2017-11-02",
            rate_limit=50.0,
            rate_burst=3,
            retry_after_header=False,
        )

    @pytest.mark.parametrize(
        "body",
        [
            {"expiry_model": "forever"},
            {"charge_lifetime": 0},
            {"bank_timeout": -1},
            {"search_lag": "soon"},
            {"search_lag": -1},
            {"rate_limit": 0},
            {"rate_burst": 0},
            {"api_version": "yesterday"},
            {"expiry_webhook": "perhaps"},
            {"colour": "red"},
        ],
    )
    def test_bad_switches_change_nothing(
        self, http: httpx.Client, fake: FakeOmise, body: dict[str, Any]
    ) -> None:
        before = fake.options
        refused = http.post("/_fake/options", json=body)
        assert (refused.status_code, refused.json()["code"]) == (400, "bad_request")
        assert fake.options == before

    def test_constructor_and_set_options_refuse_bad_values(self, fake: FakeOmise) -> None:
        for bad in (
            {"expiry_model": "forever"},
            {"charge_lifetime": dt.timedelta(0)},
            {"search_lag": math.inf},
            {"rate_limit": -1.0},
        ):
            with pytest.raises(ValueError):
                FakeOmise(secret_key=SK, public_key=PK, **bad)
            with pytest.raises(ValueError):
                fake.set_options(**bad)
        with pytest.raises(ValueError, match="colour"):
            fake.set_options(colour="red")

    def test_a_refused_control_is_a_fake_error(self, fake: FakeOmise) -> None:
        with pytest.raises(FakeOmiseError) as caught:
            fake.expire("chrg_test_nothing")
        assert (caught.value.status, caught.value.code) == (404, "not_found")
