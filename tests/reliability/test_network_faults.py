"""
Network faults: the fake Omise on loopback misbehaves, the real ``OmiseClient``
(short timeouts, fast retries) and the tracker cope.

Faults on the create (``POST /charges``): HTTP 500/503/429 (with and without
``Retry-After``), an HTML 502 page, truncated JSON, answers slower than the read
timeout (and slow ones within it), a 500 / a connection reset / a hang after the
charge was made, a refused connection, and a definite 400; each with the
settling search working or failing too. Faults on the re-fetch (``GET
/charges/:id`` after a webhook) and on reconciliation's reads, once (retried
away) or past every retry.

After every step: no false state (the tracker never claims a status the fake's
charge does not have, never a charge the fake does not hold, and a payment whose
charge exists but is unknown to the tracker is flagged ``create_unknown``), and
never two charges for one payment. At the end of each scenario, reconciliation
(and a retried create, for creates that never reached Omise) settles everything:
the tracker's state equals the fake's.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from reliability_support import Stopwatch, figure, quiet_structlog

from kplus_fsm import Payment, Result, Status, Tracker, charge_params
from kplus_fsm.adapters.fake import FakeOmise, start_server
from kplus_fsm.adapters.fake import RetryPolicy as DeliveryRetry
from kplus_fsm.adapters.omise import OmiseClient, RetryPolicy
from kplus_fsm.adapters.webhooks import WebhookIntake, serve
from kplus_fsm.exceptions import GatewayError
from kplus_fsm.testing import FakeClock

pytestmark = pytest.mark.slow

SK = "skey_test_netfaults0000000000001"
PK = "pkey_test_netfaults0000000000001"
SECRET = base64.b64encode(b"network-faults-webhook-secret-01").decode()
AMOUNT = 35_000
#: Reads and creates give up after 0.8 s without an answer (a loaded CI machine
#: answers a loopback request within a few hundredths of that).
TIMEOUT = httpx.Timeout(2.0, read=0.8)
SLOW_BUT_IN_TIME = 0.2
FAST_READS = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, max_retry_after=0.5)
#: Every fault and step the scenarios went through, for the report.
TALLY: Counter[str] = Counter()


@attrs.define
class World:
    tracker: Tracker
    fake: FakeOmise
    client: OmiseClient
    api_url: str

    def create(self, pid: str, client: OmiseClient | None = None) -> Result:
        TALLY["create calls"] += 1
        return self.tracker.create_charge(
            client or self.client,
            payment_id=pid,
            amount=AMOUNT,
            return_uri="https://shop.example/r",
            platform_type="IOS",
        )

    def settle(self) -> None:
        self.fake.flush(15)

    def charges_for(self, pid: str) -> list[dict[str, Any]]:
        return [c for c in self.fake.charges() if c["metadata"].get("payment_id") == pid]

    def fault(self, route: str, kind: Any, **params: Any) -> None:
        TALLY[f"fault {route} {kind} {params.get('status', '')}".rstrip()] += params.get("times", 1)
        self.fake.inject_fault(route, kind, **params)

    def truthful(self, pid: str) -> Payment:
        """No false state: what the tracker says of ``pid`` is, or was, true at the fake."""
        payment = self.tracker.get(pid)
        charges = self.charges_for(pid)
        assert len(charges) <= 1, f"{pid}: {len(charges)} charges for one payment"
        truth = charges[0] if charges else None
        if payment.charge_id is not None:
            assert truth is not None, payment
            assert truth["id"] == payment.charge_id, (payment, truth)
        if payment.status is Status.CREATED:
            if truth is not None:
                assert payment.create_unknown, f"{pid}: a charge exists, the tracker is sure not"
        elif payment.status is Status.PENDING:
            assert truth is not None
        elif payment.charge_id is None:  # failed by a refused create
            assert (payment.status, truth) == (Status.FAILED, None), (payment, truth)
        else:
            assert truth is not None, payment
            assert payment.status.value == truth["status"], (payment, truth)
        return payment

    def settle_dead_create(self, pid: str) -> Payment:
        """Past the grace period, two looks a minute apart settle a create never made."""
        real = self.tracker.clock
        later = FakeClock(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=16))
        self.tracker.clock = later
        try:
            self.tracker.refresh(self.client, pid)
            later.advance(seconds=61)
            self.tracker.refresh(self.client, pid)
        finally:
            self.tracker.clock = real
        return self.truthful(pid)

    def reconcile_until_settled(self, pid: str) -> Payment:
        """Reconcile (faults cleared) until the tracker agrees with the fake."""
        for _ in range(5):
            self.settle()
            payment = self.truthful(pid)
            charges = self.charges_for(pid)
            truth = charges[0]["status"] if charges else None
            if payment.status.value == truth and not payment.create_unknown:
                return payment
            TALLY["reconciliations"] += 1
            # Settle this payment now, whatever the reconciliation queue's backoff says.
            with contextlib.suppress(GatewayError):
                self.tracker.refresh(self.client, pid)
        raise AssertionError(f"{pid} never settled: {self.tracker.get(pid)}")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    db = tmp_path / "net.db"
    with contextlib.ExitStack() as stack:
        stack.enter_context(quiet_structlog())
        receiver_tracker = stack.enter_context(Tracker(db))
        intake = WebhookIntake(receiver_tracker, secrets=[SECRET])
        receiver = stack.enter_context(serve(intake, "127.0.0.1", 0).start())
        fake = FakeOmise(
            secret_key=SK,
            public_key=PK,
            webhook_url=receiver.url + "/webhooks/omise",
            webhook_secrets=[SECRET],
            retry=DeliveryRetry(max_attempts=3, backoff=0.05, max_backoff=0.2),
            # No expiry within a scenario (which moves the clock 16 minutes on):
            # no bank timeout, a day-long lifetime.
            expiry_model="lifetime",
            charge_lifetime=dt.timedelta(days=1),
            sweep_interval=0.05,
        )
        stack.callback(fake.close)
        server = stack.enter_context(start_server(fake))

        def client() -> OmiseClient:
            return stack.enter_context(
                OmiseClient(
                    secret_key=SK,
                    base_url=server.url,
                    timeout=TIMEOUT,
                    create_timeout=TIMEOUT,
                    retry=FAST_READS,
                )
            )

        intake.client = client()
        intake.now = lambda: fake.now().timestamp()
        tracker = stack.enter_context(Tracker(db, clock=fake.now))
        receiver_tracker.clock = fake.now
        yield World(tracker=tracker, fake=fake, client=client(), api_url=server.url)
        fake.flush(15)
        assert tracker.verify().ok
        assert tracker.replay().ok


#: (name, fault on POST /charges, whether the charge is made before the fault bites)
CREATE_FAULTS: list[tuple[str, dict[str, Any], bool | None]] = [
    ("500", {"kind": "error", "status": 500}, False),
    ("503", {"kind": "error", "status": 503}, False),
    ("429", {"kind": "error", "status": 429}, False),
    ("429 Retry-After", {"kind": "error", "status": 429, "retry_after": 30}, False),
    ("HTML 502 page", {"kind": "html", "status": 502}, False),
    ("truncated JSON", {"kind": "truncated"}, True),
    ("slower than the timeout", {"kind": "slow", "delay": 1.6}, True),
    ("slow, within the timeout", {"kind": "slow", "delay": SLOW_BUT_IN_TIME}, True),
    ("500 after the commit", {"kind": "commit_then_error", "status": 500}, True),
    ("503 after the commit", {"kind": "commit_then_error", "status": 503}, True),
    ("reset after the commit", {"kind": "commit_then_drop"}, True),
    ("hang after the commit", {"kind": "commit_then_timeout", "delay": 1.6}, True),
    ("400 refused", {"kind": "error", "status": 400, "code": "invalid_charge"}, None),
]


#: How Omise's search may mislead (issue 13): it fails, it does not index
#: metadata, or its index lags behind new charges. The look also lists charges by
#: creation time, so none of them may ever lead to a second charge.
SEARCH_MODES = ["search ok", "search fails", "metadata not indexed", "index lag 30 s"]


@pytest.mark.parametrize("search", SEARCH_MODES)
@pytest.mark.parametrize(
    ("fault", "made"), [(f, m) for _, f, m in CREATE_FAULTS], ids=[n for n, _, _ in CREATE_FAULTS]
)
def test_faults_on_create(
    world: World, fault: dict[str, Any], made: bool | None, search: str
) -> None:
    """One fault on the create; the outcome is never guessed; reconciliation settles it."""
    pid = "net-create"
    world.fake.hold_webhooks()  # the charge.create webhook must not settle it for us
    params = dict(fault)
    world.fault("POST /charges", params.pop("kind"), **params)
    if search == "search fails":
        world.fault("GET /search", "error", status=503, times=3)
    elif search == "metadata not indexed":
        world.fake.set_options(search_metadata=False)
    elif search == "index lag 30 s":
        world.fake.set_options(search_lag=30.0)
    TALLY[f"creates with {search}"] += 1
    first = world.create(pid)
    payment = world.truthful(pid)
    charges = world.charges_for(pid)
    assert len(charges) == (1 if made or fault.get("delay") == SLOW_BUT_IN_TIME else 0)

    if made is None:  # a definite refusal: failed, with Omise's code, and no charge
        assert (payment.status, payment.failure_code) == (Status.FAILED, "invalid_charge")
        assert charges == []
        TALLY["refused creates"] += 1
        return
    answered = fault.get("delay") == SLOW_BUT_IN_TIME
    if answered:
        assert (payment.status, payment.create_unknown) == (Status.PENDING, False)
    elif made:  # the look (a search, and a listing by creation time) settled it at once
        assert payment.status is Status.PENDING
        assert not payment.create_unknown
        TALLY["unknown creates settled by the immediate look"] += 1
    else:
        assert (payment.status, payment.create_unknown) == (Status.CREATED, True), first.reason
        TALLY["unknown creates left for reconciliation"] += 1

    # The merchant retries at once: never a second charge (it looks, it never posts again).
    world.create(pid)
    world.truthful(pid)
    assert len(world.charges_for(pid)) == len(charges)

    # Reconciliation settles what the first look could not.
    world.fake.release_webhooks()
    if made or answered:
        settled = world.reconcile_until_settled(pid)
        assert settled.status is Status.PENDING
    else:
        world.settle()
        world.tracker.reconcile(world.client, pending_threshold=dt.timedelta(0))
        still = world.truthful(pid)
        assert (still.status, still.create_unknown) == (Status.CREATED, True)
        assert world.charges_for(pid) == []
        # No charge exists, the grace period is over and two looks agree: settled as
        # never created; the order is paid by a new attempt, never a second charge here.
        dead = world.settle_dead_create(pid)
        assert (dead.status, dead.failure_code) == (Status.FAILED, "not_created")
        pid = f"{pid}.2"
        retried = world.create(pid)
        assert retried.status is Status.PENDING, retried.reason
        TALLY["creates settled as never made, paid by a new attempt"] += 1

    # The buyer pays; the webhook's re-fetch settles it.
    [charge] = world.charges_for(pid)
    world.fake.mark_as_paid(charge["id"])
    final = world.reconcile_until_settled(pid)
    assert final.status is Status.SUCCESSFUL
    assert len(world.charges_for(pid)) == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_refused_on_create(world: World) -> None:
    """Nothing listens: an unknown outcome, no charge, settled, then one charge."""
    with OmiseClient(
        secret_key=SK,
        base_url=f"http://127.0.0.1:{_closed_port()}",
        timeout=TIMEOUT,
        create_timeout=TIMEOUT,
        retry=FAST_READS,
    ) as dead:
        first = world.create("net-refused", client=dead)
        assert (first.status, first.payment and first.payment.create_unknown) == (
            Status.CREATED,
            True,
        )
        world.create("net-refused", client=dead)  # retried at once: deferred, no request
        report = world.tracker.reconcile(dead, pending_threshold=dt.timedelta(0))
        assert report.errors == 1
    TALLY["connection refused (create, search, reconcile)"] += 3
    world.truthful("net-refused")
    assert world.charges_for("net-refused") == []
    world.tracker.reconcile(world.client, pending_threshold=dt.timedelta(0))
    # No charge was ever made: past the grace period, two looks a minute apart settle
    # the create as never made, and the order is paid by a new attempt.
    settled = world.settle_dead_create("net-refused")
    assert (settled.status, settled.failure_code) == (Status.FAILED, "not_created")
    assert world.create("net-refused.2").status is Status.PENDING
    assert world.charges_for("net-refused") == []
    assert len(world.charges_for("net-refused.2")) == 1
    world.reconcile_until_settled("net-refused.2")


def test_retry_after_a_crash_with_the_search_down_makes_no_second_charge(world: World) -> None:
    """
    The process died after its POST (the charge exists, nothing recorded it). Long
    after, the merchant retries while the search and the listing fail: the retry
    must not create a second charge (it did before the fix: a failed search counted
    as "no charge found"); reconciliation then finds the one charge.
    """
    pid = "net-crashed"
    requested = world.tracker.request_payment(
        payment_id=pid, amount=AMOUNT, return_uri="https://shop.example/r", platform_type="IOS"
    )
    assert requested.payment is not None
    world.fake.hold_webhooks()  # its charge.create webhook is late: it cannot settle it
    world.client.create_charge(charge_params(requested.payment.request()))  # then: the crash
    world.fake.advance_clock(dt.timedelta(minutes=16))
    world.settle()
    assert len(world.charges_for(pid)) == 1
    world.fault("GET /search", "error", status=503, times=3)
    world.fault("GET /charges", "error", status=503, times=3)  # the listing is down too
    retried = world.create(pid)
    assert len(world.charges_for(pid)) == 1, "a second charge for one payment"
    assert retried.status is Status.CREATED
    TALLY["retries after a crash, search down: deferred"] += 1
    world.fake.clear_faults()
    world.fake.release_webhooks()
    assert world.reconcile_until_settled(pid).status is Status.PENDING
    assert len(world.charges_for(pid)) == 1


READ_FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("500", {"kind": "error", "status": 500}),
    ("503", {"kind": "error", "status": 503}),
    ("429", {"kind": "error", "status": 429}),
    ("429 Retry-After too long", {"kind": "error", "status": 429, "retry_after": 30}),
    ("HTML 502 page", {"kind": "html", "status": 502}),
    ("truncated JSON", {"kind": "truncated"}),
    ("slower than the timeout", {"kind": "slow", "delay": 1.6}),
    ("reset", {"kind": "commit_then_drop"}),
    ("hang", {"kind": "commit_then_timeout", "delay": 1.6}),
]


@pytest.mark.parametrize("times", [1, 3], ids=["once (retried)", "past every retry"])
@pytest.mark.parametrize("fault", [f for _, f in READ_FAULTS], ids=[n for n, _ in READ_FAULTS])
def test_faults_on_refetch_and_reconcile(world: World, fault: dict[str, Any], times: int) -> None:
    """The webhook's re-fetch and then reconciliation's read fail: no false state."""
    pid = "net-read"
    assert world.create(pid).status is Status.PENDING
    world.settle()
    [charge] = world.charges_for(pid)
    params = dict(fault)
    kind = params.pop("kind")

    # The completion webhook arrives; its re-fetch meets the fault.
    world.fault("GET /charges/:id", kind, times=times, **params)
    world.fake.mark_as_paid(charge["id"])
    world.settle()
    after_webhook = world.truthful(pid)
    # A truncated 2xx body is not retried (the client retries 429/5xx, resets and
    # timeouts only): like a long Retry-After, it leaves the state to reconciliation.
    retried_away = times == 1 and "retry_after" not in fault and kind != "truncated"
    if retried_away:
        assert after_webhook.status is Status.SUCCESSFUL
    else:  # the payload is only a hint: the state waits for a read that works
        assert after_webhook.status is Status.PENDING
        TALLY["re-fetches that failed, state kept"] += 1
    world.fake.clear_faults()

    # Reconciliation's own read meets the fault too, then settles it.
    pid2 = "net-read-2"
    assert world.create(pid2).status is Status.PENDING
    world.settle()
    [charge2] = world.charges_for(pid2)
    world.fake.drop_next()  # its webhook is lost: only reconciliation can tell
    world.fake.mark_as_paid(charge2["id"])
    world.settle()
    world.fault("GET /charges/:id", kind, times=times * 2, **params)
    report = world.tracker.reconcile(world.client, pending_threshold=dt.timedelta(0))
    for p in (pid, pid2):
        world.truthful(p)
    if report.rate_limited:
        TALLY["reconciliations stopped by 429"] += 1
    TALLY["reconcile read errors"] += report.errors
    world.fake.clear_faults()
    for p in (pid, pid2):
        assert world.reconcile_until_settled(p).status is Status.SUCCESSFUL
        assert len(world.charges_for(p)) == 1


def test_zz_report() -> None:
    """The figures of this module (runs last in file order)."""
    for name, count in sorted(TALLY.items()):
        figure("network", name, count)
    assert TALLY["create calls"] > 0 or not TALLY  # nothing to report when run alone


@pytest.fixture(scope="module", autouse=True)
def _timed() -> Iterator[None]:
    watch = Stopwatch()
    yield
    figure("network", "seconds", watch.seconds)
