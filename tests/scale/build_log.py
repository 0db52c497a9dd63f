"""
Build a large, realistic event log through the tracker, for the scale figures
in docs/million-events.md. Not a test; the test suite runs a tiny version of it.

    python tests/scale/build_log.py --db /tmp/kplus-1m.db --events 1000000

Every input goes through :class:`kplus_fsm.Tracker` exactly as in production
(the same decisions, the same inbox rows, events, projection and hash chains);
the only shortcut is durability: ``synchronous=OFF`` and one transaction per
``--batch`` inputs instead of one per input, which does not change a single
stored byte. The result verifies, and replays without a difference.

The traffic is interleaved in simulated time (one payment every few seconds,
each with its own life: webhooks a few seconds to minutes later, polls after
expiry) and mixes every story the runbook tells: paid with duplicated
webhooks, declines, expiries, creates that time out, refused creates, lost
webhooks settled by polls, late corrections (expired then successful),
forged and stale webhooks, webhook payloads that conflict with a terminal
state, amount mismatches, malformed bodies, and payments left stuck.
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any

import structlog

from kplus_fsm import Origin, SQLiteStore, Tracker
from kplus_fsm._machine import Decision
from kplus_fsm._model import Payment
from kplus_fsm._store._group_commit import Pending
from kplus_fsm._store._write_cache import Staged
from kplus_fsm._store.sqlite import InboxDraft, Recorded
from kplus_fsm.adapters.signatures import signature_headers
from kplus_fsm.exceptions import MalformedInputError
from kplus_fsm.testing import FakeClock, charge_json, error_json, webhook_json
from kplus_fsm.typing import RecordItem

START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
WEBHOOK_SECRET = "c2NhbGUtdGVzdC13ZWJob29rLXNlY3JldC0zMmJ5dGVz"  # base64, fixed
FORGED_SECRET = "Zm9yZ2VkLXNlY3JldC1ub3QtdGhlLXJlYWwtb25lISE="
RETURN_URI = "https://shop.example/orders/return"
FAILURE_CODES = ("insufficient_fund", "payment_rejected", "failed_processing", "invalid_account")

#: A scenario is a generator: it yields the seconds to wait before its next input.
Scenario = Generator[float, None, None]


class BatchedStore(SQLiteStore):
    """
    The SQLite store with the transaction moved out to the caller: each
    ``record`` runs the store's own single-input write (same statements, same
    hashes) inside a transaction that :func:`build` commits every N inputs.
    """

    def record(
        self,
        draft: InboxDraft,
        decide: Callable[[Payment | None], Decision],
        *,
        now: str,
        payment_id: str | None = None,
        charge_id: str | None = None,
    ) -> Recorded:
        item = Pending(
            RecordItem(
                draft=draft, decide=decide, now=now, payment_id=payment_id, charge_id=charge_id
            )
        )
        self._record_batch([item], Staged())  # in the caller's open transaction
        return item.outcome()


class World:
    """The tracker, the simulated clock and the id generator shared by all scenarios."""

    def __init__(self, tracker: Tracker, clock: FakeClock, rng: random.Random) -> None:
        self.t = tracker
        self.clock = clock
        self.rng = rng
        self.events = 0
        self.inputs = 0

    def oid(self, prefix: str) -> str:
        """An Omise-shaped id (prefix + 19 base-36 characters), reproducible from the seed."""
        alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
        return prefix + "".join(self.rng.choice(alphabet) for _ in range(19))

    def count(self, events: int) -> None:
        self.inputs += 1
        self.events += events

    # ------------------------------------------------------------------ inputs

    def request(self, pid: str, amount: int) -> None:
        r = self.t.request_payment(
            payment_id=pid,
            amount=amount,
            currency="THB",
            return_uri=RETURN_URI,
            platform_type=self.rng.choice(("IOS", "ANDROID")),
            metadata={"order": pid.rsplit("-", 1)[-1]},
        )
        self.count(len(r.events))

    def charge(self, pid: str, cid: str, amount: int, status: str, **kw: Any) -> dict[str, Any]:
        return charge_json(
            payment_id=pid,
            charge_id=cid,
            status=status,
            amount=amount,
            created_at=kw.pop("created_at", self.clock()),
            **kw,
        )

    def read(self, charge: Mapping[str, Any], origin: Origin) -> None:
        r = self.t.record_charge(charge, origin=origin)
        self.count(len(r.events))

    def webhook(
        self,
        charge: Mapping[str, Any],
        key: str,
        *,
        event_id: str | None = None,
        refetch: Mapping[str, Any] | None = None,
    ) -> str:
        """A signed delivery recorded as a hint, then the intake's re-fetch."""
        eid = event_id or self.oid("evnt_test_")
        body = json.dumps(
            webhook_json(charge, key=key, event_id=eid, created_at=_iso(self.clock()))
        ).encode()
        headers = {
            "content-type": "application/json",
            "user-agent": "Omise/2019-05-29",
            **{
                k.lower(): v
                for k, v in signature_headers(
                    body, [WEBHOOK_SECRET], int(self.clock().timestamp())
                ).items()
            },
        }
        r = self.t.record_webhook(
            body, headers=headers, verification="verified", apply_payload=False
        )
        self.count(len(r.events))
        if refetch is not None and r.outcome.value != "duplicate":
            self.read(refetch, Origin.REFETCH)
        return eid

    def refused(self, charge: Mapping[str, Any], *, stale: bool) -> None:
        """A delivery the intake refuses: a forged signature, or a stale timestamp."""
        body = json.dumps(webhook_json(charge, event_id=self.oid("evnt_test_"))).encode()
        now = int(self.clock().timestamp())
        if stale:
            ts, secret = now - 3600, WEBHOOK_SECRET
            why = "the signature timestamp is 3600 s old (limit 300 s)"
        else:
            ts, secret = now, FORGED_SECRET
            why = "no signature matches the webhook secret"
        headers = {k.lower(): v for k, v in signature_headers(body, [secret], ts).items()}
        self.t.refuse_webhook(
            body, headers=headers, verification=f"failed: {why}", reason=f"signature refused: {why}"
        )
        self.count(0)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------- scenarios


