"""
The fake Omise (kplus_fsm.adapters.fake): the API surface of the K PLUS guide,
Omise's rules, webhooks with retries and controls, faults, the authorize page,
the loopback server and the official ``omise`` client against it.

In process through the transport, or over loopback (127.0.0.1); nothing
reaches the internet.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import omise  # type: ignore[import-untyped]
import pytest

from kplus_fsm.adapters.fake import (
    FakeOmise,
    FakeOmiseError,
    FakeOmiseServer,
    RetryPolicy,
    WebhookDelivery,
    run_server,
    start_server,
)
from kplus_fsm.adapters.signatures import verify_signature
from kplus_fsm.testing import FakeClock

SK = "skey_test_5zSECRETsecretKEY0000"
PK = "pkey_test_5zPUBLICpublicKEY000"
WEBHOOK_SECRET = base64.b64encode(b"whsec-fake-omise-test-secret-bytes").decode()
OLD_WEBHOOK_SECRET = base64.b64encode(b"whsec-the-previous-secret-bytes!!").decode()
BASE = "https://api.omise.co"
FAST = RetryPolicy(max_attempts=4, backoff=0.02, factor=2.0, max_backoff=0.1)

#: The fields of the K PLUS guide's source and charge examples.
SOURCE_FIELDS = {
    "object", "id", "livemode", "location", "amount", "barcode", "bank", "created_at",
    "currency", "email", "flow", "installment_term", "ip", "absorption_type", "name",
    "mobile_number", "phone_number", "platform_type", "scannable_code", "billing", "shipping",
    "items", "references", "provider_references", "store_id", "store_name", "terminal_id",
    "type", "zero_interest_installments", "charge_status", "receipt_amount", "discounts",
}  # fmt: skip
CHARGE_FIELDS = {
    "object", "id", "location", "amount", "authorization_type", "authorized_amount",
    "captured_amount", "acquirer_reference_number", "net", "fee", "fee_vat",
    "interest", "interest_vat", "funding_amount", "refunded_amount", "transaction_fees",
    "platform_fee", "currency", "funding_currency", "ip", "refunds", "link", "description",
    "metadata", "card", "source", "schedule", "linked_account", "customer", "dispute",
    "transaction", "failure_code", "failure_message", "merchant_advice", "merchant_advice_code",
    "status", "authorize_uri", "return_uri", "created_at", "paid_at", "authorized_at",
    "expires_at", "expired_at", "reversed_at", "multi_capture", "zero_interest_installments",
    "branch", "terminal", "device", "authorized", "capturable", "capture", "disputable",
    "livemode", "refundable", "partially_refundable", "reversed", "reversible", "voided",
    "paid", "expired", "can_perform_void", "approval_code",
}  # fmt: skip


# --- helpers --------------------------------------------------------------------------


class Recorder:
    """An in-process webhook receiver; answers ``outcomes`` in turn (then 200)."""

    def __init__(self, outcomes: list[int | Exception] | None = None) -> None:
        self.outcomes = list(outcomes or [])
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []
        self.gate: threading.Event | None = None
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.gate is not None:
            self.gate.wait(5)
        request.read()
        with self._lock:
            self.requests.append(request)
            self.times.append(time.monotonic())
            outcome = self.outcomes.pop(0) if self.outcomes else 200
        if isinstance(outcome, Exception):
            raise outcome
        return httpx.Response(outcome)

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(r.content) for r in self.requests]


class Receiver:
    """A webhook receiver on loopback; records (headers, body) and answers 200."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/omise"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_fake(**overrides: Any) -> FakeOmise:
    options: dict[str, Any] = {
        "secret_key": SK,
        "public_key": PK,
        "webhook_secrets": [WEBHOOK_SECRET],
        "retry": FAST,
        "seed": 42,
        "sweep_interval": 0.05,
    }
    options.update(overrides)
    return FakeOmise(**options)


def charge_form(payment_id: str = "pay_1", **overrides: str) -> dict[str, str]:
    """The guide's one-call curl request (inline source), as form fields."""
    form = {
        "amount": "150000",
        "currency": "THB",
        "return_uri": "http://example.com/orders/345678/complete",
        "source[type]": "mobile_banking_kbank",
        "source[platform_type]": "IOS",
        "metadata[payment_id]": payment_id,
    }
    form.update(overrides)
    return form


