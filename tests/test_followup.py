"""The follow-up of unresolved hints, the periodic reconciler and the worker, in process."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kplus_fsm import FollowUp, PeriodicReconciler, Status, Tracker, Worker
from kplus_fsm.adapters.fake import FakeOmise
from kplus_fsm.adapters.omise import OmiseClient, RetryPolicy
from kplus_fsm.testing import FakeClock, webhook_json

SK, PK = "skey_test_followup", "pkey_test_followup"
RETURN_URI = "https://shop.example/return"


class Mono:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Env:
    def __init__(self, path: Path) -> None:
        self.clock = FakeClock("2026-03-01T10:00:00+00:00")
        self.fake = FakeOmise(secret_key=SK, public_key=PK, clock=self.clock, seed=7)
        self.api = OmiseClient(
            secret_key=SK, transport=self.fake.transport(), retry=RetryPolicy(attempts=1)
        )
        self.path = path
        self.tracker = Tracker(path, clock=self.clock)
        self.mono = Mono()

    def pay(self, pid: str) -> str:
        result = self.tracker.create_charge(
            self.api, payment_id=pid, amount=20_000, return_uri=RETURN_URI
        )
        assert result.payment is not None
        assert result.payment.charge_id is not None
        return result.payment.charge_id

    def hint(self, charge_id: str, event_id: str) -> None:
        """A webhook recorded as a hint whose re-fetch never happened (a crash, an outage)."""
        body = webhook_json(self.fake.charge(charge_id), event_id=event_id)
        self.tracker.record_webhook(body, apply_payload=False)

    def followup(self, **kw: Any) -> FollowUp:
        kw.setdefault("monotonic", self.mono)
        return FollowUp(self.tracker, self.api, **kw)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    made = Env(tmp_path / "k.db")
    yield made
    made.tracker.close()
    made.api.close()


class TestFollowUp:
    def test_refetches_an_unresolved_hint(self, env: Env) -> None:
        cid = env.pay("order-1")
        env.fake.mark_as_paid(cid)
        env.hint(cid, "evnt_1")
        assert env.tracker.get("order-1").status is Status.PENDING
        assert len(env.tracker.unresolved_hints()) == 1
        report = env.followup().run_once()
        assert (report.found, report.refetched, report.failed, report.waiting) == (1, 1, 0, 0)
        assert env.tracker.get("order-1").status is Status.SUCCESSFUL
        assert env.tracker.unresolved_hints() == []
        timeline = env.tracker.timeline("order-1")
        assert [e.origin for e in timeline if e.kind == "charge_snapshot"][-1] == "refetch"

    def test_failed_refetch_backs_off_then_succeeds(self, env: Env) -> None:
        cid = env.pay("order-2")
        env.fake.mark_as_paid(cid)
        env.hint(cid, "evnt_2")
        followup = env.followup(base_delay=10.0, max_delay=100.0)
        env.fake.inject_fault("GET /charges/:id", "error", status=503, times=2)
        first = followup.run_once()
        assert (first.refetched, first.failed, first.waiting) == (0, 1, 1)
        again = followup.run_once()  # resting: not tried, the fault is still armed
        assert (again.refetched, again.failed) == (0, 0)
        env.mono.t += 16  # past 10 s * (0.5..1.5)
        second = followup.run_once()
        assert second.failed == 1  # the second 503; now 20 s * jitter
        env.mono.t += 31
        third = followup.run_once()
        assert (third.refetched, third.waiting) == (1, 0)
        assert env.tracker.get("order-2").status is Status.SUCCESSFUL
        assert followup.stats.failed == 2
        assert followup.stats.refetched == 1

    def test_429_pauses_the_whole_job_for_retry_after(self, env: Env) -> None:
        cids = [env.pay(f"order-r{i}") for i in range(3)]
        for i, cid in enumerate(cids):
            env.hint(cid, f"evnt_r{i}")
        followup = env.followup(concurrency=1)
        env.fake.inject_fault("GET /charges/:id", "error", status=429, retry_after=60)
        report = followup.run_once()
        assert report.rate_limited
        assert (report.refetched, report.failed, report.waiting) == (0, 1, 3)
        env.mono.t += 30
        assert followup.run_once().rate_limited  # still paused: no request made
        env.mono.t += 31
        later = followup.run_once()
        assert (later.refetched, later.rate_limited) == (3, False)
        assert env.tracker.unresolved_hints() == []
        assert followup.stats.rate_limited == 1

    def test_startup_scan_pages_through_every_hint_oldest_first(self, env: Env) -> None:
        cids = [env.pay(f"order-s{i}") for i in range(7)]
        for i, cid in enumerate(cids):
            env.hint(cid, f"evnt_s{i}")
        followup = env.followup(batch=2, concurrency=3)
        report = followup.run_once()
        assert (report.found, report.refetched) == (7, 7)
        assert env.tracker.unresolved_hints() == []
        assert followup.run_once().found == 0  # nothing new since the scan

    def test_resolved_meanwhile_is_not_read_again(self, env: Env) -> None:
        cid = env.pay("order-m")
        env.hint(cid, "evnt_m")
        followup = env.followup()
        followup._scan()
        env.tracker.refresh(env.api, "order-m")  # a reconcile or a redelivery got there first
        report = followup.run_once()
        assert (report.refetched, report.already_resolved, report.waiting) == (0, 1, 0)
        reads = [e for e in env.tracker.timeline("order-m") if e.kind == "charge_snapshot"]
        assert [e.origin for e in reads] == ["create_response", "poll"]  # no extra re-fetch

    def test_one_follow_up_per_log(self, env: Env) -> None:
        cid = env.pay("order-l")
        env.hint(cid, "evnt_l")
        first = env.followup(holder="a")
        second = env.followup(holder="b")
        assert first.run_once().refetched == 1
        assert first.leader
        env.hint(cid, "evnt_l2")
        idle = second.run_once()
        assert (idle.found, idle.refetched) == (0, 0)
        assert not second.leader
        env.clock.advance(seconds=31)  # the first holder stopped renewing
        assert second.run_once().refetched == 1
        assert second.leader


class TestPeriodicReconciler:
    def test_only_the_lease_holder_reconciles_and_a_dead_one_is_replaced(self, env: Env) -> None:
        cid = env.pay("order-p")
        env.fake.mark_as_paid(cid)  # the webhook was lost
        env.clock.advance(minutes=31)
        every = dt.timedelta(seconds=60)
        a = PeriodicReconciler(env.tracker, env.api, every=every, holder="a", monotonic=env.mono)
        b = PeriodicReconciler(env.tracker, env.api, every=every, holder="b", monotonic=env.mono)
        report = a.run_once()
        assert report is not None
        assert report.changed == 1
        assert b.run_once() is None
        assert env.tracker.get("order-p").status is Status.SUCCESSFUL
        env.clock.advance(seconds=91)  # a died: its lease (every + 30 s) ran out
        assert b.run_once() is not None
        assert a.run_once() is None  # a came back: b holds it now
        assert (a.stats.runs, a.stats.changes, b.stats.runs) == (1, 1, 1)


class TestWorker:
    def test_starts_and_stops_its_jobs(self, env: Env) -> None:
        cid = env.pay("order-w")
        env.fake.mark_as_paid(cid)
        env.hint(cid, "evnt_w")
        shipped: list[str] = []
        from kplus_fsm import ConsumerSpec

        def ship(event: Any) -> None:
            if event.to_status is Status.SUCCESSFUL:
                shipped.append(event.stream)

        worker = Worker(
            env.tracker,
            env.api,
            reconcile_every=dt.timedelta(seconds=60),
            consumers=[ConsumerSpec(name="ship", handler=ship, start="beginning")],
            poll_interval=0.05,
        ).start()
        done = threading.Event()
        for _ in range(200):
            if shipped:
                done.set()
                break
            threading.Event().wait(0.05)
        assert worker.stop(grace=5.0)
        assert done.is_set()
        assert shipped == ["order-w"]
        health = worker.health()
        assert health["followup"]["refetched"] == 1
        assert health["consumers"] == ["ship"]
        assert env.tracker.store.lease("followup") is not None
