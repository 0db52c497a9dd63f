"""``Consumer.run``: the graceful stop finishes the event in hand; handler failures are logged."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from store_contract import request, snapshot

from kplus_fsm import StoredEvent, Tracker, format_time
from kplus_fsm.testing import FakeClock


@pytest.fixture
def tracker(db_path: Path, clock: FakeClock) -> Iterator[Tracker]:
    with Tracker(db_path, clock=clock) as t:
        for i in (1, 2):
            request(t, f"pay-{i}")
            snapshot(t, f"pay-{i}", f"chrg_{i}", "pending")
            snapshot(t, f"pay-{i}", f"chrg_{i}", "successful")
        yield t


class TestRun:
    def test_stop_finishes_the_event_in_hand(self, tracker: Tracker) -> None:
        """``stop`` set during the third event: that one is advanced, the batch goes no further."""
        stop = threading.Event()
        seen: list[int] = []

        def handler(event: StoredEvent) -> None:
            seen.append(event.position)
            if len(seen) == 3:
                stop.set()

        consumer = tracker.consumer("shipping", start="beginning")
        assert consumer.run(handler, stop=stop, poll_interval=0.01) == 3
        assert seen == [1, 2, 3]
        assert consumer.position == 3
        lease = tracker.store.lease("consumer:shipping")
        assert lease is not None
        assert lease.expires_at <= format_time(tracker.clock())  # released
        assert consumer.lease is None

    def test_a_failing_handler_is_logged_on_one_line_and_retried(self, tracker: Tracker) -> None:
        stop = threading.Event()
        calls: list[int] = []

        def handler(event: StoredEvent) -> None:
            calls.append(event.position)
            if len(calls) == 1:
                raise RuntimeError("the warehouse is down")
            if event.position == 6:
                stop.set()

        consumer = tracker.consumer("shipping", start="beginning")
        saved = structlog.get_config()
        structlog.reset_defaults()  # whatever level an earlier test left configured
        try:
            with structlog.testing.capture_logs() as logs:
                handled = consumer.run(handler, stop=stop, poll_interval=0.01, max_backoff=0.01)
        finally:
            structlog.configure(**saved)
        assert handled == 6
        assert calls == [1, 1, 2, 3, 4, 5, 6]
        failed = [e for e in logs if e["event"] == "consumer_handler_failed"]
        assert failed == [
            {
                "event": "consumer_handler_failed",
                "log_level": "error",
                "consumer": "shipping",
                "position": 1,
                "kind": "payment.requested",
                "payment_id": "pay-1",
                "error": "RuntimeError: the warehouse is down",
                "failures": 1,
                "retry_in": 0.01,
            }
        ]
        [trace] = [e for e in logs if e["event"] == "consumer_handler_traceback"]
        assert trace["log_level"] == "info"
        assert isinstance(trace["exc_info"], RuntimeError)
        assert consumer.failed_event is None


class TestFailpoints:
    """A runner that dies at each step in between (here: a failpoint that raises)."""

    @pytest.fixture
    def armed(self, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
        from kplus_fsm import failpoints

        def arm(name: str) -> None:
            assert name in failpoints.FAILPOINTS
            monkeypatch.setitem(failpoints._ARMED, name, ("raise", None))

        return arm

    def test_after_handling_before_advancing(
        self, tracker: Tracker, armed: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from kplus_fsm import failpoints

        armed("consumer.after_handle")
        seen: list[int] = []
        consumer = tracker.consumer("shipping", start="beginning")
        with pytest.raises(failpoints.FailpointError):
            consumer.process(lambda e: seen.append(e.position))
        assert (seen, consumer.position) == ([1], 0)  # handled, not advanced
        monkeypatch.delitem(failpoints._ARMED, "consumer.after_handle")
        assert consumer.process(lambda e: seen.append(e.position)) == 6
        assert seen == [1, 1, 2, 3, 4, 5, 6]  # the one in hand, again, once

    def test_transactional_work_before_commit(
        self, tracker: Tracker, armed: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from kplus_fsm import failpoints

        tracker.store.write_transaction(
            lambda db: db.execute("CREATE TABLE shipped (position INTEGER NOT NULL)")
        )

        def ship(event: StoredEvent, db: Any) -> None:
            db.execute("INSERT INTO shipped VALUES (?)", [event.position])

        def shipped() -> list[int]:
            rows = tracker.store.write_transaction(
                lambda db: db.execute("SELECT position FROM shipped").fetchall()
            )
            return [int(r[0]) for r in rows]

        consumer = tracker.consumer("books", start="beginning")
        for name in ("consumer.before_transaction", "consumer.before_commit"):
            armed(name)
            with pytest.raises(failpoints.FailpointError):
                consumer.process_in_transaction(ship)
            assert (shipped(), consumer.position) == ([], 0)  # nothing committed
            monkeypatch.delitem(failpoints._ARMED, name)
        assert consumer.process_in_transaction(ship) == 6
        assert shipped() == [1, 2, 3, 4, 5, 6]
