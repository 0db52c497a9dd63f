"""
The contract every kplus_fsm :class:`~kplus_fsm.Store` implementation must pass.

Use it by subclassing :class:`StoreContract` in a test module, naming the
subclass ``Test...`` and implementing :meth:`StoreContract.make_store`,
:meth:`StoreContract.raw_execute` and :attr:`StoreContract.refused`. The suite
drives the store through :class:`kplus_fsm.Tracker` (with a
:class:`~kplus_fsm.testing.FakeClock`) and directly through the Store protocol.

The groups (mixins) below are combined into :class:`StoreContract`.
"""

from __future__ import annotations

import abc
import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest

from kplus_fsm import (
    Decision,
    EventKind,
    InboxDraft,
    NewEvent,
    Outcome,
    Payment,
    PaymentRequest,
    Result,
    Status,
    Store,
    Tracker,
    decide,
)
from kplus_fsm.exceptions import MalformedInputError, StoreError
from kplus_fsm.testing import FakeClock, charge_json, webhook_json
from kplus_fsm.typing import RecordItem

RETURN_URI = "https://shop.example/return"
NOW = "2026-01-01T00:00:00.000000Z"
HEX64 = re.compile(r"[0-9a-f]{64}")


class Boom(Exception):
    """Raised by test doubles to simulate a failure."""


def request(tracker: Tracker, payment_id: str, amount: int = 10_000) -> Result:
    """Record a valid payment request."""
    return tracker.request_payment(payment_id=payment_id, amount=amount, return_uri=RETURN_URI)


def snapshot(
    tracker: Tracker, payment_id: str, charge_id: str, status: str, *, origin: str = "poll"
) -> Result:
    """Record an (authoritative by default) charge snapshot for a payment."""
    return tracker.record_charge(
        charge_json(payment_id=payment_id, charge_id=charge_id, status=status), origin=origin
    )


def draft() -> InboxDraft:
    """A plausible inbox draft for direct ``Store.record`` calls."""
    return InboxDraft(
        kind="charge_snapshot", body='{"object":"charge"}', body_encoding="json", origin="poll"
    )


def everything(store: Store) -> tuple[Any, ...]:
    """Everything a store holds, for before/after comparisons."""
    payments = {e.stream for e in store.iter_events()}
    return (
        store.counts(),
        store.head(),
        list(store.iter_inbox()),
        list(store.iter_events()),
        {pid: store.get(pid) for pid in sorted(payments)},
    )


class _ContractBase(abc.ABC):
    """What a store implementation supplies to the contract suite."""

    #: The exception types the database raises when it refuses a statement.
    refused: ClassVar[tuple[type[Exception], ...]]

    @abc.abstractmethod
    def make_store(self, path: Path) -> Store:
        """Open (creating if missing) the store kept at ``path``."""

    @abc.abstractmethod
    def raw_execute(self, store: Store, sql: str) -> None:
        """Run one SQL statement on the store's database behind its back, committed."""

    @pytest.fixture
    def log_path(self, tmp_path: Path) -> Path:
        return tmp_path / "contract.db"

    @pytest.fixture
    def store(self, log_path: Path) -> Iterator[Store]:
        opened = self.make_store(log_path)
        try:
            yield opened
        finally:
            opened.close()

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def tracker(self, store: Store, clock: FakeClock) -> Tracker:
        return Tracker(store, clock=clock)


class AtomicityContract(_ContractBase):
    """One input is one transaction: its inbox row, events and projection, or nothing."""

    def test_failure_inside_decide_writes_nothing(self, store: Store, tracker: Tracker) -> None:
        request(tracker, "pay-1")
        snapshot(tracker, "pay-1", "chrg_1", "pending", origin="create_response")
        before = everything(store)
        seen: list[Payment | None] = []

        def decide(payment: Payment | None) -> Decision:
            seen.append(payment)
            raise Boom("decide failed")

        with pytest.raises(Boom, match="decide failed"):
            store.record(draft(), decide, now=NOW, payment_id="pay-1", charge_id="chrg_1")
        assert seen, "decide was never called"
        assert seen[0] is not None
        assert seen[0].payment_id == "pay-1"
        assert seen[0].status is Status.PENDING
        assert everything(store) == before

    def test_log_continues_after_a_failed_input(self, store: Store, tracker: Tracker) -> None:
        request(tracker, "pay-1")

        def decide(payment: Payment | None) -> Decision:
            raise Boom("no")

        with pytest.raises(Boom):
            store.record(draft(), decide, now=NOW, payment_id="pay-1")
        result = snapshot(tracker, "pay-1", "chrg_1", "pending")
        assert result.inbox_id == 2
        assert [e.position for e in store.iter_events()] == [1, 2]
        assert store.verify().ok

    def test_fold_failure_after_the_inbox_insert_writes_nothing(
        self, store: Store, tracker: Tracker
    ) -> None:
        request(tracker, "pay-1")
        before = everything(store)

        def decide(payment: Payment | None) -> Decision:
            # A charge.pending event without its fields cannot be folded: the
            # store fails after it has already inserted the inbox row.
            return Decision(
                outcome=Outcome.APPLIED,
                reason="bad event",
                events=(NewEvent(kind=EventKind.CHARGE_PENDING, data={}),),
                payment_id="pay-1",
            )

        with pytest.raises(StoreError):
            store.record(draft(), decide, now=NOW, payment_id="pay-1")
        assert everything(store) == before

    def test_projection_failure_after_the_events_writes_nothing(
        self, store: Store, tracker: Tracker
    ) -> None:
        request(tracker, "pay-1")
        before = everything(store)

        def decide(payment: Payment | None) -> Decision:
            # Folds into a Payment with amount None: the projection write (the
            # last write of the transaction) violates NOT NULL.
            return Decision(
                outcome=Outcome.APPLIED,
                reason="bad projection",
                events=(
                    NewEvent(
                        kind=EventKind.PAYMENT_REQUESTED,
                        data={
                            "payment_id": "pay-x",
                            "amount": None,
                            "currency": "THB",
                            "return_uri": RETURN_URI,
                        },
                    ),
                ),
                payment_id="pay-x",
            )

        with pytest.raises(StoreError):
            store.record(draft(), decide, now=NOW, payment_id="pay-x")
        assert everything(store) == before
        assert store.get("pay-x") is None
        assert store.stream("pay-x") == []


