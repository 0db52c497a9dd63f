"""
The fake Omise's ledger (``kplus_fsm.adapters.fake._state``): what Omise
refuses, outcomes (mark_as_paid / mark_as_failed / expire, the clock,
charge.complete), event objects, lists with pagination, and the expiry models.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import httpx
import pytest
from fake_support import (
    BASE,
    SK,
    Recorder,
    WithFake,
    WithQuietFake,
    assert_error,
    charge_form,
    create,
    create_charge,
    in_process,
    loopback,
    make_fake,
    make_quiet,
    parse,
)

from kplus_fsm.adapters.fake import (
    FakeOmise,
    FakeOmiseError,
)
from kplus_fsm.testing import FakeClock


class TestRules(WithFake):
    """Authentication and what Omise refuses."""

    def test_authentication(self, fake: FakeOmise, public_api: httpx.Client) -> None:
        """No key, a wrong key, or the public key on charges: 401 authentication_failure."""
        with httpx.Client(transport=fake.transport(), base_url=BASE) as anonymous:
            response = anonymous.get("/charges")
            assert response.status_code == 401
            assert response.json() == {
                "object": "error",
                "location": "https://www.omise.co/api-errors#authentication-failure",
                "code": "authentication_failure",
                "message": "authentication failed",
            }
            assert_error(anonymous.post("/sources", data={}), 401, "authentication_failure")
            wrong = anonymous.get("/charges", auth=("skey_test_wrong", ""))
            assert_error(wrong, 401, "authentication_failure")
        source = public_api.post(
            "/sources", data={"amount": "2000", "currency": "THB", "type": "mobile_banking_kbank"}
        )
        assert source.status_code == 200
        assert public_api.get(f"/sources/{source.json()['id']}").status_code == 200
        for method, path in [
            ("POST", "/charges"),
            ("GET", "/charges"),
            ("GET", "/charges/chrg_test_x"),
            ("GET", "/charges/chrg_test_x/events"),
            ("GET", "/events/evnt_test_x"),
            ("GET", "/search?scope=charge"),
            ("POST", "/charges/chrg_test_x/mark_as_paid"),
            ("POST", "/_fake/clock/advance"),
        ]:
            assert_error(public_api.request(method, path), 401, "authentication_failure")

    def test_the_secret_key_may_create_sources(self, api: httpx.Client) -> None:
        """The secret key can do what the public key can."""
        response = api.post(
            "/sources", json={"amount": 2000, "currency": "THB", "type": "mobile_banking_kbank"}
        )
        assert response.status_code == 200

    @pytest.mark.parametrize(
        ("amount", "ok"),
        [
            (1999, False),
            (2000, True),
            (15_000_000, True),
            (15_000_001, False),
            (0, False),
            (-2000, False),
            ("abc", False),
            (2000.5, False),
            (True, False),
            (None, False),
        ],
    )
    def test_amount_limits(self, api: httpx.Client, amount: Any, ok: bool) -> None:
        """An integer from 2,000 to 15,000,000 satang; else 400 invalid_amount."""
        body: dict[str, Any] = {
            "amount": amount,
            "currency": "THB",
            "return_uri": "https://shop/r",
            "source": {"type": "mobile_banking_kbank"},
        }
        response = api.post("/charges", json=body)
        if ok:
            assert response.json()["amount"] == amount
        else:
            assert_error(response, 400, "invalid_amount")
            source = api.post("/sources", json={**body, "type": "mobile_banking_kbank"})
            assert_error(source, 400, "invalid_amount")

    def test_amount_as_form_string(self, api: httpx.Client) -> None:
        """Form amounts are digit strings; '1999' is refused like 1999."""
        assert_error(api.post("/charges", data=charge_form(amount="1999")), 400, "invalid_amount")
        assert_error(api.post("/charges", data=charge_form(amount="20.00")), 400, "invalid_amount")

    def test_currency_must_be_thb(self, api: httpx.Client, public_api: httpx.Client) -> None:
        """Other currencies are refused (charges: invalid_charge, sources: invalid_source)."""
        assert_error(api.post("/charges", data=charge_form(currency="USD")), 400, "invalid_charge")
        source = public_api.post(
            "/sources", data={"amount": "2000", "currency": "JPY", "type": "mobile_banking_kbank"}
        )
        assert_error(source, 400, "invalid_source")

    def test_charge_must_match_its_source(
        self, api: httpx.Client, public_api: httpx.Client, fake: FakeOmise
    ) -> None:
        """The charge's amount must equal the source's; nothing is created otherwise."""
        source = public_api.post(
            "/sources", data={"amount": "150000", "currency": "THB", "type": "mobile_banking_kbank"}
        ).json()
        response = api.post(
            "/charges",
            data={
                "amount": "150001",
                "currency": "THB",
                "return_uri": "https://shop/r",
                "source": source["id"],
            },
        )
        assert_error(response, 400, "invalid_charge")
        assert fake.charges() == []
        assert public_api.get(f"/sources/{source['id']}").json()["charge_status"] == "unknown"

    def test_a_source_is_charged_once(self, api: httpx.Client, public_api: httpx.Client) -> None:
        """A second charge of the same source: 400 invalid_charge."""
        source = public_api.post(
            "/sources", data={"amount": "150000", "currency": "THB", "type": "mobile_banking_kbank"}
        ).json()
        form = {
            "amount": "150000",
            "currency": "THB",
            "return_uri": "https://shop/r",
            "source": source["id"],
        }
        assert api.post("/charges", data=form).status_code == 200
        second = api.post("/charges", data=form)
        assert_error(second, 400, "invalid_charge")
        assert "already" in second.json()["message"]

    def test_required_fields(self, api: httpx.Client) -> None:
        """return_uri and a source are required; metadata must be an object."""
        form = charge_form()
        del form["return_uri"]
        assert_error(api.post("/charges", data=form), 400, "invalid_charge")
        no_source = {k: v for k, v in charge_form().items() if not k.startswith("source")}
        assert_error(api.post("/charges", data=no_source), 400, "invalid_charge")
        bad_meta = api.post(
            "/charges",
            json={
                "amount": 2000,
                "currency": "THB",
                "return_uri": "https://r",
                "source": {"type": "mobile_banking_kbank"},
                "metadata": "x",
            },
        )
        assert_error(bad_meta, 400, "invalid_charge")
        assert_error(
            api.post(
                "/charges", content=b"{not json", headers={"Content-Type": "application/json"}
            ),
            400,
            "bad_request",
        )

    def test_other_source_types_are_refused(
        self, api: httpx.Client, public_api: httpx.Client
    ) -> None:
        """Only mobile_banking_kbank: 400 invalid_source (an assumption)."""
        response = public_api.post(
            "/sources", data={"amount": "2000", "currency": "THB", "type": "promptpay"}
        )
        assert_error(response, 400, "invalid_source")
        inline = api.post("/charges", data=charge_form(**{"source[type]": "promptpay"}))
        assert_error(inline, 400, "invalid_source")
        bad_platform = api.post("/charges", data=charge_form(**{"source[platform_type]": "TV"}))
        assert_error(bad_platform, 400, "invalid_source")

    def test_unknown_ids_are_404(self, api: httpx.Client, public_api: httpx.Client) -> None:
        """Unknown charges, sources, events and routes: 404 not_found."""
        assert_error(api.get("/charges/chrg_test_missing"), 404, "not_found")
        assert_error(api.get("/charges/chrg_test_missing/events"), 404, "not_found")
        assert_error(api.post("/charges/chrg_test_missing/mark_as_paid"), 404, "not_found")
        assert_error(api.get("/events/evnt_test_missing"), 404, "not_found")
        assert_error(public_api.get("/sources/src_test_missing"), 404, "not_found")
        assert_error(api.get("/customers"), 404, "not_found")
        form = charge_form()
        for key in ("source[type]", "source[platform_type]"):
            del form[key]
        form["source"] = "src_test_missing"
        assert_error(api.post("/charges", data=form), 404, "not_found")


class TestOutcomes(WithFake):
    """mark_as_paid / mark_as_failed / expire, the clock, and charge.complete."""

    @pytest.mark.parametrize(
        "case",
        [
            ("mark_as_paid", {}, "successful", None),
            ("mark_as_failed", {}, "failed", "payment_rejected"),
            (
                "mark_as_failed",
                {"failure_code": "insufficient_fund"},
                "failed",
                "insufficient_fund",
            ),
        ],
    )
    def test_test_mode_endpoints_emit_charge_complete(
        self,
        api: httpx.Client,
        fake: FakeOmise,
        recorder: Recorder,
        case: tuple[str, dict[str, str], str, str | None],
    ) -> None:
        """Each completes the charge and emits charge.complete with the right status."""
        action, form, status, failure_code = case
        charge = create_charge(api)
        response = api.post(f"/charges/{charge['id']}/{action}", data=form)
        assert response.status_code == 200
        done = response.json()
        assert (done["status"], done["failure_code"]) == (status, failure_code)
        assert done["source"]["charge_status"] == status
        assert done["paid"] is (status == "successful")
        assert done["authorized"] is (status == "successful")
        assert done["expired"] is (status == "expired")
        assert (done["paid_at"] is not None) is (status == "successful")
        assert (done["failure_message"] is not None) is (status == "failed")
        if status == "expired":
            assert done["expired_at"] == done["expires_at"]
        fake.flush()
        assert [e["key"] for e in recorder.events] == ["charge.create", "charge.complete"]
        complete = recorder.events[1]
        assert complete["data"]["status"] == status
        assert complete["data"]["failure_code"] == failure_code
        assert complete["webhook_deliveries"] == []
        events = api.get(f"/charges/{charge['id']}/events").json()
        assert events["object"] == "list"
        assert events["total"] == 2
        assert [e["key"] for e in events["data"]] == ["charge.create", "charge.complete"]
        again = api.post(f"/charges/{charge['id']}/{action}")
        assert_error(again, 400, "invalid_charge")

    def test_event_objects(self, api: httpx.Client, fake: FakeOmise) -> None:
        """GET /events/:id answers the event with its data and deliveries."""
        charge = create_charge(api)
        fake.flush()
        event_id = fake.events(charge["id"])[0]["id"]
        event = api.get(f"/events/{event_id}").json()
        assert set(event) >= {
            "object", "id", "livemode", "location", "key", "created_at", "data",
            "webhook_deliveries",
        }  # fmt: skip
        assert event["object"] == "event"
        assert event["id"].startswith("evnt_test_")
        assert event["location"] == f"/events/{event_id}"
        assert event["key"] == "charge.create"
        assert event["data"]["id"] == charge["id"]
        [delivery] = event["webhook_deliveries"]
        assert set(delivery) == {
            "object", "id", "uri", "status", "key", "error", "payload", "created_at",
        }  # fmt: skip
        assert delivery["object"] == "webhook_delivery"
        assert delivery["id"].startswith("whdl_test_")
        assert (delivery["status"], delivery["error"], delivery["key"]) == (
            200,
            None,
            "charge.create",
        )
        assert json.loads(delivery["payload"])["id"] == event_id
        assert api.get("/events").json()["total"] == 1

    def test_expiry_by_the_clock(self, clock: FakeClock) -> None:
        """The lifetime model: past expires_at the charge expires, with charge.complete."""
        recorder = Recorder()
        with (
            make_fake(clock=clock, webhook_receiver=recorder, expiry_model="lifetime") as fake,
            httpx.Client(transport=fake.transport(), base_url=BASE, auth=(SK, "")) as api,
        ):
            self._expires_after_ten_minutes(api, fake, recorder)

    @staticmethod
    def _expires_after_ten_minutes(api: httpx.Client, fake: FakeOmise, recorder: Recorder) -> None:
        charge = create_charge(api)
        assert parse(charge["expires_at"]) - parse(charge["created_at"]) == dt.timedelta(minutes=10)
        assert fake.advance_clock(dt.timedelta(minutes=9, seconds=59)) == []
        assert api.get(f"/charges/{charge['id']}").json()["status"] == "pending"
        assert fake.advance_clock(1) == [charge["id"]]
        expired = api.get(f"/charges/{charge['id']}").json()
        assert (expired["status"], expired["expired"]) == ("expired", True)
        assert expired["expired_at"] == expired["expires_at"]
        assert expired["failure_code"] is None
        assert expired["source"]["charge_status"] == "expired"
        fake.flush()
        assert recorder.events[-1]["key"] == "charge.complete"
        assert recorder.events[-1]["data"]["status"] == "expired"
        assert_error(api.post(f"/charges/{charge['id']}/mark_as_paid"), 400, "invalid_charge")

    def test_expiry_with_an_external_clock(
        self, api: httpx.Client, fake: FakeOmise, clock: FakeClock
    ) -> None:
        """An injected clock moved directly: the next request (or tick) ends the charge."""
        charge = create_charge(api)
        clock.advance(minutes=11)
        ended = api.get(f"/charges/{charge['id']}").json()
        assert (ended["status"], ended["failure_code"]) == ("failed", "payment_expired")

    def test_background_expiry_on_the_real_clock(self) -> None:
        """With the default clock the worker expires charges on its own."""
        recorder = Recorder()
        with (
            make_fake(
                webhook_receiver=recorder,
                expiry_model="lifetime",
                charge_lifetime=dt.timedelta(seconds=0.2),
            ) as fake,
            httpx.Client(transport=fake.transport(), base_url=BASE, auth=(SK, "")) as api,
        ):
            charge = create_charge(api)
            deadline = time.monotonic() + 5
            while fake.charges()[0]["status"] == "pending" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert fake.charge(charge["id"])["status"] == "expired"
            fake.flush()
            assert [e["key"] for e in recorder.events] == ["charge.create", "charge.complete"]

    def test_python_api_and_force(self, api: httpx.Client, fake: FakeOmise) -> None:
        """The Python controls; ``force`` changes a finished charge (late outcomes)."""
        charge = create_charge(api)
        ended = fake.expire(charge["id"])  # as the default model ends an abandoned charge
        assert (ended["status"], ended["failure_code"]) == ("failed", "payment_expired")
        with pytest.raises(FakeOmiseError) as caught:
            fake.mark_as_paid(charge["id"])
        assert (caught.value.status, caught.value.code) == (400, "invalid_charge")
        late = fake.mark_as_paid(charge["id"], force=True)
        assert (late["status"], late["failure_code"], late["paid"]) == ("successful", None, True)
        with pytest.raises(FakeOmiseError):
            fake.charge("chrg_test_nope")
        assert [e["key"] for e in fake.events(charge["id"])] == [
            "charge.create",
            "charge.complete",
            "charge.complete",
        ]


class TestLists(WithFake):
    """Lists with pagination."""

    def test_list_pagination_and_total(self, api: httpx.Client, fake: FakeOmise) -> None:
        """offset/limit/order/from/to, and ``total`` counts the window."""
        ids = []
        for n in range(5):
            ids.append(create_charge(api, f"pay_{n}")["id"])
            fake.advance_clock(60)
        page = api.get("/charges", params={"limit": 2}).json()
        assert set(page) == {
            "object",
            "from",
            "to",
            "offset",
            "limit",
            "total",
            "order",
            "location",
            "data",
        }
        assert (page["object"], page["location"], page["order"]) == (
            "list",
            "/charges",
            "chronological",
        )
        assert (page["total"], page["limit"], page["offset"]) == (5, 2, 0)
        assert [c["id"] for c in page["data"]] == ids[:2]
        assert page["from"] == "1970-01-01T00:00:00Z"
        last = api.get("/charges", params={"limit": 2, "offset": 4}).json()
        assert [c["id"] for c in last["data"]] == ids[4:]
        newest = api.get("/charges", params={"order": "reverse_chronological", "limit": 1}).json()
        assert newest["data"][0]["id"] == ids[-1]
        created = [parse(c["created_at"]) for c in fake.charges()]
        window = api.get(
            "/charges",
            params={
                "from": created[1].isoformat(),
                "to": created[3].strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        ).json()
        assert window["total"] == 3
        assert [c["id"] for c in window["data"]] == ids[1:4]
        assert api.get("/charges", params={"limit": 1000}).json()["limit"] == 100
        assert_error(api.get("/charges", params={"order": "sideways"}), 400, "bad_request")
        assert_error(api.get("/charges", params={"from": "yesterday"}), 400, "bad_request")
        as_json = api.request("GET", "/charges", json={"limit": 1, "offset": 1, "from": None})
        assert [c["id"] for c in as_json.json()["data"]] == ids[1:2]


class TestExpiryModels(WithQuietFake):
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
        with make_quiet(clock, expiry_model="lifetime") as fake, loopback(fake) as http:
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
        with (
            make_quiet(clock, expiry_model=model, expiry_webhook=False) as fake,
            in_process(fake) as api,
        ):
            charge = create(api, "pay-silent")
            fake.advance_clock(dt.timedelta(hours=1))
            ended = api.get(f"/charges/{charge['id']}").json()
            assert ended["status"] == ("failed" if model == "bank_timeout" else "expired")
            events = api.get(f"/charges/{charge['id']}/events").json()["data"]
            assert [e["key"] for e in events] == ["charge.create"]

    def test_bank_timeout_after_the_lifetime(self, clock: FakeClock) -> None:
        """A lifetime shorter than the bank's window: expired at expires_at."""
        with (
            make_quiet(clock, charge_lifetime=dt.timedelta(minutes=5)) as fake,
            in_process(fake) as api,
        ):
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
