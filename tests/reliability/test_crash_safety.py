"""
Crash safety: a writer process feeding inputs through the tracker is killed with
SIGKILL at random moments, again and again, on one event log.

After every kill, before anything else writes to the file:

- every input the writer saw acknowledged is in ``inbox`` with the kind, the
  outcome and the number of events it was acknowledged with;
- at most one more input is there: the one in flight, committed but not yet
  acknowledged; nothing is recorded twice;
- no input is half-written: an ``applied`` input has its events, a ``rejected``
  one has none, a ``duplicate``/``stale``/``conflict`` one at most the
  ``webhook.accepted`` of its event id, every event's
  causation is an inbox row, and the ``payments`` projection equals the fold of
  the events (``replay`` finds no difference, no orphan row);
- ``verify`` passes and ``kplus-fsm verify`` / ``kplus-fsm replay --check``
  (read-only, on the file as the crash left it, hot WAL included) agree.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import structlog
from click.testing import CliRunner
from reliability_support import Stopwatch, figure, seed_for

from kplus_fsm import SQLiteStore, Tracker
from kplus_fsm.cli import cli

pytestmark = pytest.mark.slow

WRITER = Path(__file__).with_name("crash_writer.py")
#: Kills of a writer in the middle of its inputs, all on one log.
KILLS = 60
#: Kills aimed at the creation of a new log (open, WAL switch, migration).
FRESH_KILLS = 20
#: A kill lands this long (uniform, seconds) after the writer said READY.
MAX_DELAY = 0.25
NO_EVENTS = frozenset({"duplicate", "stale", "conflict"})


@attrs.define
class Ack:
    seq: int
    inbox_id: int
    kind: str
    outcome: str
    n_events: int


@attrs.define
class Run:
    """What one writer process said before it died."""

    lines: list[str] = attrs.Factory(list)
    acks: list[Ack] = attrs.Factory(list)
    tries: list[int] = attrs.Factory(list)
    ready: bool = False
    done: bool = False
    killed: bool = False

    def parse(self) -> None:
        for line in self.lines:
            parts = line.split()
            if parts[0] == "TRY":
                self.tries.append(int(parts[1]))
            elif parts[0] == "ACK":
                seq, inbox_id, kind, outcome, n = parts[1:]
                self.acks.append(Ack(int(seq), int(inbox_id), kind, outcome, int(n)))
            elif parts[0] == "READY":
                self.ready = True
            elif parts[0] == "DONE":
                self.done = True

    @property
    def in_flight(self) -> bool:
        """Whether the writer died between a TRY and its ACK."""
        return len(self.tries) > len(self.acks)


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """The CLI configures structlog as a host would; undo it for the other tests."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def writer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def run_and_kill(
    db: Path,
    run: int,
    seed: int,
    *,
    anchor: str,
    delay: float,
    limit: int | None = None,
    kill: bool = True,
) -> Run:
    """Start a writer, wait for ``anchor``, sleep ``delay`` and SIGKILL it (if ``kill``)."""
    args = [sys.executable, str(WRITER), str(db), str(run), str(seed)]
    if limit is not None:
        args.append(str(limit))
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=writer_env()
    )
    record = Run()
    seen = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if not raw.endswith("\n"):
                break  # a line cut by the kill was never acknowledged
            line = raw.rstrip("\n")
            record.lines.append(line)
            if line == anchor:
                seen.set()
        seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(60), "the writer never started"
        if delay:
            time.sleep(delay)
        if kill and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            record.killed = True
        proc.wait(30)
        reader.join(30)
    finally:
        if proc.poll() is None:  # pragma: no cover - only if an assertion fired
            proc.kill()
            proc.wait()
        stderr = proc.stderr.read() if proc.stderr is not None else ""
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    if record.killed:
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, stderr)
    else:
        assert proc.returncode == 0, stderr
    record.parse()
    return record


def cli_json(*args: str) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, json.loads(result.output)


def check_log(db: Path, before: int, record: Run) -> tuple[int, str]:
    """
    Check the file as the kill left it (read-only, as ``kplus-fsm`` opens it).
    Returns the number of inbox rows and how the kill landed.
    """
    with SQLiteStore(db, read_only=True) as store:
        rows = {r.id: r for r in store.iter_inbox(before)}
        kinds_by_input: dict[int, list[str]] = {}
        for causation, kind in store.conn.execute(
            "SELECT causation, kind FROM events WHERE causation > ? ORDER BY position", (before,)
        ):
            kinds_by_input.setdefault(causation, []).append(kind)
        events_by_input = Counter({k: len(v) for k, v in kinds_by_input.items()})
        orphans = store.conn.execute(
            "SELECT count(*) FROM events WHERE causation NOT IN (SELECT id FROM inbox)"
        ).fetchone()[0]
        assert orphans == 0, "events whose input is not in the inbox"

        # Every acknowledged input is there, as it was acknowledged.
        for ack in record.acks:
            row = rows.get(ack.inbox_id)
            assert row is not None, f"acknowledged input {ack} is not in the log"
            assert (row.kind, row.outcome) == (ack.kind, ack.outcome), (ack, row)
            assert events_by_input[ack.inbox_id] == ack.n_events, (ack, row)
        assert [a.inbox_id for a in record.acks] == sorted(a.inbox_id for a in record.acks)
        # At most the input in flight is there besides them, and only if one was in flight.
        extra = len(rows) - len(record.acks)
        assert extra in ((0, 1) if record.in_flight else (0,)), (extra, record.lines[-3:])
        assert set(rows) == set(range(before + 1, before + len(rows) + 1))

        # Nothing half-written.
        for row in rows.values():
            n = events_by_input[row.id]
            if row.outcome == "applied":
                assert n >= 1, f"inbox row {row.id} was applied but has no events"
            elif row.outcome == "rejected":
                assert n == 0, f"inbox row {row.id} was rejected yet has {n} events"
            elif row.outcome in NO_EVENTS:
                # A webhook's event id is marked accepted even when its payload changes nothing.
                kinds = kinds_by_input.get(row.id, [])
                assert kinds in ([], ["webhook.accepted"]), (row, kinds)
            else:  # unknown: a create_unknown event, or nothing
                assert kinds_by_input.get(row.id, []) in ([], ["charge.create_unknown"]), row
        report = store.verify()
        assert report.ok, report.problem
        replay = store.replay()
        assert replay.ok, replay.differences[:5]
        counts = store.counts()

    # The command line agrees, read-only, on the same file.
    code, verified = cli_json("verify", "--db", str(db), "--json")
    assert (code, verified["ok"]) == (0, True), verified
    assert verified["inbox_rows"] == counts["inbox"]
    assert verified["events"] == counts["events"]
    code, replayed = cli_json("replay", "--db", str(db), "--check", "--json")
    assert (code, replayed["ok"], replayed["differences"]) == (0, True, []), replayed
    assert replayed["events"] == counts["events"]
    assert replayed["payments"] == counts["payments"]

    if not record.ready:
        landed = "before the log was open"
    elif extra == 1:
        landed = "after a commit, before its acknowledgement"
    elif record.in_flight:
        landed = "inside an input (rolled back)"
    else:
        landed = "between inputs"
    return counts["inbox"], landed


