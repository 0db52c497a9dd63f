"""
The event log on a PostgreSQL server (``pip install 'kplus-fsm[postgres]'``).

The same tables, columns, stored strings, hash chains, triggers and views as the
SQLite store (:mod:`kplus_fsm._schema_pg`), behind the same interface
(:class:`kplus_fsm.Store`), for shops whose webhook receivers and workers run on
several hosts.

How the two hash chains stay consistent under concurrent writers, on any number
of hosts: every write transaction starts with ``pg_advisory_xact_lock`` on one
fixed key (:data:`CHAIN_LOCK`), then reads the heads of the chains and the
payment, lets the machine decide, and inserts. The lock is held to ``COMMIT``, so
inbox ids, event positions and hash links are read and extended by one writer at
a time, and every decision (webhook dedupe included) is taken on the state left
by the previous commit. ``UNIQUE (stream, version)`` and the primary keys stay
as a second line: a writer that somehow raced would be refused, rolled back and
retried. The cost: writes to one log are serial (one commit at a time); reads
never wait for the lock. See ``docs/postgresql.md``.

One connection per store, shared by the threads of a host under a lock (as the
SQLite store does); open one store per process. The connection is reopened if
the server closed it.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs

from .._machine import Decision
from .._model import Outcome, Payment, ReasonCode
from ..exceptions import (
    ConcurrencyError,
    PostgresUnavailableError,
    SchemaVersionError,
    StoreError,
)
from ..failpoints import failpoint
from ..typing import Cursor, RecordItem, Transaction
from . import _audit, _rows, _schema_pg, _sql
from ._group_commit import GroupCommit, Pending
from ._log import Log, LogTransaction
from ._reports import ReplayReport, VerifyReport
from ._rows import Heads, InboxDraft, Plan, Recorded, plan
from ._schema_sqlite import LEGACY_REASON_CODE
from ._urls import redact, scrub
from ._write_cache import Staged

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

#: The advisory lock key every write transaction takes first (the bytes of
#: ``'kplus_f'`` as an integer). It serialises the writers of every log in the database.
CHAIN_LOCK: Final = 0x6B706C75735F66
#: The advisory lock key migrations take (never held by a write of the log).
MIGRATION_LOCK: Final = CHAIN_LOCK + 1

_MAX_ATTEMPTS: Final = 20
_BATCH: Final = 2000
#: The payments of a batch, by id and by charge id (one statement each, arrays bound).
_PAYMENTS_IN: Final = (
    f"SELECT {', '.join(_rows.PAYMENT_COLUMNS)} FROM payments WHERE payment_id = ANY(%s)"
)
_CHARGES_IN: Final = (
    f"SELECT {', '.join(_rows.PAYMENT_COLUMNS)} FROM payments WHERE charge_id = ANY(%s)"
    " ORDER BY created_at"
)
#: The shared flush (:meth:`PostgresStore._flush_wal`): a transactional logical
#: decoding message (no table, no row, any ``wal_level``) takes a transaction id and
#: writes WAL before its commit record, so its commit waits for the WAL flush.
_FLUSH_SQL: Final = "SELECT pg_logical_emit_message(true, 'kplus_fsm.flush', '')"
#: SQLSTATEs retried: serialization_failure, deadlock_detected.
_RETRY_SQLSTATES: Final = frozenset({"40001", "40P01"})
_VERSION_CONSTRAINT: Final = "events_stream_version"


class _RowRefused(StoreError):
    """The database refused a row (a constraint): the batch is written again input by input."""


def _psycopg() -> Any:
    """psycopg, imported on first use; a typed error naming the extra without it."""
    try:
        import psycopg  # noqa: PLC0415 - optional: the core works without it
    except ImportError as exc:
        raise PostgresUnavailableError() from exc
    return psycopg


@functools.lru_cache(maxsize=1024)
def to_pg(sql: str) -> str:
    """
    A statement written with ``?`` placeholders (SQLite's style) in psycopg's
    style: each ``?`` outside quotes becomes ``%s`` and every literal ``%``
    (``LIKE 'x%'``, a modulo) becomes ``%%``.
    """
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if ch == "%":
            out.append("%%")
            continue
        if quote is not None:
            if ch == quote:
                quote = None
            out.append(ch)
            continue
        if ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        else:
            out.append(ch)
    return "".join(out)


#: ``copy_rows``'s statement per table ``migrate-log`` copies, built once.
_COPY_SQL: Final = {
    table: f"COPY {table} ({', '.join(columns)}) FROM STDIN" for table, columns in _rows.COPIED
}

#: The reason recorded for an input holding U+0000, which PostgreSQL text cannot store.
NUL_REASON: Final = (
    "the input holds a NUL character, which PostgreSQL cannot store as text: "
    "refused, its body kept as base64"
)


def _nul_free(value: str | None) -> str | None:
    return None if value is None else value.replace("\x00", "\\u0000")


def _holds_nul(planned: Plan) -> bool:
    rows = (planned.inbox_row, *planned.event_rows, planned.payment_row or ())
    return any(isinstance(v, str) and "\x00" in v for row in rows for v in row)


def _storable(draft: InboxDraft) -> InboxDraft:
    """The draft with its body as base64 (exact) and its short fields NUL-free."""
    body = draft.body
    if draft.body_encoding != "base64":
        body = base64.b64encode(body.encode("utf-8", "surrogatepass")).decode("ascii")
    return attrs.evolve(
        draft,
        body=body,
        body_encoding="base64",
        origin=_nul_free(draft.origin),
        external_id=_nul_free(draft.external_id),
        headers=_nul_free(draft.headers),
        verification=_nul_free(draft.verification) or "not_applicable",
    )


class PostgresStore(Log):
    """
    The event log in a PostgreSQL database.

    Args:
        url: ``postgresql://user:password@host:port/dbname?sslmode=...`` (any
            libpq URL). The password is never printed, logged or stored:
            :attr:`location` is the redacted form.
        read_only: every transaction read-only (``default_transaction_read_only``);
            no migrations; writes fail.
        connect_timeout: seconds to wait for the server when connecting.
        application_name: shown in ``pg_stat_activity``.
        shared_flush: commit the chain's transaction without waiting for the
            WAL flush, so the chain lock is released at once, and confirm
            durability with a following synchronous transaction before the
            caller is answered (default). The ``fsync`` is then shared by the
            writers of every process instead of being waited for under the
            lock, one writer at a time. No acknowledged input can be lost: the
            WAL is replayed in order, and the confirming commit lies after the
            chain's. ``False``: every chain commit waits for its own flush.
        max_batch: the most inputs one group commit holds.
        group_wait: the longest a commit waits (seconds) for the inputs of other
            threads that have been recording lately; 0 disables the wait.

    Raises:
        PostgresUnavailableError: psycopg is not installed.
        SchemaVersionError: the database was written by a newer kplus_fsm, or
            (read only) holds no kplus_fsm log.
        StoreError: the server cannot be reached or refused the connection.
    """

    #: The SQL dialect of :meth:`query` (the incident queries pick their variants by it).
    dialect: Final = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        read_only: bool = False,
        connect_timeout: float = 10.0,
        application_name: str = "kplus_fsm",
        shared_flush: bool = True,
        max_batch: int = 256,
        group_wait: float = 0.001,
    ) -> None:
        self._pg = _psycopg()
        self.shared_flush = shared_flush
        # Group commit: inputs queued while a leader thread commits go in its next batch.
        self._group = GroupCommit(self._commit_batch, max_batch=max_batch, group_wait=group_wait)
        #: Write transactions committed and inputs they held (group commit: inputs >= commits).
        self.commits = 0
        self.committed_inputs = 0
        self._url = url
        #: Where the log is, safe to print (the password replaced by ``***``).
        self.location = redact(url)
        self.path = None
        self.read_only = read_only
        self._connect_timeout = connect_timeout
        self._application_name = application_name
        self._lock = threading.RLock()
        self._shims: tuple[str, ...] = ()  # what an old log read here needs (_shim_old_schema)
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._conn = self._connect()
        try:
            if read_only:
                if not self._table_exists("events"):
                    raise SchemaVersionError(f"{self.location} holds no kplus_fsm event log")
                self._check_version()
                self._shim_old_schema()
            else:
                self._migrate()
        except BaseException as exc:
            self.close()
            if isinstance(exc, self._pg.Error):
                raise StoreError(f"cannot open the event log: {self._scrub(exc)}") from None
            raise

    # ------------------------------------------------------------------ lifecycle

    def _scrub(self, exc: BaseException | str) -> str:
        return scrub(str(exc).strip(), self._url)

    def _shim_old_schema(self) -> None:
        """
        Let a log opened read-only before a later migration answer like a
        current one: temporary views (this session only, nothing written to the
        database) give its ``payments`` the column of ``0003_followup`` (empty)
        and its ``inbox`` the ``reason_code`` of ``0004_reason_code``
        (classified as that migration would). PostgreSQL binds a view's table
        when the view is created, so the view shadows the table without naming
        its schema.
        """
        present = {
            (table, column)
            for table, column in self.conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema()"
                " AND column_name IN ('order_ref', 'reason_code')"
            ).fetchall()
        }
        self._shims = tuple(
            statement
            for needed, statement in (
                (
                    ("payments", "order_ref"),
                    "CREATE TEMP VIEW payments AS"
                    " SELECT *, CAST(NULL AS TEXT) AS order_ref FROM payments",
                ),
                (
                    ("inbox", "reason_code"),
                    "CREATE TEMP VIEW inbox AS SELECT *, "
                    + LEGACY_REASON_CODE.format(like="ILIKE")
                    + " AS reason_code FROM inbox",
                ),
            )
            if needed not in present
        )
        self._apply_shim(self.conn)

    def _apply_shim(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        if not self._shims:
            return
        conn.execute("SET default_transaction_read_only = off")
        for statement in self._shims:
            conn.execute(statement)
        conn.execute("SET default_transaction_read_only = on")

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        pg = self._pg
        try:
            conn: psycopg.Connection[tuple[Any, ...]] = pg.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, int(self._connect_timeout)),
                application_name=self._application_name,
            )
        except pg.Error as exc:
            raise StoreError(
                f"cannot connect to the event log at {self.location}: {self._scrub(exc)}"
            ) from None
        try:
            # Writes rely on READ COMMITTED: each statement after the chain lock sees
            # every commit made before it was granted (whatever the server default).
            conn.isolation_level = pg.IsolationLevel.READ_COMMITTED
            conn.execute("SET TIME ZONE 'UTC'")
            if self.read_only:
                conn.execute("SET default_transaction_read_only = on")
                self._apply_shim(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def conn(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The connection (reopened if the server closed it)."""
        conn = self._conn
        if conn is None:
            raise StoreError("the event log is closed")
        if conn.broken or conn.closed:
            conn = self._conn = self._connect()
        return conn

    def close(self) -> None:
        """Close the connection. The store cannot be used afterwards."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.location!r}, read_only={self.read_only})"

    # ----------------------------------------------------------------- migrations

    def _table_exists(self, name: str) -> bool:
        row = self.conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
        return bool(row and row[0])

    def applied(self) -> list[str]:
        """Names of the kplus_fsm migrations applied to the database, in order."""
        with self._lock:
            if not self._table_exists(_schema_pg.MIGRATIONS_TABLE):
                return []
            rows = self.conn.execute(
                f"SELECT name FROM {_schema_pg.MIGRATIONS_TABLE} ORDER BY name"
            ).fetchall()
            return [r[0] for r in rows]

    def schema_version(self) -> str | None:
        """The newest applied migration (``None`` for an empty database)."""
        names = self.applied()
        return names[-1] if names else None

    def _check_version(self) -> None:
        unknown = [n for n in self.applied() if n not in _schema_pg.KNOWN]
        if unknown:
            raise SchemaVersionError(
                "this database was written by a newer kplus_fsm: it has schema migrations "
                f"{', '.join(unknown)} that this version does not know; upgrade kplus_fsm "
                "to read or write it"
            )

    def _migrate(self) -> None:
        self._check_version()
        if set(self.applied()) >= _schema_pg.KNOWN:
            return
        conn = self.conn
        with self._lock, conn.transaction():
            # One migrator at a time; re-read what is applied under the lock.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(_schema_pg.CREATE_MIGRATIONS_TABLE)
            self._check_version()
            done = set(self.applied())
            for name, statements in _schema_pg.MIGRATIONS:
                if name in done:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    f"INSERT INTO {_schema_pg.MIGRATIONS_TABLE} (name) VALUES (%s)", (name,)
                )

    # ------------------------------------------------------------- transactions

    def _retrying(self, work: Callable[[], T], *, pipeline: bool = False) -> T:
        """
        Run ``work`` in one write transaction that first takes the chain lock;
        retry serialization failures, deadlocks and a taken ``(stream, version)``.
        With ``pipeline``, statements go in libpq pipeline mode: ``BEGIN``, the
        lock and the reads ``work`` queues before its first fetch travel in one
        round trip, its writes and ``COMMIT`` in one more. The server still runs
        them one after the other, so the reads see every commit made before the
        lock was granted.
        """
        pg = self._pg
        delay = 0.005
        last: Exception | None = None
        for _ in range(_MAX_ATTEMPTS):
            try:
                with self._lock:
                    conn = self.conn
                    with (
                        conn.pipeline() if pipeline else contextlib.nullcontext(),
                        conn.transaction(),
                    ):
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHAIN_LOCK,))
                        return work()
            except pg.Error as exc:
                state = getattr(exc, "sqlstate", None)
                constraint = getattr(getattr(exc, "diag", None), "constraint_name", None)
                if state in _RETRY_SQLSTATES:
                    last = exc
                elif state == "23505" and constraint == _VERSION_CONSTRAINT:
                    last = ConcurrencyError(f"stream version taken: {self._scrub(exc)}")
                elif state is not None and state.startswith("23"):
                    raise _RowRefused(f"event log write refused: {self._scrub(exc)}") from exc
                else:
                    raise StoreError(f"event log write failed: {self._scrub(exc)}") from exc
            time.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, 0.25)
        if isinstance(last, ConcurrencyError):
            raise last
        raise ConcurrencyError(
            f"the event log write kept failing through {_MAX_ATTEMPTS} attempts"
        ) from last

    def write_transaction(self, work: Callable[[Transaction], T]) -> T:
        """
        Run ``work(transaction)`` inside one write transaction (holding the chain
        lock; retried on serialization failures): its statements commit together
        with the consumer's position.
        """
        return self._retrying(lambda: work(LogTransaction(self, self.conn)))

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
        Record one input: under the chain lock, look its payment up (by
        ``payment_id``, else by ``charge_id``), let ``decide`` decide, and write
        the inbox row, the events and the projection in one transaction.

        Group commit: inputs recorded by several threads at once share one
        transaction (one trip to the chain lock); each is decided on the state
        the ones before it left. This call returns only once its input is
        durable (see :attr:`shared_flush`).

        Raises:
            StoreError: nothing was written for this input (or, if the
                connection was lost after the commit, its durability is not
                known: recording it again is deduplicated).
        """
        item = RecordItem(
            draft=draft, decide=decide, now=now, payment_id=payment_id, charge_id=charge_id
        )
        return self._group.submit(Pending(item))

    def record_many(self, items: Sequence[RecordItem]) -> list[Recorded | Exception]:
        """
        Record several inputs in one transaction, in order. An input that fails
        (its own error, in the list) leaves the others alone.

        Raises:
            StoreError: nothing was written (the commit itself failed).
        """
        return self._group.commit_now(items)

    @property
    def max_batch(self) -> int:
        """The most inputs one group commit holds."""
        return self._group.max_batch

    def _commit_batch(self, batch: list[Pending]) -> None:
        """
        Commit ``batch`` in one transaction under the chain lock and hand each
        item its result. Fast path: one round trip for the reads, one for the
        writes and the commit. If the database refuses a row of a batch of
        several, the transaction is rolled back and the batch written again
        input by input, each in a savepoint, so only the input at fault fails.
        Then, with :attr:`shared_flush`, the flush that makes the commit durable.
        """
        with self._lock:
            try:
                try:
                    self._retrying(partial(self._write_fast, batch), pipeline=True)
                except _RowRefused:
                    if len(batch) == 1:
                        raise
                    self._retrying(partial(self._write_careful, batch))
                if self.shared_flush:
                    failpoint("postgres.before_flush")
                    self._flush_wal()
            except BaseException as exc:
                for p in batch:
                    p.result = None
                    p.error = exc
                    p.done = True
                if not isinstance(exc, Exception):
                    raise
                return
            self.commits += 1
            self.committed_inputs += sum(p.result is not None for p in batch)
            for p in batch:
                p.done = True

    def _begin_chain(self) -> None:
        """The statements a chain transaction starts with, after the lock."""
        if self.shared_flush:
            # The chain's COMMIT does not wait for the WAL flush (the lock is
            # released at once); _flush_wal waits for it before anyone is told.
            self.conn.execute("SET LOCAL synchronous_commit = off")

    def _flush_wal(self) -> None:
        """
        Return once the WAL is flushed past every commit made before this call.

        The statement is a transaction that writes WAL of its own (a logical
        decoding message of a few bytes, which takes a transaction id) and so
        commits with a commit record that, at the session's
        ``synchronous_commit`` (``on`` unless the server is configured
        otherwise), waits for the WAL flush up to that record, which lies after
        the chain commit before it. A transaction that only takes an id
        (``SELECT pg_current_xact_id()``) is not enough: PostgreSQL commits a
        transaction that wrote no WAL before its commit record asynchronously,
        without the flush. Flushes requested by several processes at once are
        served by one ``fsync`` (the server's group flush).
        """
        pg = self._pg
        try:
            self.conn.execute(_FLUSH_SQL)
        except pg.Error as exc:
            raise StoreError(
                "the event log committed but its durability was not confirmed "
                f"(recording the input again is deduplicated): {self._scrub(exc)}"
            ) from None

    def _settle(self, rows: Sequence[Any]) -> None:
        """
        With :attr:`shared_flush`, rows another writer committed may be visible
        a moment before they are durable: flush before they are handed out, so
        that no consumer acts on an event a server crash could still take back.
        """
        if self.shared_flush and not self.read_only:
            self._read(self._flush_wal)

    def _write_fast(self, batch: list[Pending]) -> None:
        conn = self.conn
        self._begin_chain()
        payment_ids = sorted({p.item.payment_id for p in batch if p.item.payment_id is not None})
        charge_ids = sorted({p.item.charge_id for p in batch if p.item.charge_id is not None})
        # Queue every read before the first fetch: one round trip in pipeline mode.
        by_id = conn.execute(_PAYMENTS_IN, (payment_ids,)) if payment_ids else None
        by_charge = conn.execute(_CHARGES_IN, (charge_ids,)) if charge_ids else None
        at_heads = conn.execute(to_pg(_sql.HEADS))
        known: dict[str, Payment] = {}
        owners: dict[str, str] = {}  # charge id -> the first payment holding it
        for cursor in (by_id, by_charge):
            for row in cursor.fetchall() if cursor is not None else ():
                payment = _rows.payment_from_row(row)
                known[payment.payment_id] = payment
                if cursor is by_charge and payment.charge_id is not None:
                    owners.setdefault(payment.charge_id, payment.payment_id)
        heads = _rows.heads_from_row(at_heads.fetchone())
        staged = Staged()
        inbox_rows: list[tuple[Any, ...]] = []
        event_rows: list[tuple[Any, ...]] = []
        for pending in batch:
            pending.result = pending.error = None
            item = pending.item
            before = None
            if item.payment_id is not None:
                before = staged.payments.get(item.payment_id) or known.get(item.payment_id)
            if before is None and item.charge_id is not None:
                owner = staged.charges.get(item.charge_id) or owners.get(item.charge_id)
                if owner is not None:
                    before = staged.payments.get(owner) or known.get(owner)
            try:
                planned = self._plan(item, before, heads)
            except Exception as exc:  # the decision failed: nothing of this input is written
                pending.error = exc
                continue
            inbox_rows.append(planned.inbox_row)
            event_rows.extend(planned.event_rows)
            staged.add(planned)
            heads = planned.heads
            pending.result = planned.recorded
        with conn.cursor() as cur:
            if inbox_rows:
                cur.executemany(to_pg(_sql.INSERT_INBOX), inbox_rows)
            if event_rows:
                cur.executemany(to_pg(_sql.INSERT_EVENT), event_rows)
            if staged.rows:
                cur.executemany(to_pg(_sql.UPSERT_PAYMENT), list(staged.rows.values()))

    def _write_careful(self, batch: list[Pending]) -> None:
        self._begin_chain()
        for pending in batch:
            pending.result = pending.error = None
            item = pending.item
            try:
                with self.conn.transaction():  # a savepoint: this input's rows, or none
                    pending.result = self._record(
                        item.draft,
                        item.decide,
                        now=item.now,
                        payment_id=item.payment_id,
                        charge_id=item.charge_id,
                    )
            except self._pg.Error as exc:
                pending.error = StoreError(f"event log write refused: {self._scrub(exc)}")
            except Exception as exc:
                pending.error = exc

    def _plan(self, item: RecordItem, before: Payment | None, heads: Heads) -> Plan:
        """The rows of one input (an input holding NUL recorded refused, see NUL_REASON)."""
        decision = item.decide(before)
        ids = {"payment_id": item.payment_id, "charge_id": item.charge_id}
        planned = plan(item.draft, decision, before, heads, now=item.now, **ids)
        if not _holds_nul(planned):
            return planned
        # PostgreSQL text cannot hold U+0000 (SQLite can). Record the input
        # anyway, refused, its body kept exactly as base64 of its UTF-8 bytes.
        return plan(
            _storable(item.draft),
            Decision(
                outcome=Outcome.REJECTED,
                reason=NUL_REASON,
                payment_id=_nul_free(decision.payment_id or item.payment_id),
                charge_id=_nul_free(decision.charge_id or item.charge_id),
                reason_code=ReasonCode.MALFORMED,
            ),
            before,
            heads,
            now=item.now,
            payment_id=None,
            charge_id=None,
        )

    def _record(
        self,
        draft: InboxDraft,
        decide: Callable[[Payment | None], Decision],
        *,
        now: str,
        payment_id: str | None,
        charge_id: str | None,
    ) -> Recorded:
        """One input, inside the open transaction (the careful path)."""
        conn = self.conn
        by_id = conn.execute(to_pg(_sql.LOOKUP), (payment_id,)) if payment_id is not None else None
        by_charge = (
            conn.execute(to_pg(_sql.LOOKUP_CHARGE), (charge_id,)) if charge_id is not None else None
        )
        at_heads = conn.execute(to_pg(_sql.HEADS))
        row = by_id.fetchone() if by_id is not None else None
        if row is None and by_charge is not None:
            row = by_charge.fetchone()
        before = _rows.payment_from_row(row) if row else None
        heads = _rows.heads_from_row(at_heads.fetchone())
        item = RecordItem(
            draft=draft, decide=decide, now=now, payment_id=payment_id, charge_id=charge_id
        )
        planned = self._plan(item, before, heads)
        with conn.cursor() as cur:
            cur.execute(to_pg(_sql.INSERT_INBOX), planned.inbox_row)
            if planned.event_rows:
                cur.executemany(to_pg(_sql.INSERT_EVENT), planned.event_rows)
            if planned.payment_row is not None:
                cur.execute(to_pg(_sql.UPSERT_PAYMENT), planned.payment_row)
        return planned.recorded

    # ---------------------------------------------------------------------- reads

    def _read(self, work: Callable[[], T]) -> T:
        try:
            with self._lock:
                return work()
        except self._pg.Error as exc:
            raise StoreError(f"event log read failed: {self._scrub(exc)}") from None

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run a portable statement (``?`` placeholders) on the connection."""
        return self.conn.execute(to_pg(sql), tuple(params))

    # --------------------------------------------------------------------- audit

    def triggers(self) -> dict[str, bool]:
        """The kplus_fsm triggers on ``inbox`` and ``events``: name -> enabled."""
        rows = self._read(
            lambda: self._rows(
                "SELECT t.tgname, t.tgenabled <> 'D' FROM pg_trigger t"
                " WHERE NOT t.tgisinternal"
                " AND t.tgrelid IN (to_regclass('inbox'), to_regclass('events'))"
            )
        )
        return {str(name): bool(enabled) for name, enabled in rows}

    def verify(self, *, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """
        Check the hash chains of ``inbox`` and ``events`` row by row, that the
        append-only triggers are present and enabled, and the schema version.
        Streams. ``progress(n)`` is called after each batch with the rows checked.
        """
        with self._lock:
            try:
                version = self.schema_version()
                problem: str | None = None
                try:
                    self._check_version()
                except SchemaVersionError as exc:
                    problem = str(exc)
                if problem is None:
                    present = self.triggers()
                    missing = sorted(_schema_pg.TRIGGERS - set(present))
                    disabled = sorted(n for n in _schema_pg.TRIGGERS if present.get(n) is False)
                    if missing:
                        problem = f"append-only triggers missing: {', '.join(missing)}"
                    elif disabled:
                        problem = f"append-only triggers disabled: {', '.join(disabled)}"

                return _audit.verify_chains(
                    self._verify_rows, schema_version=version, problem=problem, progress=progress
                )
            except self._pg.Error as exc:
                raise StoreError(f"verify failed: {self._scrub(exc)}") from None

    def replay(
        self, *, repair: bool = False, progress: Callable[[int], None] | None = None
    ) -> ReplayReport:
        """
        Rebuild every payment's projection from its events (one stream at a time,
        through a server-side cursor, in one consistent snapshot) and compare it
        with the stored ``payments`` rows. With ``repair=True`` the differing rows
        are rewritten from the events in one write transaction.

        Raises:
            IntegrityError: an event cannot be folded (unknown kind, broken stream).
        """
        pg = self._pg
        with self._lock:
            conn = self.conn
            try:
                conn.isolation_level = pg.IsolationLevel.REPEATABLE_READ
                try:
                    with conn.transaction():
                        with conn.cursor(name="kplus_fsm_replay") as cur:
                            cur.itersize = _BATCH
                            cur.execute(to_pg(_sql.EVENTS_BY_STREAM))
                            n_events, n_payments, differences, rebuilt = _audit.fold_streams(
                                cur, self._load, progress=progress
                            )
                        orphans = [str(r[0]) for r in conn.execute(to_pg(_sql.ORPHANS))]
                finally:
                    if not conn.broken and not conn.closed:
                        conn.isolation_level = pg.IsolationLevel.READ_COMMITTED
            except pg.Error as exc:
                raise StoreError(f"replay failed: {self._scrub(exc)}") from None
        differences.extend(_audit.orphan_differences(orphans))
        if repair and (rebuilt or orphans):
            self._repair(rebuilt, orphans)
        return ReplayReport(
            events=n_events,
            payments=n_payments,
            differences=tuple(differences),
            repaired=repair and bool(differences),
        )

    # ------------------------------------------------------------------- imports

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterator[Sequence[Any]]) -> int:
        """
        Append ``rows`` to ``table`` verbatim with ``COPY``, inside the caller's
        :meth:`write_transaction`; the number of rows. Used by ``kplus-fsm migrate-log``.
        """
        _rows.check_copied(table, columns)
        n = 0
        with self.conn.cursor() as cur, cur.copy(_COPY_SQL[table]) as copy:
            for row in rows:
                copy.write_row(row)
                n += 1
        return n


__all__ = ["CHAIN_LOCK", "PostgresStore", "to_pg"]
