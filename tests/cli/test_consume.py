"""
``kplus-fsm consume`` as a real process: usage errors (exit 2, a message, no
traceback, nothing written), ``--once``, explicit starts, a handler that raises,
a busy lease, and the graceful stop on SIGTERM and SIGINT.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from consumer_runners import quiet
from store_contract import request, snapshot

from kplus_fsm import SQLiteStore, Tracker, format_time, utc_now

pytestmark = pytest.mark.slow

EXE = str(Path(sys.executable).with_name("kplus-fsm"))
TIMEOUT = 30.0

HANDLERS = """
import os
import time

SIDE = os.environ.get("KPLUS_TEST_SIDE", "side.txt")
DELAY = float(os.environ.get("KPLUS_TEST_DELAY") or 0)


def trace(event):
    if DELAY:
        time.sleep(DELAY)
    with open(SIDE, "a") as out:
        out.write(f"{event.position} {event.kind} {event.stream}\\n")
        out.flush()
        os.fsync(out.fileno())


def fail_on_pending(event):
    if event.kind == "charge.pending":
        raise RuntimeError("the warehouse is down")
    trace(event)


def in_transaction(event, handle):
    trace(event)


broken = 42
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "shop_handlers.py").write_text(HANDLERS, encoding="utf-8")
    return tmp_path


@pytest.fixture
def db(work: Path) -> Path:
    """A log with two payments: six events."""
    path = work / "kplus.db"
    with quiet(), Tracker(path) as tracker:
        for i in (1, 2):
            request(tracker, f"pay-{i}")
            snapshot(tracker, f"pay-{i}", f"chrg_{i}", "pending", origin="create_response")
            snapshot(tracker, f"pay-{i}", f"chrg_{i}", "successful")
    return path


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("OMISE_", "KPLUS_FSM_"))}
    out.update(PYTHONUNBUFFERED="1", **extra)
    return out


