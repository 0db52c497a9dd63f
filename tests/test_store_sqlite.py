"""The SQLite event log: the store contract plus what only SQLite has."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from store_contract import StoreContract, request, snapshot

from kplus_fsm import (
    Outcome,
    SQLiteStore,
    Store,
    Tracker,
    _codec,
)
from kplus_fsm._store import _rows
from kplus_fsm.exceptions import SchemaVersionError, StoreError
from kplus_fsm.testing import FakeClock, charge_json, webhook_json


def connect(path: Path) -> closing[sqlite3.Connection]:
    """A raw autocommit connection to the file, closed by the ``with`` block."""
    return closing(sqlite3.connect(path, isolation_level=None))


def build_log(path: Path, clock: FakeClock) -> None:
    """A small log: 5 inputs, 6 events, two payments; closed (WAL checkpointed)."""
    with Tracker(path, clock=clock) as tracker:
        request(tracker, "pay-1")
        snapshot(tracker, "pay-1", "chrg_1", "pending", origin="create_response")
        request(tracker, "pay-2")
        body = webhook_json(
            charge_json(payment_id="pay-1", charge_id="chrg_1", status="successful"),
            event_id="evnt_1",
        )
        tracker.record_webhook(body)
        tracker.record_create_unknown("pay-2", reason="timeout")
    assert not Path(f"{path}-wal").exists(), "the WAL was not checkpointed on close"


def tampered_copy(src: Path, dst: Path, *statements: str, keep_triggers: bool = True) -> Path:
    """
    Copy the log, then in the copy drop the append-only triggers, run the
    statements, and (unless told otherwise) put the triggers back as they were.
    """
    shutil.copyfile(src, dst)
    with connect(dst) as conn:
        triggers = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
        ).fetchall()
        assert len(triggers) == 4
        for name, _ in triggers:
            conn.execute(f"DROP TRIGGER {name}")
        for statement in statements:
            conn.execute(statement)
        if keep_triggers:
            for _, sql in triggers:
                conn.execute(sql)
    return dst


def add_migration(path: Path, migration_set: str, name: str) -> None:
    with connect(path) as conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES (?, ?, ?)",
            (migration_set, name, "2030-01-01 00:00:00+00:00"),
        )


def open_handles(path: Path) -> list[str]:
    """The files of this process's open descriptors that belong to the database."""
    fd_dir = Path("/proc/self/fd")
    found = []
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(path)):
            found.append(target)
    return found


@pytest.fixture
def built(db_path: Path, clock: FakeClock) -> Path:
    build_log(db_path, clock)
    return db_path


class TestSQLiteStore(StoreContract):
    """SQLiteStore passes the store contract."""

    refused = (sqlite3.IntegrityError,)

    def make_store(self, path: Path) -> Store:
        return SQLiteStore(path)

    def raw_execute(self, store: Store, sql: str) -> None:
        assert isinstance(store, SQLiteStore)
        assert store.path is not None
        with connect(store.path) as conn:
            conn.execute(sql)

    def test_duplicate_stream_version_is_refused(self, store: Store, tracker: Tracker) -> None:
        request(tracker, "pay-1")
        snapshot(tracker, "pay-1", "chrg_1", "pending")
        with pytest.raises(sqlite3.IntegrityError, match=r"events\.stream, events\.version"):
            self.raw_execute(
                store,
                "INSERT INTO events (position, stream, version, kind, event_version, data,"
                " recorded_at, causation, hash) VALUES (99, 'pay-1', 2, 'charge.pending', 1,"
                " '{}', '2026-01-01', 2, 'x')",
            )
        assert [e.position for e in store.iter_events()] == [1, 2]