def opened(
    w: World, pid: str, amount: int, *, announced: bool
) -> Generator[float, None, tuple[str, dt.datetime]]:
    """
    The start most payments share: the request, then the create response
    (``pending``), then (``announced``) the ``charge.create`` webhook and its
    re-fetch. Returns the charge id and its creation time.
    """
    cid = w.oid("chrg_test_")
    created = w.clock()
    w.request(pid, amount)
    yield w.rng.uniform(0.3, 2.0)
    pending = w.charge(pid, cid, amount, "pending", created_at=created)
    w.read(pending, Origin.CREATE_RESPONSE)
    if announced:
        yield w.rng.uniform(0.5, 3.0)
        w.webhook(pending, "charge.create", refetch=pending)
    return cid, created


def paid(w: World, pid: str, amount: int) -> Scenario:
    """Create, charge.create webhook, approval, completion webhook delivered twice: 5 events."""
    cid, created = yield from opened(w, pid, amount, announced=True)
    yield w.rng.lognormvariate(3.5, 0.8)  # the buyer approves in K PLUS: ~30 s
    done = w.charge(pid, cid, amount, "successful", created_at=created)
    eid = w.webhook(done, "charge.complete", refetch=done)
    if w.rng.random() < 0.3:  # Omise retries a delivery it thinks failed
        yield w.rng.uniform(5, 120)
        w.webhook(done, "charge.complete", event_id=eid, refetch=done)


def declined(w: World, pid: str, amount: int) -> Scenario:
    """The bank declines: 5 events."""
    cid, created = yield from opened(w, pid, amount, announced=True)
    yield w.rng.lognormvariate(3.0, 0.7)
    failed = w.charge(
        pid, cid, amount, "failed", created_at=created, failure_code=w.rng.choice(FAILURE_CODES)
    )
    w.webhook(failed, "charge.complete", refetch=failed)


