"""
Hostile files and arguments (issue 14): every command classifies its target
before writing a byte and acts as docs/cli.md's table says; refused files are
left byte for byte (and no file appears beside them); damaged logs are
reported, never crashed on; read-only storage is read by a user who is not
root; values out of bounds are usage errors; times outside 1000-9999 are
refused everywhere; export and checkpoint files are written crash-safely and
the export ends with a trailer an auditor can check.

The expected tables here are written out by hand (the oracle), not derived
from kplus_fsm._store._classify.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import attrs
import pytest
import structlog
from hostile_support import (
    READS,
    WRITES,
    Command,
    argv,
    as_nobody,
    assert_no_traceback,
    build_log,
    can_drop_root,
    damage_pages,
    digest,
    invoke,
    invoke_as_nobody,
    journal_bytes,
    leaf_pages,
    make_foreign,
    make_newer,
    make_older,
    shared_tmpdir,
    snapshot,
    truncate,
)

from kplus_fsm import Tracker, format_time, parse_time
from kplus_fsm._store import _classify
from kplus_fsm._store._classify import Access, Action, LogKind, classify
from kplus_fsm.exceptions import InvalidTimeError

ROOT = Path(__file__).resolve().parent.parent
GENESIS = "0" * 64
API_ENV = {"OMISE_SECRET_KEY": "skey_test_hostile", "OMISE_API_URL": "http://127.0.0.1:9"}


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """The CLI configures structlog as the host; undo it for the other tests."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("master") / "kplus.db"
    build_log(path)
    return path


@pytest.fixture
def log(master: Path, tmp_path: Path) -> Path:
    path = tmp_path / "kplus.db"
    shutil.copyfile(master, path)
    return path


# ------------------------------------------------------------------ the kinds


def _empty_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()


