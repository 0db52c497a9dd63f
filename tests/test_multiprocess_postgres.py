"""
Several OS processes (standing in for several hosts) writing one PostgreSQL
event log through the tracker, each with its own connection; the same webhook
delivered to every one of them at the same moment. Needs a server (tests/pg.py).
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import time
from collections import Counter
from typing import Any

import pytest
from store_contract import request, snapshot
from test_multiprocess import (
    FINAL,
    PAYMENTS_EACH,
    SHARED,
    SHARED_CHARGE,
    SHARED_EVENT,
    _worker,
    payment_ids,
)

from kplus_fsm import EventKind, PostgresStore, Status, Tracker
from kplus_fsm.testing import FakeClock, charge_json, webhook_json

pytest.importorskip("psycopg", reason="psycopg is not installed")
pytestmark = pytest.mark.slow

N_PROCESSES = 6


def run_workers(url: str, webhook: bytes) -> dict[int, tuple[str, Any]]:
    """Start the workers, wait for their reports; every process joined."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(N_PROCESSES)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=_worker, args=(url, w, webhook, barrier, results))
        for w in range(N_PROCESSES)
    ]
    started = time.monotonic()
    for process in processes:
        process.start()
    reports: dict[int, tuple[str, Any]] = {}
    try:
        while len(reports) < N_PROCESSES and time.monotonic() - started < 180:
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
    assert exit_codes == [0] * N_PROCESSES, reports
    return reports


class TestManyHosts:
    """Six processes, one PostgreSQL log: every input once, the shared webhook applied once."""

    def test_concurrent_writers(self, pg_url: str) -> None:
        with Tracker(PostgresStore(pg_url), clock=FakeClock()) as tracker:
            request(tracker, SHARED)
            snapshot(tracker, SHARED, SHARED_CHARGE, "pending", origin="create_response")
        webhook = json.dumps(
            webhook_json(
                charge_json(payment_id=SHARED, charge_id=SHARED_CHARGE, status="successful"),
                event_id=SHARED_EVENT,
            )
        ).encode()

        reports = run_workers(pg_url, webhook)

        errors = {w: detail for w, (status, detail) in reports.items() if status != "ok"}
        assert errors == {}
        assert sorted(reports) == list(range(N_PROCESSES))
        webhook_outcomes = Counter(detail for _status, detail in reports.values())
        assert webhook_outcomes == {"applied": 1, "duplicate": N_PROCESSES - 1}

        with PostgresStore(pg_url, read_only=True) as store:
            total_inputs = 2 + N_PROCESSES * (PAYMENTS_EACH * 3 + 1)
            inbox = list(store.iter_inbox())
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
            assert Counter(r.outcome for r in deliveries) == {
                "applied": 1,
                "duplicate": N_PROCESSES - 1,
            }
            accepted = [
                e
                for e in store.stream(SHARED)
                if e.kind == EventKind.WEBHOOK_ACCEPTED and e.data["event_id"] == SHARED_EVENT
            ]
            assert len(accepted) == 1
            shared = store.get(SHARED)
            assert shared is not None
            assert (shared.status, shared.version) == (Status.SUCCESSFUL, 4)
            assert shared.webhook_event_ids == frozenset({SHARED_EVENT})

            counts = store.counts()
            assert counts == {
                "inbox": total_inputs,
                "events": 4 + N_PROCESSES * PAYMENTS_EACH * 3,
                "payments": 1 + N_PROCESSES * PAYMENTS_EACH,
            }
            positions = [e.position for e in store.iter_events()]
            assert positions == list(range(1, counts["events"] + 1))
            report = store.verify()
            assert report.ok, report.problem
            assert report.events == counts["events"]
            replay = store.replay()
            assert replay.ok, replay.differences
            assert replay.payments == counts["payments"]