class TestTamperDetection:
    """verify() names the first row that breaks the hash chain, and missing triggers."""

    def test_untouched_copy_verifies(self, built: Path, tmp_path: Path) -> None:
        copy = tampered_copy(built, tmp_path / "copy.db")
        with SQLiteStore(copy) as store:
            report = store.verify()
        assert report.ok, report.problem
        assert (report.inbox_rows, report.events) == (5, 6)

    def test_edited_inbox_reason_is_named(self, built: Path, tmp_path: Path) -> None:
        copy = tampered_copy(
            built, tmp_path / "copy.db", "UPDATE inbox SET reason = 'nothing to see' WHERE id = 3"
        )
        with SQLiteStore(copy) as store:
            assert [r.reason for r in store.iter_inbox()][2] == "nothing to see"
            report = store.verify()
        assert not report.ok
        assert (report.table, report.row_id) == ("inbox", 3)
        assert report.problem == "inbox row 3 does not match the hash chain"
        assert report.inbox_rows == 2  # the rows before it are fine
        with SQLiteStore(built) as original:
            assert original.verify().ok

    def test_edited_event_data_is_named(self, built: Path, tmp_path: Path) -> None:
        copy = tampered_copy(
            built,
            tmp_path / "copy.db",
            "UPDATE events SET data = replace(data, '\"pending\"', '\"successful\"')"
            " WHERE position = 2",
        )
        with SQLiteStore(copy) as store:
            assert store.stream("pay-1")[1].data["status"] == "successful"
            report = store.verify()
        assert not report.ok
        assert (report.table, report.row_id) == ("events", 2)
        assert report.problem == "events row 2 does not match the hash chain"
        assert report.inbox_rows == 5  # inbox is checked first and is intact
        assert report.events == 1

    def test_rewritten_row_hash_breaks_the_next_row(self, built: Path, tmp_path: Path) -> None:
        with SQLiteStore(built) as store:
            rows = list(store.iter_inbox())
        values = {c: getattr(rows[1], c) for c in _rows.INBOX_HASHED}
        values["reason"] = "forged"
        forged = _codec.chain_hash(rows[0].hash, values, _rows.INBOX_HASHED)
        copy = tampered_copy(
            built,
            tmp_path / "copy.db",
            f"UPDATE inbox SET reason = 'forged', hash = '{forged}' WHERE id = 2",
        )
        with SQLiteStore(copy) as store:
            report = store.verify()
        assert (report.ok, report.table, report.row_id) == (False, "inbox", 3)

    def test_deleted_event_is_named(self, built: Path, tmp_path: Path) -> None:
        copy = tampered_copy(built, tmp_path / "copy.db", "DELETE FROM events WHERE position = 4")
        with SQLiteStore(copy) as store:
            report = store.verify()
        assert not report.ok
        assert (report.table, report.row_id) == ("events", 4)
        assert report.problem == "events row 4 is missing (next is 5)"

    @pytest.mark.parametrize(
        "trigger", ["inbox_no_update", "inbox_no_delete", "events_no_update", "events_no_delete"]
    )
    def test_a_dropped_trigger_alone_fails_verify(
        self, built: Path, tmp_path: Path, trigger: str
    ) -> None:
        copy = tmp_path / "copy.db"
        shutil.copyfile(built, copy)
        with connect(copy) as conn:
            conn.execute(f"DROP TRIGGER {trigger}")
        with SQLiteStore(copy) as store:
            report = store.verify()
        assert not report.ok
        assert report.problem == f"append-only triggers missing: {trigger}"
        assert (report.table, report.row_id) == (None, None)


class TestSchemaVersion:
    """A log written by a newer kplus_fsm is refused, for reading and writing."""

    def test_unknown_migration_is_refused(self, built: Path) -> None:
        add_migration(built, "kplus_fsm", "0042_from_the_future")
        before = built.read_bytes()
        with pytest.raises(SchemaVersionError, match="0042_from_the_future"):
            SQLiteStore(built)
        with pytest.raises(SchemaVersionError, match="0042_from_the_future"):
            Tracker(built)
        with pytest.raises(SchemaVersionError, match="0042_from_the_future"):
            SQLiteStore(built, read_only=True)
        assert built.read_bytes() == before

    def test_refused_open_closes_its_connection(self, built: Path) -> None:
        if not Path("/proc/self/fd").is_dir():
            pytest.skip("needs /proc/self/fd")
        add_migration(built, "kplus_fsm", "0042_from_the_future")
        assert open_handles(built) == []
        for read_only in (False, True):
            with pytest.raises(SchemaVersionError) as excinfo:
                SQLiteStore(built, read_only=read_only)
            # Even while the exception (and its traceback) is still alive.
            assert excinfo.value is not None
            assert open_handles(built) == [], f"read_only={read_only}"

    def test_other_migration_sets_are_ignored(self, built: Path) -> None:
        add_migration(built, "someone_else", "0042_from_the_future")
        with SQLiteStore(built) as store:
            assert store.verify().ok
            assert store.counts()["inbox"] == 5

    def test_a_non_kplus_file_is_refused_read_only(self, tmp_path: Path) -> None:
        other = tmp_path / "other.db"
        with connect(other) as conn:
            conn.execute("CREATE TABLE t (x)")
        with pytest.raises(SchemaVersionError, match="not a kplus_fsm event log"):
            SQLiteStore(other, read_only=True)


