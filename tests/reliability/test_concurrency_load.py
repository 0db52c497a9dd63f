"""
Concurrency under load: PROCESSES OS processes x INPUTS_EACH inputs on one SQLite
file, through the tracker and the webhook intake, including the same signed
webhook delivered to every process at the same moment (a barrier), and the same
charge re-read by every process at the same moment.

Checked: every input is recorded exactly once; every webhook event id is accepted
once (one ``webhook.accepted`` event, the other deliveries ``duplicate``); every
shared payment changes status once; no ``database is locked`` and no
``ConcurrencyError`` reaches a caller (the store's own busy retries are counted and
reported); the hash chains verify and the projection replays.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import queue
import statistics
import time
import traceback
import types
from collections import Counter
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import structlog
from reliability_support import Stopwatch, figure

from kplus_fsm import Origin, SQLiteStore, Tracker
from kplus_fsm._store import sqlite as store_module
from kplus_fsm.adapters.signatures import signature_headers
from kplus_fsm.adapters.webhooks import WebhookIntake
from kplus_fsm.testing import charge_json, webhook_json

pytestmark = pytest.mark.slow

PROCESSES = 4
INPUTS_EACH = 2_000
#: Moments when every process gets the same webhook, then reads the same charge.
SHARED = 25
#: Inputs of one own payment: request, create response, signed webhook, re-fetch.
PER_PAYMENT = 4
#: Besides them: one malformed body and one forged delivery per process.
MISC = 2
PAYMENTS_EACH = (INPUTS_EACH - SHARED * 2 - MISC) // PER_PAYMENT
assert PAYMENTS_EACH * PER_PAYMENT + SHARED * 2 + MISC == INPUTS_EACH
SECRET = "Y29uY3VycmVuY3ktdGVzdC13ZWJob29rLXNlY3JldCE="
AMOUNT = 35_000
FINAL = ("successful", "failed", "expired")


def shared_ids(k: int) -> tuple[str, str, str]:
    return f"shared-{k}", f"chrg_test_shared_{k}", f"evnt_test_shared_{k}"


def own_ids(worker: int, i: int) -> tuple[str, str, str]:
    return f"w{worker}-p{i}", f"chrg_test_w{worker}_{i}", f"evnt_test_w{worker}_{i}"


def signed(body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        **signature_headers(body, [SECRET], int(time.time())),
    }


def _worker(
    path: str, worker: int, shared: list[tuple[bytes, dict[str, str]]], barrier: Barrier, out: Any
) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    retries = 0
    real_sleep = time.sleep

    def counting_sleep(seconds: float) -> None:
        nonlocal retries
        retries += 1
        real_sleep(seconds)

    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    shared_outcomes: list[tuple[int, str | None, str]] = []
    inputs = 0
    try:
        with (
            mock.patch.object(
                store_module,
                "time",
                types.SimpleNamespace(sleep=counting_sleep, monotonic=time.monotonic),
            ),
            Tracker(path) as tracker,
        ):
            intake = WebhookIntake(tracker, secrets=[SECRET], tolerance=3600)

            def timed(label: str, call: Any, *args: Any, **kwargs: Any) -> Any:
                nonlocal inputs
                started = time.perf_counter()
                result = call(*args, **kwargs)
                latencies.append(time.perf_counter() - started)
                inputs += 1
                outcome = getattr(result, "outcome", None)
                outcomes[f"{label}:{getattr(outcome, 'value', outcome)}"] += 1
                status = getattr(result, "status", 200)
                if isinstance(status, int) and status >= 500:
                    raise AssertionError(f"the intake answered {status}: {result.reason}")
                return result

            every = PAYMENTS_EACH // SHARED
            k = 0
            for i in range(PAYMENTS_EACH):
                if i % every == 0 and k < SHARED:
                    barrier.wait(timeout=120)
                    body, headers = shared[k]
                    hook = timed("shared-webhook", intake.handle, body, headers)
                    shared_pid, shared_cid, _eid = shared_ids(k)
                    read = charge_json(
                        payment_id=shared_pid, charge_id=shared_cid, status="successful"
                    )
                    snap = timed("shared-read", tracker.record_charge, read, origin=Origin.REFETCH)
                    shared_outcomes.append((k, hook.outcome, snap.outcome.value))
                    k += 1
                pid, cid, eid = own_ids(worker, i)
                final = FINAL[i % 3]
                timed(
                    "request",
                    tracker.request_payment,
                    payment_id=pid,
                    amount=AMOUNT,
                    return_uri="https://shop.example/r",
                )
                pending = charge_json(payment_id=pid, charge_id=cid, amount=AMOUNT)
                timed("create", tracker.record_charge, pending, origin=Origin.CREATE_RESPONSE)
                done = charge_json(payment_id=pid, charge_id=cid, amount=AMOUNT, status=final)
                body = json.dumps(webhook_json(done, event_id=eid)).encode()
                timed("webhook", intake.handle, body, signed(body))
                timed("refetch", tracker.record_charge, done, origin=Origin.REFETCH)
            timed("malformed", intake.handle, b'{"object": "event", "id": ', signed(b""))
            forged = json.dumps(webhook_json(charge_json(payment_id="forged-target"))).encode()
            timed("forged", intake.handle, forged, {**signed(forged), "Omise-Signature": "00" * 32})
            assert k == SHARED
        out.put((worker, "ok", inputs, retries, latencies, dict(outcomes), shared_outcomes))
    except BaseException:
        out.put((worker, "error", inputs, retries, [], {}, traceback.format_exc()))
        raise SystemExit(1) from None


def test_four_processes_two_thousand_inputs_each(tmp_path: Path) -> None:
    path = tmp_path / "load.db"
    with Tracker(path) as tracker:
        for k in range(SHARED):
            pid, cid, _eid = shared_ids(k)
            tracker.request_payment(payment_id=pid, amount=10_000, return_uri="https://s.example/r")
            tracker.record_charge(
                charge_json(payment_id=pid, charge_id=cid), origin=Origin.CREATE_RESPONSE
            )
    shared = []
    for k in range(SHARED):
        pid, cid, eid = shared_ids(k)
        done = charge_json(payment_id=pid, charge_id=cid, status="successful")
        body = json.dumps(webhook_json(done, event_id=eid)).encode()
        shared.append((body, signed(body)))

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=_worker, args=(str(path), w, shared, barrier, results))
        for w in range(PROCESSES)
    ]
    watch = Stopwatch()
    for process in processes:
        process.start()
    reports: dict[int, tuple[Any, ...]] = {}
    try:
        while len(reports) < PROCESSES and watch.seconds < 300:
            try:
                report = results.get(timeout=1)
            except queue.Empty:
                if not any(p.is_alive() for p in processes) and results.empty():
                    break
                continue
            reports[report[0]] = report
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():  # pragma: no cover - only when a worker hangs
                process.terminate()
                process.join()
        exit_codes = [p.exitcode for p in processes]
        for process in processes:
            process.close()
        results.close()
        results.join_thread()
    seconds = watch.seconds

    errors = {w: r[6] for w, r in reports.items() if r[1] != "ok"}
    assert errors == {}, "\n".join(str(e) for e in errors.values())
    assert exit_codes == [0] * PROCESSES
    assert sorted(reports) == list(range(PROCESSES))
    assert [r[2] for r in reports.values()] == [INPUTS_EACH] * PROCESSES

    with SQLiteStore(path, read_only=True) as store:
        inbox = list(store.iter_inbox())
        total = SHARED * 2 + PROCESSES * INPUTS_EACH
        assert len(inbox) == total
        assert [r.id for r in inbox] == list(range(1, total + 1))

        # Every own input exactly once.
        own = Counter(
            (r.payment_id, r.kind, r.origin, r.external_id)
            for r in inbox
            if r.payment_id is not None and r.payment_id.startswith("w")
        )
        assert set(own.values()) == {1}, "an input was recorded twice"
        assert len(own) == PROCESSES * PAYMENTS_EACH * PER_PAYMENT
        for worker in range(PROCESSES):
            for i in range(PAYMENTS_EACH):
                pid, cid, _eid = own_ids(worker, i)
                payment = store.get(pid)
                assert payment is not None, pid
                assert (payment.status.value, payment.charge_id, payment.version) == (
                    FINAL[i % 3],
                    cid,
                    4,  # requested, pending, webhook.accepted, the final status
                )
        misc = Counter(
            (r.kind, r.outcome, r.payment_id)
            for r in inbox
            if r.payment_id in (None, "forged-target")
        )
        assert misc == {
            ("webhook", "rejected", None): PROCESSES,  # malformed
            ("webhook", "rejected", "forged-target"): PROCESSES,  # forged, refused
        }

        # The shared webhooks and reads: four deliveries each, accepted once, one change.
        for k in range(SHARED):
            pid, _cid, eid = shared_ids(k)
            deliveries = [r for r in inbox if r.external_id == eid]
            assert len(deliveries) == PROCESSES
            assert {r.payment_id for r in deliveries} == {pid}
            reads = [r for r in inbox if r.payment_id == pid and r.origin == "refetch"]
            assert len(reads) == PROCESSES
            stream = store.stream(pid)
            accepted = [e for e in stream if e.kind == "webhook.accepted"]
            assert [e.data["event_id"] for e in accepted] == [eid]
            assert [e.kind for e in stream].count("charge.successful") == 1
            assert [e.version for e in stream] == list(range(1, len(stream) + 1))
            first = {r.id for r in deliveries} & {e.causation for e in accepted}
            assert len(first) == 1
            later = [r.outcome for r in deliveries if r.id not in first]
            assert later == ["duplicate"] * (PROCESSES - 1)
            payment = store.get(pid)
            assert payment is not None
            assert (payment.status.value, payment.webhook_event_ids) == (
                "successful",
                frozenset({eid}),
            )

        counts = store.counts()
        assert counts["payments"] == SHARED + PROCESSES * PAYMENTS_EACH
        report = store.verify()
        assert report.ok, report.problem
        assert store.replay().ok

    latencies = sorted(x for r in reports.values() for x in r[4])
    retries = sum(r[3] for r in reports.values())
    figure("concurrency", "processes x inputs", f"{PROCESSES} x {INPUTS_EACH}")
    figure("concurrency", "inputs recorded (incl. setup)", total)
    figure("concurrency", "simultaneous deliveries of one webhook", f"{SHARED} x {PROCESSES}")
    figure("concurrency", "store busy/clash retries absorbed (none escaped)", retries)
    figure("concurrency", "errors reaching a caller", 0)
    figure("concurrency", "seconds (4 processes, incl. spawn)", seconds)
    figure("concurrency", "inputs per second", round(PROCESSES * INPUTS_EACH / seconds))
    figure("concurrency", "latency p50 ms", round(statistics.median(latencies) * 1000, 2))
    figure(
        "concurrency",
        "latency p99 ms",
        round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
    )
    figure("concurrency", "latency max ms", round(latencies[-1] * 1000, 2))
