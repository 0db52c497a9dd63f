"""
A quick measurement of the core: durable inputs/s through the tracker (one input
per transaction) and replayed events/s. Not a test; run it by hand:

    python tests/benchmarks/core_throughput.py [--inputs 3000] [--replay-events 200000]

The full, side-by-side benchmark (raw sqlite3 and eventsourcing) is run.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import structlog

from kplus_fsm import Origin, Tracker
from kplus_fsm.testing import FakeClock, charge_json, webhook_json


def feed(tracker: Tracker, clock: FakeClock, payments: int) -> int:
    """Per payment: request, create response, webhook (applied), re-fetch (duplicate), webhook."""
    n = 0
    for i in range(payments):
        pid = f"order-{i}"
        cid = f"chrg_test_{i:019d}"
        tracker.request_payment(payment_id=pid, amount=10_000, return_uri="https://s.example/r")
        tracker.record_charge(
            charge_json(payment_id=pid, charge_id=cid), origin=Origin.CREATE_RESPONSE
        )
        done = charge_json(payment_id=pid, charge_id=cid, status="successful")
        tracker.record_webhook(webhook_json(done, event_id=f"evnt_test_{i:019d}"))
        tracker.record_charge(done, origin=Origin.REFETCH)
        tracker.record_webhook(webhook_json(done, event_id=f"evnt_test_{i:019d}"))
        clock.advance(seconds=1)
        n += 5
    return n


def main() -> None:
    # Log lines are the host's business; measured here without them (WARNING and up only).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser()
    parser.add_argument("--inputs", type=int, default=3000)
    parser.add_argument("--replay-events", type=int, default=200_000)
    args = parser.parse_args()
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sync in ("FULL", "NORMAL"):
            clock = FakeClock()
            with Tracker(Path(tmp) / f"w-{sync}.db", clock=clock, synchronous=sync) as t:
                start = time.perf_counter()
                n = feed(t, clock, args.inputs // 5)
                out[f"inputs_per_s_{sync.lower()}"] = n / (time.perf_counter() - start)
        clock = FakeClock()
        path = Path(tmp) / "replay.db"
        with Tracker(path, clock=clock, synchronous="OFF") as t:
            # 4 events per payment in feed(): requested, pending, accepted, successful
            feed(t, clock, args.replay_events // 4)
            start = time.perf_counter()
            report = t.replay()
            elapsed = time.perf_counter() - start
            assert report.ok, report.differences[:3]
            out["replay_events"] = report.events
            out["replay_events_per_s"] = report.events / elapsed
            start = time.perf_counter()
            verified = t.verify()
            out["verify_rows_per_s"] = (verified.inbox_rows + verified.events) / (
                time.perf_counter() - start
            )
    for key, value in out.items():
        print(f"{key:<24} {value:>12,.0f}")
    print(json.dumps({k: round(v, 1) for k, v in out.items()}))


if __name__ == "__main__":
    main()