class AppendOnlyContract(_ContractBase):
    """inbox and events are append-only; streams have unique, gap-free versions."""

    @pytest.mark.parametrize(
        "sql",
        [
            "UPDATE inbox SET reason = 'edited' WHERE id = 1",
            "DELETE FROM inbox WHERE id = 1",
            "UPDATE events SET data = '{}' WHERE position = 1",
            "DELETE FROM events WHERE position = 1",
        ],
    )
    def test_update_and_delete_are_refused(self, store: Store, tracker: Tracker, sql: str) -> None:
        request(tracker, "pay-1")
        snapshot(tracker, "pay-1", "chrg_1", "pending")
        before = everything(store)
        with pytest.raises(self.refused, match="append-only"):
            self.raw_execute(store, sql)
        assert everything(store) == before
        assert store.verify().ok

    def test_stream_versions_are_one_to_n(self, store: Store, tracker: Tracker) -> None:
        request(tracker, "pay-1")
        request(tracker, "pay-2")
        snapshot(tracker, "pay-1", "chrg_1", "pending")
        snapshot(tracker, "pay-2", "chrg_2", "pending")
        snapshot(tracker, "pay-1", "chrg_1", "successful")
        assert [e.version for e in store.stream("pay-1")] == [1, 2, 3]
        assert [e.version for e in store.stream("pay-2")] == [1, 2]
        pairs = [(e.stream, e.version) for e in store.iter_events()]
        assert len(pairs) == len(set(pairs)) == 5


class HashChainContract(_ContractBase):
    """verify() accepts a log built by the tracker and reports its heads."""

    def test_empty_log_verifies(self, store: Store) -> None:
        report = store.verify()
        assert report.ok
        assert report.problem is None
        assert (report.inbox_rows, report.events) == (0, 0)
        assert report.inbox_head == report.events_head == "0" * 64
        assert store.head() == {
            "inbox_id": 0,
            "inbox_hash": "0" * 64,
            "event_position": 0,
            "event_hash": "0" * 64,
        }

    def test_tracker_built_log_verifies(
        self, store: Store, tracker: Tracker, clock: FakeClock
    ) -> None:
        request(tracker, "pay-1")
        clock.advance(seconds=5)
        snapshot(tracker, "pay-1", "chrg_1", "pending", origin="create_response")
        request(tracker, "pay-2")
        tracker.record_create_error("pay-2", {"object": "error", "code": "x", "message": "y"})
        charge = charge_json(payment_id="pay-1", charge_id="chrg_1", status="successful")
        tracker.record_webhook(webhook_json(charge, event_id="evnt_1"))
        tracker.record_webhook(webhook_json(charge, event_id="evnt_1"))
        with pytest.raises(MalformedInputError):
            tracker.record_charge(b"\x80 not json", origin="poll")
        snapshot(tracker, "nobody", "chrg_9", "pending")  # rejected: no such payment
        report = store.verify()
        counts = store.counts()
        head = store.head()
        assert report.ok, report.problem
        assert report.problem is None
        assert (report.table, report.row_id) == (None, None)
        assert report.inbox_rows == counts["inbox"] == 8
        assert report.events == counts["events"] == head["event_position"]
        assert report.inbox_head == head["inbox_hash"]
        assert report.events_head == head["event_hash"]
        assert report.schema_version is not None

    def test_every_row_extends_the_chain(self, store: Store, tracker: Tracker) -> None:
        heads = [store.head()["inbox_hash"]]
        for i in range(4):
            request(tracker, f"pay-{i}")
            heads.append(store.head()["inbox_hash"])
        assert all(HEX64.fullmatch(h) for h in heads)
        assert len(set(heads)) == 5
        assert [row.hash for row in store.iter_inbox()] == heads[1:]


