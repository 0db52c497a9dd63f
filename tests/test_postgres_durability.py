"""
PostgreSQL group commit and the shared WAL flush (``PostgresStore(shared_flush=True)``).

The chain's transaction commits without waiting for the WAL flush, and the
caller is answered only after a following synchronous transaction has flushed
the WAL past it. What must hold, whatever dies in between: no input is
acknowledged before it is durable, the hash chains verify after any crash, and
an input whose answer was lost is recorded again as a duplicate. Real
processes, a real server, killed for real.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg import Cluster, _bin_dir

from kplus_fsm import Outcome, PostgresStore, Tracker

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")
pytestmark = pytest.mark.slow

WRITER = """
import sys
from kplus_fsm import PostgresStore, Tracker

url, count = sys.argv[1], int(sys.argv[2])
with Tracker(PostgresStore(url)) as tracker:
    for i in range(count):
        result = tracker.request_payment(
            payment_id=f"pay-{i}", amount=10_000, return_uri="https://shop.example/r"
        )
        print(f"acked pay-{i} {result.outcome.value}", flush=True)
"""


def _writer(url: str, count: int, failpoints: str, tmp_path: Path) -> subprocess.Popen[str]:
    script = tmp_path / "writer.py"
    script.write_text(WRITER, encoding="utf-8")
    env = {**os.environ, "KPLUS_FSM_FAILPOINTS": failpoints}
    return subprocess.Popen(
        [sys.executable, str(script), url, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _acked(output: str) -> list[str]:
    return [line.split()[1] for line in output.splitlines() if line.startswith("acked ")]


def _visible(url: str, payment_id: str) -> bool:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT 1 FROM payments WHERE payment_id = %s", (payment_id,))
        return row.fetchone() is not None


def test_killed_between_the_commit_and_the_flush(pg_url: str, tmp_path: Path) -> None:
    """The writer dies after its 5th chain commit, before the flush: never acknowledged."""
    PostgresStore(pg_url).close()
    proc = _writer(pg_url, 5, "postgres.before_flush@5=kill", tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -9
    assert _acked(out) == ["pay-0", "pay-1", "pay-2", "pay-3"]
    # The server did not crash: the commit stands (it was made), unacknowledged.
    assert _visible(pg_url, "pay-4")
    with Tracker(PostgresStore(pg_url)) as tracker:
        again = tracker.request_payment(
            payment_id="pay-4", amount=10_000, return_uri="https://shop.example/r"
        )
        assert again.outcome is Outcome.DUPLICATE  # the retry of the lost answer
        assert tracker.verify().ok
        assert tracker.replay().ok


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A server of this test's own, to crash."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries")
    cluster = Cluster(bin_dir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_server_crash_between_the_commit_and_the_flush(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    """
    The server stops as in a power cut while the 5th input's commit waits for its
    flush: the writer is never answered; after crash recovery the chains verify,
    the four acknowledged inputs are there, and the fifth is there once or not
    at all (its commit record may not have reached the disk).
    """
    url = own_cluster.url
    PostgresStore(url).close()
    proc = _writer(url, 5, "postgres.before_flush@5=sleep:60", tmp_path)
    deadline = time.monotonic() + 60
    while not _visible(url, "pay-4"):
        assert time.monotonic() < deadline, "the 5th input's commit never became visible"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    own_cluster.crash()
    proc.kill()
    out, _ = proc.communicate(timeout=30)
    assert _acked(out) == ["pay-0", "pay-1", "pay-2", "pay-3"]
    own_cluster.restart()
    with Tracker(PostgresStore(url)) as tracker:
        assert tracker.verify().ok
        assert tracker.replay().ok
        for i in range(4):
            assert tracker.get(f"pay-{i}") is not None
        counts = tracker.store.counts()
        assert counts["payments"] in (4, 5)
        retry = tracker.request_payment(
            payment_id="pay-4", amount=10_000, return_uri="https://shop.example/r"
        )
        assert retry.outcome in (Outcome.APPLIED, Outcome.DUPLICATE)
        assert tracker.store.counts()["payments"] == 5
        assert tracker.verify().ok


@pytest.mark.parametrize("shared", [True, False])
def test_events_are_durable_before_a_consumer_sees_them(pg_url: str, shared: bool) -> None:
    """Each batch of events read is flushed before it is handed out (with shared_flush)."""
    with Tracker(PostgresStore(pg_url, shared_flush=shared)) as tracker:
        for i in range(5):
            tracker.request_payment(
                payment_id=f"pay-{i}", amount=10_000, return_uri="https://shop.example/r"
            )
        store = tracker.store
        assert isinstance(store, PostgresStore)
        flushes: list[int] = []
        real = store._flush_wal

        def counted() -> None:
            flushes.append(1)
            real()

        store._flush_wal = counted  # type: ignore[method-assign]
        assert [e.stream for e in store.iter_events(batch=2)] == [f"pay-{i}" for i in range(5)]
        assert len(flushes) == (3 if shared else 0)


@pytest.mark.parametrize("shared", [True, False])
def test_an_answered_input_is_flushed(pg_url: str, shared: bool) -> None:
    """
    When ``record()`` returns, the server's WAL is flushed past the chain commit
    (``pg_current_wal_flush_lsn()``, read on another connection, is at or past
    the insert position read right after that commit). With the shared flush
    this holds only because the confirming transaction writes WAL of its own: one
    that merely takes a transaction id commits asynchronously.
    """
    with Tracker(PostgresStore(pg_url, shared_flush=shared)) as tracker:
        store = tracker.store
        assert isinstance(store, PostgresStore)
        after_commit: list[str] = []
        real = store._flush_wal

        def marked() -> None:
            row = store.conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
            assert row is not None
            after_commit.append(str(row[0]))
            real()

        store._flush_wal = marked  # type: ignore[method-assign]
        flushed: list[bool] = []
        with psycopg.connect(pg_url, autocommit=True) as watcher:
            for i in range(10):
                tracker.request_payment(
                    payment_id=f"pay-{i}", amount=10_000, return_uri="https://shop.example/r"
                )
                mark = after_commit[-1] if shared else None
                if mark is None:  # own flush: the commit itself waited; its LSN is behind now
                    row = watcher.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
                    assert row is not None
                    mark = str(row[0])
                row = watcher.execute(
                    "SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", (mark,)
                ).fetchone()
                assert row is not None
                flushed.append(bool(row[0]))
        assert len(after_commit) == (10 if shared else 0)
        assert flushed == [True] * 10