class TestReadOnly:
    """A read-only store reads everything and writes nothing."""

    def test_reads_work(self, built: Path) -> None:
        with SQLiteStore(built, read_only=True) as store:
            payment = store.find("chrg_1")
            assert payment is not None
            assert payment.payment_id == "pay-1"
            assert [r.id for r in store.iter_inbox()] == [1, 2, 3, 4, 5]
            assert len(store.timeline("pay-1")) == 3 + 4
            assert store.verify().ok
            assert store.replay().ok

    def test_writes_fail_and_leave_the_file_unchanged(self, built: Path) -> None:
        before = built.read_bytes()
        with SQLiteStore(built, read_only=True) as store:
            tracker = Tracker(store, clock=FakeClock())
            with pytest.raises(StoreError, match="readonly"):
                request(tracker, "pay-3")
            with pytest.raises(StoreError):
                snapshot(tracker, "pay-2", "chrg_2", "pending")
            with pytest.raises(StoreError):
                store.write_transaction(
                    lambda _db: store.set_consumer_position("c", 1, now="2026-01-01")
                )
            assert store.counts() == {"inbox": 5, "events": 6, "payments": 2}
        assert built.read_bytes() == before

    def test_missing_file_is_not_created(self, tmp_path: Path) -> None:
        missing = tmp_path / "missing.db"
        with pytest.raises(StoreError, match="no database"):
            SQLiteStore(missing, read_only=True)
        assert not missing.exists()


class TestFileAndJournal:
    """A new log file is private, in WAL mode, with the asked-for durability."""

    def test_new_file_is_owner_only(self, db_path: Path) -> None:
        old = os.umask(0o022)  # a umask that would otherwise give 0o644
        try:
            with SQLiteStore(db_path) as store, Tracker(store, clock=FakeClock()) as tracker:
                request(tracker, "pay-1")
                modes = {
                    p.name: p.stat().st_mode & 0o777
                    for p in db_path.parent.iterdir()
                    if p.name.startswith(db_path.name)
                }
        finally:
            os.umask(old)
        assert modes[db_path.name] == 0o600
        assert set(modes.values()) == {0o600}, modes

    def test_wal_mode_is_on(self, db_path: Path) -> None:
        with SQLiteStore(db_path) as store:
            assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            with connect(db_path) as other:
                assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    @pytest.mark.parametrize(("level", "value"), [("FULL", 2), ("NORMAL", 1)])
    def test_synchronous(self, db_path: Path, level: str, value: int) -> None:
        with SQLiteStore(db_path, synchronous=level) as store:  # type: ignore[arg-type]
            assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == value


class TestBusyHandling:
    """A held write lock delays a write; it never surfaces as an error."""

    @pytest.fixture
    def hold_lock(self, db_path: Path) -> Iterator[Callable[[float], threading.Event]]:
        """
        ``hold_lock(seconds)`` starts a thread that takes the write lock (and
        writes a consumers row), holds it, sets the returned event, then commits.
        It returns once the lock is taken.
        """
        threads: list[threading.Thread] = []
        failures: list[BaseException] = []

        def start(seconds: float) -> threading.Event:
            taken, released = threading.Event(), threading.Event()

            def hold() -> None:
                try:
                    with connect(db_path) as other:
                        other.execute("BEGIN IMMEDIATE")
                        other.execute("INSERT INTO consumers VALUES ('holder', 42, 'x')")
                        taken.set()
                        time.sleep(seconds)
                        released.set()
                        other.execute("COMMIT")
                except BaseException as exc:  # reported at teardown
                    failures.append(exc)
                    taken.set()

            thread = threading.Thread(target=hold)
            threads.append(thread)
            thread.start()
            assert taken.wait(10)
            assert failures == []
            return released

        yield start
        for thread in threads:
            thread.join()
        assert failures == []

    @pytest.mark.parametrize("busy_timeout", [30.0, 0.05])
    def test_write_waits_for_the_lock(
        self,
        db_path: Path,
        busy_timeout: float,
        hold_lock: Callable[[float], threading.Event],
    ) -> None:
        with SQLiteStore(db_path, busy_timeout=busy_timeout) as store:
            tracker = Tracker(store, clock=FakeClock())
            request(tracker, "pay-0")
            released = hold_lock(0.5)
            result = request(tracker, "pay-1")
            assert released.is_set(), "the write went through while the lock was held"
            assert result.outcome is Outcome.APPLIED
            assert store.consumer_position("holder") == 42  # the holder's commit landed
            assert store.verify().ok
            assert store.counts()["inbox"] == 2

    def test_readers_are_not_blocked(
        self, db_path: Path, hold_lock: Callable[[float], threading.Event]
    ) -> None:
        with SQLiteStore(db_path) as store:
            tracker = Tracker(store, clock=FakeClock())
            request(tracker, "pay-0")
            released = hold_lock(1.0)
            assert store.get("pay-0") is not None
            assert next(store.iter_inbox()).id == 1
            assert store.consumer_position("holder") == 0  # its write is not committed yet
            assert not released.is_set(), "the reads waited for the writer"