class DedupeContract(_ContractBase):
    """A redelivered webhook is recorded every time and applied once."""

    def test_same_webhook_three_times(self, store: Store, tracker: Tracker) -> None:
        request(tracker, "pay-1")
        snapshot(tracker, "pay-1", "chrg_1", "pending", origin="create_response")
        body = webhook_json(
            charge_json(payment_id="pay-1", charge_id="chrg_1", status="successful"),
            event_id="evnt_dup",
        )
        outcomes = [tracker.record_webhook(body).outcome for _ in range(3)]
        assert outcomes == [Outcome.APPLIED, Outcome.DUPLICATE, Outcome.DUPLICATE]
        rows = [r for r in store.iter_inbox() if r.kind == "webhook"]
        assert len(rows) == 3
        assert [r.external_id for r in rows] == ["evnt_dup"] * 3
        assert [r.outcome for r in rows] == ["applied", "duplicate", "duplicate"]
        accepted = [e for e in store.iter_events() if e.kind == EventKind.WEBHOOK_ACCEPTED]
        assert [e.data["event_id"] for e in accepted] == ["evnt_dup"]
        payment = store.get("pay-1")
        assert payment is not None
        assert payment.status is Status.SUCCESSFUL
        assert payment.webhook_event_ids == frozenset({"evnt_dup"})
        assert payment.version == 4  # requested, pending, webhook.accepted, successful

    def test_hint_only_webhook_is_deduplicated_by_event_id(
        self, store: Store, tracker: Tracker
    ) -> None:
        request(tracker, "pay-1")
        snapshot(tracker, "pay-1", "chrg_1", "pending", origin="create_response")
        body = webhook_json(
            charge_json(payment_id="pay-1", charge_id="chrg_1", status="successful"),
            event_id="evnt_hint",
        )
        results = [tracker.record_webhook(body, apply_payload=False) for _ in range(3)]
        assert [r.outcome for r in results] == [
            Outcome.APPLIED,
            Outcome.DUPLICATE,
            Outcome.DUPLICATE,
        ]
        assert [len(r.events) for r in results] == [1, 0, 0]
        payment = store.get("pay-1")
        assert payment is not None
        assert payment.status is Status.PENDING  # a hint does not move the state
        assert payment.version == 3
        other = webhook_json(
            charge_json(payment_id="pay-1", charge_id="chrg_1", status="successful"),
            event_id="evnt_other",
        )
        assert tracker.record_webhook(other, apply_payload=False).outcome is Outcome.APPLIED


class ReadsContract(_ContractBase):
    """get, find, stream and the batched iterators read what was written."""

    @pytest.fixture
    def seven_events(self, tracker: Tracker) -> None:
        for pid in ("pay-1", "pay-2", "pay-3"):
            request(tracker, pid)
        snapshot(tracker, "pay-1", "chrg_1", "pending")
        snapshot(tracker, "pay-2", "chrg_2", "pending")
        snapshot(tracker, "pay-1", "chrg_1", "successful")
        snapshot(tracker, "pay-2", "chrg_2", "expired")

    def test_get_and_find(self, store: Store, tracker: Tracker) -> None:
        request(tracker, "pay-1", amount=12_345)
        tracker.record_charge(
            charge_json(payment_id="pay-1", charge_id="chrg_find", amount=12_345), origin="poll"
        ).raise_for_outcome()
        request(tracker, "pay-2")
        by_id = store.get("pay-1")
        assert by_id is not None
        assert (by_id.payment_id, by_id.amount, by_id.status) == ("pay-1", 12_345, Status.PENDING)
        assert by_id.charge_id == "chrg_find"
        assert store.find("chrg_find") == by_id
        assert store.find("pay-1") == by_id
        assert store.get("chrg_find") is None  # get is by payment id only
        assert store.get("nope") is None
        assert store.find("nope") is None
        other = store.find("pay-2")
        assert other is not None
        assert other.payment_id == "pay-2"

    def test_stream_is_in_version_order(self, store: Store, seven_events: None) -> None:
        events = store.stream("pay-1")
        assert [e.kind for e in events] == [
            "payment.requested",
            "charge.pending",
            "charge.successful",
        ]
        assert [e.version for e in events] == [1, 2, 3]
        assert [e.stream for e in events] == ["pay-1"] * 3
        positions = [e.position for e in events]
        assert positions == sorted(positions)
        assert positions == [1, 4, 6]
        assert [e.causation for e in events] == [1, 4, 6]
        assert store.stream("nope") == []

    @pytest.mark.parametrize(("after", "batch"), [(0, 2), (3, 2), (0, 1), (0, 7), (6, 2), (7, 2)])
    def test_iter_events_streams_in_batches(
        self, store: Store, seven_events: None, after: int, batch: int
    ) -> None:
        every = list(store.iter_events())
        assert [e.position for e in every] == [1, 2, 3, 4, 5, 6, 7]
        got = list(store.iter_events(after, batch=batch))
        assert got == every[after:]

    def test_iter_events_is_lazy(self, store: Store, tracker: Tracker, seven_events: None) -> None:
        iterator = store.iter_events(0, batch=2)
        first = next(iterator)
        assert first.position == 1
        snapshot(tracker, "pay-3", "chrg_3", "pending")  # appended while iterating
        rest = [e.position for e in iterator]
        assert rest == [2, 3, 4, 5, 6, 7, 8]

    @pytest.mark.parametrize(("after", "batch"), [(0, 2), (2, 2), (0, 3), (7, 2)])
    def test_iter_inbox_streams_in_batches(
        self, store: Store, seven_events: None, after: int, batch: int
    ) -> None:
        every = list(store.iter_inbox())
        assert [r.id for r in every] == [1, 2, 3, 4, 5, 6, 7]
        assert [r.kind for r in every] == ["payment_request"] * 3 + ["charge_snapshot"] * 4
        assert list(store.iter_inbox(after, batch=batch)) == every[after:]

    def test_counts(self, store: Store, seven_events: None) -> None:
        assert store.counts() == {"inbox": 7, "events": 7, "payments": 3}


