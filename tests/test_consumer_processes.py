"""
Leased consumers as real processes: several ``kplus-fsm consume`` runners of one
consumer name over one SQLite log of 1,050 events. Each event is handled once;
a graceful stop (SIGTERM) hands over without a repeat; a holder killed
(SIGKILL) mid-batch is replaced within the lease time, and only the event it
had in hand (handled, not yet advanced) is handled again, once; a fenced-off
transactional runner commits nothing. The PostgreSQL version, as two hosts:
tests/test_consumer_processes_postgres.py.
"""

from __future__ import annotations

import datetime as dt
import itertools
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from consumer_runners import (
    EVENTS,
    LEASE_TTL,
    Fleet,
    KillReport,
    build_log,
    fleet_scope,
    kill_holder_and_wait_takeover,
)

from kplus_fsm import format_time, parse_time, utc_now

pytestmark = pytest.mark.slow


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    db = str(tmp_path / "kplus.db")
    build_log(db, side_table=True)
    yield from fleet_scope(db, tmp_path)


def one_at_a_time(fleet: Fleet, repeats: int) -> list[int]:
    """
    The traces, in the order they were written, show one runner at a time: the
    positions rise by one, except ``repeats`` steps back to the position just
    handled (a runner killed between handling and advancing); the pids form
    contiguous blocks. The pids of the blocks, in order.
    """
    traces = fleet.traces()
    blocks = [traces[0][1]]
    back = 0
    for (before, pid_before), (after, pid_after) in itertools.pairwise(traces):
        if pid_after != pid_before:
            blocks.append(pid_after)
        if after == before + 1:
            continue
        assert after == before, (before, after)
        assert pid_after != pid_before
        back += 1
    assert back == repeats
    assert len(blocks) == len(set(blocks)), f"a runner came back after another: {blocks}"
    return blocks


def assert_takeover_within_the_lease(report: KillReport) -> None:
    """Nobody took the killed runner's lease early; another took it soon after it expired."""
    expired = parse_time(report.killed_lease.expires_at)
    taken = parse_time(report.takeover.acquired_at)
    assert taken >= expired
    assert taken - expired < dt.timedelta(seconds=LEASE_TTL)
    print(f"takeover {(taken - expired).total_seconds():.3f} s after the killed lease expired")


def assert_handled_once_but_the_one_in_hand(fleet: Fleet, report: KillReport) -> None:
    handled = fleet.handled()
    assert sorted(handled) == list(range(1, EVENTS + 1))  # every event, none made up
    twice = {position: n for position, n in handled.items() if n > 1}
    assert set(twice.values()) <= {2}
    assert len(twice) <= 1  # the runner handles one event at a time
    for position in twice:
        assert position == report.advanced_before_kill + 1
        first_by = next(pid for p, pid in fleet.traces() if p == position)
        assert first_by == report.killed_pid


class TestOneConsumerManyProcesses:
    """N runners, one name: a hand-over by SIGTERM, then a SIGKILL, then the rest."""

    @pytest.mark.parametrize("processes", [3, 8])
    def test_each_event_handled_once(self, fleet: Fleet, processes: int) -> None:
        for _ in range(processes):
            fleet.start()
        first = fleet.holder_at(EVENTS // 4)
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(timeout=20) == 0, first.output()
        assert "stopped on SIGTERM" in first.output()
        assert "lease released" in first.output()

        second = fleet.holder_at(EVENTS // 2)
        assert second is not first
        report = kill_holder_and_wait_takeover(fleet, second)
        assert_takeover_within_the_lease(report)

        fleet.wait_for("every event handled", lambda: fleet.position() == EVENTS)
        codes = fleet.stop_all()
        assert codes.count(-signal.SIGKILL) == 1
        assert codes.count(0) == processes - 1, [r.output()[-500:] for r in fleet.runners]
        assert_handled_once_but_the_one_in_hand(fleet, report)
        repeats = sum(1 for n in fleet.handled().values() if n > 1)
        blocks = one_at_a_time(fleet, repeats=repeats)
        assert blocks[:2] == [first.pid, second.pid]
        for runner in fleet.runners:
            assert "Traceback" not in runner.output()
        lease = fleet.lease()
        assert lease is not None
        assert lease.expires_at <= format_time(utc_now())  # released on the way out

    def test_a_crash_between_handling_and_advancing(self, fleet: Fleet) -> None:
        """The failpoint kills the holder right after its 100th event: that one, again, once."""
        doomed = fleet.start(failpoints="consumer.after_handle@100=kill")
        fleet.wait_for("the first runner to hold the lease", lambda: fleet.holder() is doomed)
        heir = fleet.start()
        assert doomed.proc.wait(timeout=60) == -signal.SIGKILL
        fleet.wait_for("every event handled", lambda: fleet.position() == EVENTS)
        assert fleet.stop_all() == [-signal.SIGKILL, 0]
        handled = fleet.handled()
        assert sorted(handled) == list(range(1, EVENTS + 1))
        assert {p: n for p, n in handled.items() if n > 1} == {100: 2}
        assert one_at_a_time(fleet, repeats=1) == [doomed.pid, heir.pid]


def fenced_runner_commits_nothing(fleet: Fleet) -> None:
    """
    The first runner pauses (its second batch: lease in hand, no transaction
    yet) past its lease; the heir takes the lease, commits a batch, and stops.
    The first wakes, handles a batch inside a transaction under its old
    lease: refused at commit, rolled back. It takes the lease again and
    redoes that batch: each event committed exactly once.
    """
    handler = "consumer_handlers:record_in_transaction"
    stalled = fleet.start(
        handler=handler,
        transactional=True,
        failpoints=f"consumer.before_transaction@2=sleep:{LEASE_TTL * 3}",
        delay=0.002,
    )
    fleet.wait_for("the first batch", lambda: fleet.position() == 100)
    token = fleet.lease()
    heir = fleet.start(handler=handler, transactional=True, delay=0.002)
    fleet.wait_for("the heir's first batch", lambda: fleet.position() >= 200, timeout=30)
    took_over = fleet.lease()
    assert token is not None
    assert took_over is not None
    assert took_over.token == token.token + 1
    assert fleet.holder() is heir
    heir.proc.send_signal(signal.SIGTERM)
    assert heir.proc.wait(timeout=20) == 0, heir.output()
    left_at = fleet.position()
    assert left_at < EVENTS
    fleet.wait_for("every event committed", lambda: fleet.position() == EVENTS, timeout=60)
    assert fleet.stop_all() == [0, 0]

    shipped = fleet.shipped()
    assert sorted(p for p, _ in shipped) == list(range(1, EVENTS + 1))  # once each
    traced = fleet.handled()
    fenced = [p for p in range(left_at + 1, EVENTS + 1) if traced[p] == 2]
    # The batch handled under the lost lease: traced twice, committed once.
    assert fenced == list(range(left_at + 1, left_at + 101))
    assert {n for p, n in traced.items() if p not in fenced} == {1}
    by = dict(shipped)
    assert {by[p] for p in fenced} == {stalled.pid}
    assert {by[p] for p in range(101, left_at + 1)} == {heir.pid}
    final = fleet.lease()
    assert final is not None
    assert final.token == took_over.token + 1
    assert "Traceback" not in stalled.output() + heir.output()


class TestFencedTransactionalRunner:
    """A transactional runner that lost its lease while paused commits nothing."""

    def test_commits_nothing(self, fleet: Fleet) -> None:
        fenced_runner_commits_nothing(fleet)