def create_charge(api: httpx.Client, payment_id: str = "pay_1", **overrides: str) -> dict[str, Any]:
    response = api.post("/charges", data=charge_form(payment_id, **overrides))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["object"] == "error"
    assert body["code"] == code
    assert body["location"].endswith("#" + code.replace("_", "-"))
    assert isinstance(body["message"], str)
    assert body["message"]


def parse(when: str) -> dt.datetime:
    return dt.datetime.fromisoformat(when)


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def fake(clock: FakeClock, recorder: Recorder) -> Iterator[FakeOmise]:
    with make_fake(clock=clock, webhook_receiver=recorder) as f:
        yield f


@pytest.fixture
def api(fake: FakeOmise) -> Iterator[httpx.Client]:
    with httpx.Client(transport=fake.transport(), base_url=BASE, auth=(SK, "")) as client:
        yield client


@pytest.fixture
def public_api(fake: FakeOmise) -> Iterator[httpx.Client]:
    with httpx.Client(transport=fake.transport(), base_url=BASE, auth=(PK, "")) as client:
        yield client


@pytest.fixture
def server(fake: FakeOmise) -> Iterator[FakeOmiseServer]:
    with start_server(fake) as running:
        yield running


@pytest.fixture
def http(server: FakeOmiseServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, auth=(SK, ""), trust_env=False) as client:
        yield client


# --- the guide's requests -------------------------------------------------------------


class TestGuideRequests:
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


# --- rules ------------------------------------------------------------------------------


class TestRules:
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


# --- outcomes, events, expiry ---------------------------------------------------------------


class TestOutcomes:
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


# --- webhooks -------------------------------------------------------------------------------