class TimelineContract(_ContractBase):
    """Timelines interleave each input with its events and can look back in time."""

    def test_timeline_interleaves_inputs_and_events(
        self, store: Store, tracker: Tracker, clock: FakeClock
    ) -> None:
        request(tracker, "pay-1")
        clock.advance(seconds=1)
        snapshot(tracker, "pay-1", "chrg_1", "pending", origin="create_response")
        request(tracker, "pay-other")  # not part of pay-1's timeline
        clock.advance(seconds=1)
        body = webhook_json(
            charge_json(payment_id="pay-1", charge_id="chrg_1", status="successful"),
            event_id="evnt_t",
        )
        tracker.record_webhook(body)
        tracker.record_webhook(body)
        snapshot(tracker, "pay-1", "chrg_1", "pending")  # stale
        entries = store.timeline("pay-1")
        assert [(e.type, e.kind) for e in entries] == [
            ("input", "payment_request"),
            ("event", "payment.requested"),
            ("input", "charge_snapshot"),
            ("event", "charge.pending"),
            ("input", "webhook"),
            ("event", "webhook.accepted"),
            ("event", "charge.successful"),
            ("input", "webhook"),
            ("input", "charge_snapshot"),
        ]
        current_input = None
        for entry in entries:
            if entry.type == "input":
                current_input = entry.inbox_id
            else:
                assert entry.inbox_id == current_input
        inputs = [e for e in entries if e.type == "input"]
        assert [e.inbox_id for e in inputs] == [1, 2, 4, 5, 6]
        assert [e.outcome for e in inputs] == [
            "applied",
            "applied",
            "applied",
            "duplicate",
            "stale",
        ]
        assert [e.external_id for e in inputs][3] == "evnt_t"
        assert [e.version for e in entries if e.type == "event"] == [1, 2, 3, 4]
        assert entries == tracker.timeline("chrg_1")

    def test_state_as_of_before_and_after_a_transition(
        self, tracker: Tracker, clock: FakeClock
    ) -> None:
        t0 = clock()
        request(tracker, "pay-1")
        t1 = clock.advance(minutes=1)
        snapshot(tracker, "pay-1", "chrg_1", "pending")
        t2 = clock.advance(minutes=1)
        snapshot(tracker, "pay-1", "chrg_1", "successful")
        second = dt.timedelta(seconds=1)
        assert tracker.state_as_of("pay-1", t0 - second) is None
        at_created = tracker.state_as_of("pay-1", t1 - second)
        assert at_created is not None
        assert (at_created.status, at_created.version) == (Status.CREATED, 1)
        at_pending = tracker.state_as_of("pay-1", t1)  # inclusive
        assert at_pending is not None
        assert (at_pending.status, at_pending.charge_id) == (Status.PENDING, "chrg_1")
        by_text = tracker.state_as_of("chrg_1", "2026-01-01T00:01:30Z")
        assert by_text == at_pending
        assert tracker.state_as_of("pay-1", t2 + 100 * second) == tracker.get("pay-1")

    def test_timeline_as_of(self, tracker: Tracker, clock: FakeClock) -> None:
        t0 = clock()
        request(tracker, "pay-1")
        clock.advance(minutes=1)
        snapshot(tracker, "pay-1", "chrg_1", "pending")
        early = tracker.timeline("pay-1", as_of=t0 + dt.timedelta(seconds=30))
        assert [(e.type, e.kind) for e in early] == [
            ("input", "payment_request"),
            ("event", "payment.requested"),
        ]
        late = tracker.timeline("pay-1", as_of=t0 + dt.timedelta(minutes=2))
        assert len(late) == 4
        assert late == tracker.timeline("pay-1")
        assert tracker.timeline("pay-1", as_of=t0 - dt.timedelta(seconds=1)) == []