def consume(work: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [EXE, "consume", *args],
        cwd=work,
        env=env(**extra),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


def traced(work: Path) -> list[str]:
    side = work / "side.txt"
    return side.read_text(encoding="utf-8").splitlines() if side.exists() else []


def consumers(db: Path) -> dict[str, int]:
    with SQLiteStore(db, read_only=True) as store:
        rows = store.conn.execute("SELECT name, position FROM consumers").fetchall()
    return {name: int(position) for name, position in rows}


class TestUsage:
    """Exit 2 with a message; no consumer is created."""

    @pytest.mark.parametrize(
        ("handler", "message"),
        [
            ("nowhere:ship", "cannot import 'nowhere'"),
            ("shop_handlers:ship", "shop_handlers has no ship"),
            ("shop_handlers:broken", "is not callable"),
            ("shop_handlers", "is not a handler reference"),
            ("shop_handlers:in_transaction", "cannot be called as handler(event)"),
        ],
    )
    def test_handler_that_cannot_be_loaded(
        self, work: Path, db: Path, handler: str, message: str
    ) -> None:
        done = consume(work, "shipping", "--db", str(db), "--handler", handler, "--start", "now")
        assert done.returncode == 2
        assert message in done.stderr
        assert consumers(db) == {}

    def test_transactional_handler_needs_two_arguments(self, work: Path, db: Path) -> None:
        done = consume(
            work, "books", "--db", str(db), "--handler", "shop_handlers:trace", "--transactional"
        )
        assert done.returncode == 2
        assert "cannot be called as handler(event, handle)" in done.stderr

    def test_new_consumer_without_start(self, work: Path, db: Path) -> None:
        done = consume(work, "shipping", "--db", str(db), "--handler", "shop_handlers:trace")
        assert done.returncode == 2
        assert "does not exist yet" in done.stderr
        assert "--start now" in done.stderr
        assert "--start beginning" in done.stderr
        assert consumers(db) == {}
        assert traced(work) == []

    @pytest.mark.parametrize("start", ["yesterday", "-5", "2026-13-01"])
    def test_bad_start(self, work: Path, db: Path, start: str) -> None:
        args = ("--db", str(db), "--handler", "shop_handlers:trace", "--start", start)
        done = consume(work, "shipping", *args)
        assert done.returncode == 2
        assert "--start must be beginning, now" in done.stderr
        assert consumers(db) == {}

    def test_missing_database(self, work: Path) -> None:
        missing = work / "missing.db"
        args = ("--db", str(missing), "--handler", "shop_handlers:trace", "--start", "now")
        done = consume(work, "shipping", *args)
        assert done.returncode == 4
        assert "no database" in done.stderr
        assert not missing.exists()


class TestOnce:
    """``--once`` handles what is recorded, then exits."""

    def test_from_the_beginning_then_nothing_new(self, work: Path, db: Path) -> None:
        args = ("--db", str(db), "--handler", "shop_handlers:trace", "--once")
        done = consume(work, "shipping", *args, "--start", "beginning")
        assert done.returncode == 0, done.stderr
        assert "handled 6 events; position 6" in done.stdout
        assert [line.split()[0] for line in traced(work)] == ["1", "2", "3", "4", "5", "6"]
        again = consume(work, "shipping", *args, "--start", "beginning")
        assert again.returncode == 0
        assert "handled 0 events; position 6" in again.stdout
        assert "exists (position 6): --start is ignored" in again.stderr
        assert len(traced(work)) == 6

    def test_from_now_sees_only_later_events(self, work: Path, db: Path) -> None:
        args = ("--db", str(db), "--handler", "shop_handlers:trace", "--once")
        done = consume(work, "receipts", *args, "--start", "now")
        assert done.returncode == 0, done.stderr
        assert "handled 0 events; position 6" in done.stdout
        with Tracker(db) as tracker:
            request(tracker, "pay-3")
        later = consume(work, "receipts", *args)
        assert later.returncode == 0, later.stderr
        assert traced(work) == ["7 payment.requested pay-3"]

    def test_from_a_position_and_from_a_time(self, work: Path, db: Path) -> None:
        args = ("--db", str(db), "--handler", "shop_handlers:trace", "--once")
        assert consume(work, "after-4", *args, "--start", "4").returncode == 0
        assert [line.split()[0] for line in traced(work)] == ["5", "6"]
        (work / "side.txt").unlink()
        future = format_time(utc_now() + dt.timedelta(hours=1))
        assert consume(work, "later", *args, "--start", future).returncode == 0
        assert traced(work) == []
        assert consume(work, "lately", *args, "--start", "-1h").returncode == 0
        assert len(traced(work)) == 6
        assert consumers(db) == {"after-4": 6, "later": 6, "lately": 6}

    def test_a_handler_that_raises(self, work: Path, db: Path) -> None:
        args = ("--db", str(db), "--handler", "shop_handlers:fail_on_pending", "--once")
        done = consume(work, "shipping", *args, "--start", "beginning")
        assert done.returncode == 1
        assert (
            "the handler raised on event @2 (charge.pending, payment pay-1): "
            "RuntimeError: the warehouse is down; the position stays at 1"
        ) in done.stderr
        assert consumers(db) == {"shipping": 1}

    def test_busy_elsewhere(self, work: Path, db: Path) -> None:
        with Tracker(db) as tracker:
            other = tracker.consumer("shipping", start="beginning")
            assert other.acquire()
            done = consume(
                work, "shipping", "--db", str(db), "--handler", "shop_handlers:trace", "--once"
            )
            other.release()
        assert done.returncode == 0
        assert "is busy: another runner holds its lease" in done.stderr
        assert traced(work) == []

    def test_transactional(self, work: Path, db: Path) -> None:
        args = ("--db", str(db), "--handler", "shop_handlers:in_transaction")
        done = consume(work, "books", *args, "--transactional", "--once", "--start", "beginning")
        assert done.returncode == 0, done.stderr
        assert "handled 6 events; position 6" in done.stdout


class TestGracefulStop:
    """SIGTERM or SIGINT: the event in hand is finished and advanced, the lease released."""

    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
    def test_stop_mid_batch(self, work: Path, db: Path, sig: signal.Signals) -> None:
        args = ["--db", str(db), "--handler", "shop_handlers:trace", "--start", "beginning"]
        proc = subprocess.Popen(
            [EXE, "consume", "shipping", *args, "--poll-interval", "0.1"],
            cwd=work,
            env=env(KPLUS_TEST_DELAY="0.4"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + TIMEOUT
            while len(traced(work)) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.1)  # in the middle of the third event's handler
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err
        assert "Traceback" not in out + err
        assert f"stopped on {sig.name}" in err
        handled = len(traced(work))
        assert 3 <= handled < 6  # the event in hand was finished; the rest left
        assert consumers(db) == {"shipping": handled}  # and advanced past
        assert f"handled {handled} events; position {handled}; lease released" in err
        with SQLiteStore(db, read_only=True) as store:
            lease = store.lease("consumer:shipping")
        assert lease is not None
        assert lease.expires_at <= format_time(utc_now())