class TestWebhooks:
    """Deliveries: signed, in the background, retried, and the controls."""

    def test_deliveries_are_signed(
        self, api: httpx.Client, fake: FakeOmise, recorder: Recorder, clock: FakeClock
    ) -> None:
        """Omise-Signature verifies with adapters.signatures over the raw body."""
        create_charge(api)
        fake.flush()
        [request] = recorder.requests
        assert request.headers["Content-Type"] == "application/json"
        assert request.method == "POST"
        check = verify_signature(
            request.content, dict(request.headers), [WEBHOOK_SECRET], now=clock().timestamp()
        )
        assert check.ok, check.reason
        tampered = verify_signature(
            request.content + b" ", dict(request.headers), [WEBHOOK_SECRET], now=clock().timestamp()
        )
        assert not tampered.ok

    def test_rotation_signs_with_every_secret(self, clock: FakeClock) -> None:
        """During a rotation each secret alone verifies the delivery."""
        recorder = Recorder()
        with (
            make_fake(
                clock=clock,
                webhook_receiver=recorder,
                webhook_secrets=[WEBHOOK_SECRET, OLD_WEBHOOK_SECRET],
            ) as fake,
            httpx.Client(transport=fake.transport(), base_url=BASE, auth=(SK, "")) as api,
        ):
            create_charge(api)
            fake.flush()
        [request] = recorder.requests
        assert request.headers["Omise-Signature"].count(",") == 1
        for secret in (WEBHOOK_SECRET, OLD_WEBHOOK_SECRET):
            now = clock().timestamp()
            assert verify_signature(request.content, dict(request.headers), [secret], now=now).ok

    def test_unsigned_without_a_secret(self, clock: FakeClock) -> None:
        """No webhook secret configured: no signature headers."""
        recorder = Recorder()
        with (
            make_fake(clock=clock, webhook_receiver=recorder, webhook_secrets=[]) as fake,
            httpx.Client(transport=fake.transport(), base_url=BASE, auth=(SK, "")) as api,
        ):
            create_charge(api)
            fake.flush()
        assert "Omise-Signature" not in recorder.requests[0].headers

    def test_retries_with_backoff_until_the_receiver_is_up(self, clock: FakeClock) -> None:
        """Connection error, then 503, then 200: three attempts, all visible."""
        recorder = Recorder([httpx.ConnectError("connection refused"), 503, 200])
        with (
            make_fake(clock=clock, webhook_receiver=recorder) as fake,
            httpx.Client(transport=fake.transport(), base_url=BASE, auth=(SK, "")) as api,
        ):
            charge = create_charge(api)
            fake.flush()
            shown = self._check_attempts(fake, recorder, api, charge)
        assert len({d["id"] for d in shown}) == 3

    @staticmethod
    def _check_attempts(
        fake: FakeOmise, recorder: Recorder, api: httpx.Client, charge: dict[str, Any]
    ) -> list[dict[str, Any]]:
        records = fake.deliveries()
        assert [(r.attempt, r.status) for r in records] == [(1, None), (2, 503), (3, 200)]
        assert records[0].error is not None
        assert "ConnectError" in records[0].error
        assert records[1].error is not None
        assert records[2].error is None
        assert records[2].ok
        assert all(isinstance(r, WebhookDelivery) for r in records)
        gaps = [b - a for a, b in zip(recorder.times, recorder.times[1:], strict=False)]
        assert gaps[0] >= 0.015
        assert gaps[1] >= 0.035
        event_id = fake.events(charge["id"])[0]["id"]
        shown: list[dict[str, Any]] = api.get(f"/events/{event_id}").json()["webhook_deliveries"]
        assert [d["status"] for d in shown] == [None, 503, 200]
        return shown

    def test_retries_are_bounded(self, clock: FakeClock) -> None:
        """A receiver that never recovers gets max_attempts attempts."""
        recorder = Recorder([500] * 10)
        with (
            make_fake(clock=clock, webhook_receiver=recorder) as fake,
            httpx.Client(transport=fake.transport(), base_url=BASE, auth=(SK, "")) as api,
        ):
            create_charge(api)
            fake.flush()
            assert [r.status for r in fake.deliveries()] == [500] * FAST.max_attempts

    def test_the_api_answers_while_the_receiver_hangs(
        self, api: httpx.Client, fake: FakeOmise, recorder: Recorder
    ) -> None:
        """Deliveries run in the background: API calls do not wait for them."""
        recorder.gate = threading.Event()
        started = time.monotonic()
        charge = create_charge(api)
        api.post(f"/charges/{charge['id']}/mark_as_paid")
        assert time.monotonic() - started < 1.0
        assert not fake.wait_idle(0.05)
        recorder.gate.set()
        fake.flush()
        assert len(recorder.requests) == 2

    def test_receiver_down_then_up_over_loopback(self, clock: FakeClock) -> None:
        """A real URL: refused at first, then a receiver starts on that port."""
        port = free_port()
        retry = RetryPolicy(max_attempts=20, backoff=0.1, factor=1.0)
        with (
            make_fake(
                clock=clock, webhook_url=f"http://127.0.0.1:{port}/hook", retry=retry
            ) as fake,
            httpx.Client(transport=fake.transport(), base_url=BASE, auth=(SK, "")) as api,
        ):
            started = time.monotonic()
            create_charge(api)
            assert time.monotonic() - started < 1.0
            deadline = time.monotonic() + 5
            while not fake.deliveries() and time.monotonic() < deadline:
                time.sleep(0.01)
            first = fake.deliveries()[0]
            assert (first.status, first.uri) == (None, f"http://127.0.0.1:{port}/hook")
            receiver = Receiver(port)
            try:
                fake.flush(5)
            finally:
                receiver.close()
            records = fake.deliveries()
            assert records[-1].status == 200
            assert all(r.status is None for r in records[:-1])
            assert receiver.events[0]["key"] == "charge.create"
            headers, body = receiver.received[0]
            check = verify_signature(body, headers, [WEBHOOK_SECRET], now=clock().timestamp())
            assert check.ok

    def test_duplicate(self, api: httpx.Client, fake: FakeOmise, recorder: Recorder) -> None:
        """duplicate_next: the same event delivered N times."""
        fake.duplicate_next(3)
        charge = create_charge(api)
        api.post(f"/charges/{charge['id']}/mark_as_paid")
        fake.flush()
        keys = [e["key"] for e in recorder.events]
        assert keys == ["charge.create"] * 3 + ["charge.complete"]
        assert len({e["id"] for e in recorder.events[:3]}) == 1
        assert [r.copy for r in fake.deliveries()][:3] == [1, 2, 3]

    def test_hold_and_release_reversed(
        self, api: httpx.Client, fake: FakeOmise, recorder: Recorder
    ) -> None:
        """hold_webhooks parks deliveries; release in reversed or a chosen order."""
        fake.hold_webhooks()
        charge = create_charge(api)
        api.post(f"/charges/{charge['id']}/mark_as_paid")
        assert fake.wait_idle(0.5)  # parked deliveries do not count
        assert recorder.requests == []
        held = fake.held_webhooks()
        assert len(held) == 2
        assert fake.release_webhooks("reversed") == held[::-1]
        fake.flush()
        assert [e["key"] for e in recorder.events] == ["charge.complete", "charge.create"]
        fake.hold_webhooks()
        other = create_charge(api, "pay_2")
        api.post(f"/charges/{other['id']}/mark_as_failed")
        create_id, complete_id = fake.held_webhooks()
        fake.release_webhooks([complete_id, create_id])
        fake.flush()
        assert [e["id"] for e in recorder.events[2:]] == [complete_id, create_id]

    def test_drop(self, api: httpx.Client, fake: FakeOmise, recorder: Recorder) -> None:
        """drop_next: the next event is never delivered but stays readable."""
        fake.drop_next(1)
        charge = create_charge(api)
        api.post(f"/charges/{charge['id']}/mark_as_paid")
        fake.flush()
        assert [e["key"] for e in recorder.events] == ["charge.complete"]
        create_event = fake.events(charge["id"])[0]
        assert create_event["key"] == "charge.create"
        assert create_event["webhook_deliveries"] == []

    def test_delay(self, api: httpx.Client, fake: FakeOmise, recorder: Recorder) -> None:
        """delay_next: a later event overtakes the delayed one."""
        fake.delay_next(0.3)
        started = time.monotonic()
        charge = create_charge(api)
        api.post(f"/charges/{charge['id']}/mark_as_paid")
        fake.flush()
        assert [e["key"] for e in recorder.events] == ["charge.complete", "charge.create"]
        assert recorder.times[1] - started >= 0.29