def expired(w: World, pid: str, amount: int) -> Scenario:
    """Never approved: the expiry webhook, then reconciliation's poll: 5 events."""
    cid, created = yield from opened(w, pid, amount, announced=True)
    yield 600 + w.rng.uniform(1, 30)
    gone = w.charge(pid, cid, amount, "expired", created_at=created)
    w.webhook(gone, "charge.expire", refetch=gone)
    yield w.rng.uniform(60, 300)
    w.read(gone, Origin.POLL)


def timeout(w: World, pid: str, amount: int) -> Scenario:
    """The create times out; reconciliation's search finds the charge; paid: 5 events."""
    cid = w.oid("chrg_test_")
    created = w.clock()
    w.request(pid, amount)
    yield 60.0
    r = w.t.record_create_unknown(pid, reason="read timeout after 60 s on POST /charges")
    w.count(len(r.events))
    yield w.rng.uniform(60, 300)
    w.read(w.charge(pid, cid, amount, "pending", created_at=created), Origin.POLL)
    yield w.rng.uniform(10, 60)
    done = w.charge(pid, cid, amount, "successful", created_at=created)
    w.webhook(done, "charge.complete", refetch=done)


def lost(w: World, pid: str, amount: int) -> Scenario:
    """The completion webhook never arrives; a poll reads it: 3 events."""
    cid, created = yield from opened(w, pid, amount, announced=False)
    yield 1800 + w.rng.uniform(0, 300)
    w.read(w.charge(pid, cid, amount, "successful", created_at=created), Origin.POLL)


def refused(w: World, pid: str, amount: int) -> Scenario:
    """Omise refuses the create: 2 events."""
    w.request(pid, amount)
    yield w.rng.uniform(0.2, 1.0)
    r = w.t.record_create_error(
        pid, error_json("invalid_charge", "amount is out of range"), http_status=400
    )
    w.count(len(r.events))


def late(w: World, pid: str, amount: int) -> Scenario:
    """Expired by a poll, then an authoritative read says successful: a correction, 4 events."""
    cid, created = yield from opened(w, pid, amount, announced=False)
    yield 660.0
    w.read(w.charge(pid, cid, amount, "expired", created_at=created), Origin.POLL)
    yield w.rng.uniform(60, 900)
    w.read(w.charge(pid, cid, amount, "successful", created_at=created), Origin.REFETCH)


def hostile(w: World, pid: str, amount: int) -> Scenario:
    """Forged and stale deliveries, a conflicting payload, a mismatch, a malformed body."""
    cid, created = yield from opened(w, pid, amount, announced=False)
    yield w.rng.uniform(5, 60)
    cheap = w.charge(pid, cid, 100, "successful", created_at=created)
    w.refused(cheap, stale=w.rng.random() < 0.5)
    yield 1.0
    w.read(cheap, Origin.WEBHOOK)  # an amount mismatch: rejected
    yield 600 + w.rng.uniform(1, 30)
    gone = w.charge(pid, cid, amount, "expired", created_at=created)
    w.read(gone, Origin.POLL)
    yield w.rng.uniform(1, 30)
    # A payload that claims success after the expiry: a conflict, nothing changes.
    claim = webhook_json(
        w.charge(pid, cid, amount, "successful", created_at=created),
        event_id=w.oid("evnt_test_"),
    )
    r = w.t.record_webhook(claim, verification="verified", apply_payload=True)
    w.count(len(r.events))
    if w.rng.random() < 0.2:
        try:
            w.t.record_webhook(b'{"object": "event", "id": "evnt_test_broken", "key": ')
        except MalformedInputError:
            w.count(0)


def stuck(w: World, pid: str, amount: int) -> Scenario:
    """Left as they are: pending with no news, or a create never settled: 1-2 events."""
    w.request(pid, amount)
    yield w.rng.uniform(0.3, 2.0)
    if w.rng.random() < 0.5:
        cid = w.oid("chrg_test_")
        w.read(w.charge(pid, cid, amount, "pending"), Origin.CREATE_RESPONSE)
    else:
        r = w.t.record_create_unknown(pid, reason="connection reset by peer on POST /charges")
        w.count(len(r.events))


