"""
Shared setup of the fake Omise's tests (``tests/adapters/fake/``): keys, request
helpers, webhook receivers, and the two fakes the tests run against, as base
classes whose fixtures pytest finds on each test class:

- :class:`WithFake`: webhooks signed with ``WEBHOOK_SECRET`` and delivered to an
  in-process :class:`Recorder` (``recorder``), retried fast (``FAST``), ids
  seeded 42; ``api``/``public_api`` through its transport, ``server``/``http``
  over loopback, ``official`` the official ``omise`` client pointed at it;
- :class:`WithQuietFake`: the same fixtures on a fake without a webhook
  receiver or secret, ids seeded 13 (the fidelity tests, issue 13, whose
  expected values are written out from Omise's documents and the official SDKs'
  recorded fixtures under ``tests/fixtures``, never derived from the fake's code).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import omise  # type: ignore[import-untyped]
import pytest

from kplus_fsm.adapters.fake import FakeOmise, FakeOmiseServer, RetryPolicy, start_server
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
#: The official SDKs' recorded fixtures.
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "omise"
QUIET_RETRY = RetryPolicy(max_attempts=2, backoff=0.02, max_backoff=0.05)


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


def form(payment_id: str, amount: int = 150_000, **extra: str) -> dict[str, str]:
    return {
        "amount": str(amount),
        "currency": "THB",
        "return_uri": "https://shop.example/r",
        "source[type]": "mobile_banking_kbank",
        "metadata[payment_id]": payment_id,
        **extra,
    }


def make_quiet(clock: FakeClock, **switches: Any) -> FakeOmise:
    """A fake without a webhook receiver or secret, ids seeded 13 (the fidelity tests' fake)."""
    return FakeOmise(
        secret_key=SK, public_key=PK, clock=clock, seed=13, retry=QUIET_RETRY, sweep_interval=0.05,
        **switches,
    )  # fmt: skip


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


# --- fixtures -------------------------------------------------------------------------


class WithFake:
    """The fixtures of a fake with signed webhooks to a :class:`Recorder`."""

    @pytest.fixture
    def recorder(self) -> Recorder:
        return Recorder()

    @pytest.fixture
    def fake(self, clock: FakeClock, recorder: Recorder) -> Iterator[FakeOmise]:
        with make_fake(clock=clock, webhook_receiver=recorder) as f:
            yield f

    @pytest.fixture
    def api(self, fake: FakeOmise) -> Iterator[httpx.Client]:
        with httpx.Client(transport=fake.transport(), base_url=BASE, auth=(SK, "")) as client:
            yield client

    @pytest.fixture
    def public_api(self, fake: FakeOmise) -> Iterator[httpx.Client]:
        with httpx.Client(transport=fake.transport(), base_url=BASE, auth=(PK, "")) as client:
            yield client

    @pytest.fixture
    def server(self, fake: FakeOmise) -> Iterator[FakeOmiseServer]:
        with start_server(fake) as running:
            yield running

    @pytest.fixture
    def http(self, server: FakeOmiseServer) -> Iterator[httpx.Client]:
        with httpx.Client(base_url=server.url, auth=(SK, ""), trust_env=False) as client:
            yield client

    @pytest.fixture
    def official(self, server: FakeOmiseServer, monkeypatch: pytest.MonkeyPatch) -> Any:
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


class WithQuietFake(WithFake):
    """The same fixtures on a fake without a webhook receiver or secret (seed 13)."""

    @pytest.fixture
    def fake(self, clock: FakeClock) -> Iterator[FakeOmise]:
        with make_quiet(clock) as f:
            yield f
