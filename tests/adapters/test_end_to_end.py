"""
End to end over loopback: the real OmiseClient, the fake Omise on a socket, the
webhook receiver on a socket, and the SQLite event log in a file.

Each test is one scenario; each asserts the final state in the log and the
outcomes of the payment's timeline.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import attrs
import httpx
import omise  # type: ignore[import-untyped]
import pytest
import structlog
from structlog.testing import capture_logs

from kplus_fsm import InboxRow, Result, Status, TimelineEntry, Tracker, parse_time
from kplus_fsm.adapters.fake import FakeOmise, FakeOmiseServer, start_server
from kplus_fsm.adapters.fake import RetryPolicy as DeliveryRetry
from kplus_fsm.adapters.omise import OmiseClient, RetryPolicy
from kplus_fsm.adapters.signatures import signature_headers
from kplus_fsm.adapters.webhooks import WebhookIntake, WebhookServer, serve
from kplus_fsm.testing import FakeClock

SK = "skey_test_5e2esecretkey00000000001"
PK = "pkey_test_5e2epublickey00000000001"
WEBHOOK_SECRET = base64.b64encode(b"end-to-end-webhook-secret-0123456").decode()
OTHER_SECRET = base64.b64encode(b"not-the-dashboard-secret-98765432").decode()
BASIC = base64.b64encode(f"{SK}:".encode()).decode()
RETURN_URI = "https://shop.example/r"
AMOUNT = 35_000
#: Reads retried fast, so that faults on GETs cost milliseconds.
FAST_READS = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)
FAST_DELIVERIES = DeliveryRetry(max_attempts=3, backoff=0.05, max_backoff=0.2)


@attrs.define
class World:
    """Everything of one scenario, wired over 127.0.0.1."""

    db: Path
    tracker: Tracker
    receiver_tracker: Tracker
    intake: WebhookIntake
    receiver: WebhookServer
    fake: FakeOmise
    server: FakeOmiseServer
    client: OmiseClient
    http: httpx.Client
    browser: httpx.Client

    @property
    def webhook_url(self) -> str:
        return self.receiver.url + "/webhooks/omise"

    def create(self, payment_id: str, **fields: Any) -> Result:
        fields.setdefault("amount", AMOUNT)
        fields.setdefault("return_uri", RETURN_URI)
        fields.setdefault("platform_type", "IOS")
        return self.tracker.create_charge(self.client, payment_id=payment_id, **fields)

    def settle(self) -> None:
        """Wait until every webhook delivery (and its re-fetch) is done."""
        self.fake.flush(10.0)

    def open_payment(self, payment_id: str) -> str:
        """A pending payment whose charge.create webhook has been handled: its charge id."""
        result = self.create(payment_id)
        assert result.status is Status.PENDING, result.reason
        self.settle()
        charge_id = self.tracker.get(payment_id).charge_id
        assert charge_id is not None
        return charge_id

    def inbox(self) -> list[InboxRow]:
        return list(self.tracker.store.iter_inbox())

    def charges_for(self, payment_id: str) -> list[dict[str, Any]]:
        return [c for c in self.fake.charges() if c["metadata"].get("payment_id") == payment_id]

    def event_id(self, charge_id: str, key: str) -> str:
        [found] = [e["id"] for e in self.fake.events(charge_id) if e["key"] == key]
        return str(found)

    def now(self) -> int:
        """The fake's clock (which signs deliveries) in Unix seconds."""
        return int(self.fake.now().timestamp())

    def post_webhook(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        with httpx.Client(trust_env=False) as sender:
            return sender.post(
                self.webhook_url,
                content=body,
                headers={"Content-Type": "application/json", **headers},
            )


def inputs(timeline: list[TimelineEntry]) -> list[tuple[str, str | None, str | None]]:
    """(kind, origin, outcome) of each input of a timeline, in order."""
    return [(e.kind, e.origin, e.outcome) for e in timeline if e.type == "input"]


def event_kinds(timeline: list[TimelineEntry]) -> list[str]:
    return [e.kind for e in timeline if e.type == "event"]


def rows_after(rows: list[InboxRow], row_id: int) -> list[InboxRow]:
    return [r for r in rows if r.id > row_id]


def webhook_rows(world: World, event_id: str) -> list[InboxRow]:
    return [r for r in world.inbox() if r.kind == "webhook" and r.external_id == event_id]


def status_path(timeline: list[TimelineEntry]) -> list[str]:
    """The statuses the payment went through, from its state-changing events."""
    return [
        str(e.data["status"])
        for e in timeline
        if e.type == "event" and e.kind.startswith("charge.") and "status" in (e.data or {})
    ]


@pytest.fixture
def world(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """
    Receiver first (port 0), then the fake Omise posting to it, then the clients.
    ``request.param``: ``separate`` (default: the receiver has its own Tracker on
    the same file), ``shared`` (one Tracker), ``no_refetch`` (no client in the
    intake: payloads are applied as unverified snapshots), ``real_clock`` (the
    intake checks signature timestamps against the system clock, not the fake's).
    """
    mode = getattr(request, "param", "separate")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    db = tmp_path / "kplus.db"
    with contextlib.ExitStack() as stack:
        tracker = stack.enter_context(Tracker(db))
        receiver_tracker = tracker if mode == "shared" else stack.enter_context(Tracker(db))
        intake = WebhookIntake(receiver_tracker, secrets=[WEBHOOK_SECRET])
        receiver = stack.enter_context(serve(intake, "127.0.0.1", 0).start())
        fake = FakeOmise(
            secret_key=SK,
            public_key=PK,
            webhook_url=receiver.url + "/webhooks/omise",
            webhook_secrets=[WEBHOOK_SECRET],
            retry=FAST_DELIVERIES,
            sweep_interval=0.05,
        )
        stack.callback(fake.close)
        server = stack.enter_context(start_server(fake, host="127.0.0.1", port=0))
        client = stack.enter_context(
            OmiseClient(secret_key=SK, public_key=PK, base_url=server.url, retry=FAST_READS)
        )
        refetcher = stack.enter_context(
            OmiseClient(secret_key=SK, base_url=server.url, retry=FAST_READS)
        )
        # The receiver is bound before the fake exists; now that the fake's URL
        # is known, give the intake its client, and the fake's clock (which signs
        # the deliveries) so that advancing it moves the whole world forward.
        if mode != "real_clock":
            intake.now = lambda: fake.now().timestamp()
        if mode != "no_refetch":
            intake.client = refetcher
        http = stack.enter_context(
            httpx.Client(base_url=server.url, auth=(SK, ""), trust_env=False)
        )
        browser = stack.enter_context(httpx.Client(trust_env=False))
        yield World(
            db=db,
            tracker=tracker,
            receiver_tracker=receiver_tracker,
            intake=intake,
            receiver=receiver,
            fake=fake,
            server=server,
            client=client,
            http=http,
            browser=browser,
        )


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog line, at every level, from every thread."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        with capture_logs() as captured:
            yield captured
    finally:
        structlog.configure(**saved)


# --- 1. the happy path --------------------------------------------------------------------


class TestSuccessfulPayment:
    """Create, approve on the authorize page, charge.complete, re-fetch: successful."""

    @pytest.mark.parametrize("world", ["separate", "shared"], indirect=True)
    def test_successful_payment(self, world: World) -> None:
        """The buyer approves; the receiver verifies, records the hint, re-fetches."""
        world.fake.hold_webhooks()  # charge.create waits for the create response
        created = world.create("order-ok")
        payment = created.payment
        assert payment is not None
        assert (payment.status, created.outcome.value) == (Status.PENDING, "applied")
        assert payment.authorize_uri is not None
        assert payment.authorize_uri.startswith(world.server.url + "/test/authorize/")
        assert payment.charge_id is not None
        assert world.fake.release_webhooks() == [world.event_id(payment.charge_id, "charge.create")]
        world.settle()
        before = world.inbox()[-1].id

        page = world.browser.get(payment.authorize_uri)
        assert page.status_code == 200
        assert 'value="approve"' in page.text
        approved = world.browser.post(payment.authorize_uri, data={"action": "approve"})
        assert approved.status_code == 302
        assert approved.headers["Location"] == RETURN_URI
        world.settle()

        final = world.tracker.get("order-ok")
        assert final.status is Status.SUCCESSFUL
        assert final.charge_id == payment.charge_id
        assert world.tracker.get(payment.charge_id).payment_id == "order-ok"
        complete = world.event_id(payment.charge_id, "charge.complete")
        new = rows_after(world.inbox(), before)
        assert [(r.kind, r.origin, r.outcome, r.external_id, r.verification) for r in new] == [
            ("webhook", "webhook", "applied", complete, "verified"),
            ("charge_snapshot", "refetch", "applied", None, "not_applicable"),
        ]
        assert "pending -> successful" in new[1].reason
        timeline = world.tracker.timeline("order-ok")
        assert inputs(timeline)[0] == ("payment_request", "create_charge", "applied")
        assert inputs(timeline)[-2:] == [
            ("webhook", "webhook", "applied"),
            ("charge_snapshot", "refetch", "applied"),
        ]
        assert inputs(timeline) == [
            ("payment_request", "create_charge", "applied"),
            ("charge_snapshot", "create_response", "applied"),
            ("webhook", "webhook", "applied"),  # charge.create: a hint
            ("charge_snapshot", "refetch", "duplicate"),
            ("webhook", "webhook", "applied"),  # charge.complete: a hint
            ("charge_snapshot", "refetch", "applied"),
        ]
        assert status_path(timeline) == ["pending", "successful"]
        assert event_kinds(timeline).count("webhook.accepted") == 2
        assert [e.verification for e in timeline if e.kind == "webhook"] == ["verified"] * 2
        assert world.fake.charge(payment.charge_id)["status"] == "successful"
        assert all(d.status == 200 for d in world.fake.deliveries())
        assert world.tracker.verify().ok
        assert world.tracker.replay().ok


# --- 2. declined -------------------------------------------------------------------------


class TestFailedPayment:
    """Omise fails the charge: failed, with the failure code."""

    def test_insufficient_fund_through_the_api(self, world: World) -> None:
        """mark_as_failed over HTTP with insufficient_fund: failed, code recorded."""
        charge_id = world.open_payment("order-poor")
        before = world.inbox()[-1].id
        answer = world.http.post(
            f"/charges/{charge_id}/mark_as_failed", json={"failure_code": "insufficient_fund"}
        )
        assert answer.status_code == 200, answer.text
        world.settle()

        final = world.tracker.get("order-poor")
        assert final.status is Status.FAILED
        assert final.failure_code == "insufficient_fund"
        assert final.failure_message is not None
        assert "insufficient" in final.failure_message
        assert "unknown_failure_code" not in final.flags
        new = rows_after(world.inbox(), before)
        assert [(r.kind, r.origin, r.outcome, r.verification) for r in new] == [
            ("webhook", "webhook", "applied", "verified"),
            ("charge_snapshot", "refetch", "applied", "not_applicable"),
        ]
        timeline = world.tracker.timeline("order-poor")
        assert inputs(timeline)[-1] == ("charge_snapshot", "refetch", "applied")
        assert status_path(timeline) == ["pending", "failed"]
        [failed] = [e for e in timeline if e.kind == "charge.failed"]
        assert failed.data["failure_code"] == "insufficient_fund"

    def test_declined_on_the_authorize_page(self, world: World) -> None:
        """The buyer declines with a code on the authorize page: failed with it."""
        charge_id = world.open_payment("order-declined")
        uri = world.tracker.get("order-declined").authorize_uri
        assert uri is not None
        declined = world.browser.post(
            uri, data={"action": "decline", "failure_code": "insufficient_fund"}
        )
        assert declined.status_code == 302
        world.settle()
        final = world.tracker.get("order-declined")
        assert (final.status, final.failure_code) == (Status.FAILED, "insufficient_fund")
        assert world.fake.charge(charge_id)["failure_code"] == "insufficient_fund"


# --- 3. expiry ----------------------------------------------------------------------------


def lifetime_model(world: World) -> None:
    """The fake's ``lifetime`` expiry model: expired at expires_at, 10 minutes after creation."""
    world.fake.set_options(expiry_model="lifetime", charge_lifetime=dt.timedelta(minutes=10))


class TestExpiry:
    """
    The charge outlives expires_at (the fake's ``lifetime`` model, chosen
    explicitly): expired, by webhook or by reconciliation. The default
    bank-timeout model is run in ``test_expiry_models.py``.
    """

    def test_expiry_webhook(self, world: World) -> None:
        """Advancing the fake clock past expires_at sends charge.complete (expired)."""
        lifetime_model(world)
        charge_id = world.open_payment("order-late")
        before = world.inbox()[-1].id
        world.fake.advance_clock(dt.timedelta(minutes=10, seconds=1))
        world.settle()
        assert world.fake.charge(charge_id)["status"] == "expired"

        final = world.tracker.get("order-late")
        assert final.status is Status.EXPIRED
        assert final.failure_code is None
        new = rows_after(world.inbox(), before)
        expiry = world.event_id(charge_id, "charge.complete")
        assert [(r.kind, r.outcome, r.external_id, r.verification) for r in new] == [
            ("webhook", "applied", expiry, "verified"),
            ("charge_snapshot", "applied", None, "not_applicable"),
        ]
        assert "pending -> expired" in new[1].reason
        timeline = world.tracker.timeline("order-late")
        assert inputs(timeline)[-1] == ("charge_snapshot", "refetch", "applied")
        assert status_path(timeline) == ["pending", "expired"]

    def test_dropped_expiry_webhook_settled_by_reconcile(self, world: World) -> None:
        """No webhook ever comes; reconciliation past expires_at re-reads: expired."""
        lifetime_model(world)
        charge_id = world.open_payment("order-silent")
        world.fake.drop_next(1)
        world.fake.advance_clock(dt.timedelta(minutes=10, seconds=1))
        world.settle()
        expiry = world.event_id(charge_id, "charge.complete")
        assert world.fake.deliveries(expiry) == []
        pending = world.tracker.get("order-silent")
        assert pending.status is Status.PENDING
        assert pending.expires_at is not None

        early = world.tracker.reconcile(world.client)
        assert (early.checked, early.changed) == (0, 0)  # not due yet by our clock
        report = world.tracker.reconcile(
            world.client, now=parse_time(pending.expires_at) + dt.timedelta(seconds=1)
        )
        assert (report.checked, report.changed, report.errors) == (1, 1, 0)
        [item] = report.items
        assert (item.payment_id, item.action, item.outcome) == (
            "order-silent",
            "refetched",
            "applied",
        )
        assert (item.from_status, item.to_status) == ("pending", "expired")
        assert world.tracker.get("order-silent").status is Status.EXPIRED
        timeline = world.tracker.timeline("order-silent")
        assert inputs(timeline)[-1] == ("charge_snapshot", "poll", "applied")
        assert status_path(timeline) == ["pending", "expired"]
        assert not [e for e in timeline if e.external_id == expiry]

    @pytest.mark.parametrize("world", ["real_clock"], indirect=True)
    def test_receiver_on_the_real_clock_takes_a_signed_future_delivery_as_a_hint(
        self, world: World
    ) -> None:
        """Signed on the fake's advanced clock: genuine but outside the tolerance, so a
        hint (verified_stale) whose re-fetch settles the payment at once."""
        lifetime_model(world)
        charge_id = world.open_payment("order-future")
        world.fake.advance_clock(dt.timedelta(minutes=10, seconds=1))
        world.settle()
        expiry = world.event_id(charge_id, "charge.complete")
        attempts = world.fake.deliveries(expiry)
        assert [d.status for d in attempts] == [200]
        [row] = webhook_rows(world, expiry)
        assert (row.outcome, row.verification) == ("applied", "verified_stale")
        assert world.tracker.get("order-future").status is Status.EXPIRED
        timeline = world.tracker.timeline("order-future")
        assert inputs(timeline)[-1] == ("charge_snapshot", "refetch", "applied")
        assert status_path(timeline) == ["pending", "expired"]
        assert world.tracker.unresolved_hints() == []


# --- 4. duplicates -----------------------------------------------------------------------


class TestDuplicatedWebhooks:
    """The same event delivered three times: applied once, re-fetched once."""

    def test_three_copies(self, world: World) -> None:
        """One applied, two duplicates, one re-fetch."""
        charge_id = world.open_payment("order-echo")
        before = world.inbox()[-1].id
        world.fake.duplicate_next(times=3)
        world.fake.mark_as_paid(charge_id)
        world.settle()

        complete = world.event_id(charge_id, "charge.complete")
        deliveries = world.fake.deliveries(complete)
        assert [(d.copy, d.status) for d in deliveries] == [(1, 200), (2, 200), (3, 200)]
        new = rows_after(world.inbox(), before)
        assert [(r.kind, r.origin, r.outcome, r.external_id) for r in new] == [
            ("webhook", "webhook", "applied", complete),
            ("charge_snapshot", "refetch", "applied", None),
            ("webhook", "webhook", "duplicate", complete),
            ("webhook", "webhook", "duplicate", complete),
        ]
        assert world.tracker.get("order-echo").status is Status.SUCCESSFUL
        timeline = world.tracker.timeline("order-echo")
        assert [i[2] for i in inputs(timeline) if i[0] == "webhook"][-3:] == [
            "applied",
            "duplicate",
            "duplicate",
        ]
        assert status_path(timeline) == ["pending", "successful"]


# --- 5. reordered ------------------------------------------------------------------------


class TestReorderedWebhooks:
    """charge.complete delivered before charge.create: the state never regresses."""

    def test_reversed_with_refetch(self, world: World) -> None:
        """Re-fetching receiver: the late charge.create is a hint, its re-fetch a duplicate."""
        world.fake.hold_webhooks()
        created = world.create("order-swap")
        charge_id = created.payment.charge_id if created.payment else None
        assert charge_id is not None
        world.fake.mark_as_paid(charge_id)
        create_event = world.event_id(charge_id, "charge.create")
        complete_event = world.event_id(charge_id, "charge.complete")
        assert world.fake.release_webhooks("reversed") == [complete_event, create_event]
        world.settle()

        assert world.tracker.get("order-swap").status is Status.SUCCESSFUL
        [complete_row] = webhook_rows(world, complete_event)
        [create_row] = webhook_rows(world, create_event)
        assert complete_row.id < create_row.id
        assert complete_row.outcome == "applied"
        assert create_row.outcome == "applied"
        assert "claims pending" in create_row.reason
        after_create = rows_after(world.inbox(), create_row.id)
        assert [(r.kind, r.origin, r.outcome) for r in after_create] == [
            ("charge_snapshot", "refetch", "duplicate")
        ]
        timeline = world.tracker.timeline("order-swap")
        assert status_path(timeline) == ["pending", "successful"]
        assert inputs(timeline)[1:] == [
            ("charge_snapshot", "create_response", "applied"),
            ("webhook", "webhook", "applied"),
            ("charge_snapshot", "refetch", "applied"),
            ("webhook", "webhook", "applied"),
            ("charge_snapshot", "refetch", "duplicate"),
        ]

    @pytest.mark.parametrize("world", ["no_refetch"], indirect=True)
    def test_reversed_without_refetch(self, world: World) -> None:
        """Payloads applied as snapshots: the late charge.create is stale."""
        world.fake.hold_webhooks()
        created = world.create("order-swap2")
        charge_id = created.payment.charge_id if created.payment else None
        assert charge_id is not None
        world.fake.mark_as_paid(charge_id)
        create_event = world.event_id(charge_id, "charge.create")
        complete_event = world.event_id(charge_id, "charge.complete")
        world.fake.release_webhooks("reversed")
        world.settle()

        assert world.tracker.get("order-swap2").status is Status.SUCCESSFUL
        [complete_row] = webhook_rows(world, complete_event)
        [create_row] = webhook_rows(world, create_event)
        assert complete_row.id < create_row.id
        assert (complete_row.outcome, create_row.outcome) == ("applied", "stale")
        assert "pending is older news than successful" in create_row.reason
        timeline = world.tracker.timeline("order-swap2")
        assert status_path(timeline) == ["pending", "successful"]
        assert inputs(timeline)[-2:] == [
            ("webhook", "webhook", "applied"),
            ("webhook", "webhook", "stale"),
        ]
        assert not [r for r in world.inbox() if r.origin == "refetch"]


# --- 6. forged webhooks -----------------------------------------------------------------


class TestForgedWebhooks:
    """Deliveries failing the signature check: 401/400, recorded as rejected, no change."""

    def _claim(self, world: World, charge_id: str, event_id: str) -> bytes:
        charge = {**world.fake.charge(charge_id), "status": "successful", "paid": True}
        event = {
            "object": "event",
            "id": event_id,
            "livemode": False,
            "location": f"/events/{event_id}",
            "key": "charge.complete",
            "created_at": world.fake.charge(charge_id)["created_at"],
            "data": charge,
        }
        return json.dumps(event).encode()

    def test_wrong_secret_tampered_body_and_stale_timestamp(self, world: World) -> None:
        """Each refusal keeps its reason; the payment stays pending."""
        charge_id = world.open_payment("order-forged")
        before = world.inbox()[-1].id
        body = self._claim(world, charge_id, "evnt_test_forged0000000000001")
        wrong = world.post_webhook(body, signature_headers(body, [OTHER_SECRET], world.now()))
        genuine = signature_headers(body, [WEBHOOK_SECRET], world.now())
        tampered_body = body.replace(b'"amount": 35000', b'"amount": 3500')
        assert tampered_body != body
        tampered = world.post_webhook(tampered_body, genuine)
        stale = world.post_webhook(
            body, signature_headers(body, [WEBHOOK_SECRET], world.now() - 3600)
        )
        assert (wrong.status_code, tampered.status_code, stale.status_code) == (401, 401, 200)
        for answer in (wrong, tampered):
            assert answer.json()["outcome"] == "rejected"
            assert answer.json()["inbox_id"] is not None
        # Genuine but an hour old: only ever a hint, and the charge is read from the API.
        assert stale.json()["outcome"] == "applied"

        new = rows_after(world.inbox(), before)
        forged_id = "evnt_test_forged0000000000001"
        claimed = ("webhook", "rejected", "order-forged", charge_id, forged_id)
        rows = [(r.kind, r.outcome, r.payment_id, r.charge_id, r.external_id) for r in new]
        assert rows[:2] == [claimed] * 2
        assert rows[2] == ("webhook", "applied", "order-forged", charge_id, forged_id)
        assert rows[3][:2] == ("charge_snapshot", "duplicate")  # the re-fetch: still pending
        assert [r.id for r in new[:3]] == [a.json()["inbox_id"] for a in (wrong, tampered, stale)]
        assert new[0].reason == "signature refused: no signature matches the webhook secret"
        assert new[1].reason == "signature refused: no signature matches the webhook secret"
        assert [r.verification for r in new[:3]] == [
            "failed: no signature matches the webhook secret",
            "failed: no signature matches the webhook secret",
            "verified_stale",
        ]
        assert new[1].raw() == tampered_body.decode()  # the bytes as received
        assert world.tracker.get("order-forged").status is Status.PENDING
        timeline = world.tracker.timeline("order-forged")
        assert inputs(timeline)[-4:-2] == [("webhook", "webhook", "rejected")] * 2
        refused = {e.inbox_id for e in timeline if e.type == "input"} & {r.id for r in new[:2]}
        assert refused == {r.id for r in new[:2]}
        assert not [e for e in timeline if e.type == "event" and e.inbox_id in refused]
        assert status_path(timeline) == ["pending"]
        assert world.fake.charge(charge_id)["status"] == "pending"

    def test_credentials_in_forged_headers_are_not_stored(self, world: World) -> None:
        """An Authorization or Cookie header on a delivery never reaches the log."""
        charge_id = world.open_payment("order-nosy")
        body = self._claim(world, charge_id, "evnt_test_forged0000000000002")
        headers = {
            **signature_headers(body, [OTHER_SECRET], world.now()),
            "Authorization": f"Basic {BASIC}",
            "Cookie": f"session={SK}",
        }
        assert world.post_webhook(body, headers).status_code == 401
        row = world.inbox()[-1]
        assert row.headers is not None
        stored = json.loads(row.headers)
        assert "omise-signature" in stored
        assert "authorization" not in stored
        assert "cookie" not in stored


# --- 7. a create with an unknown outcome -------------------------------------------------


class TestCreateTimeout:
    """POST /charges commits but no answer arrives: never a second charge."""

    def test_dropped_answer_settled_by_search(self, world: World) -> None:
        """commit_then_drop: create_unknown, then the search finds the charge at once."""
        world.fake.drop_next(1)  # the charge.create webhook: only the search may settle it
        world.fake.inject_fault("POST /charges", "commit_then_drop")
        result = world.create("order-lost")
        assert (result.outcome.value, result.status) == ("applied", Status.PENDING)
        assert result.input_kind == "charge_snapshot"
        payment = world.tracker.get("order-lost")
        assert payment.create_unknown is False
        [charge] = world.charges_for("order-lost")
        assert payment.charge_id == charge["id"]
        assert inputs(world.tracker.timeline("order-lost")) == [
            ("payment_request", "create_charge", "applied"),
            ("create_unknown", "create_response", "unknown"),
            ("charge_snapshot", "poll", "applied"),
        ]
        again = world.create("order-lost")
        assert (again.outcome.value, again.status) == ("duplicate", Status.PENDING)
        world.settle()
        assert len(world.charges_for("order-lost")) == 1
        assert len(world.fake.charges()) == 1

    def test_timeout_and_failed_search_settled_by_reconcile(
        self, world: World, logs: list[MutableMapping[str, Any]]
    ) -> None:
        """commit_then_timeout, the search fails too: reconciliation settles it."""
        world.fake.drop_next(1)
        world.fake.inject_fault("POST /charges", "commit_then_timeout", delay=2.0)
        world.fake.inject_fault("GET /search", "error", status=503, times=FAST_READS.attempts)
        world.fake.inject_fault("GET /charges", "error", status=503, times=FAST_READS.attempts)
        with OmiseClient(
            secret_key=SK,
            base_url=world.server.url,
            retry=FAST_READS,
            create_timeout=httpx.Timeout(5.0, read=0.3),
        ) as impatient:
            result = world.tracker.create_charge(
                impatient, payment_id="order-limbo", amount=AMOUNT, return_uri=RETURN_URI
            )
        assert (result.outcome.value, result.status) == ("unknown", Status.CREATED)
        [unknown] = result.events
        assert unknown.kind == "charge.create_unknown"
        assert "read timeout" in unknown.data["reason"]
        payment = world.tracker.get("order-limbo")
        assert (payment.status, payment.create_unknown, payment.charge_id) == (
            Status.CREATED,
            True,
            None,
        )
        assert [e["event"] for e in logs if e["event"] == "search_failed"] == ["search_failed"]
        assert len(world.charges_for("order-limbo")) == 1  # the create did commit

        report = world.tracker.reconcile(world.client)
        assert (report.checked, report.changed, report.errors) == (1, 1, 0)
        [item] = report.items
        assert (item.action, item.from_status, item.to_status) == ("found", "created", "pending")
        settled = world.tracker.get("order-limbo")
        assert (settled.status, settled.create_unknown) == (Status.PENDING, False)
        [charge] = world.charges_for("order-limbo")
        assert settled.charge_id == charge["id"]
        assert inputs(world.tracker.timeline("order-limbo")) == [
            ("payment_request", "create_charge", "applied"),
            ("create_unknown", "create_response", "unknown"),
            ("charge_snapshot", "poll", "applied"),
        ]
        again = world.create("order-limbo", platform_type=None)
        assert again.status is Status.PENDING
        world.settle()
        assert len(world.fake.charges()) == 1


# --- 8. a lying webhook ---------------------------------------------------------------------


class TestSignedButWrongWebhook:
    """A validly signed payload claiming successful while the API says pending."""

    def test_state_follows_the_refetch(self, world: World) -> None:
        """The hint is recorded; the re-fetch (pending) wins; the payment stays pending."""
        charge_id = world.open_payment("order-lie")
        before = world.inbox()[-1].id
        charge = {**world.fake.charge(charge_id), "status": "successful", "paid": True}
        event = {
            "object": "event",
            "id": "evnt_test_liar00000000000001",
            "livemode": False,
            "key": "charge.complete",
            "created_at": charge["created_at"],
            "data": charge,
        }
        body = json.dumps(event).encode()
        answer = world.post_webhook(body, signature_headers(body, [WEBHOOK_SECRET], world.now()))
        assert answer.status_code == 200
        assert answer.json()["outcome"] == "applied"

        assert world.tracker.get("order-lie").status is Status.PENDING
        assert world.fake.charge(charge_id)["status"] == "pending"
        new = rows_after(world.inbox(), before)
        assert [(r.kind, r.origin, r.outcome, r.verification) for r in new] == [
            ("webhook", "webhook", "applied", "verified"),
            ("charge_snapshot", "refetch", "duplicate", "not_applicable"),
        ]
        assert "claims successful" in new[0].reason
        timeline = world.tracker.timeline("order-lie")
        assert inputs(timeline)[-2:] == [
            ("webhook", "webhook", "applied"),
            ("charge_snapshot", "refetch", "duplicate"),
        ]
        assert status_path(timeline) == ["pending"]


# --- 9. the official omise client ---------------------------------------------------------


class TestOfficialOmiseClient:
    """Existing omise-python code works against the fake and feeds the tracker."""

    def test_omise_python_create_then_webhooks(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """omise.Charge.create with an inline source; record_charge; approve; successful."""
        monkeypatch.setattr(omise, "api_main", world.server.url)
        monkeypatch.setattr(omise, "api_vault", world.server.url)
        monkeypatch.setattr(omise, "api_secret", SK)
        monkeypatch.setattr(omise, "api_public", PK)
        monkeypatch.setattr(omise, "api_version", "2019-05-29")
        requested = world.tracker.request_payment(
            payment_id="order-py", amount=AMOUNT, return_uri=RETURN_URI
        )
        assert requested.status is Status.CREATED
        charge = omise.Charge.create(
            amount=AMOUNT,
            currency="thb",
            source={"type": "mobile_banking_kbank"},
            return_uri=RETURN_URI,
            metadata={"payment_id": "order-py"},
        )
        assert (charge.status, charge.source.type) == ("pending", "mobile_banking_kbank")
        raw = charge._attributes
        assert isinstance(raw, dict)
        recorded = world.tracker.record_charge(raw, origin="create_response")
        assert recorded.status is Status.PENDING
        assert recorded.outcome.value in ("applied", "duplicate")  # the webhook may come first
        world.settle()
        payment = world.tracker.get("order-py")
        assert (payment.charge_id, payment.authorize_uri) == (charge.id, charge.authorize_uri)

        approved = world.browser.post(charge.authorize_uri, data={"action": "approve"})
        assert approved.status_code == 302
        world.settle()
        assert world.tracker.get("order-py").status is Status.SUCCESSFUL
        assert omise.Charge.retrieve(charge.id).status == "successful"
        timeline = world.tracker.timeline("order-py")
        assert inputs(timeline)[-2:] == [
            ("webhook", "webhook", "applied"),
            ("charge_snapshot", "refetch", "applied"),
        ]
        assert status_path(timeline) == ["pending", "successful"]
        assert len(world.charges_for("order-py")) == 1


# --- 10. the guide's curl requests ---------------------------------------------------------


class TestCurlRequests:
    """The seed's curl requests (form data, bracket keys) are accepted by the fake."""

    def test_one_call_form_request(self, world: World) -> None:
        """source[type]=mobile_banking_kbank, amount, currency=THB, return_uri as form data."""
        world.tracker.request_payment(payment_id="order-curl", amount=AMOUNT, return_uri=RETURN_URI)
        answer = httpx.post(
            world.server.url + "/charges",
            auth=(SK, ""),
            data={
                "amount": str(AMOUNT),
                "currency": "THB",
                "return_uri": RETURN_URI,
                "source[type]": "mobile_banking_kbank",
                "metadata[payment_id]": "order-curl",
            },
            trust_env=False,
        )
        assert answer.status_code == 200, answer.text
        charge = answer.json()
        assert (charge["object"], charge["status"], charge["amount"]) == (
            "charge",
            "pending",
            AMOUNT,
        )
        assert charge["source"]["type"] == "mobile_banking_kbank"
        assert charge["metadata"] == {"payment_id": "order-curl"}
        recorded = world.tracker.record_charge(answer.content, origin="create_response")
        assert recorded.status is Status.PENDING
        world.settle()
        world.fake.mark_as_paid(charge["id"])
        world.settle()
        assert world.tracker.get("order-curl").status is Status.SUCCESSFUL
        assert status_path(world.tracker.timeline("order-curl")) == ["pending", "successful"]

    def test_source_then_charge(self, world: World) -> None:
        """POST /sources with the public key, then POST /charges with source=<id>."""
        source = httpx.post(
            world.server.url + "/sources",
            auth=(PK, ""),
            data={"type": "mobile_banking_kbank", "amount": str(AMOUNT), "currency": "THB"},
            trust_env=False,
        )
        assert source.status_code == 200, source.text
        assert source.json()["charge_status"] == "unknown"
        charge = world.http.post(
            "/charges",
            data={
                "amount": str(AMOUNT),
                "currency": "THB",
                "return_uri": RETURN_URI,
                "source": source.json()["id"],
            },
        )
        assert charge.status_code == 200, charge.text
        assert charge.json()["source"]["id"] == source.json()["id"]
        refused = world.http.post("/charges", data={"amount": "10", "currency": "THB"})
        assert refused.status_code == 400
        assert refused.json()["code"] == "invalid_amount"
        world.settle()  # a charge the tracker never requested: its webhook is refused
        [row] = world.inbox()
        assert (row.kind, row.outcome, row.reason) == ("webhook", "rejected", "no such payment")
        assert row.charge_id == charge.json()["id"]


# --- the fake's clock control ----------------------------------------------------------------


class SweepTurnClock:
    """
    A FakeClock whose ``advance`` gives the fake's background sweeper (the
    ``fake-omise-webhooks`` thread, which reads the clock when it sweeps) its
    turn before returning: the interleaving that happens by chance otherwise.
    """

    def __init__(self) -> None:
        self._clock = FakeClock()
        self._read = threading.Event()
        self._watching = False

    def __call__(self) -> dt.datetime:
        if self._watching and threading.current_thread().name == "fake-omise-webhooks":
            self._read.set()
        return self._clock()

    def advance(self, delta: dt.timedelta) -> None:
        self._clock.advance(delta)
        self._read.clear()
        self._watching = True
        self._read.wait(1.0)  # the sweeper reads the new time (unless it is locked out)
        self._watching = False


class TestClockControl:
    """``POST /_fake/clock/advance`` reports the charges it ended."""

    def test_advance_reports_the_expired_charge(self) -> None:
        """The charge the advance ended is listed, even if the sweeper got there first."""
        fake = FakeOmise(secret_key=SK, public_key=PK, clock=SweepTurnClock(), sweep_interval=0.01)
        try:
            with (
                start_server(fake, host="127.0.0.1", port=0) as server,
                httpx.Client(base_url=server.url, auth=(SK, ""), trust_env=False) as http,
            ):
                charge = http.post(
                    "/charges",
                    data={
                        "amount": str(AMOUNT),
                        "currency": "THB",
                        "return_uri": RETURN_URI,
                        "source[type]": "mobile_banking_kbank",
                    },
                ).json()
                advanced = http.post("/_fake/clock/advance", json={"seconds": 601}).json()
                ended = http.get(f"/charges/{charge['id']}").json()
                # The default expiry model: the bank timed out after ten minutes.
                assert (ended["status"], ended["failure_code"]) == ("failed", "payment_expired")
                assert advanced["expired"] == [charge["id"]]
        finally:
            fake.close()


# --- secrets ------------------------------------------------------------------------------


class TestSecretsNeverStored:
    """No key, webhook secret or Authorization value in the log file or the log lines."""

    def test_after_the_scenarios(self, world: World, logs: list[MutableMapping[str, Any]]) -> None:
        """Success, failure, forgery, a timeout: then grep the files and the log lines."""
        paid = world.open_payment("order-s1")
        world.fake.mark_as_paid(paid)
        failed = world.open_payment("order-s2")
        world.fake.mark_as_failed(failed, "insufficient_fund")
        world.settle()
        body = json.dumps({"object": "event", "id": "evnt_test_x", "key": "charge.complete"})
        forged_headers = {
            **signature_headers(body.encode(), [OTHER_SECRET], world.now()),
            "Authorization": f"Basic {BASIC}",
        }
        assert world.post_webhook(body.encode(), forged_headers).status_code == 401
        world.fake.drop_next(1)
        world.fake.inject_fault("POST /charges", "commit_then_drop")
        assert world.create("order-s3").status is Status.PENDING
        world.fake.inject_fault("GET /charges/:id", "error", status=500, times=3)
        world.tracker.reconcile(world.client, now=world.fake.now() + dt.timedelta(hours=1))
        assert world.tracker.get("order-s1").status is Status.SUCCESSFUL
        assert world.tracker.get("order-s2").status is Status.FAILED

        stored = world.db.read_bytes()
        wal = world.db.with_name(world.db.name + "-wal")
        if wal.exists():
            stored += wal.read_bytes()
        assert b"order-s1" in stored  # the grep does see the log's contents
        lines = [repr(dict(e)) for e in logs]
        assert any("omise_request" in line for line in lines)
        assert any("input_recorded" in line for line in lines)
        assert any("webhook_refused" in line for line in lines)
        text = "\n".join(lines)
        for secret in (SK, PK, WEBHOOK_SECRET, BASIC):
            assert secret.encode() not in stored, secret
            assert secret not in text, secret
        assert base64.b64decode(WEBHOOK_SECRET) not in stored
