"""
Our side: every input through :class:`kplus_fsm.Tracker` (or the webhook
intake), exactly as a host runs it: the machine decides, the store writes the
inbox row, the events, the projection and both hash chains in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from _workload import RETURN_URI, WEBHOOK_SECRET, Step

from kplus_fsm import ImportReport, SQLiteStore, Tracker
from kplus_fsm._tracker import utc_now
from kplus_fsm.adapters.signatures import signature_headers
from kplus_fsm.cli import _queries


def apply_step(tracker: Tracker, step: Step) -> int:
    """Record one input; return how many events it appended."""
    if step.kind == "request":
        assert isinstance(step.body, dict)
        result = tracker.request_payment(**step.body)
    elif step.kind == "charge":
        assert isinstance(step.body, dict)
        result = tracker.record_charge(step.body, origin=step.origin)
    else:
        result = tracker.record_webhook(
            step.body, headers=step.headers, verification="verified", apply_payload=False
        )
    return len(result.events)


def check_applied(path: Path, expected_events: int) -> None:
    """After a timed run: every input appended its event (nothing silently refused)."""
    with SQLiteStore(path, read_only=True) as store:
        got = store.counts()["events"]
    if got != expected_events:
        raise AssertionError(f"{path.name}: {got} events, expected {expected_events}")


def build_log(
    path: Path,
    inputs: Iterable[Step],
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """
    Record ``inputs`` through the tracker into ``path``, one transaction per
    input as in production, at ``synchronous=OFF`` (durability changes no stored
    byte); return the number of events appended.
    """
    events = n = 0
    with Tracker(path, synchronous="OFF") as tracker:
        for step in inputs:
            events += apply_step(tracker, step)
            n += 1
            if progress is not None and n % 5000 == 0:
                progress(events)
        store = tracker.store
        assert isinstance(store, SQLiteStore)
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return events


def payment_ids(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT payment_id FROM payments ORDER BY payment_id")]
    finally:
        conn.close()


def stream_events(path: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every event of a log as ``(stream, kind, data)``, in log order."""
    with SQLiteStore(path, read_only=True) as store:
        for ev in store.iter_events(batch=5000):
            yield ev.stream, ev.kind, dict(ev.data)


class Show:
    """
    What ``kplus-fsm show ID`` does in process, without printing: find the
    payment (payment id or charge id), its timeline, whether it is stuck.
    """

    def __init__(self, path: Path) -> None:
        self.store = SQLiteStore(path, read_only=True)
        self.tracker = Tracker(self.store)

    def show(self, id_: str) -> int:
        current = self.tracker.get(id_)
        timeline = self.tracker.timeline(current)  # as `kplus-fsm show` does
        _queries.stuck_reason(current, now=utc_now())
        return len(timeline)

    def close(self) -> None:
        self.store.close()


def import_events(
    tracker: Tracker, envelopes: Sequence[dict[str, Any]], batch_size: int
) -> ImportReport:
    """``Tracker.import_events``: the batch API for backfills (issue 6)."""
    return tracker.import_events(envelopes, batch_size=batch_size)


class IntakeBench:
    """
    Webhook intake end to end: :class:`WebhookIntake` with signature checks and
    the fake Omise (in process, through its httpx transport: no sockets) as the
    re-fetch client. Set up outside the timed part: ``deliveries`` payments
    created through the tracker and the fake (``create_charge``), then paid at
    the fake; their ``charge.complete`` events signed as Omise sends them.
    Timed: ``intake.handle(body, headers)`` for each delivery (verify, record the
    delivery, dedupe, re-fetch the charge, record it: two commits).
    """

    SKEY = "skey_test_benchmarkbenchmark01"
    PKEY = "pkey_test_benchmarkbenchmark01"

    def __init__(self, path: Path, deliveries: int, *, prefix: str = "hook") -> None:
        from kplus_fsm.adapters.fake import FakeOmise
        from kplus_fsm.adapters.omise import OmiseClient
        from kplus_fsm.adapters.webhooks import WebhookIntake

        self.fake = FakeOmise(secret_key=self.SKEY, public_key=self.PKEY, seed=7)
        self.api = OmiseClient(secret_key=self.SKEY, transport=self.fake.transport())
        self.deliveries: list[tuple[bytes, dict[str, str]]] = []
        with Tracker(path, synchronous="OFF") as setup:
            for n in range(deliveries):
                result = setup.create_charge(
                    self.api,
                    payment_id=f"{prefix}-{n:08d}",
                    amount=35_000,
                    return_uri=RETURN_URI,
                    platform_type="IOS",
                )
                assert result.payment is not None
                assert result.payment.charge_id is not None
                cid = result.payment.charge_id
                self.fake.mark_as_paid(cid)
                (event,) = (e for e in self.fake.events(cid) if e["key"] == "charge.complete")
                body = json.dumps(event).encode()
                headers = {
                    "content-type": "application/json",
                    "user-agent": "Omise/2019-05-29",
                    **signature_headers(body, [WEBHOOK_SECRET], int(time.time())),
                }
                self.deliveries.append((body, headers))
        self.tracker = Tracker(path)  # synchronous=FULL, the default
        self.intake = WebhookIntake(self.tracker, client=self.api, secrets=(WEBHOOK_SECRET,))

    def run(self) -> float:
        """Handle every delivery; return the seconds it took."""
        handle = self.intake.handle
        results = []
        started = time.perf_counter()
        for body, headers in self.deliveries:
            results.append(handle(body, headers))
        elapsed = time.perf_counter() - started
        for r in results:
            refetched = r.refetch
            if r.status != 200 or refetched is None or refetched.status is None:
                raise AssertionError(f"delivery not applied: {r}")
            if refetched.status.value != "successful":
                raise AssertionError(f"re-fetch did not apply: {r}")
        return elapsed

    def close(self) -> None:
        self.intake.close()
        self.tracker.close()
        self.api.close()
        self.fake.close()