class ReplayContract(_ContractBase):
    """replay() rebuilds the projection from the events, reports and repairs drift."""

    @pytest.fixture
    def built(self, tracker: Tracker) -> None:
        request(tracker, "pay-1")
        snapshot(tracker, "pay-1", "chrg_1", "pending")
        snapshot(tracker, "pay-1", "chrg_1", "successful")
        request(tracker, "pay-2")
        tracker.record_create_unknown("pay-2", reason="timeout")
        request(tracker, "pay-3")
        tracker.record_create_error("pay-3", {"object": "error", "code": "c", "message": "m"})

    def test_replay_of_a_tracker_built_log_has_no_differences(
        self, store: Store, built: None
    ) -> None:
        report = store.replay()
        assert report.ok
        assert report.differences == ()
        assert (report.events, report.payments) == (7, 3)
        assert report.repaired is False

    def test_replay_reports_and_repairs_a_changed_projection(
        self, store: Store, built: None
    ) -> None:
        original = store.get("pay-1")
        assert original is not None
        self.raw_execute(
            store,
            "UPDATE payments SET status = 'failed', failure_code = 'tampered' "
            "WHERE payment_id = 'pay-1'",
        )
        tampered = store.get("pay-1")
        assert tampered is not None
        assert tampered.status is Status.FAILED
        report = store.replay()
        assert not report.ok
        found = {(d.payment_id, d.field): (d.stored, d.replayed) for d in report.differences}
        assert found == {
            ("pay-1", "status"): ("failed", "successful"),
            ("pay-1", "failure_code"): ("tampered", None),
        }
        assert store.get("pay-1") == tampered  # a plain replay changes nothing
        repaired = store.replay(repair=True)
        assert repaired.repaired is True
        assert len(repaired.differences) == 2
        assert store.get("pay-1") == original
        assert store.replay().ok

    def test_replay_reports_and_removes_an_orphan_projection_row(
        self, store: Store, built: None
    ) -> None:
        self.raw_execute(
            store,
            "INSERT INTO payments (payment_id, status, amount, currency, return_uri, metadata,"
            " create_unknown, flags, webhook_event_ids, version, created_at, updated_at)"
            " VALUES ('ghost', 'successful', 5000, 'THB', 'https://x.example/', '{}', 0,"
            " '[]', '[]', 1, '2026-01-01', '2026-01-01')",
        )
        report = store.replay()
        assert [(d.payment_id, d.field) for d in report.differences] == [("ghost", "*")]
        store.replay(repair=True)
        assert store.get("ghost") is None
        assert store.replay().ok


class ConsumerContract(_ContractBase):
    """Consumer positions are stored per name and move only when their transaction commits."""

    def test_position_starts_at_zero_and_moves(self, store: Store) -> None:
        assert store.consumer_position("mailer") == 0
        store.write_transaction(lambda _db: store.set_consumer_position("mailer", 3, now=NOW))
        assert store.consumer_position("mailer") == 3
        store.write_transaction(lambda _db: store.set_consumer_position("mailer", 7, now=NOW))
        assert store.consumer_position("mailer") == 7
        assert store.consumer_position("shipper") == 0

    def test_rolled_back_transaction_keeps_the_position(self, store: Store) -> None:
        store.write_transaction(lambda _db: store.set_consumer_position("mailer", 2, now=NOW))

        def work(_db: object) -> None:
            store.set_consumer_position("mailer", 9, now=NOW)
            raise Boom("handler failed")

        with pytest.raises(Boom):
            store.write_transaction(work)
        assert store.consumer_position("mailer") == 2

    def test_positions_persist_across_reopening(self, log_path: Path) -> None:
        first = self.make_store(log_path)
        try:
            first.write_transaction(lambda _db: first.set_consumer_position("a", 5, now=NOW))
            first.write_transaction(lambda _db: first.set_consumer_position("b", 1, now=NOW))
        finally:
            first.close()
        second = self.make_store(log_path)
        try:
            assert second.consumer_position("a") == 5
            assert second.consumer_position("b") == 1
        finally:
            second.close()

    def test_tracker_consumer_uses_the_store_position(self, store: Store, tracker: Tracker) -> None:
        request(tracker, "pay-1")
        snapshot(tracker, "pay-1", "chrg_1", "pending")
        seen: list[int] = []
        consumer = tracker.consumer("audit", start="beginning")
        assert consumer.process(lambda e: seen.append(e.position)) == 2
        assert seen == [1, 2]
        assert store.consumer_position("audit") == 2
        assert consumer.process(lambda e: seen.append(e.position)) == 0
        assert seen == [1, 2]


class ImportContract(_ContractBase):
    """``record_many`` and the tracker's batched import of events read back from Omise."""

    @staticmethod
    def history(n: int) -> list[dict[str, Any]]:
        """Per payment: the event that it became pending, then that it succeeded."""
        out = []
        for i in range(n):
            pid, cid = f"pay-{i}", f"chrg_{i}"
            for j, status in enumerate(("pending", "successful")):
                charge = charge_json(payment_id=pid, charge_id=cid, status=status)
                out.append(webhook_json(charge, event_id=f"evnt_{i}_{j}"))
        return out

    def test_import_commits_per_batch_and_applies_in_order(
        self, store: Store, tracker: Tracker
    ) -> None:
        for i in range(5):
            request(tracker, f"pay-{i}")
        report = tracker.import_events(self.history(5), batch_size=4)
        assert (report.total, report.commits) == (10, 3)
        assert report.outcomes == {"applied": 10}
        assert (report.first_inbox_id, report.last_inbox_id) == (6, 15)
        assert all(store.get(f"pay-{i}").status is Status.SUCCESSFUL for i in range(5))  # type: ignore[union-attr]
        row = next(r for r in store.iter_inbox() if r.id == 6)
        assert (row.origin, row.verification, row.external_id) == (
            "backfill",
            "fetched",
            "evnt_0_0",
        )
        assert store.verify().ok
        assert store.replay().ok

    def test_import_again_changes_nothing(self, store: Store, tracker: Tracker) -> None:
        request(tracker, "pay-0")
        tracker.import_events(self.history(1))
        before = store.counts()["events"]
        again = tracker.import_events(self.history(1))
        assert again.outcomes == {"duplicate": 2}
        assert store.counts()["events"] == before

    def test_malformed_events_are_recorded_and_counted(
        self, store: Store, tracker: Tracker
    ) -> None:
        request(tracker, "pay-0")
        events: list[Any] = [b"not json", {"object": "event", "id": "evnt_x"}, *self.history(1)]
        report = tracker.import_events(events, batch_size=10)
        assert report.outcomes == {"applied": 2, "rejected": 2}
        rows = list(store.iter_inbox())
        assert [r.outcome for r in rows[1:3]] == ["rejected", "rejected"]
        assert rows[1].raw() == "not json"
        assert rows[2].external_id == "evnt_x"

    def test_record_many_isolates_a_failing_item(self, store: Store, tracker: Tracker) -> None:
        request(tracker, "pay-0")

        def boom(_payment: Payment | None) -> Decision:
            raise Boom("decide failed")

        def ok(payment: Payment | None) -> Decision:
            return Decision(outcome=Outcome.DUPLICATE, reason="no change", payment_id="pay-0")

        out = store.record_many(
            [
                RecordItem(draft=draft(), decide=ok, now=NOW, payment_id="pay-0"),
                RecordItem(draft=draft(), decide=boom, now=NOW, payment_id="pay-0"),
                RecordItem(draft=draft(), decide=ok, now=NOW, payment_id="pay-0"),
            ]
        )
        assert isinstance(out[1], Boom)
        assert [r.inbox.id for r in out if not isinstance(r, Exception)] == [2, 3]
        assert store.counts()["inbox"] == 3
        assert store.verify().ok