def _page_one_garbage(path: Path) -> None:
    """Keep the 100-byte header, destroy the rest of page 1 (the schema's root)."""
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[16:18], "big")
    data[100:size] = bytes(range(256)) * ((size - 100) // 256) + bytes((size - 100) % 256)
    path.write_bytes(bytes(data))


def _without_consumers(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TABLE consumers")
    conn.close()


def _missing(path: Path) -> None:
    path.unlink()


def _empty_file(path: Path) -> None:
    path.write_bytes(b"")


def _replaced_by_empty_sqlite(path: Path) -> None:
    path.unlink()
    _empty_sqlite(path)


def _newer_wal(path: Path) -> None:
    make_newer(path, journal="wal")


def _foreign(path: Path) -> None:
    path.unlink()
    make_foreign(path)


def _foreign_empty_schema(path: Path) -> None:
    path.unlink()
    make_foreign(path, [], user_version=7)
    _drop_all(path)


def _foreign_with_events(path: Path) -> None:
    path.unlink()
    make_foreign(path, ["events", "inbox"])


def _csv(path: Path) -> None:
    path.write_text("id,amount\n1,100\n" * 50)


def _cut_short(path: Path) -> None:
    truncate(path, path.stat().st_size // 2 + 100)


def _cut_in_header(path: Path) -> None:
    truncate(path, 60)


def _a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _a_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _unchanged(path: Path) -> None:
    del path


#: name -> (how to make it from a copy of the log at `path`, the kind expected).
KINDS: dict[str, tuple[Callable[[Path], None], LogKind]] = {
    "missing": (_missing, LogKind.MISSING),
    "empty file": (_empty_file, LogKind.EMPTY),
    "empty SQLite": (_replaced_by_empty_sqlite, LogKind.EMPTY),
    "current": (_unchanged, LogKind.CURRENT),
    "older": (make_older, LogKind.OLDER),
    "newer, rollback journal": (make_newer, LogKind.NEWER),
    "newer, WAL": (_newer_wal, LogKind.NEWER),
    "foreign": (_foreign, LogKind.FOREIGN),
    "foreign, empty schema": (_foreign_empty_schema, LogKind.FOREIGN),
    "foreign with an events table": (_foreign_with_events, LogKind.FOREIGN),
    "not SQLite": (_csv, LogKind.NOT_SQLITE),
    "cut short": (_cut_short, LogKind.DAMAGED),
    "cut inside the header": (_cut_in_header, LogKind.DAMAGED),
    "schema unreadable": (_page_one_garbage, LogKind.DAMAGED),
    "a table missing": (_without_consumers, LogKind.DAMAGED),
    "a directory": (_a_directory, LogKind.UNREADABLE),
    "a FIFO": (_a_fifo, LogKind.UNREADABLE),
}


def _drop_all(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        conn.execute(f'DROP TABLE "{name}"')
    conn.execute("VACUUM")
    conn.close()


def spoil(log: Path, kind: str) -> Path:
    make, _ = KINDS[kind]
    make(log)
    return log


class TestClassify:
    """classify() names what is there and writes nothing, not even beside the file."""

    @pytest.mark.parametrize("kind", list(KINDS))
    def test_kind_and_nothing_written(self, log: Path, kind: str) -> None:
        spoil(log, kind)
        before = snapshot(log.parent)
        found = classify(str(log))
        assert found.kind is KINDS[kind][1], found
        assert found.detail
        assert snapshot(log.parent) == before

    def test_no_directory(self, tmp_path: Path) -> None:
        found = classify(str(tmp_path / "nowhere" / "kplus.db"))
        assert found.kind is LogKind.NO_DIRECTORY
        assert "does not exist" in found.detail
        assert not (tmp_path / "nowhere").exists()

    def test_server_url_is_left_to_its_store(self) -> None:
        found = classify("postgresql://kplus:secret@db.internal/kplus")
        assert found.kind is LogKind.SERVER
        assert "secret" not in found.location

    def test_versions(self, log: Path) -> None:
        assert classify(str(log)).schema_version == "0005_index_accounting"
        make_older(log)
        assert classify(str(log)).schema_version == "0001_initial"

    def test_live_log_with_its_wal(self, tmp_path: Path) -> None:
        """A log whose schema is still only in its -wal (a writer holds it open): current."""
        path = tmp_path / "live.db"
        with Tracker(path) as tracker:
            tracker.request_payment(payment_id="live-1", amount=5000, return_uri="https://s.ex/r")
            assert (tmp_path / "live.db-wal").stat().st_size > 0
            main = digest(path)
            found = classify(str(path))
            assert found.kind is LogKind.CURRENT
            assert found.pending_wal
            assert digest(path) == main

    def test_creation_cut_short_leaves_an_empty_file(self, tmp_path: Path) -> None:
        """
        A writer killed in the first transaction of a new file leaves pages and a hot
        -journal that began at 0 pages: empty (the next writer rolls it back).
        """
        origin, path = tmp_path / "origin.db", tmp_path / "kplus.db"
        origin.write_bytes(b"")
        conn = sqlite3.connect(origin, isolation_level=None)
        conn.execute("PRAGMA cache_size = 1")  # spill pages into the file before COMMIT
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE t (x)")
        conn.executemany("INSERT INTO t VALUES (?)", [("x" * 200,)] * 2000)
        shutil.copyfile(origin, path)  # the files as a SIGKILL would leave them
        shutil.copyfile(f"{origin}-journal", f"{path}-journal")
        conn.execute("ROLLBACK")
        conn.close()
        assert path.stat().st_size > 0
        before = snapshot(tmp_path)
        found = classify(str(path))
        assert found.kind is LogKind.EMPTY
        assert "cut short" in found.detail
        assert snapshot(tmp_path) == before
        assert invoke(["verify", "--db", str(path)]).exit_code == 4
        res = invoke(["demo", "--offline", "--db", str(path)])
        assert res.exit_code == 0, res.output
        assert classify(str(path)).kind is LogKind.CURRENT

    def test_newer_rollback_log_is_not_switched_to_wal_by_the_library(self, log: Path) -> None:
        """SQLiteStore checks the version before it touches the journal mode."""
        make_newer(log)
        before = digest(log)
        with pytest.raises(Exception, match="newer kplus_fsm"):
            Tracker(log)
        assert digest(log) == before
        assert journal_bytes(log) == (1, 1)


# -------------------------------------------------------------- the policy table

R, C, W = Access.READ, Access.CREATE, Access.WRITE
#: The oracle: what docs/cli.md promises, cell by cell.
EXPECTED: dict[LogKind, dict[Access, Action]] = {
    LogKind.MISSING: {R: Action.REFUSE, C: Action.CREATE, W: Action.REFUSE},
    LogKind.NO_DIRECTORY: {R: Action.REFUSE, C: Action.REFUSE, W: Action.REFUSE},
    LogKind.EMPTY: {R: Action.REFUSE, C: Action.CREATE, W: Action.REFUSE},
    LogKind.CURRENT: {R: Action.READ, C: Action.WRITE, W: Action.WRITE},
    LogKind.OLDER: {R: Action.READ, C: Action.MIGRATE, W: Action.MIGRATE},
    LogKind.NEWER: {R: Action.REFUSE, C: Action.REFUSE, W: Action.REFUSE},
    LogKind.FOREIGN: {R: Action.REFUSE, C: Action.REFUSE, W: Action.REFUSE},
    LogKind.NOT_SQLITE: {R: Action.REFUSE, C: Action.REFUSE, W: Action.REFUSE},
    LogKind.DAMAGED: {R: Action.REPORT, C: Action.REFUSE, W: Action.REFUSE},
    LogKind.UNREADABLE: {R: Action.REFUSE, C: Action.REFUSE, W: Action.REFUSE},
    LogKind.SERVER: {R: Action.READ, C: Action.WRITE, W: Action.WRITE},
}
#: The row labels of docs/cli.md's table, for each kind.
DOC_ROWS = {
    LogKind.MISSING: "missing (its directory exists)",
    LogKind.NO_DIRECTORY: "in a directory that does not exist",
    LogKind.EMPTY: "empty (0 bytes, or a SQLite database with nothing in it)",
    LogKind.CURRENT: "a kplus_fsm log of this version",
    LogKind.OLDER: "a kplus_fsm log of an older version",
    LogKind.NEWER: "a kplus_fsm log of a newer version",
    LogKind.FOREIGN: "another application's SQLite database",
    LogKind.NOT_SQLITE: "not a SQLite file",
    LogKind.DAMAGED: "damaged (cut short, schema unreadable, tables missing)",
    LogKind.UNREADABLE: "cannot be read (permissions, a directory)",
    LogKind.SERVER: "a `postgresql://` URL",
}
#: How each action starts in a cell of the docs table.
DOC_WORDS = {
    Action.REFUSE: "refuse, 4",
    Action.CREATE: "create",
    Action.WRITE: "write",
    Action.READ: "read",
    Action.MIGRATE: "migrate, then write",
    Action.REPORT: "read what can be read, report the damage, 1",
}


def doc_table() -> dict[str, list[str]]:
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    section = text.split("## What each command does with the file it is given", 1)[1]
    rows = {}
    for line in section.split("### ", 1)[0].splitlines():
        if line.startswith("| ") and not line.startswith("| the target is"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


class TestPolicy:
    """The table the commands apply, docs/cli.md's table and this oracle agree."""

    def test_policy_is_the_oracle(self) -> None:
        assert _classify.POLICY == EXPECTED

    def test_docs_table_is_the_oracle(self) -> None:
        rows = doc_table()
        for kind, label in DOC_ROWS.items():
            cells = rows[label]
            for access, cell in zip((R, C, W), cells, strict=True):
                assert cell.startswith(DOC_WORDS[EXPECTED[kind][access]]), (label, access, cell)
        assert rows["on read-only storage (directory or file not writable, read-only mount)"][
            0
        ].startswith("read")

    def test_write_to_read_only_storage_is_refused(self, log: Path) -> None:
        found = classify(str(log))
        ro = attrs.evolve(found, writable=False, read_only_reason="a read-only mount")
        assert _classify.decide(ro, R).action is Action.READ
        for access in (C, W):
            decision = _classify.decide(ro, access)
            assert (decision.action, decision.exit_code) == (Action.REFUSE, 4)
            assert "a read-only mount" in decision.message


# ----------------------------------------------------------- commands x kinds

REFUSED_KINDS = [
    "newer, rollback journal",
    "newer, WAL",
    "foreign",
    "foreign, empty schema",
    "foreign with an events table",
    "not SQLite",
    "cut short",
    "schema unreadable",
    "a table missing",
    "a directory",
    "a FIFO",
]
SERVE = Command("serve", ("serve", "--port", "1"), True)
MIGRATE_TO = Command("migrate-log --to", ("migrate-log",), True)
ALL_WRITES = (*WRITES, SERVE)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small log for migrate-log to move (kept away from the targets' directories)."""
    path = tmp_path_factory.mktemp("source") / "source.db"
    build_log(path, payments=2)
    return path


def run_write(command: Command, db: Path, source: Path) -> Any:
    if command is MIGRATE_TO:
        return invoke(["migrate-log", "--from", str(source), "--to", str(db)])
    return invoke(argv(command, db), env=API_ENV)


class TestRefusedFilesAreUntouched:
    """A write command refuses every target that is not a log it may write: exit 4, no byte."""

    @pytest.mark.parametrize("kind", REFUSED_KINDS)
    @pytest.mark.parametrize("command", [*ALL_WRITES, MIGRATE_TO], ids=lambda c: c.name)
    def test_write_commands(self, log: Path, source: Path, kind: str, command: Command) -> None:
        spoil(log, kind)
        before = snapshot(log.parent)
        res = run_write(command, log, source)
        assert_no_traceback(res)
        assert res.exit_code == 4, res.output
        assert res.output.strip()
        assert snapshot(log.parent) == before

    @pytest.mark.parametrize(
        "kind", ["missing", "empty file", "empty SQLite", "newer, rollback journal", "foreign"]
    )
    @pytest.mark.parametrize("command", READS, ids=lambda c: c.name)
    def test_read_commands_refuse(self, log: Path, kind: str, command: Command) -> None:
        spoil(log, kind)
        before = snapshot(log.parent)
        res = invoke(argv(command, log))
        assert_no_traceback(res)
        assert res.exit_code == 4, res.output
        assert snapshot(log.parent) == before

    @pytest.mark.parametrize("command", ["reconcile", "replay"])
    def test_write_needs_an_existing_log(self, tmp_path: Path, command: str) -> None:
        """reconcile and replay create nothing: a missing or empty file is refused."""
        missing, empty = tmp_path / "missing.db", tmp_path / "empty.db"
        empty.write_bytes(b"")
        for path in (missing, empty):
            res = invoke([command, "--db", str(path)], env=API_ENV)
            assert res.exit_code == 4, res.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]
        assert empty.read_bytes() == b""

    def test_migrate_log_source_is_classified(self, log: Path, tmp_path: Path) -> None:
        make_foreign(log.with_name("theirs.db"))
        res = invoke(
            ["migrate-log", "--from", str(log.with_name("theirs.db")), "--to", str(tmp_path / "t")]
        )
        assert res.exit_code == 4
        assert "not a kplus_fsm event log" in res.output
        assert not (tmp_path / "t").exists()

    def test_newer_rollback_log_keeps_its_journal_mode(self, log: Path, source: Path) -> None:
        """The issue's case: every writer refuses a newer log before switching it to WAL."""
        make_newer(log)
        assert journal_bytes(log) == (1, 1)
        before = digest(log)
        for command in (*ALL_WRITES, MIGRATE_TO):
            res = run_write(command, log, source)
            assert res.exit_code == 4, (command.name, res.output)
            assert "newer kplus_fsm" in res.output
        assert digest(log) == before
        assert journal_bytes(log) == (1, 1)

    def test_empty_file_becomes_a_log(self, tmp_path: Path) -> None:
        """Creating a log is for a missing or an empty file."""
        path = tmp_path / "fresh.db"
        path.write_bytes(b"")
        res = invoke(["demo", "--offline", "--db", str(path)])
        assert res.exit_code == 0, res.output
        assert classify(str(path)).kind is LogKind.CURRENT

    def test_older_log_is_migrated_by_a_writer_only(self, log: Path) -> None:
        make_older(log)
        before = digest(log)
        assert invoke(["verify", "--db", str(log)]).exit_code == 0
        assert digest(log) == before
        assert invoke(["replay", "--db", str(log)]).exit_code == 0
        assert classify(str(log)).kind is LogKind.CURRENT


# ----------------------------------------------------------------------- paths


class TestPaths:
    """--db in a missing or unwritable directory: a message and exit 4, no traceback."""

    @pytest.mark.parametrize("command", [*ALL_WRITES, *READS], ids=lambda c: c.name)
    def test_missing_directory(self, tmp_path: Path, command: Command) -> None:
        db = tmp_path / "no" / "such" / "dir" / "kplus.db"
        res = invoke(argv(command, db), env=API_ENV)
        assert_no_traceback(res)
        assert res.exit_code == 4, res.output
        assert "does not exist" in res.output
        assert not (tmp_path / "no").exists()

    @pytest.mark.parametrize("option", ["--output", "--db"])
    def test_a_name_the_file_system_cannot_encode(self, tmp_path: Path, option: str) -> None:
        """Paired surrogates (found by the property test): a usage error, never a traceback."""
        name = str(tmp_path / ("\ud83d\ude00" * 10))
        other = ["--db", str(tmp_path / "kplus.db")] if option == "--output" else []
        res = invoke(["export", option, name, *other])
        assert_no_traceback(res)
        assert res.exit_code == 2, res.output
        assert "cannot encode" in res.output
        assert list(tmp_path.iterdir()) == []

    def test_db_is_a_file_path_component(self, tmp_path: Path) -> None:
        (tmp_path / "afile").write_text("x")
        res = invoke(["demo", "--offline", "--db", str(tmp_path / "afile" / "kplus.db")])
        assert res.exit_code == 4
        assert "is not a directory" in res.output

    @pytest.mark.skipif(can_drop_root() is not None, reason=str(can_drop_root()))
    @pytest.mark.parametrize("command", list(ALL_WRITES), ids=lambda c: c.name)
    def test_unwritable_directory(self, command: Command) -> None:
        """As a user who is not root: a directory it cannot write."""
        base = shared_tmpdir()
        try:
            locked = base / "locked"
            locked.mkdir(mode=0o555)
            res = invoke_as_nobody([*argv(command, locked / "kplus.db")], env=API_ENV)
            assert res["exception"] is None, res["exception"]
            assert res["exit_code"] == 4, res["output"]
            assert "not writable" in res["output"] or "no database" in res["output"]
            assert list(locked.iterdir()) == []
        finally:
            shutil.rmtree(base)


# -------------------------------------------------------------- read-only storage


@pytest.fixture
def read_only_dir(master: Path) -> Iterator[Path]:
    """A closed log in a directory nobody may write, the file read-only too."""
    base = shared_tmpdir()
    directory = base / "snapshot"
    directory.mkdir()
    shutil.copyfile(master, directory / "kplus.db")
    (directory / "kplus.db").chmod(0o444)
    directory.chmod(0o555)
    try:
        yield directory
    finally:
        directory.chmod(0o755)
        shutil.rmtree(base)


@pytest.mark.skipif(can_drop_root() is not None, reason=str(can_drop_root()))
class TestReadOnlyStorage:
    """As a user who is not root, on a directory it cannot write: reads work, nothing appears."""

    @pytest.mark.parametrize("command", READS, ids=lambda c: c.name)
    def test_read_commands_work(self, read_only_dir: Path, command: Command) -> None:
        before = snapshot(read_only_dir)
        res = invoke_as_nobody(argv(command, read_only_dir / "kplus.db"))
        assert res["exception"] is None, res["exception"]
        assert res["exit_code"] == 0, res["output"]
        assert "readonly" not in res["output"]
        assert snapshot(read_only_dir) == before  # no -wal, no -shm: immutable

    def test_verify_sees_every_row(self, read_only_dir: Path, master: Path) -> None:
        res = invoke_as_nobody(["verify", "--json", "--db", str(read_only_dir / "kplus.db")])
        out = json.loads(res["output"])
        expected = json.loads(invoke(["verify", "--json", "--db", str(master)]).stdout)
        assert (out["ok"], out["inbox_rows"], out["events_head"]) == (
            True,
            expected["inbox_rows"],
            expected["events_head"],
        )
        assert out["integrity_check"]["ok"] is True

    @pytest.mark.parametrize("command", ALL_WRITES, ids=lambda c: c.name)
    def test_write_commands_refuse(self, read_only_dir: Path, command: Command) -> None:
        before = snapshot(read_only_dir)
        res = invoke_as_nobody(argv(command, read_only_dir / "kplus.db"), env=API_ENV)
        assert res["exception"] is None, res["exception"]
        assert res["exit_code"] == 4, res["output"]
        assert "not writable" in res["output"]
        assert snapshot(read_only_dir) == before

    def test_migrate_log_from_read_only_storage(self, read_only_dir: Path) -> None:
        """migrate-log reads its source like the read commands: a snapshot can be moved."""
        before = snapshot(read_only_dir)
        base = shared_tmpdir()
        try:
            out = base / "out"
            out.mkdir()
            out.chmod(0o777)
            res = invoke_as_nobody(
                [
                    "migrate-log",
                    "--from",
                    str(read_only_dir / "kplus.db"),
                    "--to",
                    str(out / "moved.db"),
                    "--json",
                ]
            )
            assert res["exit_code"] == 0, res["output"]
            assert json.loads(res["output"])["heads_equal"] is True
        finally:
            shutil.rmtree(base)
        assert snapshot(read_only_dir) == before

    def test_pending_wal_is_read_with_its_shm_and_refused_without(self, tmp_path: Path) -> None:
        """A copy of a log that was not closed: its -wal is read, or refused, never skipped."""
        base = shared_tmpdir()
        try:
            live = tmp_path / "live.db"
            with Tracker(live) as tracker:
                tracker.request_payment(payment_id="w-1", amount=5000, return_uri="https://s.ex/r")
                tracker.request_payment(payment_id="w-2", amount=5000, return_uri="https://s.ex/r")
                copy = base / "copy"
                copy.mkdir()
                for suffix in ("", "-wal", "-shm"):
                    shutil.copyfile(f"{live}{suffix}", copy / f"kplus.db{suffix}")
            copy.chmod(0o555)
            db = str(copy / "kplus.db")
            res = invoke_as_nobody(["list", "--json", "--db", db])
            assert res["exit_code"] == 0, res["output"]
            assert json.loads(res["output"])["count"] == 2  # both rows live in the -wal
            copy.chmod(0o755)
            (copy / "kplus.db-shm").unlink()
            copy.chmod(0o555)
            before = snapshot(copy)
            res = invoke_as_nobody(["list", "--json", "--db", db])
            assert res["exit_code"] == 4, res["output"]
            assert "-wal" in res["output"]
            assert snapshot(copy) == before
        finally:
            for path in base.rglob("*"):
                if path.is_dir():
                    path.chmod(0o755)
            shutil.rmtree(base)

    def test_read_only_uri_is_immutable_only_where_nothing_can_write(
        self, read_only_dir: Path, log: Path
    ) -> None:
        assert "immutable=1" not in _classify.read_only_uri(log)
        uri = as_nobody(lambda: _classify.read_only_uri(read_only_dir / "kplus.db"))
        assert uri.endswith("mode=ro&immutable=1")
        # Only the file is protected; its directory is open: its owner may be writing it.
        base = shared_tmpdir()
        try:
            base.chmod(0o777)
            shutil.copyfile(log, base / "kplus.db")
            (base / "kplus.db").chmod(0o444)
            uri = as_nobody(lambda: _classify.read_only_uri(base / "kplus.db"))
            assert uri.endswith("mode=ro")
            res = invoke_as_nobody(["verify", "--db", str(base / "kplus.db")])
            assert res["exit_code"] == 0, res["output"]
        finally:
            shutil.rmtree(base)


def test_read_only_mount(master: Path, tmp_path: Path) -> None:
    """A real read-only mount (even root cannot write it): every read command works."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount a private read-only tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    commands = " && ".join(
        f"{sys.executable} -m kplus_fsm {' '.join(c.args)} --db {mnt}/kplus.db > /dev/null"
        for c in READS
    )
    script = (
        f"mount -t tmpfs -o size=8m tmpfs {mnt} && cp {master} {mnt}/kplus.db && "
        f"mount -o remount,ro {mnt} && {commands} && "
        f"{sys.executable} -m kplus_fsm verify --json --db {mnt}/kplus.db && "
        f'{{ {sys.executable} -m kplus_fsm replay --db {mnt}/kplus.db; echo "replay $?"; }} && '
        f"ls -a {mnt}"
    )
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode().strip()}")
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if "mount:" in done.stderr and "permission denied" in done.stderr.lower():
        pytest.skip(f"mounting is not permitted here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert '"ok": true' in done.stdout
    assert "read-only file system" in done.stderr
    assert "replay 4" in done.stdout
    assert done.stdout.split()[-3:] == [".", "..", "kplus.db"]  # no -wal, no -shm


# ----------------------------------------------------------------- damaged logs


class TestDamagedLog:
    """Pages overwritten, the file cut short: a report with exit 1, never a traceback."""

    def test_verify_reports_where_reading_stops(self, log: Path) -> None:
        rows = json.loads(invoke(["verify", "--json", "--db", str(log)]).stdout)["inbox_rows"]
        damage_pages(log, [leaf_pages(log, "inbox")[-1]], seed=14)
        res = invoke(["verify", "--json", "--db", str(log)])
        assert_no_traceback(res)
        assert res.exit_code == 1
        out = json.loads(res.stdout)
        assert (out["ok"], out["damaged"], out["table"]) == (False, True, "inbox")
        assert 0 < out["inbox_rows"] < rows  # what could be read was verified
        assert out["row_id"] == out["inbox_rows"] + 1
        assert f"reading stops at row {out['row_id']}" in out["problem"]
        assert out["integrity_check"]["ok"] is False
        assert out["integrity_check"]["messages"]
        text = invoke(["verify", "--db", str(log)])
        assert text.exit_code == 1
        assert "FAILED: the file is damaged" in text.output

    @pytest.mark.parametrize("table", ["inbox", "events", "payments"])
    def test_every_command_reports_or_refuses(self, log: Path, tmp_path: Path, table: str) -> None:
        damage_pages(log, leaf_pages(log, table)[-1:], seed=3)
        for command in READS:
            before = digest(log)
            res = invoke(argv(command, log))
            assert_no_traceback(res)
            assert res.exit_code in (0, 1, 3), (command.name, res.output)
            assert digest(log) == before
        res = invoke(["verify", "--db", str(log)])
        assert res.exit_code == 1, res.output

    def test_index_damage_is_found_by_integrity_check(self, log: Path) -> None:
        """The chains read fine; SQLite's integrity_check finds the damaged index."""
        conn = sqlite3.connect(f"file:{log}?mode=ro", uri=True)
        page = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'inbox_outcome_kind' ORDER BY pageno LIMIT 1"
        ).fetchone()[0]
        conn.close()
        damage_pages(log, [page], seed=5)
        out = json.loads(invoke(["verify", "--json", "--db", str(log)]).stdout)
        assert (out["ok"], out["damaged"]) == (False, True)
        assert out["integrity_check"]["ok"] is False

    def test_export_writes_what_can_be_read(self, log: Path, tmp_path: Path) -> None:
        damage_pages(log, [leaf_pages(log, "inbox")[-1]], seed=14)
        res = invoke(["export", "--db", str(log)])
        assert res.exit_code == 1
        lines = [json.loads(line) for line in res.stdout.splitlines()]
        trailer = lines[-1]
        assert trailer["table"] == "trailer"
        assert trailer["complete"] is False
        assert "reading stopped" in trailer["problem"]
        assert trailer["inbox_rows"] == sum(r["table"] == "inbox" for r in lines[:-1]) > 0
        # --output: the earlier complete export is kept; the partial one goes beside it.
        out = tmp_path / "audit.jsonl"
        out.write_text("an earlier, complete export\n")
        res = invoke(["export", "--db", str(log), "--output", str(out)])
        assert res.exit_code == 1
        assert "incomplete" in res.output
        assert out.read_text() == "an earlier, complete export\n"
        partial = tmp_path / "audit.jsonl.incomplete"
        assert json.loads(partial.read_text().splitlines()[-1])["complete"] is False

    def test_replay_and_checkpoint(self, log: Path) -> None:
        damage_pages(log, [leaf_pages(log, "events")[-1]], seed=9)
        for args in (["replay", "--check"], ["checkpoint"], ["replay"]):
            res = invoke([*args, "--db", str(log)])
            assert_no_traceback(res)
            assert res.exit_code == 1, (args, res.output)
            assert "damaged" in res.output

    def test_cut_short(self, log: Path) -> None:
        size = log.stat().st_size
        truncate(log, size - 3 * 4096)
        res = invoke(["verify", "--json", "--db", str(log)])
        assert_no_traceback(res)
        assert res.exit_code == 1
        out = json.loads(res.stdout)
        assert out["damaged"] is True

    def test_schema_unreadable_verify_reports(self, log: Path) -> None:
        _page_one_garbage(log)
        res = invoke(["verify", "--json", "--db", str(log)])
        assert res.exit_code == 1
        out = json.loads(res.stdout)
        assert out["damaged"] is True
        assert "schema cannot be read" in out["problem"]
        res = invoke(["list", "--db", str(log)])
        assert res.exit_code == 1
        assert "nothing could be read" in res.output


# ---------------------------------------------------------------------- values

WHEN_OPTIONS = [
    ("show", "order-3", "--as-of"),
    ("list", "--since"),
    ("list", "--until"),
    ("anomalies", "--since"),
    ("stats", "--since"),
    ("export", "--since"),
]
BAD_TIMES = [
    "-800000d",
    "-99999999999d",
    "99999999999999999999h",
    "0999-06-01",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:00:00-05:00",
    "",
    "\x00",
    "-3\u0663d",
]


class TestValues:
    """Every value out of its bounds is a usage error (exit 2) naming the bound."""

    @pytest.mark.parametrize("value", BAD_TIMES)
    @pytest.mark.parametrize("where", WHEN_OPTIONS, ids=" ".join)
    def test_times(self, log: Path, where: tuple[str, ...], value: str) -> None:
        before = snapshot(log.parent)
        res = invoke([*where, value, "--db", str(log)])
        assert_no_traceback(res)
        assert res.exit_code == 2, res.output
        assert "1000-01-01" in res.output or "not a time" in res.output
        assert snapshot(log.parent) == before

    def test_year_1000_is_accepted(self, log: Path) -> None:
        res = invoke(["list", "--since", "1000-01-01", "--json", "--db", str(log)])
        assert res.exit_code == 0
        assert json.loads(res.stdout)["count"] == 30

    @pytest.mark.parametrize(
        ("args", "value"),
        [
            (("list",), "99999999999999999999"),
            (("list",), "0"),
            (("list",), "-1"),
            (("anomalies",), "99999999999999999999"),
            (("anomalies",), "0"),
            (("reconcile",), "99999999999999999999"),
            (("reconcile",), "0"),
            (("reconcile",), "-1"),
            (("reconcile",), "1.5"),
            (("reconcile",), "1e3"),
        ],
    )
    def test_limits(self, log: Path, args: tuple[str, ...], value: str) -> None:
        before = digest(log)
        res = invoke([*args, "--limit", value, "--db", str(log)], env=API_ENV)
        assert_no_traceback(res)
        assert res.exit_code == 2, res.output
        assert "1 to 10000000" in res.output
        assert digest(log) == before

    @pytest.mark.parametrize("value", ["99999999999999", "-5", "", "x"])
    def test_pending_minutes(self, log: Path, value: str) -> None:
        res = invoke(["reconcile", "--pending-minutes", value, "--db", str(log)], env=API_ENV)
        assert res.exit_code == 2, res.output
        assert "0 to 525600" in res.output

    def test_checkpoint_beyond_sqlite_integers(self, log: Path) -> None:
        cp = json.loads(invoke(["checkpoint", "--json", "--db", str(log)]).stdout)
        cp["inbox_id"] = 10**22
        res = invoke(["verify", "--db", str(log), "--checkpoint", json.dumps(cp)])
        assert_no_traceback(res)
        assert res.exit_code == 2
        assert "SQLite's largest integer" in res.output

    @pytest.mark.parametrize(
        "value", ["/dev/zero", "/", "[" * 100_000, "{" + '"a":' * 50_000, "\x00", ""]
    )
    def test_checkpoint_hostile(self, log: Path, value: str) -> None:
        res = invoke(["verify", "--db", str(log), "--checkpoint", value])
        assert_no_traceback(res)
        assert res.exit_code == 2, res.output

    @pytest.mark.parametrize("port", ["70000", "-1", "65536", "http", ""])
    @pytest.mark.parametrize("command", ["serve", "fake-omise"])
    def test_ports(self, tmp_path: Path, command: str, port: str) -> None:
        args = [command, "--port", port]
        if command == "fake-omise":
            args += ["--secret-key", "skey_test_x", "--public-key", "pkey_test_x"]
        else:
            args += ["--db", str(tmp_path / "kplus.db")]
        res = invoke(args)
        assert_no_traceback(res)
        assert res.exit_code == 2
        assert "0 to 65535" in res.output
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize("host", ["", " ", "a b", "\x00", "x" * 300, "-lead.example", "a..b"])
    def test_hosts(self, tmp_path: Path, host: str) -> None:
        res = invoke(["serve", "--host", host, "--db", str(tmp_path / "kplus.db")])
        assert_no_traceback(res)
        assert res.exit_code == 2, res.output
        if not host.strip():
            assert "every interface" in res.output
            assert "0.0.0.0" in res.output
        assert list(tmp_path.iterdir()) == []

    def test_every_interface_is_said_loudly(self, log: Path) -> None:
        make_foreign(log.with_name("foreign.db"))
        res = invoke(["serve", "--host", "0.0.0.0", "--db", str(log.with_name("foreign.db"))])
        assert "WARNING: --host 0.0.0.0 listens on every network interface" in res.output
        assert res.exit_code == 4  # and the foreign file is still refused

    @pytest.mark.parametrize("value", ["", "\x00", "x" * 300, "a\nb"])
    def test_ids(self, log: Path, value: str) -> None:
        res = invoke(["show", value, "--db", str(log)])
        assert_no_traceback(res)
        assert res.exit_code == 2, res.output

    @pytest.mark.parametrize(
        "value", ["", "a\x00b", "x" * 5000, "sqlite://host/x.db", "sqlite:///"]
    )
    def test_db_locations(self, value: str) -> None:
        res = invoke(["list", "--db", value])
        assert_no_traceback(res)
        assert res.exit_code == 2, res.output

    @pytest.mark.parametrize("value", ["/dev/null", "/", "", "a\x00b", "/no/such/dir/out.jsonl"])
    def test_outputs(self, log: Path, value: str) -> None:
        for command in ("export", "checkpoint"):
            res = invoke([command, "--db", str(log), "--output", value])
            assert_no_traceback(res)
            assert res.exit_code == 2, res.output
        assert Path("/dev/null").is_char_device()

    def test_db_is_a_fifo(self, tmp_path: Path) -> None:
        """A FIFO would block a reader forever: refused at once."""
        fifo = tmp_path / "kplus.db"
        os.mkfifo(fifo)
        for command in ("verify", "pay"):
            res = invoke(
                [command, "--db", str(fifo)]
                + (
                    ["--payment-id", "x", "--amount", "5000", "--return-uri", "https://s.ex/r"]
                    if command == "pay"
                    else []
                ),
                env=API_ENV,
            )
            assert res.exit_code == 4
            assert "not a regular file" in res.output


class TestTimes:
    """Times before the year 1000 (or past 9999) are refused, never stored so they sort wrong."""

    @pytest.mark.parametrize(
        "when",
        [
            dt.datetime(999, 6, 1, tzinfo=dt.UTC),
            dt.datetime(1, 1, 1, tzinfo=dt.UTC),
            dt.datetime(1000, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
            dt.datetime(2026, 1, 1),  # naive
        ],
    )
    def test_format_time_refuses(self, when: dt.datetime) -> None:
        with pytest.raises(InvalidTimeError):
            format_time(when)

    def test_bounds_are_stored_sortably(self) -> None:
        low = format_time(dt.datetime(1000, 1, 1, tzinfo=dt.UTC))
        high = format_time(dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC))
        assert (low, high) == ("1000-01-01T00:00:00.000000Z", "9999-12-31T23:59:59.999999Z")
        assert low < format_time(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)) < high

    @pytest.mark.parametrize("text", ["0999-06-01", "0001-01-01T00:00:00+01:00"])
    def test_parse_time_refuses(self, text: str) -> None:
        with pytest.raises(InvalidTimeError):
            parse_time(text)
        with pytest.raises(ValueError, match="1000"):
            parse_time(text)

    @pytest.mark.parametrize("year", [999, 1])
    def test_a_clock_before_the_year_1000_writes_nothing(self, log: Path, year: int) -> None:
        def count() -> int:
            conn = sqlite3.connect(log)
            try:
                return int(conn.execute("SELECT count(*) FROM inbox").fetchone()[0])
            finally:
                conn.close()

        before = count()
        with Tracker(log, clock=lambda: dt.datetime(year, 6, 1, tzinfo=dt.UTC)) as tracker:
            with pytest.raises(InvalidTimeError):
                tracker.request_payment(
                    payment_id="order-999", amount=5000, return_uri="https://s.ex/r"
                )
            assert tracker.store.get("order-999") is None
        assert count() == before

    def test_reconcile_threshold_too_far_back(self, log: Path) -> None:
        with Tracker(log) as tracker, pytest.raises(InvalidTimeError):
            tracker.reconcile(mock.Mock(), pending_threshold=dt.timedelta(days=999_999))

    def test_the_issue_cases(self, log: Path) -> None:
        for args in (
            ["export", "--since", "0999-06-01"],
            ["list", "--until", "0999-06-01"],
            ["show", "order-1", "--as-of", "0999-06-01"],
        ):
            res = invoke([*args, "--db", str(log)])
            assert_no_traceback(res)
            assert res.exit_code == 2
            assert "1000-01-01" in res.output


# ------------------------------------------------------- export and checkpoint


def rechain(rows: list[dict[str, Any]], table: str, start: str) -> str:
    """The chain recomputed with hashlib alone (the auditor's script, not _codec)."""
    columns = {
        "inbox": (
            "id", "received_at", "kind", "origin", "payment_id", "charge_id", "external_id",
            "body", "body_encoding", "headers", "verification", "outcome", "reason",
        ),
        "events": (
            "position", "stream", "version", "kind", "event_version", "data", "recorded_at",
            "causation",
        ),
    }[table]  # fmt: skip
    head = start
    for row in rows:
        if row["table"] != table:
            continue
        values = json.dumps([row[c] for c in columns], separators=(",", ":"), ensure_ascii=False)
        head = hashlib.sha256((head + values).encode()).hexdigest()
        assert head == row["hash"]
    return head


def csv_rows(text: str) -> list[dict[str, Any]]:
    """CSV rows as the JSON lines hold them (numbers as numbers, empty as null)."""
    ints = {"id", "position", "version", "event_version", "causation"}
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        if row["table"] == "trailer":
            out.append({"table": "trailer", **json.loads(row["data"])})
            continue
        clean: dict[str, Any] = {k: (v if v != "" else None) for k, v in row.items()}
        for key in ints & clean.keys():
            if clean[key] is not None:
                clean[key] = int(clean[key])
        out.append(clean)
    return out


class TestExportTrailer:
    """The trailer an auditor checks: counts, ends, and chain heads, recomputed independently."""

    @pytest.mark.parametrize("fmt", ["jsonl", "csv"])
    def test_full_export(self, log: Path, fmt: str) -> None:
        res = invoke(["export", "--format", fmt, "--db", str(log)])
        assert res.exit_code == 0
        rows = (
            [json.loads(x) for x in res.stdout.splitlines()]
            if fmt == "jsonl"
            else csv_rows(res.stdout)
        )
        trailer = rows.pop()
        assert trailer["table"] == "trailer"
        assert trailer["format"] == "kplus-fsm-export/1"
        assert all(r["table"] in ("inbox", "events") for r in rows)
        cp = json.loads(invoke(["checkpoint", "--json", "--db", str(log)]).stdout)
        assert trailer["complete"] is True
        assert trailer["problem"] is None
        assert trailer["inbox_rows"] == cp["inbox_id"] == trailer["inbox_last"]
        assert trailer["events"] == cp["event_position"] == trailer["events_last"]
        assert trailer["inbox_from_hash"] == trailer["events_from_hash"] == GENESIS
        assert rechain(rows, "inbox", GENESIS) == trailer["inbox_head"] == cp["inbox_hash"]
        assert rechain(rows, "events", GENESIS) == trailer["events_head"] == cp["event_hash"]

    def test_since_export_chains_from_the_trailers_start(self, log: Path) -> None:
        res = invoke(["export", "--since", "2026-03-01T10:03:00Z", "--db", str(log)])
        rows = [json.loads(x) for x in res.stdout.splitlines()]
        trailer = rows.pop()
        assert trailer["inbox_first"] > 1
        assert trailer["since"] == "2026-03-01T10:03:00.000000Z"
        assert rechain(rows, "inbox", trailer["inbox_from_hash"]) == trailer["inbox_head"]
        assert rechain(rows, "events", trailer["events_from_hash"]) == trailer["events_head"]

    def test_nothing_exported(self, log: Path) -> None:
        res = invoke(["export", "--since", "9999-01-01", "--db", str(log)])
        trailer = json.loads(res.stdout.splitlines()[-1])
        assert (trailer["inbox_rows"], trailer["events"], trailer["inbox_head"]) == (0, 0, None)


class FullDisk:
    """A file whose every write fails as on a full disk."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh

    def write(self, _text: str) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        self.fh.flush()

    def fileno(self) -> int:
        return int(self.fh.fileno())

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


class TestCrashSafeFiles:
    """--output: the previous file or the complete new one, whatever fails in between."""

    STEPS = ("mkstemp", "write", "fsync", "replace")

    @pytest.fixture(params=["export", "checkpoint"])
    def command(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.mark.parametrize("step", STEPS)
    def test_failure_at_each_step(
        self, log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, step: str
    ) -> None:
        out = tmp_path / "out" / "file.json"
        out.parent.mkdir()
        out.write_text("the previous file\n")

        def boom(*_a: Any, **_k: Any) -> Any:
            raise OSError(28, "No space left on device")

        if step == "mkstemp":
            monkeypatch.setattr(tempfile, "mkstemp", boom)
        elif step == "write":
            real = os.fdopen

            def full_disk(fd: int, *args: Any, **kwargs: Any) -> Any:
                return FullDisk(real(fd, *args, **kwargs))

            monkeypatch.setattr(os, "fdopen", full_disk)
        elif step == "fsync":
            monkeypatch.setattr(os, "fsync", boom)
        else:
            monkeypatch.setattr(os, "replace", boom)
        res = invoke([command, "--db", str(log), "--output", str(out)])
        monkeypatch.undo()
        assert_no_traceback(res)
        assert res.exit_code == 4, res.output
        assert "nothing was replaced" in res.output
        assert out.read_text() == "the previous file\n"
        assert sorted(p.name for p in out.parent.iterdir()) == ["file.json"]  # no temp left

    def test_written_file_keeps_mode_and_is_complete(self, log: Path, tmp_path: Path) -> None:
        out = tmp_path / "cp.json"
        out.write_text("old")
        out.chmod(0o640)
        res = invoke(["checkpoint", "--db", str(log), "--output", str(out)])
        assert res.exit_code == 0, res.output
        assert out.stat().st_mode & 0o777 == 0o640
        assert invoke(["verify", "--db", str(log), "--checkpoint", str(out)]).exit_code == 0
        rows = json.loads(invoke(["verify", "--json", "--db", str(log)]).stdout)["inbox_rows"]
        assert json.loads(out.read_text())["inbox_id"] == rows


def test_exit_codes_are_documented_once() -> None:
    """docs/cli.md's exit-code table has exactly the codes kplus_fsm.cli defines."""
    from kplus_fsm import cli as _exits

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    documented = {int(m) for m in re.findall(r"^\| (\d) \|", text, re.MULTILINE)}
    assert documented == set(_exits.EXIT_CODES) == {0, 1, 2, 3, 4, 5, 6}


def test_no_free_port_needed_for_refusals() -> None:
    """serve refuses a bad log before it binds: the port stays free."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = invoke(["serve", "--port", str(port), "--db", "/no/such/dir/kplus.db"])
    assert res.exit_code == 4
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
