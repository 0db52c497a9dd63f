"""
Ordering: Hypothesis drives whole payment scenarios against the in-process fake
Omise and checks that the log ends where the fake is, and that replay rebuilds it.

The steps, in any order and any number: create a charge (sometimes through a
fault: a reset after the commit, a 503, truncated JSON, a timeout), the buyer
paying, declining or letting it expire (and, rarely, Omise changing a finished
charge), holding webhooks and releasing them in any order, duplicating or
dropping the next ones, redelivering an old delivery late, re-fetching a charge,
reconciling, advancing the clock, and restarting the process (closing both
trackers and opening new ones on the same file), including crashes between the
write-ahead request and the ``POST /charges``, and after the ``POST`` before its
answer was recorded.

After every step: never two charges for one payment, and no false state (the
tracker's status is one the fake's charge has had; a charge the tracker does
not know of is flagged ``create_unknown``, unless the process crashed before it
could know). At the end, once every held webhook is out and reconciliation and a
re-fetch have run: the tracker's state equals the fake's for every payment, the
hash chains verify, ``replay`` finds no difference, every stream folds to its
projection, and a fresh process reads the same states.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from reliability_support import Stopwatch, figure, quiet_structlog

from kplus_fsm import Payment, Status, Tracker, failpoints, fold
from kplus_fsm._model import RANK
from kplus_fsm.adapters.fake import FakeOmise
from kplus_fsm.adapters.fake import RetryPolicy as DeliveryRetry
from kplus_fsm.adapters.omise import OmiseClient, RetryPolicy
from kplus_fsm.adapters.signatures import signature_headers
from kplus_fsm.adapters.webhooks import WebhookIntake
from kplus_fsm.testing import FakeClock

pytestmark = pytest.mark.slow

SK = "skey_test_ordering000000000000001"
PK = "pkey_test_ordering000000000000001"
SECRET = base64.b64encode(b"ordering-test-webhook-secret-0001").decode()
PAYMENTS = ("o-0", "o-1", "o-2")
AMOUNT = 35_000
EXAMPLES = 250
STEPS = 40
CREATE_FAULTS: list[dict[str, Any] | None] = [
    *([None] * 8),
    {"kind": "commit_then_drop"},
    {"kind": "commit_then_error", "status": 500},
    {"kind": "error", "status": 503},
    {"kind": "truncated"},
    {"kind": "commit_then_timeout"},
    {"kind": "error", "status": 400, "code": "invalid_charge"},
]
TALLY: dict[str, int] = {}


def tally(name: str, n: int = 1) -> None:
    TALLY[name] = TALLY.get(name, 0) + n


class PaymentScenarios(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._quiet = quiet_structlog()
        self._quiet.__enter__()
        self.dir = Path(tempfile.mkdtemp(prefix="kplus-ordering-"))
        self.db = self.dir / "ordering.db"
        self.clock = FakeClock("2026-05-01T00:00:00+00:00")
        self.fake = FakeOmise(
            secret_key=SK,
            public_key=PK,
            webhook_receiver=self.receive,
            webhook_secrets=[SECRET],
            clock=self.clock,
            retry=DeliveryRetry(max_attempts=2, backoff=0.005, max_backoff=0.01),
            sweep_interval=3600,
        )
        self.client = self._client()
        self.refetcher = self._client()
        self.holding = False
        self.refetch_mode = True
        self.crashed_after_post: set[str] = set()
        self.tracker = Tracker(self.db, clock=self.clock)
        self.intake = self._intake()
        tally("scenarios")

    def _client(self) -> OmiseClient:
        return OmiseClient(
            secret_key=SK,
            transport=self.fake.transport(),
            timeout=httpx.Timeout(1.0, read=0.02),
            create_timeout=httpx.Timeout(1.0, read=0.02),
            retry=RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0),
            sleep=lambda _s: None,
        )

    def _intake(self) -> WebhookIntake:
        receiver_tracker = Tracker(self.db, clock=self.clock)
        return WebhookIntake(
            receiver_tracker,
            client=self.refetcher if self.refetch_mode else None,
            secrets=[SECRET],
            now=lambda: self.clock().timestamp(),
        )

    def receive(self, request: httpx.Request) -> httpx.Response:
        """The webhook receiver: the fake's deliveries, straight into the intake."""
        answer = self.intake.handle(request.content, dict(request.headers))
        return httpx.Response(answer.status, json=answer.to_json())

    def settle(self) -> None:
        self.fake.flush(15)

    # ----------------------------------------------------------------- helpers

    def charges_for(self, pid: str) -> list[dict[str, Any]]:
        return [c for c in self.fake.charges() if c["metadata"].get("payment_id") == pid]

    def statuses_ever(self, charge_id: str) -> set[str]:
        seen = {"pending"}
        for event in self.fake.events(charge_id):
            data = event.get("data")
            if isinstance(data, dict) and isinstance(data.get("status"), str):
                seen.add(data["status"])
        return seen

    def payment(self, pid: str) -> Payment | None:
        return self.tracker.find(pid)

    # ------------------------------------------------------------------- rules

    @initialize(refetch=st.booleans())
    def choose_intake(self, refetch: bool) -> None:
        """With a client the intake re-fetches; without, payloads are unverified snapshots."""
        self.refetch_mode = refetch
        self.intake.tracker.close()
        self.intake = self._intake()
        tally("scenarios with re-fetching intake" if refetch else "scenarios, payload-only intake")

    @rule(
        pid=st.sampled_from(PAYMENTS),
        fault=st.sampled_from(CREATE_FAULTS),
        search_fails=st.sampled_from([False, False, False, True]),
    )
    def create(self, pid: str, fault: dict[str, Any] | None, search_fails: bool) -> None:
        if fault is not None:
            params = dict(fault)
            self.fake.inject_fault("POST /charges", params.pop("kind"), **params)
            tally("create faults")
        if search_fails:
            self.fake.inject_fault("GET /search", "error", status=503, times=2)
        self.tracker.create_charge(
            self.client, payment_id=pid, amount=AMOUNT, return_uri="https://shop.example/r"
        )
        self.fake.clear_faults()
        tally("creates")
        self.settle()

    @precondition(lambda self: any(self.payment(p) is None for p in PAYMENTS))
    @rule(data=st.data(), action=st.sampled_from(["pay", "fail", "expire"]))
    def reordered_payment(self, data: st.DataObject, action: str) -> None:
        """Create and finish a payment with its webhooks held, then release them in any order."""
        pid = data.draw(st.sampled_from([p for p in PAYMENTS if self.payment(p) is None]))
        self.fake.hold_webhooks()
        result = self.tracker.create_charge(
            self.client, payment_id=pid, amount=AMOUNT, return_uri="https://shop.example/r"
        )
        assert result.payment is not None
        cid = result.payment.charge_id
        assert cid is not None
        if action == "pay":
            self.fake.mark_as_paid(cid)
        elif action == "fail":
            self.fake.mark_as_failed(cid, "payment_rejected")
        else:
            self.fake.expire(cid)
        if data.draw(st.booleans()):
            self.fake.duplicate_next(2)
            self.fake.mark_as_paid(cid, force=True)
        held = self.fake.held_webhooks()
        self.fake.release_webhooks(data.draw(st.permutations(sorted(set(held)))))
        self.holding = False
        tally("reordered payments")
        tally("webhooks released out of order", len(held))
        self.settle()

    @precondition(lambda self: any(self.payment(p) is None for p in PAYMENTS))
    @rule(
        data=st.data(),
        minutes=st.sampled_from([1, 16]),
        search_fails=st.booleans(),
        fault=st.sampled_from(CREATE_FAULTS),
    )
    def retry_after_a_crash(
        self, data: st.DataObject, minutes: int, search_fails: bool, fault: dict[str, Any] | None
    ) -> None:
        """The process dies after its POST; later the merchant retries the payment."""
        pid = data.draw(st.sampled_from([p for p in PAYMENTS if self.payment(p) is None]))
        self.crash_in_create(pid, after_post=True)
        self.restart()
        self.fake.advance_clock(dt.timedelta(minutes=minutes))
        self.create(pid, fault, search_fails)
        tally("retries after a crash")

    @precondition(lambda self: any(self.payment(p) is None for p in PAYMENTS))
    @rule(data=st.data(), after_post=st.booleans())
    def crash_during_create(self, data: st.DataObject, after_post: bool) -> None:
        """The process dies after the write-ahead request (and maybe after the POST)."""
        pid = data.draw(st.sampled_from([p for p in PAYMENTS if self.payment(p) is None]))
        self.crash_in_create(pid, after_post=after_post)
        tally("crashes after the POST" if after_post else "crashes before the POST")
        self.restart()

    def crash_in_create(self, pid: str, *, after_post: bool) -> None:
        """create_charge dies (a failpoint) after its write-ahead request or after its POST."""
        point = "create.after_post" if after_post else "create.after_request"
        with failpoints.armed(point), contextlib.suppress(failpoints.FailpointError):
            self.tracker.create_charge(
                self.client, payment_id=pid, amount=AMOUNT, return_uri="https://shop.example/r"
            )
        if after_post:
            self.crashed_after_post.add(pid)

    def charges_in(self, *statuses: str) -> list[dict[str, Any]]:
        return [
            c
            for c in self.fake.charges()
            if c["metadata"].get("payment_id") in PAYMENTS and c["status"] in statuses
        ]

    @precondition(lambda self: self.charges_in("pending"))
    @rule(data=st.data(), action=st.sampled_from(["pay", "pay", "fail", "expire"]))
    def buyer(self, data: st.DataObject, action: str) -> None:
        charge = data.draw(st.sampled_from(self.charges_in("pending")))
        cid = charge["id"]
        if action == "pay":
            self.fake.mark_as_paid(cid)
        elif action == "fail":
            self.fake.mark_as_failed(cid, "insufficient_fund")
        else:
            self.fake.expire(cid)
        tally(f"buyer: {action}")
        self.settle()

    @precondition(lambda self: self.charges_in("successful", "failed", "expired"))
    @rule(data=st.data(), status=st.sampled_from(["successful", "failed"]))
    def omise_changes_a_finished_charge(self, data: st.DataObject, status: str) -> None:
        charge = data.draw(st.sampled_from(self.charges_in("successful", "failed", "expired")))
        if charge["status"] == status:
            return
        if status == "successful":
            self.fake.mark_as_paid(charge["id"], force=True)
        else:
            self.fake.mark_as_failed(charge["id"], force=True)
        tally("late contradicting outcomes")
        self.settle()

    @rule()
    def hold(self) -> None:
        self.fake.hold_webhooks()
        self.holding = True

    @precondition(lambda self: self.fake.held_webhooks())
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        held = self.fake.held_webhooks()
        order = data.draw(st.permutations(sorted(set(held))))
        self.fake.release_webhooks(order)
        self.holding = False
        tally("webhooks released out of order", len(held))
        self.settle()

    @rule(times=st.integers(2, 3))
    def duplicate_next(self, times: int) -> None:
        self.fake.duplicate_next(times)
        tally("duplications")

    @rule()
    def drop_next(self) -> None:
        self.fake.drop_next()
        tally("drops")

    @precondition(lambda self: self.fake.deliveries())
    @rule(data=st.data())
    def redeliver_late(self, data: st.DataObject) -> None:
        """An old delivery arrives again, late, freshly signed (Omise's own retry)."""
        old = data.draw(st.sampled_from(self.fake.deliveries()))
        body = old.payload.encode()
        self.intake.handle(body, signature_headers(body, [SECRET], int(self.clock().timestamp())))
        tally("late redeliveries")

    @precondition(lambda self: any((p := self.payment(x)) and p.charge_id for x in PAYMENTS))
    @rule(data=st.data())
    def refetch(self, data: st.DataObject) -> None:
        known = [p for x in PAYMENTS if (p := self.payment(x)) is not None and p.charge_id]
        payment = data.draw(st.sampled_from(known))
        assert payment.charge_id is not None
        self.tracker.record_charge(self.client.retrieve_charge(payment.charge_id), origin="refetch")
        tally("re-fetches")

    @rule()
    def reconcile(self) -> None:
        self.tracker.reconcile(self.client, pending_threshold=dt.timedelta(0))
        tally("reconciliations")
        self.settle()

    @rule(minutes=st.sampled_from([1, 5, 11, 16]))
    def advance_clock(self, minutes: int) -> None:
        self.fake.advance_clock(dt.timedelta(minutes=minutes))
        tally("clock advances")
        self.settle()

    @rule()
    def restart(self) -> None:
        """Both processes stop and start again on the same file."""
        self.fake.flush(15)
        self.tracker.close()
        self.intake.tracker.close()
        self.tracker = Tracker(self.db, clock=self.clock)
        self.intake = self._intake()
        tally("restarts")

    # -------------------------------------------------------------- invariants

    @invariant()
    def never_two_charges(self) -> None:
        for pid in PAYMENTS:
            assert len(self.charges_for(pid)) <= 1, f"two charges for {pid}"

    @invariant()
    def no_false_state(self) -> None:
        for pid in PAYMENTS:
            payment = self.payment(pid)
            charges = self.charges_for(pid)
            if payment is None:
                continue
            if payment.charge_id is not None:
                assert charges, payment
                assert charges[0]["id"] == payment.charge_id, (payment, charges)
                if payment.status is not Status.CREATED:
                    assert payment.status.value in self.statuses_ever(payment.charge_id), (
                        payment,
                        charges,
                    )
            elif charges:
                assert payment.status is Status.CREATED, (payment, charges)
                if pid not in self.crashed_after_post:
                    assert payment.create_unknown, (payment, charges)
            elif payment.status is not Status.CREATED:
                assert payment.status is Status.FAILED, payment
                assert payment.failure_code, payment

    @invariant()
    def only_forward_or_corrected(self) -> None:
        """
        In every stream, statuses move forward; a finished one changes only by a
        ``charge.corrected`` event (an authoritative read).
        """
        for pid in PAYMENTS:
            status = Status.CREATED
            for event in self.tracker.store.stream(pid):
                new = event.data.get("status") if event.kind.startswith("charge.") else None
                if event.kind == "charge.create_failed":
                    new = "failed"
                if not isinstance(new, str):
                    continue
                after = Status(new)
                if event.kind == "charge.corrected":
                    assert status.is_terminal, (pid, event)
                    assert after.is_terminal, (pid, event)
                    assert after is not status, (pid, event)
                else:
                    assert RANK[after] > RANK[status], (pid, status, event)
                status = after

    # ------------------------------------------------------------------ the end

    def teardown(self) -> None:
        try:
            self.final_check()
        finally:
            self.intake.tracker.close()
            self.tracker.close()
            self.client.close()
            self.refetcher.close()
            self.fake.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            self._quiet.__exit__(None, None, None)

    def final_check(self) -> None:
        self.fake.release_webhooks()
        self.fake.clear_faults()
        self.settle()
        if self.refetch_mode:
            # Every event of a charge delivered (and re-fetched): already right,
            # before any reconciliation.
            for pid in PAYMENTS:
                payment = self.payment(pid)
                charges = self.charges_for(pid)
                if payment is None or not charges:
                    continue
                events = self.fake.events(charges[0]["id"])
                if all(any(d.ok for d in self.fake.deliveries(e["id"])) for e in events):
                    assert (payment.charge_id, payment.status.value) == (
                        charges[0]["id"],
                        charges[0]["status"],
                    ), (payment, charges[0]["status"])
                    tally("charges right from webhooks alone")
        for _ in range(3):
            self.tracker.reconcile(self.client, pending_threshold=dt.timedelta(0))
            self.settle()
        for pid in PAYMENTS:  # reconciliation never re-reads a finished charge: a re-fetch does
            payment = self.payment(pid)
            if payment is not None and payment.charge_id is not None:
                charge = self.client.retrieve_charge(payment.charge_id)
                self.tracker.record_charge(charge, origin="refetch")
        states: dict[str, Payment] = {}
        for pid in PAYMENTS:
            payment = self.payment(pid)
            charges = self.charges_for(pid)
            if payment is None:
                assert charges == []
                continue
            states[pid] = payment
            if charges:
                [charge] = charges
                assert (payment.charge_id, payment.status.value) == (
                    charge["id"],
                    charge["status"],
                ), (payment, charge)
                assert not payment.create_unknown
                completions = [
                    e for e in self.fake.events(charge["id"]) if e["key"] != "charge.create"
                ]
                if len(completions) <= 1:
                    # (A charge Omise failed twice, with two codes, keeps the first code:
                    # a read of the same status is a duplicate. Only forced changes do that.)
                    assert payment.failure_code == charge["failure_code"]
                tally(f"final: {payment.status.value}")
            else:
                assert payment.status in (Status.CREATED, Status.FAILED), payment
                assert payment.charge_id is None
                tally(f"final: no charge, {payment.status.value}")
        report = self.tracker.verify()
        assert report.ok, report.problem
        replay = self.tracker.replay()
        assert replay.ok, replay.differences
        for pid, payment in states.items():
            stream = self.tracker.store.stream(pid)
            assert fold(stream) == payment
            accepted = [e.data["event_id"] for e in stream if e.kind == "webhook.accepted"]
            assert len(accepted) == len(set(accepted)), f"a webhook applied twice: {accepted}"
        with Tracker(self.db) as fresh:
            for pid, payment in states.items():
                assert fresh.get(pid) == payment
        tally("inputs recorded", report.inbox_rows)
        tally("events recorded", report.events)


PaymentScenarios.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


def test_scenarios_end_where_the_fake_is() -> None:
    watch = Stopwatch()
    TALLY.clear()
    run = PaymentScenarios.TestCase("runTest")
    run.runTest()
    for name, count in sorted(TALLY.items()):
        figure("ordering", name, count)
    figure("ordering", "max steps per scenario", STEPS)
    figure("ordering", "seconds", watch.seconds)
    assert TALLY["scenarios"] >= EXAMPLES
