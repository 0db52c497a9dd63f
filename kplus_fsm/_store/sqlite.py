"""
The append-only SQLite event log (the embedded default store).

One transaction per input: the inbox row, its domain events and the payment's
projection row are written by one ``BEGIN IMMEDIATE`` ... ``COMMIT``, or not at
all. Writers from several threads or OS processes are serialised by SQLite's
write lock (WAL mode, busy timeout); a writer that still finds the database busy,
or a taken ``(stream, version)``, rolls back and tries again.

sqlite-utils owns the schema (migrations) and the ad-hoc queries; the hot write
path uses prepared statements on the connection directly.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from .._machine import Decision
from .._model import Payment
from ..exceptions import ConcurrencyError, DamagedLogError, SchemaVersionError, StoreError
from ..typing import Cursor, RecordItem, Transaction
from . import _audit, _classify, _rows, _sql
from . import _schema_sqlite as _schema
from ._group_commit import GroupCommit, Pending
from ._log import Log, LogTransaction
from ._reports import ReplayDifference, ReplayReport, TimelineEntry, VerifyReport
from ._rows import INBOX_COLUMNS, Heads, InboxDraft, InboxRow, Plan, Recorded, plan
from ._write_cache import Staged, WriteCache

if TYPE_CHECKING:
    import sqlite_utils

__all__ = [
    "INBOX_COLUMNS",
    "SYNCHRONOUS_LEVELS",
    "InboxDraft",
    "InboxRow",
    "Recorded",
    "ReplayDifference",
    "ReplayReport",
    "SQLiteStore",
    "TimelineEntry",
    "VerifyReport",
]

T = TypeVar("T")

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
#: SQLite's ``synchronous`` levels, as the numbers the PRAGMA takes (never caller text).
SYNCHRONOUS_LEVELS: Final = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}

_MAX_ATTEMPTS: Final = 50
#: Payments the writer keeps in memory (the write cache; cleared when full).
_CACHE_PAYMENTS: Final = 4096
#: A thread that recorded within this many seconds counts as a producer to wait for.
_PRODUCER_WINDOW: Final = 0.05
_PROGRESS_EVERY: Final = 5000
#: ``copy_rows``'s statement per table ``migrate-log`` copies, built once.
_COPY_SQL: Final = {
    table: f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    for table, columns in _rows.COPIED
}
_COPY_CHUNK: Final = 2000  # rows per executemany when a log is copied in


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _is_version_clash(exc: sqlite3.IntegrityError) -> bool:
    return "events.stream, events.version" in str(exc)


def _create_private(path: Path) -> None:
    """Create an empty database file readable and writable by its owner only."""
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA main.table_info({table})")}


def _shim_old_schema(conn: sqlite3.Connection) -> None:
    """
    Let a log opened read-only before a later migration answer like a current
    one: temporary views (in memory, never in the file) give its ``payments``
    the column of ``0003_followup`` (empty) and its ``inbox`` the
    ``reason_code`` of ``0004_reason_code`` (classified as that migration
    would).
    """
    if "order_ref" not in _columns(conn, "payments"):
        conn.execute(
            "CREATE TEMP VIEW payments AS SELECT *, CAST(NULL AS TEXT) AS order_ref"
            " FROM main.payments"
        )
    if "reason_code" not in _columns(conn, "inbox"):
        code = _schema.LEGACY_REASON_CODE.format(like="LIKE")
        conn.execute(f"CREATE TEMP VIEW inbox AS SELECT *, {code} AS reason_code FROM main.inbox")


def _has_hint_indexes(conn: sqlite3.Connection) -> bool:
    """Whether the log has the partial indexes of hints (0003) on a real ``inbox``."""
    if conn.execute("SELECT 1 FROM sqlite_temp_master WHERE name = 'inbox'").fetchone():
        return False
    return bool(
        conn.execute(
            "SELECT 1 FROM main.sqlite_master WHERE type = 'index' AND name = 'inbox_hints'"
        ).fetchone()
    )


def _retryable(exc: sqlite3.Error) -> Exception | None:
    """The error to report if retries run out, or ``None`` when ``exc`` is final."""
    if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
        return exc
    if isinstance(exc, sqlite3.IntegrityError) and _is_version_clash(exc):
        return ConcurrencyError(f"stream version taken: {exc}")
    return None


def _translate(exc: sqlite3.Error) -> StoreError:
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreError(f"event log write refused: {exc}")
    if _classify.is_damage(exc):
        return DamagedLogError(f"the log is damaged, nothing was written: {exc}")
    return StoreError(f"event log write failed: {exc}")


def _read_error(exc: sqlite3.Error, what: str = "event log read failed") -> StoreError:
    """A failed read as a :class:`StoreError` (:class:`DamagedLogError` for a damaged file)."""
    if _classify.is_damage(exc):
        return DamagedLogError(f"the log is damaged: {exc}")
    return StoreError(f"{what}: {exc}")


def _connect(
    path: str | os.PathLike[str] | sqlite3.Connection, *, read_only: bool
) -> tuple[sqlite3.Connection, Path | None, bool]:
    """The log's connection (opened here, or the caller's), its file, whether it was opened here."""
    if isinstance(path, sqlite3.Connection):
        path.isolation_level = None
        return path, None, False
    file = Path(path)
    if read_only:
        if not file.exists():
            raise StoreError(f"no database at {file}")
        # immutable=1 on read-only storage (nothing can write there):
        # SQLite then needs no -shm; see kplus_fsm._store._classify.
        uri = _classify.read_only_uri(file)
        return (
            sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False),
            file,
            True,
        )
    if str(path) != ":memory:":
        _create_private(file)
    return sqlite3.connect(str(path), isolation_level=None, check_same_thread=False), file, True


def _configure(
    conn: sqlite3.Connection, *, busy_timeout: float, read_only: bool, level: str, where: object
) -> None:
    """
    Set the connection up: busy timeout, then either read-only (the version
    checked, the pre-0003 shim, ``query_only``) or writable (the version
    checked before anything changes, WAL, ``synchronous``).
    """
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    if read_only:
        if not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
        ).fetchone():
            raise SchemaVersionError(f"{where} is not a kplus_fsm event log")
        _schema.check_version(conn)
        _shim_old_schema(conn)  # in memory only; before query_only forbids it
        conn.execute("PRAGMA query_only = ON")
        return
    # The version first: a newer log is refused before anything changes (not
    # even its journal mode).
    _schema.check_version(conn)
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {int(SYNCHRONOUS_LEVELS[level])}")


class SQLiteStore(Log):
    """
    The event log in one SQLite file.

    Args:
        path: the database file (created, owner-only, if missing), or an open
            ``sqlite3.Connection`` opened with ``isolation_level=None``.
        synchronous: SQLite's durability level for commits (``FULL`` by default:
            an acknowledged input survives power loss).
        busy_timeout: seconds a writer waits for the write lock before retrying.
        read_only: open the file read-only (no migrations; writes fail).
        max_batch: the most inputs one group commit holds.
        group_wait: the longest a commit waits (seconds) for the inputs of other
            threads that have been recording lately; 0 disables the wait.

    Raises:
        SchemaVersionError: the file was written by a newer kplus_fsm, or (read
            only) is not a kplus_fsm log.
        StoreError: the file cannot be opened.
        ValueError: ``synchronous`` is not one of OFF, NORMAL, FULL, EXTRA.
    """

    #: The SQL dialect of :meth:`query` (the incident queries pick their variants by it).
    dialect: Final = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str] | sqlite3.Connection,
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 30.0,
        read_only: bool = False,
        max_batch: int = 256,
        group_wait: float = 0.001,
    ) -> None:
        level = str(synchronous).upper()
        if level not in SYNCHRONOUS_LEVELS:
            raise ValueError(
                f"synchronous must be one of {', '.join(SYNCHRONOUS_LEVELS)}, not {synchronous!r}"
            )
        self.read_only = read_only
        # One connection, shared by the threads of a host (a threaded webhook server):
        # every transaction and every read holds this lock.
        self._lock = threading.RLock()
        # Group commit: inputs queued while a leader thread commits go in its next batch.
        self._group = GroupCommit(self._write_locked, max_batch=max_batch, group_wait=group_wait)
        self._cache = WriteCache()
        #: Write transactions committed and inputs they held (group commit: inputs >= commits).
        self.commits = 0
        self.committed_inputs = 0
        self.path: Path | None = None
        conn: sqlite3.Connection | None = None
        owned = False  # closed again if the open fails
        try:
            conn, self.path, owned = _connect(path, read_only=read_only)
            self.conn = conn
            _configure(
                conn, busy_timeout=busy_timeout, read_only=read_only, level=level, where=path
            )
            if not read_only:
                self._migrate()
            self.hints_indexed = _has_hint_indexes(conn)
        except BaseException as exc:
            if owned and conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.Error):
                raise _read_error(exc, "cannot open the event log") from exc
            raise

    # ------------------------------------------------------------------ lifecycle

    @functools.cached_property
    def db(self) -> sqlite_utils.Database:
        """
        The connection as a ``sqlite_utils.Database`` (migrations, round-1
        consumer handlers), made on first use: reading a log never imports
        sqlite-utils.
        """
        import sqlite_utils  # noqa: PLC0415 - deferred: start-up time (docs/performance.md)

        return sqlite_utils.Database(self.conn, execute_plugins=False)

    def _migrate(self) -> None:
        _schema.check_version(self.conn)
        if not _schema.pending(self.conn):
            return
        with self._immediate():
            # Re-check under the write lock: another process may have migrated.
            _schema.check_version(self.conn)
            _schema.migrations().apply(self.db)

    def close(self) -> None:
        """Close the connection. The store cannot be used afterwards."""
        self.conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""
        with self._lock:
            yield from self._immediate_locked()

    def _immediate_locked(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            if self.conn.in_transaction:
                self.conn.rollback()
            raise
        self.conn.execute("COMMIT")

    def _retrying(self, work: Callable[[], T]) -> T:
        """Run ``work`` in a write transaction, retrying busy and version clashes."""
        delay = 0.002
        last: Exception | None = None
        conn = self.conn
        for _ in range(_MAX_ATTEMPTS):
            try:
                # What _immediate() does, inline: this runs once per commit.
                with self._lock:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        result = work()
                    except BaseException:
                        if conn.in_transaction:
                            conn.rollback()
                        raise
                    conn.execute("COMMIT")
                    return result
            except sqlite3.Error as exc:
                retry = _retryable(exc)
                if retry is None:
                    raise _translate(exc) from exc
                last = retry
            time.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, 0.25)
        if isinstance(last, ConcurrencyError):
            raise last
        raise ConcurrencyError(
            f"the event log stayed busy through {_MAX_ATTEMPTS} attempts"
        ) from last

    # --------------------------------------------------------------------- writes

    def record(
        self,
        draft: InboxDraft,
        decide: Callable[[Payment | None], Decision],
        *,
        now: str,
        payment_id: str | None = None,
        charge_id: str | None = None,
    ) -> Recorded:
        """
        Record one input: look its payment up (by ``payment_id``, else by
        ``charge_id``), let ``decide`` (pure; it may run more than once) decide,
        and write the inbox row, the events and the projection in one transaction.

        Group commit: inputs recorded by several threads at once share one
        durable ``COMMIT`` (each in a savepoint of its own, so one input's
        failure leaves the others alone). This call returns only after the
        commit that holds its input; none is acknowledged before it is durable.

        Raises:
            StoreError: nothing was written for this input.
        """
        item = RecordItem(
            draft=draft, decide=decide, now=now, payment_id=payment_id, charge_id=charge_id
        )
        return self._group.submit(Pending(item))

    @property
    def max_batch(self) -> int:
        """The most inputs one group commit holds."""
        return self._group.max_batch

    @property
    def group_wait(self) -> float:
        """The longest a commit waits (seconds) for other threads' inputs."""
        return self._group.group_wait

    def record_many(self, items: Sequence[RecordItem]) -> list[Recorded | Exception]:
        """
        Record several inputs in one transaction (one durable commit), in order;
        for a backfill or an import. An input that fails (its own error, in the
        list) does not stop the others.

        Raises:
            StoreError: nothing was written (the commit itself failed).
        """
        return self._group.commit_now(items)

    def _write_locked(self, batch: list[Pending]) -> None:
        """Commit ``batch`` in one transaction and hand each item its result."""
        with self._lock:  # one writer of this connection at a time
            self._write(batch)

    def _write(self, batch: list[Pending]) -> None:
        staged = Staged()
        try:
            self._retrying(partial(self._record_batch, batch, staged))
        except BaseException as exc:
            self._cache.forget()
            for item in batch:
                item.result = None
                item.error = exc
                item.done = True
            if not isinstance(exc, Exception):
                raise
            return
        self._cache.remember(staged)
        self.commits += 1
        self.committed_inputs += sum(item.result is not None for item in batch)
        for item in batch:
            item.done = True

    def _record_batch(self, batch: list[Pending], staged: Staged) -> None:
        """
        Write ``batch`` inside the open transaction. Fast path: decide every
        input in memory (each seeing the ones before it), then insert the rows
        with one ``executemany`` per table. An input whose decision fails is
        left out with its error. If the database refuses a row, the batch is
        rolled back and written again input by input, each in a savepoint, so
        only the input at fault fails.
        """
        conn = self.conn
        # Another connection wrote (data_version moved): the cached state is stale.
        self._cache.check(conn.execute("PRAGMA data_version").fetchone()[0])
        start = self._cache.heads or self._heads()
        staged.clear()
        if len(batch) == 1:  # its failure is the transaction's: no savepoint needed
            staged.heads = self._write_fast(batch, start, staged)
            return
        conn.execute("SAVEPOINT batch")
        try:
            staged.heads = self._write_fast(batch, start, staged)
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK TO batch")
            conn.execute("RELEASE batch")
            if _retryable(exc) is not None:
                raise
            staged.clear()
            staged.heads = self._write_careful(batch, start, staged)
        else:
            conn.execute("RELEASE batch")

    def _write_fast(self, batch: list[Pending], heads: Heads, staged: Staged) -> Heads:
        inbox_rows: list[tuple[Any, ...]] = []
        event_rows: list[tuple[Any, ...]] = []
        for item in batch:
            item.result = item.error = None
            try:
                plan_ = self._plan(item, heads, staged)
            except sqlite3.Error:
                raise
            except Exception as exc:  # the decision failed: nothing of this input is written
                item.error = exc
                continue
            inbox_rows.append(plan_.inbox_row)
            event_rows.extend(plan_.event_rows)
            staged.add(plan_)
            heads = plan_.heads
            item.result = plan_.recorded
        self.conn.executemany(_sql.INSERT_INBOX, inbox_rows)
        self.conn.executemany(_sql.INSERT_EVENT, event_rows)
        self.conn.executemany(_sql.UPSERT_PAYMENT, staged.rows.values())
        return heads

    def _write_careful(self, batch: list[Pending], heads: Heads, staged: Staged) -> Heads:
        conn = self.conn
        for item in batch:
            item.result = item.error = None
            conn.execute("SAVEPOINT input")
            try:
                plan_ = self._plan(item, heads, staged)
                conn.execute(_sql.INSERT_INBOX, plan_.inbox_row)
                conn.executemany(_sql.INSERT_EVENT, plan_.event_rows)
                if plan_.payment_row is not None:
                    conn.execute(_sql.UPSERT_PAYMENT, plan_.payment_row)
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK TO input")
                conn.execute("RELEASE input")
                if _retryable(exc) is not None:
                    raise  # the whole batch is retried
                item.error = _translate(exc)
                continue
            except Exception as exc:
                conn.execute("ROLLBACK TO input")
                conn.execute("RELEASE input")
                item.error = exc
                continue
            conn.execute("RELEASE input")
            staged.add(plan_)
            heads = plan_.heads
            item.result = plan_.recorded
        return heads

    def _plan(self, pending: Pending, heads: Heads, staged: Staged) -> Plan:
        item = pending.item
        before = None
        if item.payment_id is not None:
            before = self._lookup(item.payment_id, staged)
        if before is None and item.charge_id is not None:
            owner = self._cache.charge_owner(item.charge_id, staged)
            if owner is not None:
                before = self._lookup(owner, staged)
            else:
                row = self.conn.execute(_sql.LOOKUP_CHARGE, (item.charge_id,)).fetchone()
                before = _rows.payment_from_row(row) if row else None
        return plan(
            item.draft,
            item.decide(before),
            before,
            heads,
            now=item.now,
            payment_id=item.payment_id,
            charge_id=item.charge_id,
        )

    def _lookup(self, payment_id: str, staged: Staged) -> Payment | None:
        found = self._cache.payment(payment_id, staged)
        return found if found is not None else self._load(payment_id)

    def _forget(self) -> None:
        self._cache.forget()

    # ---------------------------------------------------------------------- reads

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.conn.execute(sql, tuple(params))

    def _read(self, work: Callable[[], T]) -> T:
        try:
            with self._lock:
                return work()
        except sqlite3.Error as exc:
            raise _read_error(exc) from exc

    # ------------------------------------------------------------------ consumers

    def write_transaction(self, work: Callable[[Transaction], T]) -> T:
        """
        Run ``work(transaction)`` inside one write transaction (retried when
        busy). Used by exactly-once consumers: their own writes and the
        consumer's position commit together.
        """
        with self._lock:
            self._forget()  # the work may write anything
            try:
                return self._retrying(lambda: work(LogTransaction(self, self.conn, self.db)))
            finally:
                self._forget()

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterator[Sequence[Any]]) -> int:
        """
        Append ``rows`` to ``table`` verbatim (``executemany`` in chunks), inside
        the caller's :meth:`write_transaction`; the number of rows. Used by
        ``kplus-fsm migrate-log``.
        """
        _rows.check_copied(table, columns)
        sql = _COPY_SQL[table]
        n = 0
        while chunk := list(itertools.islice(rows, _COPY_CHUNK)):
            self.conn.executemany(sql, chunk)
            n += len(chunk)
        return n

    # --------------------------------------------------------------------- audit

    def verify(self, *, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """
        Check the hash chains of ``inbox`` and ``events`` row by row, that the
        append-only triggers are present, and the schema version. Streams.
        ``progress(n)`` is called after each batch with the rows it checked.
        """
        with self._lock:
            return self._verify(progress)

    def _verify(self, progress: Callable[[int], None] | None = None) -> VerifyReport:
        version = self._read(partial(_schema.schema_version, self.conn))
        problem: str | None = None
        try:
            self._read(partial(_schema.check_version, self.conn))
        except SchemaVersionError as exc:
            problem = str(exc)
        if problem is None:
            present = {
                r[0]
                for r in self._read(
                    partial(self._rows, "SELECT name FROM sqlite_master WHERE type = 'trigger'")
                )
            }
            missing = sorted(_schema.TRIGGERS - present)
            if missing:
                problem = f"append-only triggers missing: {', '.join(missing)}"

        def probe(table: str, after: int) -> tuple[Any, ...] | None:
            sql = (
                _audit.VERIFY_INBOX_PROBE_SQL
                if table == "inbox"
                else _audit.VERIFY_EVENTS_PROBE_SQL
            )
            rows = self._read(partial(self._rows, sql, (after,)))
            return rows[0] if rows else None

        return _audit.verify_chains(
            self._verify_rows,
            schema_version=version,
            problem=problem,
            progress=progress,
            probe=probe,
        )

    def integrity_check(self, *, max_errors: int = 20) -> tuple[str, ...]:
        """
        SQLite's own ``PRAGMA integrity_check``: every page, every b-tree, every
        index against its table. ``("ok",)`` for a sound file, else up to
        ``max_errors`` of SQLite's messages. Reads only.
        """
        sql = f"PRAGMA integrity_check({int(max_errors)})"
        found: list[str] = []
        try:
            with self._lock:
                for row in self.conn.execute(sql):
                    found.append(str(row[0]))
        except sqlite3.Error as exc:  # damage bad enough to stop the check itself
            found.append(f"the check stopped: {exc}")
        return tuple(found)

    def replay(
        self, *, repair: bool = False, progress: Callable[[int], None] | None = None
    ) -> ReplayReport:
        """
        Rebuild every payment's projection from its events (streamed, one stream
        at a time) and compare it with the stored ``payments`` row. With
        ``repair=True`` the differing rows are rewritten from the events, in one
        transaction. ``progress(n)`` is called every few thousand events with
        the events folded since the last call.

        Raises:
            IntegrityError: an event cannot be folded (unknown kind, broken stream).
        """
        with self._lock:
            if repair:
                self._forget()
            return self._replay(repair=repair, progress=progress)

    def _replay(
        self, *, repair: bool, progress: Callable[[int], None] | None = None
    ) -> ReplayReport:
        try:
            # Two cursors read side by side: the events stream by stream, and the
            # stored rows in the same order (one sorted pass, constant memory).
            stored = self.conn.cursor().execute(_sql.PAYMENTS_BY_ID)
            n_events, n_payments, differences, rebuilt = _audit.fold_streams(
                self.conn.cursor().execute(_sql.EVENTS_BY_STREAM),
                self._load,
                progress=progress,
                stored=stored,
            )
            orphans = [str(o[0]) for o in self.conn.execute(_sql.ORPHANS)]
        except sqlite3.Error as exc:
            raise _read_error(exc, "replay failed") from exc
        differences.extend(_audit.orphan_differences(orphans))
        if repair and (rebuilt or orphans):
            self._repair(rebuilt, orphans)
        return ReplayReport(
            events=n_events,
            payments=n_payments,
            differences=tuple(differences),
            repaired=repair and bool(differences),
        )
