"""
Migration ``0005_index_accounting`` (docs/million-events.md, "Index
accounting"): every question an index was kept for still uses it (SQLite's
``EXPLAIN QUERY PLAN``, on a log built by tests/scale/build_log.py: every story
of the runbook), a log migrated from 0004 keeps every hashed byte and gives
the same answers, and a durable commit writes only the b-trees the accounting
kept (WAL frames read back by tests/scale/wal_frames.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hostile_support import make_0004

from kplus_fsm import SQLiteStore
from kplus_fsm._store import _log, _sql
from kplus_fsm._store._schema_sqlite import (
    ANOMALIES_SINCE_PARAMS,
    HINT_INDEXES,
    HINTS_FROM_SQLITE,
    HINTS_FROM_SQLITE_AFTER,
    INDEX_ACCOUNTING,
    WEBHOOK_LAG_JOINS,
    WEBHOOK_LAG_SEEN,
    anomalies_sql,
    stuck_reason_sql,
    unresolved_hint_select,
)
from kplus_fsm.cli import cli

SCALE = Path(__file__).resolve().parent / "scale"
WAL_FRAMES = SCALE / "wal_frames.py"
WAL_FRAMES_ARGS = ("--side", "ours", "--json", "--warmup", "20", "--payments", "5")
sys.path.insert(0, str(SCALE))

from build_log import build  # noqa: E402

#: The indexes of the four tables after 0005 (``sqlite_autoindex_*`` aside).
INDEXES = {
    "events_rare_kind",
    "inbox_event_id",
    "inbox_hints",
    "inbox_outcome_kind",
    "inbox_payment",
    "inbox_reads",
    "inbox_unmatched_charge",
    "payments_charge",
    "payments_created",
    "payments_order",
    "payments_status",
}
DROPPED = {"events_causation", "events_kind", "inbox_charge", "inbox_external", "inbox_kind"}


@pytest.fixture(scope="module")
def scale_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scale") / "scale.db"
    build(path, events=2000)
    return path


@pytest.fixture
def conn(scale_log: Path) -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(f"file:{scale_log}?mode=ro", uri=True)
    yield c
    c.close()


def plan(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> str:
    return " | ".join(str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))


def _indexes(conn: sqlite3.Connection) -> set[str]:
    return {
        str(r[0])
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'"
            " AND name NOT LIKE 'sqlite_autoindex_%' AND tbl_name NOT LIKE '\\_%' ESCAPE '\\'"
        )
    }


def test_the_indexes_are_those_the_accounting_kept(conn: sqlite3.Connection) -> None:
    assert _indexes(conn) == INDEXES
    assert not DROPPED & _indexes(conn)


# -------------------------------------------------------------------- the plans

_NOW = ("2026-01-06T00:00:00Z",)
_LAG = WEBHOOK_LAG_SEEN.format(since="") + f" SELECT i.origin, e.kind {WEBHOOK_LAG_JOINS}"

#: (question, SQL, parameters, what the plan must name, what it must not).
PLANS: list[tuple[str, str, tuple[Any, ...], tuple[str, ...], tuple[str, ...]]] = [
    (
        "show: a payment's inputs (its own, and its charge's that name no payment)",
        _sql.INBOX_FOR_ALL,
        ("p", "p"),
        ("INDEX inbox_payment (payment_id=?)", "INDEX inbox_unmatched_charge (charge_id=?)"),
        ("SCAN inbox",),
    ),
    ("show CHARGE_ID", _sql.LOOKUP_CHARGE, ("c",), ("INDEX payments_charge",), ("SCAN",)),
    (
        "a webhook's input by its event id",
        "SELECT id FROM inbox WHERE external_id = ?",
        ("evnt_x",),
        ("INDEX inbox_event_id (external_id=?)",),
        ("SCAN",),
    ),
    (
        "anomalies: refused, conflicting, unknown, duplicated inputs; corrections",
        anomalies_sql(dialect="sqlite", since=True, hints_from_sql=HINTS_FROM_SQLITE),
        ("2026-01-01",) * ANOMALIES_SINCE_PARAMS,
        (
            "INDEX inbox_outcome_kind (outcome=?)",
            "INDEX inbox_outcome_kind (outcome=? AND kind=?",
            "INDEX events_rare_kind (kind=?)",
            "INDEX inbox_hints",
            "INDEX inbox_reads (charge_id=? AND id>?)",
        ),
        ("SCAN inbox ", "SCAN events"),
    ),
    (
        "stats: inputs by kind and outcome, whole log",
        "SELECT kind, outcome, count(*) FROM inbox GROUP BY kind, outcome",
        (),
        ("SCAN inbox USING COVERING INDEX inbox_outcome_kind",),
        ("TEMP B-TREE",),
    ),
    (
        "stats --since: inputs by kind and outcome",
        "SELECT kind, outcome, count(*) FROM inbox WHERE received_at >= ? GROUP BY kind, outcome",
        ("2026-01-01",),
        ("COVERING INDEX inbox_outcome_kind",),
        ("TEMP B-TREE",),
    ),
    (
        "stats: webhook lag (every completion, grouped by stream)",
        _LAG,
        (),
        ("SCAN events USING INDEX sqlite_autoindex_events_1", "INTEGER PRIMARY KEY (rowid=?)"),
        ("TEMP B-TREE",),
    ),
    (
        "unresolved hints, whole log",
        unresolved_hint_select(HINTS_FROM_SQLITE) + " AND h.id > ? ORDER BY h.id LIMIT ?",
        (0, 1000),
        ("INDEX inbox_hints", "INDEX inbox_reads (charge_id=? AND id>?)"),
        ("SCAN inbox ",),
    ),
    (
        "unresolved hints above an inbox id (the follow-up's scan)",
        unresolved_hint_select(HINTS_FROM_SQLITE_AFTER) + " AND h.id > ? ORDER BY h.id LIMIT ?",
        (100, 1000),
        ("SEARCH h USING INTEGER PRIMARY KEY (rowid>?)", "INDEX inbox_reads"),
        ("SCAN",),
    ),
    (
        "list --stuck: why a payment is stuck",
        f"SELECT p.payment_id, {stuck_reason_sql(now_sql='?', cutoff_sql='?')}"
        " FROM payments p WHERE p.payment_id = ?",
        (*_NOW, *_NOW, "p"),
        ("INDEX inbox_hints (charge_id=?)", "INDEX inbox_reads (charge_id=? AND id>?)"),
        ("SCAN inbox",),
    ),
    (
        "list --stuck, newest first",
        "SELECT payment_id FROM payments ORDER BY created_at DESC, payment_id DESC LIMIT 51",
        (),
        ("SCAN payments USING INDEX payments_created",),
        (),
    ),
    (
        "reconcile's due queue",
        _log._CANDIDATES_SQL,
        (*_NOW, *_NOW, *_NOW, *_NOW, 100),
        ("INDEX payments_status (status=?", "SEARCH c USING INDEX"),
        ("SCAN p",),
    ),
]


@pytest.mark.parametrize(
    ("sql", "params", "must", "must_not"),
    [p[1:] for p in PLANS],
    ids=[p[0] for p in PLANS],
)
def test_each_question_uses_its_index(
    conn: sqlite3.Connection,
    sql: str,
    params: tuple[Any, ...],
    must: tuple[str, ...],
    must_not: tuple[str, ...],
) -> None:
    got = plan(conn, sql, params)
    for part in must:
        assert part in got, got
    for part in must_not:
        assert part not in got, got
    conn.execute(sql, params).fetchall()  # and it runs


# ---------------------------------------------------------------- the migration


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _answers(log: Path) -> dict[str, Any]:
    runner = CliRunner()

    def run(*args: str) -> Any:
        res = runner.invoke(cli, [*args, "--db", str(log), "--json"])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    def timeless(answer: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in answer.items() if k not in {"since", "now", "generated_at"}}

    return {
        "anomalies": timeless(run("anomalies", "--since", "-3650d", "--limit", "100000")),
        "stuck": timeless(run("list", "--stuck", "--limit", "100000")),
        "stats": timeless(run("stats")),
    }


def _rows(path: Path) -> tuple[object, ...]:
    with SQLiteStore(path, read_only=True) as store:
        return (
            store.query("SELECT * FROM inbox ORDER BY id"),
            store.query("SELECT * FROM events ORDER BY position"),
            store.query("SELECT * FROM payments ORDER BY payment_id"),
        )


def test_a_0004_log_migrates_keeping_every_byte_and_answer(scale_log: Path, tmp_path: Path) -> None:
    log = tmp_path / "v0004.db"
    shutil.copyfile(scale_log, log)
    make_0004(log)
    with SQLiteStore(log, read_only=True) as store:
        old = store.verify()
        assert (old.ok, old.schema_version) == (True, "0004_reason_code")
    rows = _rows(log)
    before = _digest(log)
    answers = _answers(log)  # read-only: the old indexes answer
    assert _digest(log) == before
    assert answers["anomalies"]["count"] > 0
    assert answers["stuck"]["payments"]
    with SQLiteStore(log) as store:  # opening for writes migrates
        report = store.verify()
        assert (report.ok, report.schema_version) == (True, "0005_index_accounting")
        assert (report.inbox_head, report.events_head) == (old.inbox_head, old.events_head)
        assert store.replay().ok
    assert _rows(log) == rows
    assert _answers(log) == answers
    c = sqlite3.connect(f"file:{log}?mode=ro", uri=True)
    try:
        assert _indexes(c) == INDEXES
    finally:
        c.close()


def test_the_hint_indexes_are_made_as_0003_makes_them() -> None:
    made = [s for s in INDEX_ACCOUNTING if s.startswith("CREATE INDEX IF NOT EXISTS")]
    assert [s.replace(" IF NOT EXISTS", "", 1) for s in made] == list(HINT_INDEXES)


def test_the_migration_statements_are_portable() -> None:
    """The same statements run on PostgreSQL (no SQLite-only syntax)."""
    for statement in INDEX_ACCOUNTING:
        assert statement.split()[:2] in (["DROP", "INDEX"], ["CREATE", "INDEX"])
        assert "INDEXED" not in statement


# ------------------------------------------------------------- what a commit writes


def test_a_durable_commit_writes_only_the_kept_btrees() -> None:
    """
    A few benchmark inputs at ``FULL``: one commit each, no dropped index written.
    The script runs as its own process: it configures logging for a benchmark
    (structlog's cached loggers), which must not leak into the other tests.
    """
    proc = subprocess.run(
        [sys.executable, str(WAL_FRAMES), *WAL_FRAMES_ARGS],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # the script prints one JSON document
    ours = out["ours"]
    assert ours["commits"] == ours["inputs"] == 20
    written = set(ours["by_btree_per_input"])
    assert not DROPPED & written
    assert {"inbox", "events", "payments", "inbox_outcome_kind"} <= written
    # 19.2 frames per input with the indexes of 0004, 12.95 after 0005 (docs).
    assert ours["frames_per_input"] < 16, ours


def test_repair_still_rewrites_created_at(scale_log: Path, tmp_path: Path) -> None:
    """The record path's upsert leaves ``created_at`` alone; replay's repair does not."""
    log = tmp_path / "tampered.db"
    shutil.copyfile(scale_log, log)
    c = sqlite3.connect(log, isolation_level=None)
    try:
        pid, created = c.execute(
            "SELECT payment_id, created_at FROM payments ORDER BY payment_id LIMIT 1"
        ).fetchone()
        c.execute(
            "UPDATE payments SET created_at = '1999-01-01T00:00:00Z' WHERE payment_id = ?", (pid,)
        )
    finally:
        c.close()
    with SQLiteStore(log) as store:
        assert not store.replay().ok
        assert store.replay(repair=True).repaired
        assert store.replay().ok
        assert store.query("SELECT created_at FROM payments WHERE payment_id = ?", [pid]) == [
            (created,)
        ]
