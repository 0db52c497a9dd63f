"""Several OS processes writing one SQLite event log through the tracker."""

from __future__ import annotations

import json
import logging
import multiprocessing
import queue
import time
import traceback
from collections import Counter
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
import structlog
from store_contract import request, snapshot

from kplus_fsm import EventKind, Outcome, SQLiteStore, Status, Tracker
from kplus_fsm.testing import FakeClock, charge_json, webhook_json

pytestmark = pytest.mark.slow

N_PROCESSES = 4
PAYMENTS_EACH = 50  # x 3 inputs = 150 inputs per process
FINAL = ("successful", "failed", "expired")
SHARED = "shared-pay"
SHARED_CHARGE = "chrg_shared"
SHARED_EVENT = "evnt_shared"


def payment_ids(worker: int, i: int) -> tuple[str, str]:
    return f"w{worker}-pay-{i}", f"chrg_w{worker}_{i}"


def _worker(path: str, worker: int, webhook: bytes, barrier: Barrier, results: Any) -> None:
    """Record 150 inputs for this worker's own payments, plus the shared webhook midway."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        shared: str | None = None
        with Tracker(path) as tracker:
            for i in range(PAYMENTS_EACH):
                if i == PAYMENTS_EACH // 2:
                    barrier.wait(timeout=60)
                    shared = tracker.record_webhook(webhook, verification="verified").outcome.value
                pid, cid = payment_ids(worker, i)
                for result in (
                    request(tracker, pid),
                    snapshot(tracker, pid, cid, "pending", origin="create_response"),
                    snapshot(tracker, pid, cid, FINAL[i % 3]),
                ):
                    if result.outcome is not Outcome.APPLIED:
                        raise AssertionError(f"{pid}: {result.outcome} ({result.reason})")
        results.put((worker, "ok", shared))
    except BaseException:
        results.put((worker, "error", traceback.format_exc()))
        raise SystemExit(1) from None


class TestManyProcesses:
    """Four processes, one log: every input once, the shared webhook applied once."""

    def test_concurrent_writers(self, tmp_path: Path) -> None:
        path = tmp_path / "shared.db"
        with Tracker(path, clock=FakeClock()) as tracker:
            request(tracker, SHARED)
            snapshot(tracker, SHARED, SHARED_CHARGE, "pending", origin="create_response")
        webhook = json.dumps(
            webhook_json(
                charge_json(payment_id=SHARED, charge_id=SHARED_CHARGE, status="successful"),
                event_id=SHARED_EVENT,
            )
        ).encode()

        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(N_PROCESSES)
        results = ctx.Queue()
        processes = [
            ctx.Process(target=_worker, args=(str(path), w, webhook, barrier, results))
            for w in range(N_PROCESSES)
        ]
        started = time.monotonic()
        for process in processes:
            process.start()
        reports: dict[int, tuple[str, str | None]] = {}
        try:
            while len(reports) < N_PROCESSES and time.monotonic() - started < 120:
                try:
                    worker, status, detail = results.get(timeout=1)
                except queue.Empty:
                    if not any(p.is_alive() for p in processes) and results.empty():
                        break
                    continue
                reports[worker] = (status, detail)
        finally:
            for process in processes:
                process.join(timeout=30)
                if process.is_alive():
                    process.terminate()
                    process.join()
            exit_codes = [p.exitcode for p in processes]
            for process in processes:
                process.close()
            results.close()
            results.join_thread()

        errors = {w: detail for w, (status, detail) in reports.items() if status != "ok"}
        assert errors == {}
        assert exit_codes == [0] * N_PROCESSES
        assert sorted(reports) == list(range(N_PROCESSES))
        webhook_outcomes = Counter(detail for _status, detail in reports.values())
        assert webhook_outcomes == {"applied": 1, "duplicate": N_PROCESSES - 1}

        with SQLiteStore(path, read_only=True) as store:
            total_inputs = 2 + N_PROCESSES * (PAYMENTS_EACH * 3 + 1)
            inbox = list(store.iter_inbox())
            assert len(inbox) == total_inputs
            assert [r.id for r in inbox] == list(range(1, total_inputs + 1))
            per_input = Counter(
                (r.payment_id, r.kind, r.origin) for r in inbox if r.kind != "webhook"
            )
            assert set(per_input.values()) == {1}, "an input was recorded twice"
            assert len(per_input) == 2 + N_PROCESSES * PAYMENTS_EACH * 3

            for worker in range(N_PROCESSES):
                for i in range(PAYMENTS_EACH):
                    pid, cid = payment_ids(worker, i)
                    payment = store.get(pid)
                    assert payment is not None, pid
                    assert (payment.status.value, payment.charge_id, payment.version) == (
                        FINAL[i % 3],
                        cid,
                        3,
                    )

            deliveries = [r for r in inbox if r.external_id == SHARED_EVENT]
            assert Counter(r.outcome for r in deliveries) == {"applied": 1, "duplicate": 3}
            assert {r.payment_id for r in deliveries} == {SHARED}
            accepted = [
                e
                for e in store.stream(SHARED)
                if e.kind == EventKind.WEBHOOK_ACCEPTED and e.data["event_id"] == SHARED_EVENT
            ]
            assert len(accepted) == 1
            shared = store.get(SHARED)
            assert shared is not None
            assert (shared.status, shared.version) == (Status.SUCCESSFUL, 4)

            counts = store.counts()
            assert counts == {
                "inbox": total_inputs,
                "events": 4 + N_PROCESSES * PAYMENTS_EACH * 3,
                "payments": 1 + N_PROCESSES * PAYMENTS_EACH,
            }
            report = store.verify()
            assert report.ok, report.problem
            assert report.events == counts["events"]
            assert store.replay().ok