SCENARIOS: tuple[tuple[Callable[[World, str, int], Scenario], float], ...] = (
    (paid, 0.62),
    (declined, 0.10),
    (expired, 0.10),
    (timeout, 0.05),
    (lost, 0.04),
    (refused, 0.03),
    (late, 0.02),
    (hostile, 0.03),
    (stuck, 0.01),
)


def build(
    path: Path,
    *,
    events: int,
    seed: int = 1,
    batch: int = 2000,
    every: float = 6.0,
    progress: Callable[[World], None] | None = None,
) -> World:
    """
    Append payments to the log at ``path`` until it holds ``events`` events.
    Payments arrive every ``every`` simulated seconds on average.
    """
    rng = random.Random(seed)
    clock = FakeClock(START)
    store = BatchedStore(path, synchronous="OFF")
    tracker = Tracker(store, clock=clock)
    world = World(tracker, clock, rng)
    kinds = [s for s, _ in SCENARIOS]
    weights = [p for _, p in SCENARIOS]
    heap: list[tuple[dt.datetime, int, Scenario]] = []
    seq = 0
    next_arrival = START
    done_inputs = 0
    try:
        store.conn.execute("BEGIN IMMEDIATE")
        while heap or world.events < events:
            if world.events < events and (not heap or next_arrival <= heap[0][0]):
                when = next_arrival
                seq += 1
                kind = rng.choices(kinds, weights)[0]
                pid = f"order-{seq:07d}"
                amount = rng.choice((2_000, 9_900, 35_000, 120_000, 1_250_000))
                gen = kind(world, pid, amount)
                next_arrival = when + dt.timedelta(seconds=rng.expovariate(1 / every))
            else:
                when, _, gen = heapq.heappop(heap)
            clock.set(max(when, clock()))
            try:
                delay = next(gen)
            except StopIteration:
                pass
            else:
                seq += 1
                heapq.heappush(heap, (clock() + dt.timedelta(seconds=delay), seq, gen))
            if world.inputs - done_inputs >= batch:
                store.conn.execute("COMMIT")
                store.conn.execute("BEGIN IMMEDIATE")
                done_inputs = world.inputs
                if progress is not None:
                    progress(world)
        store.conn.execute("COMMIT")
    finally:
        if store.conn.in_transaction:
            store.conn.execute("ROLLBACK")
        tracker.close()
    return world


def main(argv: list[str] | None = None) -> None:
    """The command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--db", type=Path, required=True, help="the log to build (must not exist)")
    parser.add_argument("--events", type=int, default=1_000_000, help="stop at this many events")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2000, help="inputs per transaction")
    parser.add_argument("--no-check", action="store_true", help="skip the final verify/replay")
    args = parser.parse_args(argv)
    if args.db.exists():
        parser.error(f"{args.db} exists; give a new path")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    started = time.perf_counter()

    def say(w: World) -> None:
        rate = w.inputs / (time.perf_counter() - started)
        print(
            f"\r{w.events:>9} events, {w.inputs:>9} inputs, {rate:,.0f} inputs/s",
            end="",
            file=sys.stderr,
            flush=True,
        )

    world = build(args.db, events=args.events, seed=args.seed, batch=args.batch, progress=say)
    elapsed = time.perf_counter() - started
    print(file=sys.stderr)
    summary: dict[str, Any] = {
        "db": str(args.db),
        "inputs": world.inputs,
        "events": world.events,
        "build_seconds": round(elapsed, 1),
        "db_bytes": args.db.stat().st_size,
    }
    with SQLiteStore(args.db, read_only=True) as store:
        summary["payments"] = store.counts()["payments"]
        if not args.no_check:
            report = store.verify()
            replay = store.replay()
            summary["verify"] = "ok" if report.ok else report.problem
            summary["replay_differences"] = len(replay.differences)
    print(json.dumps(summary, indent=2))
    if summary.get("verify", "ok") != "ok" or summary.get("replay_differences", 0):
        sys.exit(1)


if __name__ == "__main__":
    main()