class OperationsContract(_ContractBase):
    """Leases, leased consumers, unresolved hints, the reconciliation queue, orders."""

    T0 = "2026-01-01T00:00:00.000000Z"
    T1 = "2026-01-01T00:00:10.000000Z"
    T2 = "2026-01-01T00:00:40.000000Z"

    def test_one_holder_at_a_time_and_takeover_after_expiry(self, store: Store) -> None:
        a = store.acquire_lease("job", "a", now=self.T0, expires_at=self.T1)
        assert a is not None
        assert a.token == 1
        assert store.acquire_lease("job", "b", now=self.T0, expires_at=self.T2) is None
        again = store.acquire_lease("job", "a", now=self.T0, expires_at=self.T2)
        assert again is not None
        assert again.token == 1
        b = store.acquire_lease("job", "b", now=self.T2, expires_at="2026-01-01T00:01:00.000000Z")
        assert b is not None
        assert b.token == 2
        assert not store.lease_valid(again, now=self.T2)
        assert (
            store.renew_lease(again, now=self.T2, expires_at="2026-01-02T00:00:00.000000Z") is None
        )
        assert store.lease_valid(b, now=self.T2)

    def test_release_lets_another_take_it_at_once(self, store: Store) -> None:
        a = store.acquire_lease("job", "a", now=self.T0, expires_at=self.T2)
        assert a is not None
        store.release_lease(a, now=self.T1)
        b = store.acquire_lease("job", "b", now=self.T1, expires_at=self.T2)
        assert b is not None
        assert b.token == 2
        held = store.lease("job")
        assert held is not None
        assert held.holder == "b"

    def test_fenced_advance_refuses_a_lost_lease(self, store: Store, tracker: Tracker) -> None:
        from kplus_fsm.exceptions import LeaseLostError

        request(tracker, "pay-1")
        a = store.acquire_lease("consumer:c", "a", now=self.T0, expires_at=self.T1)
        assert a is not None
        assert store.create_consumer("c", 0, now=self.T0)
        assert not store.create_consumer("c", 5, now=self.T0)  # exists: unchanged
        store.advance_consumer("c", 1, now=self.T0, lease=a)
        assert store.consumer_position("c") == 1
        b = store.acquire_lease(
            "consumer:c", "b", now=self.T2, expires_at="2026-01-02T00:00:00.000000Z"
        )
        assert b is not None
        with pytest.raises(LeaseLostError):
            store.advance_consumer("c", 7, now=self.T2, lease=a)
        assert store.consumer_position("c") == 1

    def test_new_consumer_starts_where_told(
        self, store: Store, tracker: Tracker, clock: FakeClock
    ) -> None:
        from kplus_fsm.exceptions import ConsumerStartError

        request(tracker, "pay-1")
        snapshot(tracker, "pay-1", "chrg_1", "pending")
        clock.advance(minutes=5)
        middle = clock()
        request(tracker, "pay-2")
        with pytest.raises(ConsumerStartError):
            tracker.consumer("nostart").process(lambda _e: None)
        assert not store.consumer_exists("nostart")
        seen: dict[str, list[str]] = {"now": [], "time": [], "all": []}
        tracker.consumer("from-now", start="now").process(lambda e: seen["now"].append(e.stream))
        tracker.consumer("from-time", start=middle).process(lambda e: seen["time"].append(e.stream))
        tracker.consumer("all", start="beginning").process(lambda e: seen["all"].append(e.stream))
        assert seen == {"now": [], "time": ["pay-2"], "all": ["pay-1", "pay-1", "pay-2"]}
        snapshot(tracker, "pay-2", "chrg_2", "pending")
        tracker.consumer("from-now").process(lambda e: seen["now"].append(e.stream))
        assert seen["now"] == ["pay-2"]

    def test_a_consumer_busy_elsewhere_returns_at_once(
        self, store: Store, tracker: Tracker
    ) -> None:
        request(tracker, "pay-1")
        other = tracker.consumer("ship", start="beginning")
        assert other.acquire()
        handled: list[int] = []
        assert tracker.consumer("ship").process(lambda e: handled.append(e.position)) == 0
        assert handled == []
        other.release()
        assert tracker.consumer("ship").process(lambda e: handled.append(e.position)) == 1

    def test_in_transaction_work_of_a_fenced_runner_commits_nothing(
        self, store: Store, tracker: Tracker, clock: FakeClock
    ) -> None:
        from kplus_fsm.exceptions import LeaseLostError

        request(tracker, "pay-1")
        slow = tracker.consumer("books", start="beginning", lease_ttl=dt.timedelta(seconds=10))
        assert slow.acquire()

        def handler(_event: Any, _handle: Any) -> None:
            clock.advance(seconds=11)  # the runner stalls past its lease while it works

        with pytest.raises(LeaseLostError):
            slow._batch_in_transaction(handler, 10)
        assert store.consumer_position("books") == 0
        thief = tracker.consumer("books")
        assert thief.acquire()
        assert thief.fencing_token == 2

    def test_unresolved_hints_follow_reads(self, store: Store, tracker: Tracker) -> None:
        request(tracker, "pay-1")
        snapshot(tracker, "pay-1", "chrg_1", "pending", origin="create_response")
        hook = webhook_json(
            charge_json(payment_id="pay-1", charge_id="chrg_1", status="successful"),
            event_id="evnt_1",
        )
        accepted = tracker.record_webhook(hook, apply_payload=False)
        (hint,) = store.unresolved_hints()
        assert (hint.inbox_id, hint.charge_id, hint.payment_id, hint.event_id) == (
            accepted.inbox_id,
            "chrg_1",
            "pay-1",
            "evnt_1",
        )
        assert store.unresolved_hints(after=accepted.inbox_id) == []
        assert store.unresolved_hints(charge_id="chrg_other") == []
        dup = tracker.record_webhook(hook, apply_payload=False)
        assert dup.outcome.value == "duplicate"
        assert len(store.unresolved_hints()) == 1  # a duplicate is the same hint
        snapshot(tracker, "pay-1", "chrg_1", "successful", origin="refetch")
        assert store.unresolved_hints() == []

    def test_reconcile_queue_least_recently_checked_first(
        self, store: Store, tracker: Tracker
    ) -> None:
        from kplus_fsm._store._log import Check

        for pid in ("pay-a", "pay-b", "pay-c"):
            request(tracker, pid)
        args: dict[str, Any] = {
            "now": "2030-01-01T00:00:00Z",
            "cutoff": "2030-01-01T00:00:00.000000Z",
            "limit": 10,
        }
        first = [p.payment_id for p in store.reconcile_candidates(**args)]
        assert first == ["pay-a", "pay-b", "pay-c"]
        store.note_checks([Check(payment_id="pay-a", next_at=self.T0)], now=self.T1)
        assert [p.payment_id for p in store.reconcile_candidates(**args)] == [
            "pay-b",
            "pay-c",
            "pay-a",
        ]
        store.finish_checks([Check(payment_id="pay-a", next_at="2031-01-01T00:00:00.000000Z")])
        assert store.check_attempts(["pay-a", "pay-b"]) == {"pay-a": 1, "pay-b": 0}
        resting = store.reconcile_candidates(**args, stored_now="2030-06-01T00:00:00.000000Z")
        assert [p.payment_id for p in resting] == ["pay-b", "pay-c"]

    def test_orders_and_their_attempts(self, store: Store, tracker: Tracker) -> None:
        tracker.request_payment(
            payment_id="o-1.1", amount=10_000, return_uri=RETURN_URI, order_ref="o-1"
        )
        tracker.record_charge(
            charge_json(payment_id="o-1.1", charge_id="chrg_o1", status="failed"), origin="poll"
        )
        second = tracker.request_payment(
            payment_id="o-1.2", amount=10_000, return_uri=RETURN_URI, order_ref="o-1"
        )
        assert second.outcome.value == "applied"
        busy = tracker.request_payment(
            payment_id="o-1.3", amount=10_000, return_uri=RETURN_URI, order_ref="o-1"
        )
        assert busy.outcome.value == "rejected"
        assert "attempt in progress: o-1.2" in busy.reason
        attempts = store.payments_for_order("o-1")
        assert [(p.payment_id, p.order_ref) for p in attempts] == [
            ("o-1.1", "o-1"),
            ("o-1.2", "o-1"),
        ]
        assert store.get("o-1.2") == attempts[1]
        assert tracker.replay().ok


