"""
The fake Omise's routes (``kplus_fsm.adapters.fake._routes``): the K PLUS
guide's curl requests as form data, JSON and query strings, and the
``authorize_uri`` page.
"""

from __future__ import annotations

import datetime as dt

import httpx
from fake_support import (
    BASE,
    CHARGE_FIELDS,
    SK,
    SOURCE_FIELDS,
    Recorder,
    WithFake,
    assert_error,
    charge_form,
    create_charge,
    make_fake,
    parse,
)

from kplus_fsm.adapters.fake import FakeOmise
from kplus_fsm.testing import FakeClock


class TestGuideRequests(WithFake):
    """The curl examples of the K PLUS guide, as form data."""

    def test_create_source_with_the_public_key(self, public_api: httpx.Client) -> None:
        """curl -u $OMISE_PUBLIC_KEY: -d amount -d currency -d type -d platform_type."""
        response = public_api.post(
            "/sources",
            data={
                "amount": "150000",
                "currency": "THB",
                "type": "mobile_banking_kbank",
                "platform_type": "IOS",
            },
        )
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
        source = response.json()
        assert set(source) >= SOURCE_FIELDS
        assert source["object"] == "source"
        assert source["id"].startswith("src_test_")
        assert source["location"] == f"/sources/{source['id']}"
        assert source["livemode"] is False
        assert (source["amount"], source["currency"]) == (150000, "THB")
        assert (source["flow"], source["type"]) == ("app_redirect", "mobile_banking_kbank")
        assert (source["platform_type"], source["charge_status"]) == ("IOS", "unknown")
        assert public_api.get(f"/sources/{source['id']}").json() == source

    def test_create_charge_from_a_source(
        self, api: httpx.Client, public_api: httpx.Client, fake: FakeOmise
    ) -> None:
        """curl -u $OMISE_SECRET_KEY: -d amount -d currency -d return_uri -d source=$SOURCE_ID."""
        source = public_api.post(
            "/sources",
            data={"amount": "150000", "currency": "THB", "type": "mobile_banking_kbank"},
        ).json()
        response = api.post(
            "/charges",
            data={
                "amount": "150000",
                "currency": "THB",
                "return_uri": "http://example.com/orders/345678/complete",
                "source": source["id"],
            },
        )
        assert response.status_code == 200
        charge = response.json()
        assert set(charge) >= CHARGE_FIELDS
        assert set(charge["source"]) >= SOURCE_FIELDS
        assert charge["id"].startswith("chrg_test_")
        assert charge["location"] == f"/charges/{charge['id']}"
        assert charge["status"] == "pending"
        assert (charge["authorized"], charge["paid"], charge["expired"]) == (False, False, False)
        assert (charge["paid_at"], charge["expired_at"], charge["failure_code"]) == (None,) * 3
        assert charge["capture"] is True
        assert charge["refunded_amount"] == 0
        assert charge["refunds"]["object"] == "list"
        assert charge["return_uri"] == "http://example.com/orders/345678/complete"
        assert charge["authorize_uri"] == f"{BASE}/test/authorize/{charge['id']}"
        assert charge["source"]["id"] == source["id"]
        assert charge["source"]["charge_status"] == "pending"
        assert charge["source"]["flow"] == "app_redirect"
        lifetime = parse(charge["expires_at"]) - parse(charge["created_at"])
        assert lifetime == dt.timedelta(days=7)
        assert public_api.get(f"/sources/{source['id']}").json()["charge_status"] == "pending"
        assert api.get(f"/charges/{charge['id']}").json() == charge

    def test_create_source_and_charge_in_one_call(self, api: httpx.Client) -> None:
        """-d "source[type]=mobile_banking_kbank" -d "source[platform_type]=IOS" (+ metadata)."""
        charge = create_charge(api, "pay_42", description="order 345678")
        assert charge["source"]["type"] == "mobile_banking_kbank"
        assert charge["source"]["platform_type"] == "IOS"
        assert charge["source"]["id"].startswith("src_test_")
        assert charge["metadata"] == {"payment_id": "pay_42"}
        assert charge["description"] == "order 345678"

    def test_json_bodies_and_lower_case_currency(self, api: httpx.Client) -> None:
        """JSON bodies are read; ``thb`` is accepted and echoed upper-case."""
        response = api.post(
            "/charges",
            json={
                "amount": 2000,
                "currency": "thb",
                "return_uri": "myapp://return",
                "source": {"type": "mobile_banking_kbank", "platform_type": "android"},
                "metadata": {"payment_id": "pay_json", "n": 3},
            },
        )
        charge = response.json()
        assert charge["currency"] == "THB"
        assert charge["source"]["currency"] == "THB"
        assert charge["source"]["platform_type"] == "ANDROID"
        assert charge["metadata"] == {"payment_id": "pay_json", "n": 3}
        assert charge["return_uri"] == "myapp://return"

    def test_query_string_parameters(self, api: httpx.Client) -> None:
        """Parameters in the query string count too (here on a create)."""
        response = api.post(
            "/charges",
            params={"amount": "3000", "currency": "THB", "return_uri": "https://shop/r"},
            data={"source[type]": "mobile_banking_kbank"},
        )
        assert response.json()["amount"] == 3000

    def test_charge_lifetime_and_expires_at_are_configurable(self, clock: FakeClock) -> None:
        """charge_lifetime changes the default; ``expires_at`` on create is honoured."""
        with (
            make_fake(clock=clock, charge_lifetime=dt.timedelta(minutes=1)) as short,
            httpx.Client(transport=short.transport(), base_url=BASE, auth=(SK, "")) as api,
        ):
            charge = create_charge(api)
            assert parse(charge["expires_at"]) - parse(charge["created_at"]) == dt.timedelta(
                minutes=1
            )
            later = (clock() + dt.timedelta(hours=2)).isoformat()
            custom = create_charge(api, "pay_2", expires_at=later)
            assert parse(custom["expires_at"]) == clock() + dt.timedelta(hours=2)
            past = (clock() - dt.timedelta(seconds=1)).isoformat()
            response = api.post("/charges", data=charge_form("pay_3", expires_at=past))
            assert_error(response, 400, "invalid_charge")


