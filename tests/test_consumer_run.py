"""``Consumer.run``: the graceful stop finishes the event in hand; handler failures are logged."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

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
        with structlog.testing.capture_logs() as logs:
            handled = consumer.run(handler, stop=stop, poll_interval=0.01, max_backoff=0.01)
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