class GroupCommitContract(_ContractBase):
    """Inputs recorded by several threads at once share one durable commit."""

    def test_waiting_inputs_share_the_next_commit(self, store: Any) -> None:
        """
        While one input's transaction is open, three more threads queue; they
        commit together in the next transaction, each acknowledged after it.
        """
        tracker = Tracker(store, clock=FakeClock())
        inside, go_on = threading.Event(), threading.Event()
        results: dict[str, Outcome] = {}

        def slow_decide(payment: Any) -> Decision:
            inside.set()
            assert go_on.wait(10)
            return decide(
                payment,
                PaymentRequest.create(payment_id="pay-0", amount=10_000, return_uri=RETURN_URI),
            )

        def first() -> None:
            draft = InboxDraft(kind="payment_request", body="{}", body_encoding="json")
            rec = store.record(
                draft, slow_decide, now="2026-01-01T00:00:00.000000Z", payment_id="pay-0"
            )
            results["pay-0"] = rec.decision.outcome

        def later(pid: str) -> None:
            results[pid] = request(tracker, pid).outcome

        threads = [threading.Thread(target=first)]
        threads[0].start()
        assert inside.wait(10)
        threads += [threading.Thread(target=later, args=(f"pay-{i}",)) for i in (1, 2, 3)]
        for t in threads[1:]:
            t.start()
        deadline = time.monotonic() + 10
        while store._group.queued < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert store._group.queued == 3
        assert results == {}, "an input was acknowledged before its commit"
        go_on.set()
        for t in threads:
            t.join(10)
        assert results == dict.fromkeys(("pay-0", "pay-1", "pay-2", "pay-3"), Outcome.APPLIED)
        assert (store.commits, store.committed_inputs) == (2, 4)
        assert store.verify().ok
        assert store.replay().ok

    def test_a_failing_input_leaves_its_batch_alone(self, store: Any) -> None:
        """One input's error reaches its own caller only; the rest of the batch commits."""
        tracker = Tracker(store, clock=FakeClock())
        request(tracker, "pay-0")

        def boom(_payment: Any) -> Decision:
            raise RuntimeError("decide failed")

        draft = InboxDraft(kind="payment_request", body="{}", body_encoding="json")
        now = "2026-01-01T00:00:01.000000Z"

        def request_for(pid: str) -> Callable[[Payment | None], Decision]:
            req = PaymentRequest.create(payment_id=pid, amount=10_000, return_uri=RETURN_URI)
            return cast(Callable[[Payment | None], Decision], partial(decide, inp=req))

        items = [
            RecordItem(draft=draft, decide=request_for("pay-1"), now=now, payment_id="pay-1"),
            RecordItem(draft=draft, decide=boom, now=now, payment_id="pay-x"),
            RecordItem(draft=draft, decide=request_for("pay-2"), now=now, payment_id="pay-2"),
        ]
        out = store.record_many(items)
        assert isinstance(out[1], RuntimeError)
        assert [r.inbox.id for r in out if not isinstance(r, Exception)] == [2, 3]
        assert store.commits == 2
        assert store.get("pay-x") is None
        assert store.counts() == {"inbox": 3, "events": 3, "payments": 3}
        assert store.verify().ok

    def test_many_threads_one_tracker(self, store: Any) -> None:
        """8 threads x 60 inputs through one tracker: every input once, the log intact."""
        tracker = Tracker(store, clock=FakeClock())
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(20):
                    pid = f"pay-{n}-{i}"
                    request(tracker, pid)
                    snapshot(tracker, pid, f"chrg_{n}_{i}", "pending")
                    snapshot(tracker, pid, f"chrg_{n}_{i}", "successful", origin="poll")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.counts() == {"inbox": 480, "events": 480, "payments": 160}
        assert store.committed_inputs == 480
        assert store.commits <= 480
        assert store.verify().ok
        assert store.replay().ok

    def test_a_row_the_database_refuses_leaves_its_batch_alone(self, store: Any) -> None:
        """A row that breaks a constraint fails alone; the batch is written again without it."""
        tracker = Tracker(store, clock=FakeClock())
        request(tracker, "pay-0")
        now = "2026-01-01T00:00:01.000000Z"

        def request_for(pid: str) -> Callable[[Payment | None], Decision]:
            req = PaymentRequest.create(payment_id=pid, amount=10_000, return_uri=RETURN_URI)
            return cast(Callable[[Payment | None], Decision], partial(decide, inp=req))

        good = InboxDraft(kind="payment_request", body="{}", body_encoding="json")
        bad = InboxDraft(kind="payment_request", body="{}", body_encoding="not-an-encoding")
        out = store.record_many(
            [
                RecordItem(draft=good, decide=request_for("pay-1"), now=now, payment_id="pay-1"),
                RecordItem(draft=bad, decide=request_for("pay-x"), now=now, payment_id="pay-x"),
                RecordItem(draft=good, decide=request_for("pay-2"), now=now, payment_id="pay-2"),
            ]
        )
        assert isinstance(out[1], StoreError)
        assert [r.inbox.id for r in out if not isinstance(r, Exception)] == [2, 3]
        assert store.get("pay-x") is None
        assert store.counts() == {"inbox": 3, "events": 3, "payments": 3}
        assert store.verify().ok
        assert store.replay().ok


class StoreContract(
    GroupCommitContract,
    OperationsContract,
    AtomicityContract,
    AppendOnlyContract,
    HashChainContract,
    DedupeContract,
    ReadsContract,
    TimelineContract,
    ReplayContract,
    ConsumerContract,
    ImportContract,
):
    """The whole contract: subclass it as ``Test<YourStore>`` and implement the hooks."""
