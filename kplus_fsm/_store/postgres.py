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
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs

from .._machine import Decision
from .._model import Outcome, Payment
from ..exceptions import (
    ConcurrencyError,
    PostgresUnavailableError,
    SchemaVersionError,
    StoreError,
)
from ..typing import Cursor, RecordItem, Transaction
from . import _audit, _rows, _schema_pg, _sql
from ._log import Log, LogTransaction
from ._reports import ReplayReport, VerifyReport
from ._rows import InboxDraft, Plan, Recorded, plan
from ._schema_sqlite import LEGACY_REASON_CODE
from ._urls import redact, scrub

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
#: SQLSTATEs retried: serialization_failure, deadlock_detected.
_RETRY_SQLSTATES: Final = frozenset({"40001", "40P01"})
_VERSION_CONSTRAINT: Final = "events_stream_version"


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


#: A portable statement (:mod:`kplus_fsm._store._sql`) in psycopg's style (cached).
_pg: Final = to_pg


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
    ) -> None:
        self._pg = _psycopg()
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
                    raise StoreError(f"event log write refused: {self._scrub(exc)}") from exc
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

        Raises:
            StoreError: nothing was written.
        """
        return self._retrying(
            lambda: self._record(
                draft, decide, now=now, payment_id=payment_id, charge_id=charge_id
            ),
            pipeline=True,
        )

    def record_many(self, items: Sequence[RecordItem]) -> list[Recorded | Exception]:
        """
        Record several inputs in one transaction, in order (each in a savepoint:
        an input that fails, its own error in the list, leaves the others).

        Raises:
            StoreError: nothing was written (the commit itself failed).
        """

        def work() -> list[Recorded | Exception]:
            out: list[Recorded | Exception] = []
            for item in items:
                try:
                    with self.conn.transaction():
                        out.append(
                            self._record(
                                item.draft,
                                item.decide,
                                now=item.now,
                                payment_id=item.payment_id,
                                charge_id=item.charge_id,
                            )
                        )
                except self._pg.Error as exc:
                    out.append(StoreError(f"event log write refused: {self._scrub(exc)}"))
                except Exception as exc:
                    out.append(exc)
            return out

        return self._retrying(work) if items else []

    def _record(
        self,
        draft: InboxDraft,
        decide: Callable[[Payment | None], Decision],
        *,
        now: str,
        payment_id: str | None,
        charge_id: str | None,
    ) -> Recorded:
        conn = self.conn
        # Queue every read before the first fetch: one round trip in pipeline mode.
        by_id = conn.execute(_pg(_sql.LOOKUP), (payment_id,)) if payment_id is not None else None
        by_charge = (
            conn.execute(_pg(_sql.LOOKUP_CHARGE), (charge_id,)) if charge_id is not None else None
        )
        at_heads = conn.execute(_pg(_sql.HEADS))
        row = by_id.fetchone() if by_id is not None else None
        if row is None and by_charge is not None:
            row = by_charge.fetchone()
        before = _rows.payment_from_row(row) if row else None
        heads = _rows.heads_from_row(at_heads.fetchone())
        decision = decide(before)
        planned = plan(
            draft, decision, before, heads, now=now, payment_id=payment_id, charge_id=charge_id
        )
        if _holds_nul(planned):
            # PostgreSQL text cannot hold U+0000 (SQLite can). Record the input
            # anyway, refused, its body kept exactly as base64 of its UTF-8 bytes.
            planned = plan(
                _storable(draft),
                Decision(
                    outcome=Outcome.REJECTED,
                    reason=NUL_REASON,
                    payment_id=_nul_free(decision.payment_id or payment_id),
                    charge_id=_nul_free(decision.charge_id or charge_id),
                ),
                before,
                heads,
                now=now,
                payment_id=None,
                charge_id=None,
            )
        with conn.cursor() as cur:
            cur.execute(_pg(_sql.INSERT_INBOX), planned.inbox_row)
            if planned.event_rows:
                cur.executemany(_pg(_sql.INSERT_EVENT), planned.event_rows)
            if planned.payment_row is not None:
                cur.execute(_pg(_sql.UPSERT_PAYMENT), planned.payment_row)
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
                            cur.execute(_pg(_sql.EVENTS_BY_STREAM))
                            n_events, n_payments, differences, rebuilt = _audit.fold_streams(
                                cur, self._load, progress=progress
                            )
                        orphans = [str(r[0]) for r in conn.execute(_pg(_sql.ORPHANS))]
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
        n = 0
        with (
            self.conn.cursor() as cur,
            cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
                n += 1
        return n


__all__ = ["CHAIN_LOCK", "PostgresStore", "to_pg"]
