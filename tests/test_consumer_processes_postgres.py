"""
Leased consumers as real processes on one PostgreSQL log, each runner with its
own connection (two hosts): the holder killed mid-batch is replaced within the
lease time, its host comes back and takes over on a graceful stop, each of the
1,050 events is handled once (the one in hand at the kill, at most twice); a
fenced-off transactional runner commits nothing. Needs a server (tests/pg.py).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from consumer_runners import EVENTS, Fleet, build_log, fleet_scope, kill_holder_and_wait_takeover
from test_consumer_processes import (
    assert_handled_once_but_the_one_in_hand,
    assert_takeover_within_the_lease,
    fenced_runner_commits_nothing,
    one_at_a_time,
)

pytest.importorskip("psycopg", reason="psycopg is not installed")
pytestmark = pytest.mark.slow


@pytest.fixture
def fleet(pg_url: str, tmp_path: Path) -> Iterator[Fleet]:
    build_log(pg_url, side_table=True)
    yield from fleet_scope(pg_url, tmp_path)


class TestTwoHosts:
    """Two runners of one consumer, one PostgreSQL log."""

    def test_each_event_handled_once(self, fleet: Fleet) -> None:
        fleet.start()
        fleet.start()
        first = fleet.holder_at(EVENTS // 3)
        report = kill_holder_and_wait_takeover(fleet, first)
        assert_takeover_within_the_lease(report)
        second = fleet.holder()
        assert second is not None
        assert second is not first

        fleet.holder_at(2 * EVENTS // 3)
        back = fleet.start()  # the first host restarts its runner
        fleet.wait_for("the new runner to wait", lambda: "SIGTERM or Ctrl-C" in back.output())
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(timeout=20) == 0, second.output()
        fleet.wait_for("every event handled", lambda: fleet.position() == EVENTS)
        codes = fleet.stop_all()  # either of the first two may have held the lease first
        assert codes[fleet.runners.index(first)] == -signal.SIGKILL
        assert sorted(codes) == [-signal.SIGKILL, 0, 0]

        assert_handled_once_but_the_one_in_hand(fleet, report)
        repeats = sum(1 for n in fleet.handled().values() if n > 1)
        blocks = one_at_a_time(fleet, repeats=repeats)
        if blocks == [first.pid, second.pid]:
            # The second runner reached the end of the log before its SIGTERM
            # (a loaded machine starts the third process slowly): the restarted
            # runner found nothing left, and never handled an event early.
            assert fleet.traces()[-1][1] == second.pid
        else:
            assert blocks == [first.pid, second.pid, back.pid]
        for runner in fleet.runners:
            assert "Traceback" not in runner.output()

    def test_fenced_transactional_runner_commits_nothing(self, fleet: Fleet) -> None:
        fenced_runner_commits_nothing(fleet)
