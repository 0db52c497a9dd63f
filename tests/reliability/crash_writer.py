"""
The writer process of the crash-safety test (``test_crash_safety.py``).

``python crash_writer.py DB RUN SEED [LIMIT]`` opens the event log at ``DB`` and
feeds it a seeded random mix of inputs through the tracker, one transaction each:
payment requests, create responses, signed and unsigned webhooks (some delivered
twice), re-fetches and polls, create errors and unknown create outcomes, refused
deliveries, malformed bodies and refund requests. It prints, flushing each line:

- ``OPENING`` before the tracker opens the file, ``READY`` once it is open;
- ``TRY <seq>`` before each call;
- ``ACK <seq> <inbox_id> <kind> <outcome> <n_events>`` after the call returned
  (or raised its typed error, which carries the inbox row of the refused input);
- ``DONE`` after ``LIMIT`` inputs (the parent normally kills it long before).

The parent kills it with SIGKILL at a random moment and then checks the file.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path

import structlog

from kplus_fsm import Origin, Result, Tracker
from kplus_fsm.exceptions import InvalidInputError
from kplus_fsm.testing import charge_json, error_json, webhook_json

STATUSES = ("successful", "failed", "expired")
AMOUNT = 35_000


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def charge_id(pid: str) -> str:
    return "chrg_test_" + pid.replace("-", "_")


def refund(tracker: Tracker, pid: str) -> Result:
    """Refunds are refused (recorded, then RefundNotSupportedError)."""
    tracker.request_refund(pid)


def main(argv: list[str]) -> int:
    db, run, seed = Path(argv[1]), int(argv[2]), int(argv[3])
    limit = int(argv[4]) if len(argv) > 4 else 100_000
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    rng = random.Random(seed * 100_003 + run)
    emit("OPENING")
    tracker = Tracker(db)
    emit("READY")
    mine: list[str] = []
    # Payments of earlier runs (they may or may not exist: a run can die early).
    earlier = [f"r{k}-p{j}" for k in range(max(run - 3, 0), run) for j in range(6)]
    events_seen: list[bytes] = []
    for seq in range(limit):
        pool = mine or earlier or ["nobody"]
        pid = rng.choice(pool + earlier[:3])
        roll = rng.random()
        emit(f"TRY {seq}")
        kind = "webhook"
        try:
            result: Result
            if roll < 0.20 or not mine:
                kind = "payment_request"
                pid = f"r{run}-p{len(mine)}"
                mine.append(pid)
                result = tracker.request_payment(
                    payment_id=pid, amount=AMOUNT, return_uri="https://shop.example/r"
                )
            elif roll < 0.35:
                kind = "charge_snapshot"
                charge = charge_json(payment_id=pid, charge_id=charge_id(pid), amount=AMOUNT)
                result = tracker.record_charge(charge, origin=Origin.CREATE_RESPONSE)
            elif roll < 0.55:
                status = rng.choice(STATUSES)
                charge = charge_json(
                    payment_id=pid, charge_id=charge_id(pid), status=status, amount=AMOUNT
                )
                if events_seen and rng.random() < 0.3:
                    body = rng.choice(events_seen)  # a redelivery
                else:
                    event = webhook_json(charge, event_id=f"evnt_test_{run}_{seq}")
                    body = json.dumps(event).encode()
                    events_seen.append(body)
                result = tracker.record_webhook(
                    body,
                    headers={"Content-Type": "application/json", "Omise-Signature": "ab" * 32},
                    verification="verified",
                    apply_payload=rng.random() < 0.5,
                )
            elif roll < 0.70:
                kind = "charge_snapshot"
                status = rng.choice(("pending", *STATUSES))
                charge = charge_json(
                    payment_id=pid, charge_id=charge_id(pid), status=status, amount=AMOUNT
                )
                origin = rng.choice((Origin.REFETCH, Origin.POLL))
                result = tracker.record_charge(json.dumps(charge).encode(), origin=origin)
            elif roll < 0.76:
                kind = "create_unknown"
                result = tracker.record_create_unknown(pid, reason="read timeout (crash test)")
            elif roll < 0.80:
                kind = "create_error"
                result = tracker.record_create_error(
                    pid, error_json("invalid_charge", "refused"), http_status=400
                )
            elif roll < 0.87:
                body = json.dumps(
                    webhook_json(charge_json(payment_id=pid, status="successful"))
                ).encode()
                result = tracker.refuse_webhook(
                    body,
                    headers={"Omise-Signature": "00"},
                    verification="failed: no signature matches the webhook secret",
                    reason="signature refused: no signature matches the webhook secret",
                )
            elif roll < 0.95:
                result = tracker.record_webhook(b'{"object": "event", "id": "evnt_broken", "key": ')
            else:
                kind = "refund_request"
                refund(tracker, pid)
        except InvalidInputError as exc:  # recorded as rejected, then raised
            if exc.inbox_id is None:
                raise
            emit(f"ACK {seq} {exc.inbox_id} {kind} rejected 0")
            continue
        emit(
            f"ACK {seq} {result.inbox_id} {result.input_kind} {result.outcome.value} "
            f"{len(result.events)}"
        )
    tracker.close()
    emit("DONE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