class TestAuthorizePage(WithFake):
    """The authorize_uri page."""

    def test_authorize_page(self, http: httpx.Client, fake: FakeOmise, recorder: Recorder) -> None:
        """GET shows Approve/Decline; POST approve completes and redirects to return_uri."""
        charge = http.post("/charges", data=charge_form()).json()
        assert charge["authorize_uri"].startswith(http.base_url.scheme + "://127.0.0.1:")
        with httpx.Client(trust_env=False) as browser:
            page = browser.get(charge["authorize_uri"])
            assert page.status_code == 200
            assert page.headers["Content-Type"].startswith("text/html")
            assert 'value="approve">Approve</button>' in page.text
            assert 'value="decline">Decline</button>' in page.text
            assert '<form method="post">' in page.text
            done = browser.post(charge["authorize_uri"], data={"action": "approve"})
            assert done.status_code == 302
            assert done.headers["Location"] == charge["return_uri"]
            assert http.get(f"/charges/{charge['id']}").json()["status"] == "successful"
            assert "Approve" not in browser.get(charge["authorize_uri"]).text
            assert (
                browser.post(charge["authorize_uri"], data={"action": "approve"}).status_code == 400
            )
            other = http.post("/charges", data=charge_form("pay_2")).json()
            declined = browser.post(
                other["authorize_uri"],
                data={"action": "decline", "failure_code": "invalid_account"},
            )
            assert declined.status_code == 302
            failed = http.get(f"/charges/{other['id']}").json()
            assert (failed["status"], failed["failure_code"]) == ("failed", "invalid_account")
            assert browser.get(charge["authorize_uri"] + "x").status_code == 404
        fake.flush()
        assert [e["key"] for e in recorder.events].count("charge.complete") == 2