# --- faults -----------------------------------------------------------------------------------


class TestFaults:
    """Scripted API faults, in process and over loopback."""

    @pytest.mark.parametrize(
        ("status", "code"),
        [(429, "too_many_requests"), (500, "internal_error"), (503, "service_unavailable")],
    )
    def test_error_status(self, api: httpx.Client, fake: FakeOmise, status: int, code: str) -> None:
        """An error object with the status; nothing is created; then back to normal."""
        fake.inject_fault("POST /charges", "error", status=status, retry_after=1)
        response = api.post("/charges", data=charge_form())
        assert_error(response, status, code)
        assert response.headers["Retry-After"] == "1"
        assert fake.charges() == []
        assert api.post("/charges", data=charge_form()).status_code == 200

    def test_html_body(self, api: httpx.Client, fake: FakeOmise) -> None:
        """A 502 HTML page instead of JSON."""
        fake.inject_fault("GET /charges/:id", "html")
        charge = create_charge(api)
        response = api.get(f"/charges/{charge['id']}")
        assert response.status_code == 502
        assert response.headers["Content-Type"].startswith("text/html")
        assert "<html>" in response.text
        with pytest.raises(json.JSONDecodeError):
            response.json()
        assert api.get(f"/charges/{charge['id']}").status_code == 200

    def test_truncated_json(self, api: httpx.Client, fake: FakeOmise) -> None:
        """A 200 whose JSON is cut; the request itself took effect."""
        fake.inject_fault("POST /charges", "truncated")
        response = api.post("/charges", data=charge_form())
        assert response.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            response.json()
        assert len(fake.charges()) == 1

    def test_slow(self, api: httpx.Client, fake: FakeOmise) -> None:
        """slow: the answer comes after the delay; beyond the read timeout, ReadTimeout."""
        fake.inject_fault("GET /charges", "slow", delay=0.2)
        started = time.monotonic()
        assert api.get("/charges").status_code == 200
        assert time.monotonic() - started >= 0.19
        fake.inject_fault("POST /charges", "slow", delay=30)
        with pytest.raises(httpx.ReadTimeout):
            api.post("/charges", data=charge_form(), timeout=httpx.Timeout(5.0, read=0.1))
        assert len(fake.charges()) == 1

    @pytest.mark.parametrize(
        ("kind", "error"),
        [
            ("commit_then_error", None),
            ("commit_then_drop", httpx.RemoteProtocolError),
            ("commit_then_timeout", httpx.ReadTimeout),
        ],
    )
    def test_commit_then_fail(
        self, api: httpx.Client, fake: FakeOmise, kind: Any, error: type[Exception] | None
    ) -> None:
        """The charge is created, but the caller sees a failure: look it up by metadata."""
        fake.inject_fault("POST /charges", kind)
        if error is None:
            assert_error(
                api.post("/charges", data=charge_form("pay_unknown")), 500, "internal_error"
            )
        else:
            with pytest.raises(error):
                api.post("/charges", data=charge_form("pay_unknown"))
        found = api.get("/search", params={"scope": "charge", "query": "pay_unknown"}).json()
        assert found["total"] == 1
        assert found["data"][0]["status"] == "pending"

    def test_faults_over_loopback(self, http: httpx.Client, fake: FakeOmise) -> None:
        """On a socket: dropped connections, timeouts, HTML, set through /_fake/faults."""
        added = http.post(
            "/_fake/faults", json={"route": "POST /charges", "kind": "commit_then_drop"}
        )
        assert added.json()["kind"] == "commit_then_drop"
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("/charges", data=charge_form("pay_a"))
        http.post(
            "/_fake/faults",
            data={"route": "POST /charges", "kind": "commit_then_timeout", "delay": "3"},
        )
        with pytest.raises(httpx.ReadTimeout):
            http.post("/charges", data=charge_form("pay_b"), timeout=httpx.Timeout(5.0, read=0.3))
        http.post("/_fake/faults", json={"route": "* /charges/*", "kind": "html", "times": 2})
        page = http.get("/charges/chrg_test_any")
        assert (page.status_code, page.headers["Content-Type"]) == (502, "text/html")
        http.post("/_fake/faults", json={"route": "GET /charges", "kind": "slow", "delay": 0.2})
        started = time.monotonic()
        listed = http.get("/charges").json()
        assert time.monotonic() - started >= 0.19
        assert listed["total"] == 2
        assert http.delete("/_fake/faults").json()["cleared"] == 1
        assert http.get("/charges/chrg_test_any").status_code == 404
        bad = http.post("/_fake/faults", json={"route": "POST /charges", "kind": "meteor"})
        assert_error(bad, 400, "bad_request")