def test_sigkill_writer_many_times(tmp_path: Path) -> None:
    """KILLS writers on one log, each killed at a random moment; the log always holds."""
    seed = seed_for("crash")
    rng = random.Random(seed)
    db = tmp_path / "crash.db"
    watch = Stopwatch()
    rows = 0
    landed: Counter[str] = Counter()
    hot_wal = acked = 0
    for run in range(KILLS):
        # Every 10th kill comes right after READY, the rest at a random moment.
        delay = 0.0 if run % 10 == 9 else rng.uniform(0.0, MAX_DELAY)
        record = run_and_kill(db, run, seed, anchor="READY", delay=delay)
        assert record.killed, "the writer finished before it could be killed"
        wal = db.with_name(db.name + "-wal")
        hot_wal += wal.exists() and wal.stat().st_size > 0
        rows_after, where = check_log(db, rows, record)
        assert rows_after >= rows + len(record.acks)
        rows = rows_after
        landed[where] += 1
        acked += len(record.acks)

    # After all that, a writer still opens the log and completes its inputs.
    final = run_and_kill(db, KILLS, seed, anchor="DONE", delay=0.0, limit=50, kill=False)
    assert final.done
    assert not final.killed
    rows_after, _ = check_log(db, rows, final)
    assert rows_after == rows + 50

    # The installed command line, in its own process, agrees.
    cmd = [sys.executable, "-m", "kplus_fsm"]
    verify = subprocess.run(
        [*cmd, "verify", "--db", str(db)], check=False, capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    replay = subprocess.run(
        [*cmd, "replay", "--check", "--db", str(db)], check=False, capture_output=True, text=True
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "no differences" in replay.stdout

    figure("crash", "SIGKILLs (one log)", KILLS)
    figure("crash", "inputs acknowledged then checked", acked)
    figure("crash", "inbox rows at the end", rows_after)
    figure("crash", "kills with a hot WAL left behind", hot_wal)
    for where, n in sorted(landed.items()):
        figure("crash", f"kills landing {where}", n)
    figure("crash", "seconds", watch.seconds)


def file_state(db: Path) -> str:
    """What a kill during the creation of a log left behind."""
    if not db.exists():
        return "no file"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.OperationalError:
        # Killed while SQLite switched the new file to WAL: a hot rollback journal,
        # which a read-only connection may not roll back (the next writer does).
        assert db.with_name(db.name + "-journal").exists()
        return "a hot journal of the WAL switch (read-only opens refused until a writer opens it)"
    finally:
        conn.close()
    if not tables:
        return "an empty file"
    return "a migrated log" if "events" in tables else "a partly created log"


def test_sigkill_while_creating_the_log(tmp_path: Path) -> None:
    """Kills during the creation of a new log: the next open still gets a sound log."""
    seed = seed_for("crash-fresh")
    rng = random.Random(seed)
    watch = Stopwatch()
    landed: Counter[str] = Counter()
    for n in range(FRESH_KILLS):
        db = tmp_path / f"fresh-{n}.db"
        record = run_and_kill(db, 0, seed, anchor="OPENING", delay=rng.uniform(0.0, 0.015))
        assert record.killed
        landed["before READY" if not record.ready else "after READY"] += 1
        landed[f"leaving {file_state(db)}"] += 1
        if db.exists():
            assert (db.stat().st_mode & 0o777) == 0o600
        # The next writer opens (migrating what the kill left) and writes.
        with Tracker(db) as tracker:
            tracker.request_payment(
                payment_id="after-crash", amount=35_000, return_uri="https://shop.example/r"
            )
        with SQLiteStore(db, read_only=True) as store:
            assert store.verify().ok
            assert store.replay().ok
            assert store.get("after-crash") is not None
    figure("crash", "SIGKILLs while creating a new log", FRESH_KILLS)
    for where, count in sorted(landed.items()):
        figure("crash", f"fresh-log kills {where}", count)
    figure("crash", "fresh-log seconds", watch.seconds)