# --- the authorize page, lists, search ----------------------------------------------------------


class TestPages:
    """The authorize_uri page, lists with pagination, search."""

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


# --- the official client, the server, controls over HTTP -----------------------------------------


class TestOverLoopback:
    """The loopback server: ready route, the omise client, HTTP controls, run_server."""

    def test_ready(self, server: FakeOmiseServer) -> None:
        """GET / answers 200 with the ready object, without a key."""
        assert server.url.startswith("http://127.0.0.1:")
        with httpx.Client(trust_env=False) as client:
            response = client.get(server.url + "/")
        assert response.status_code == 200
        assert response.json() == {"object": "fake_omise", "ready": True}
        assert repr(server) == f"<FakeOmiseServer {server.url}>"

    def test_official_omise_client(
        self, server: FakeOmiseServer, fake: FakeOmise, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """omise 0.16 (JSON bodies even on GET, currency 'thb') just works."""
        monkeypatch.setattr(omise, "api_main", server.url)
        monkeypatch.setattr(omise, "api_vault", server.url)
        monkeypatch.setattr(omise, "api_secret", SK)
        monkeypatch.setattr(omise, "api_public", PK)
        # omise.Source uses the secret key; a public-key call goes through the
        # client's own Request with omise.api_public, as its public resources do.
        source = omise.Request(omise.api_public, omise.api_main, omise.api_version).send(
            "post",
            "sources",
            {"amount": 150000, "currency": "thb", "type": "mobile_banking_kbank"},
        )
        assert source["charge_status"] == "unknown"
        charge = omise.Charge.create(
            amount=150000,
            currency="thb",
            source=source["id"],
            return_uri="https://shop.example/return",
            metadata={"payment_id": "pay_omise"},
        )
        assert (charge.status, charge.currency, charge.source.id) == (
            "pending",
            "THB",
            source["id"],
        )
        assert omise.Charge.retrieve(charge.id).amount == 150000
        assert [c.id for c in omise.Charge.list()] == [charge.id]
        assert len(omise.Charge.list()) == 1
        found = omise.Search.execute("charge", query="pay_omise")
        assert [c.id for c in found] == [charge.id]
        with httpx.Client(trust_env=False) as client:
            client.post(f"{server.url}/charges/{charge.id}/mark_as_paid", auth=(SK, ""))
        paid = omise.Charge.retrieve(charge.id)
        assert (paid.status, paid.paid, paid.source.charge_status) == (
            "successful",
            True,
            "successful",
        )
        assert [e.key for e in paid.list_events()] == ["charge.create", "charge.complete"]
        assert omise.Source.retrieve(source["id"]).charge_status == "successful"
        with pytest.raises(omise.errors.NotFoundError):
            omise.Charge.retrieve("chrg_test_missing")
        monkeypatch.setattr(omise, "api_secret", PK)
        with pytest.raises(omise.errors.AuthenticationFailureError):
            omise.Charge.retrieve(charge.id)

    def test_controls_over_http(self, clock: FakeClock) -> None:
        """A separate process can drive the fake through /_fake/ routes."""
        receiver = Receiver()
        try:
            with (
                make_fake(clock=clock, webhook_url=receiver.url) as fake,
                start_server(fake) as server,
                httpx.Client(base_url=server.url, auth=(SK, ""), trust_env=False) as http,
            ):
                assert_error(
                    http.post("/_fake/webhooks/hold", auth=(PK, "")), 401, "authentication_failure"
                )
                assert http.post("/_fake/webhooks/hold").json()["ok"] is True
                first = http.post("/charges", data=charge_form("pay_1")).json()
                second = http.post("/charges", data=charge_form("pay_2")).json()
                released = http.post("/_fake/webhooks/release", json={"order": "reversed"}).json()
                assert len(released["released"]) == 2
                assert http.post("/_fake/webhooks/flush", json={"timeout": 5}).json()["idle"]
                assert [e["data"]["id"] for e in receiver.events] == [second["id"], first["id"]]
                http.post("/_fake/webhooks/duplicate", data={"times": "2"})
                http.post(f"/charges/{first['id']}/mark_as_paid")
                http.post("/_fake/webhooks/drop", json={"events": 1})
                http.post(
                    f"/charges/{second['id']}/mark_as_failed",
                    json={"failure_code": "failed_processing"},
                )
                http.post("/_fake/webhooks/delay", json={"seconds": 0.1})
                third = http.post("/charges", data=charge_form("pay_3")).json()
                advanced = http.post("/_fake/clock/advance", json={"seconds": 601}).json()
                assert advanced["expired"] == [third["id"]]
                assert http.get("/_fake/clock").json()["now"] == advanced["now"]
                assert http.post("/_fake/webhooks/flush").json()["idle"]
                keys = [(e["key"], e["data"]["id"]) for e in receiver.events[2:]]
                assert keys == [
                    ("charge.complete", first["id"]),
                    ("charge.complete", first["id"]),
                    ("charge.complete", third["id"]),
                    ("charge.create", third["id"]),
                ]
                listed = http.get("/_fake/webhooks/deliveries").json()
                assert listed["total"] == 6
                assert {d["object"] for d in listed["data"]} == {"webhook_delivery"}
                one = http.get(
                    "/_fake/webhooks/deliveries", params={"event_id": released["released"][0]}
                )
                assert one.json()["total"] == 1
                assert_error(
                    http.post("/_fake/webhooks/delay", json={"seconds": "soon"}), 400, "bad_request"
                )
        finally:
            receiver.close()

    def test_concurrent_requests(self, server: FakeOmiseServer, fake: FakeOmise) -> None:
        """Threads creating charges at once: no lost or duplicate charge."""
        created: list[str] = []

        def work(n: int) -> None:
            with httpx.Client(base_url=server.url, auth=(SK, ""), trust_env=False) as client:
                for i in range(5):
                    response = client.post("/charges", data=charge_form(f"pay_{n}_{i}"))
                    created.append(response.json()["id"])

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(set(created)) == 20
        assert len(fake.charges()) == 20

    def test_run_server(self, capsys: pytest.CaptureFixture[str]) -> None:
        """run_server serves until stopped and prints one line with the URL, no secret."""
        stop = threading.Event()
        thread = threading.Thread(
            target=run_server,
            args=("127.0.0.1", 0),
            kwargs={
                "secret_key": SK,
                "public_key": PK,
                "webhook_secret": WEBHOOK_SECRET,
                "webhook_url": "http://127.0.0.1:9/unused",
                "stop": stop,
            },
        )
        thread.start()
        try:
            output = ""
            deadline = time.monotonic() + 5
            while "http://" not in output and time.monotonic() < deadline:
                time.sleep(0.02)
                output += capsys.readouterr().out
            [line] = output.splitlines()
            url = line.split()[line.split().index("on") + 1]
            assert url.startswith("http://127.0.0.1:")
            with httpx.Client(trust_env=False) as client:
                assert client.get(url + "/").json()["ready"] is True
                assert client.get(url + "/charges", auth=(SK, "")).json()["total"] == 0
        finally:
            stop.set()
            thread.join(5)
        assert not thread.is_alive()
        for secret in (SK, PK, WEBHOOK_SECRET):
            assert secret not in output


# --- determinism and secrets ----------------------------------------------------------------


class TestHygiene:
    """Seeded ids, and secrets that never leak."""

    def test_seeded_ids_are_reproducible(self) -> None:
        """The same seed and the same calls give the same ids."""
        runs = []
        for _ in range(2):
            with (
                make_fake(clock=FakeClock(), seed=7, webhook_receiver=Recorder()) as fake,
                httpx.Client(transport=fake.transport(), base_url=BASE, auth=(SK, "")) as api,
            ):
                charge = create_charge(api)
                fake.flush()
                fake.mark_as_paid(charge["id"])
                other = create_charge(api, "pay_2")
                fake.flush()
                events = [e["id"] for e in fake.events()]
                deliveries = [d.id for d in fake.deliveries()]
                runs.append((charge["id"], other["id"], charge["source"]["id"], events, deliveries))
        assert runs[0] == runs[1]

    def test_configuration_errors(self) -> None:
        """Bad keys or secrets are refused without showing them."""
        with pytest.raises(ValueError) as caught:
            FakeOmise(secret_key=SK, public_key=PK, webhook_secrets=["not base64 %%% " + SK])
        assert SK not in str(caught.value)
        with pytest.raises(ValueError):
            FakeOmise(secret_key=SK, public_key=SK)
        with pytest.raises(TypeError):
            FakeOmise(secret_key=SK, public_key=PK, webhook_secrets=WEBHOOK_SECRET)
        fake = FakeOmise(secret_key=SK, public_key=PK, clock=lambda: dt.datetime.now(dt.UTC))
        with pytest.raises(TypeError):
            fake.advance_clock(1)
        with pytest.raises(ValueError):
            fake.inject_fault("charges", "error")
        with pytest.raises(ValueError):
            fake.inject_fault("POST /charges", "meteor")  # type: ignore[arg-type]
        fake.close()

    def test_secrets_never_appear(self, fake: FakeOmise, recorder: Recorder) -> None:
        """No response, header, webhook, record, repr or error text shows a key or secret."""
        seen: list[httpx.Response] = []

        def spy(request: httpx.Request) -> httpx.Response:
            response = fake.handle(request)
            response.read()
            seen.append(response)
            return response

        transport = httpx.MockTransport(spy)
        with (
            httpx.Client(transport=transport, base_url=BASE, auth=(SK, "")) as api,
            httpx.Client(transport=transport, base_url=BASE, auth=(PK, "")) as public,
            httpx.Client(transport=transport, base_url=BASE) as anonymous,
        ):
            source = public.post(
                "/sources",
                data={"amount": "2000", "currency": "THB", "type": "mobile_banking_kbank"},
            ).json()
            public.get(f"/sources/{source['id']}")
            public.post("/charges", data=charge_form())
            anonymous.get("/charges")
            api.get("/charges", auth=(SK + "x", ""))
            charge = create_charge(api)
            api.post("/charges", data=charge_form(amount="1"))
            api.get(f"/charges/{charge['id']}/events")
            api.get("/search", params={"scope": "charge", "query": "pay_1"})
            api.get(charge["authorize_uri"])
            api.post(charge["authorize_uri"], data={"action": "approve"})
            api.post("/_fake/clock/advance", json={"seconds": 1})
            api.post("/_fake/webhooks/flush")
            api.get("/_fake/webhooks/deliveries")
            fake.inject_fault("GET /charges", "error")
            api.get("/charges")
            for event in fake.events():
                api.get(f"/events/{event['id']}")
        fake.flush()
        secrets = [SK, PK, WEBHOOK_SECRET, base64.b64decode(WEBHOOK_SECRET).decode()]
        texts = [r.text + str(dict(r.headers)) for r in seen]
        texts += [r.content.decode() + str(dict(r.headers)) for r in recorder.requests]
        texts += [repr(fake), repr(fake.deliveries()), repr(fake.events())]
        try:
            fake.mark_as_paid(charge["id"])
        except FakeOmiseError as exc:
            texts.append(str(exc))
        assert len(seen) >= 15
        for text in texts:
            for secret in secrets:
                assert secret not in text
