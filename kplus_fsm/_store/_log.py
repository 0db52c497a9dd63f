"""
The log's operational state, beside the hash-chained record: leases, the
reconciliation queue, consumers' starting points, and the questions the
self-healing receiver asks (which webhook hints are unresolved, which attempts
an order has).

Written once for both stores: portable SQL with ``?`` placeholders, run through
an :data:`Execute` function that the store hands in (SQLite's
``Connection.execute``; the PostgreSQL store's, after placeholder translation),
inside the store's own transaction or read. Nothing here touches ``inbox`` or
``events``: leases and reconciliation checks are mutable by design (they say
who works on what, not what happened), and every fact about a payment stays in
the append-only tables.

Times are the stored form (UTC, microseconds, ``Z``), so they compare as text.
A lease's expiry is judged by the clocks of the hosts that share the log: keep
them synchronised (NTP) to well within the lease time.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any, Final, Protocol, TypeVar

import attrs

from .._model import Payment, StoredEvent
from ..exceptions import LeaseLostError
from ..typing import Cursor, Dialect
from . import _audit, _rows, _sql
from ._reports import TimelineEntry
from ._rows import Heads, InboxRow
from ._schema_sqlite import (
    HINTS_FROM,
    HINTS_FROM_SQLITE,
    HINTS_FROM_SQLITE_AFTER,
    unresolved_hint_select,
)

T = TypeVar("T")


#: Runs one statement (``?`` placeholders) with its parameters.
Execute = Callable[[str, Sequence[Any]], Cursor]

# ----------------------------------------------------------------------- leases


@attrs.frozen(kw_only=True)
class Lease:
    """
    The right to be the one runner of ``name`` until ``expires_at``.

    ``token`` is a fencing token: it grows every time the lease changes hands,
    so work committed under an older token can be refused (a runner that was
    paused past its expiry and then wakes up has lost the lease).
    """

    name: str
    holder: str
    token: int
    acquired_at: str
    expires_at: str


def holder_id() -> str:
    """This process's identity in ``leases``: host, process id and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def acquire_lease(
    execute: Execute, name: str, holder: str, *, now: str, expires_at: str
) -> Lease | None:
    """
    Take (or extend, for its holder) the lease ``name``; ``None`` while another
    holder's lease has not expired. Run inside a write transaction.
    """
    row = execute(
        "SELECT holder, token, acquired_at, expires_at FROM leases WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        execute(
            "INSERT INTO leases (name, holder, token, acquired_at, expires_at)"
            " VALUES (?, ?, 1, ?, ?)",
            (name, holder, now, expires_at),
        )
        return Lease(name=name, holder=holder, token=1, acquired_at=now, expires_at=expires_at)
    held_by, token, acquired_at, old_expiry = row[0], int(row[1]), row[2], row[3]
    if held_by == holder and old_expiry > now:
        execute(
            "UPDATE leases SET expires_at = ? WHERE name = ? AND token = ?",
            (expires_at, name, token),
        )
        return Lease(
            name=name, holder=holder, token=token, acquired_at=acquired_at, expires_at=expires_at
        )
    if old_expiry > now:
        return None
    execute(
        "UPDATE leases SET holder = ?, token = ?, acquired_at = ?, expires_at = ?"
        " WHERE name = ? AND token = ?",
        (holder, token + 1, now, expires_at, name, token),
    )
    return Lease(name=name, holder=holder, token=token + 1, acquired_at=now, expires_at=expires_at)


def renew_lease(execute: Execute, lease: Lease, *, now: str, expires_at: str) -> Lease | None:
    """Extend a lease still held (same token, not expired); ``None``: it was lost."""
    cur = execute(
        "UPDATE leases SET expires_at = ?"
        " WHERE name = ? AND holder = ? AND token = ? AND expires_at > ?",
        (expires_at, lease.name, lease.holder, lease.token, now),
    )
    if cur.rowcount != 1:
        return None
    return attrs.evolve(lease, expires_at=expires_at)


def release_lease(execute: Execute, lease: Lease, *, now: str) -> None:
    """Let the lease go at once (if still held by ``lease``), so another may take it."""
    execute(
        "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND token = ?"
        " AND expires_at > ?",
        (now, lease.name, lease.holder, lease.token, now),
    )


def lease_valid(execute: Execute, lease: Lease, *, now: str) -> bool:
    """Whether ``lease`` is still held (same holder and token, not expired)."""
    row = execute(
        "SELECT 1 FROM leases WHERE name = ? AND holder = ? AND token = ? AND expires_at > ?",
        (lease.name, lease.holder, lease.token, now),
    ).fetchone()
    return row is not None


def lease_holder(execute: Execute, name: str) -> Lease | None:
    """The lease ``name`` as stored (expired or not), or ``None``."""
    row = execute(
        "SELECT holder, token, acquired_at, expires_at FROM leases WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        return None
    return Lease(name=name, holder=row[0], token=int(row[1]), acquired_at=row[2], expires_at=row[3])


# -------------------------------------------------------------------- consumers


def create_consumer(execute: Execute, name: str, position: int, *, now: str) -> bool:
    """Create the consumer at ``position`` unless it exists; whether it was created."""
    cur = execute(
        "INSERT INTO consumers (name, position, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO NOTHING",
        (name, position, now),
    )
    return cur.rowcount == 1


def consumer_exists(execute: Execute, name: str) -> bool:
    return execute("SELECT 1 FROM consumers WHERE name = ?", (name,)).fetchone() is not None


def position_before(execute: Execute, when: str) -> int:
    """The last event position recorded before ``when`` (0: none)."""
    row = execute(
        "SELECT coalesce(max(position), 0) FROM events WHERE recorded_at < ?", (when,)
    ).fetchone()
    return int(row[0])


def last_position(execute: Execute) -> int:
    row = execute("SELECT coalesce(max(position), 0) FROM events", ()).fetchone()
    return int(row[0])


# ------------------------------------------------------------ unresolved hints


@attrs.frozen(kw_only=True)
class UnresolvedHint:
    """
    An accepted webhook whose charge has had no authoritative read (create
    response, re-fetch or poll) recorded after it. Derived from the log, never
    stored: recording a read of the charge resolves it.
    """

    inbox_id: int
    received_at: str
    payment_id: str | None
    charge_id: str
    event_id: str | None
    verification: str
    outcome: str

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def unresolved_hints(
    execute: Execute,
    *,
    after: int = 0,
    limit: int = 1000,
    charge_id: str | None = None,
    indexed: bool = False,
) -> list[UnresolvedHint]:
    """
    Unresolved hints with inbox id above ``after``, oldest first (at most
    ``limit``). ``indexed``: the SQLite indexes of hints may be named (see
    :data:`HINTS_FROM_SQLITE`).
    """
    source_sql = HINTS_FROM
    if indexed and charge_id is None:
        source_sql = HINTS_FROM_SQLITE_AFTER if after else HINTS_FROM_SQLITE
    sql = unresolved_hint_select(source_sql) + " AND h.id > ?"
    params: list[Any] = [after]
    if charge_id is not None:
        sql += " AND h.charge_id = ?"
        params.append(charge_id)
    sql += " ORDER BY h.id LIMIT ?"
    params.append(limit)
    return [
        UnresolvedHint(
            inbox_id=int(r[0]),
            received_at=r[1],
            payment_id=r[2],
            charge_id=r[3],
            event_id=r[4],
            verification=r[5],
            outcome=r[6],
        )
        for r in execute(sql, params).fetchall()
    ]


# ------------------------------------------------------------- reconciliation

_PAYMENTS_P: Final = ", ".join(f"p.{c}" for c in _rows.PAYMENT_COLUMNS)

#: Due payments, the least recently checked first: a payment reconciliation
#: looked at moves to the back of the queue, so successive bounded runs reach
#: every due payment (and dead creates never block the rest). A payment whose
#: ``next_at`` lies ahead is resting (backoff) and is skipped.
_CANDIDATES_SQL: Final = (
    f"SELECT {_PAYMENTS_P} FROM payments p"
    " LEFT JOIN reconcile_checks c ON c.payment_id = p.payment_id"
    " WHERE ((p.status = 'pending' AND (p.expires_at IS NULL OR p.expires_at <= ?"
    " OR p.updated_at <= ?))"
    " OR (p.status = 'created' AND (p.create_unknown = 1 OR p.updated_at <= ?)))"
    " AND (c.next_at IS NULL OR c.next_at <= ?)"
    " ORDER BY coalesce(c.last_at, ''), p.updated_at, p.payment_id LIMIT ?"
)


def reconcile_candidates(
    execute: Execute, *, now: str, cutoff: str, stored_now: str, limit: int
) -> list[Payment]:
    """See :meth:`Operations.reconcile_candidates`."""
    rows = execute(_CANDIDATES_SQL, (now, cutoff, cutoff, stored_now, limit)).fetchall()
    return [_rows.payment_from_row(r) for r in rows]


@attrs.frozen(kw_only=True)
class Check:
    """
    One reconciliation look at a payment, as kept in ``reconcile_checks``: what
    was done, and when the payment is next due (``next_at``, the backoff).
    """

    payment_id: str
    next_at: str
    action: str = "checking"
    reason: str | None = None


def note_checks(execute: Execute, checks: Iterable[Check], *, now: str) -> None:
    """Note that reconciliation takes these payments at ``now`` (to the back of the queue)."""
    for check in checks:
        execute(
            "INSERT INTO reconcile_checks (payment_id, attempts, last_at, next_at, last_action,"
            " last_reason) VALUES (?, 0, ?, ?, ?, ?)"
            " ON CONFLICT (payment_id) DO UPDATE SET"
            " last_at = excluded.last_at, next_at = excluded.next_at,"
            " last_action = excluded.last_action, last_reason = excluded.last_reason",
            (check.payment_id, now, check.next_at, check.action, check.reason),
        )


def finish_checks(execute: Execute, checks: Iterable[Check], *, counted: bool = True) -> None:
    """Record how each attempt ended (``counted``: one more attempt made)."""
    bump = " attempts = attempts + 1," if counted else ""
    for check in checks:
        execute(
            f"UPDATE reconcile_checks SET{bump} next_at = ?, last_action = ?, last_reason = ?"
            " WHERE payment_id = ?",
            (check.next_at, check.action, check.reason, check.payment_id),
        )


def check_attempts(execute: Execute, payment_ids: Sequence[str]) -> dict[str, int]:
    """How many times reconciliation has looked at each of these payments."""
    out: dict[str, int] = {}
    for pid in payment_ids:
        row = execute(
            "SELECT attempts FROM reconcile_checks WHERE payment_id = ?", (pid,)
        ).fetchone()
        out[pid] = int(row[0]) if row else 0
    return out


# ---------------------------------------------------------------------- orders


def payments_for_order(execute: Execute, order_ref: str) -> list[Payment]:
    """Every attempt of an order, oldest first."""
    rows = execute(
        f"SELECT {', '.join(_rows.PAYMENT_COLUMNS)} FROM payments WHERE order_ref = ?"
        " ORDER BY created_at, payment_id",
        (order_ref,),
    ).fetchall()
    return [_rows.payment_from_row(r) for r in rows]


# ----------------------------------------------------------- the stores' half


class _Driven(Protocol):
    """What a store supplies to the shared half: its dialect, transactions and driver."""

    @property
    def dialect(self) -> Dialect: ...

    @property
    def hints_indexed(self) -> bool: ...

    def _retrying(self, work: Callable[[], T]) -> T: ...

    def _read(self, work: Callable[[], T]) -> T: ...

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def _load(self, payment_id: str) -> Payment | None: ...

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def _settle(self, rows: Sequence[Any]) -> None: ...


class LogTransaction:
    """
    The :class:`kplus_fsm.typing.Transaction` a store's ``write_transaction``
    hands its work: portable statements (``?`` placeholders) run through the
    store's driver, inside the open write transaction.

    Any other attribute is the ``native`` object's: on SQLite the
    ``sqlite_utils.Database`` that round-1 handlers were promised
    (``tx.table("shipments").insert(...)`` still works there), on PostgreSQL
    the psycopg connection.
    """

    __slots__ = ("_native", "_store", "connection")

    def __init__(self, store: _Driven, connection: Any, native: Any = None) -> None:
        self._store = store
        #: The driver's own connection (``sqlite3.Connection`` / ``psycopg.Connection``).
        self.connection = connection
        self._native = connection if native is None else native

    def __getattr__(self, name: str) -> Any:
        return getattr(self._native, name)

    @property
    def dialect(self) -> Dialect:
        return self._store.dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement (``?`` placeholders) in the transaction."""
        return self._store._exec(sql, params)

    def __repr__(self) -> str:
        return f"<transaction on a {self.dialect} log>"


class Log:
    """
    The half of a store that is the same on every database, written once over a
    small driver: reads (payments, streams, inputs, timelines, heads, counts),
    consumers, leases, the reconciliation queue, hints and orders, and the
    repair that replay writes. Each store (SQLite, PostgreSQL) mixes this in and
    supplies ``dialect``, ``_exec`` (one portable statement on its connection),
    ``_read`` (a read, its errors translated) and ``_retrying`` (a write
    transaction, retried when the database asks); it keeps only its connection
    handling, its concurrency and its dialect.
    """

    #: Whether the statements may name SQLite's partial indexes of hints
    #: (``INDEXED BY``): a current SQLite log; never PostgreSQL.
    hints_indexed: bool = False

    # ------------------------------------------------------------------ reads

    def _settle(self, rows: Sequence[Any]) -> None:
        """Make rows just read durable before they are handed out (a store may need to)."""

    def _load(self: _Driven, payment_id: str) -> Payment | None:
        row = self._exec(_sql.LOOKUP, (payment_id,)).fetchone()
        return _rows.payment_from_row(row) if row else None

    def _rows(self: _Driven, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._exec(sql, params).fetchall())

    def get(self: _Driven, payment_id: str) -> Payment | None:
        """The current state of a payment, or ``None``."""
        return self._read(lambda: self._load(payment_id))

    def find(self: _Driven, id_: str) -> Payment | None:
        """A payment by payment id, else by charge id, or ``None``."""

        def work() -> Payment | None:
            found = self._load(id_)
            if found is None:
                row = self._exec(_sql.LOOKUP_CHARGE, (id_,)).fetchone()
                found = _rows.payment_from_row(row) if row else None
            return found

        return self._read(work)

    def query(self: _Driven, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """
        Run one read-only ``SELECT`` written with ``?`` placeholders (values only
        as ``params``, never in ``sql``) and return its rows. The incident
        queries of ``kplus-fsm`` use it.

        Raises:
            ValueError: ``sql`` is not a ``SELECT`` (or ``WITH`` ... ``SELECT``).
            StoreError: the read failed.
        """
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            raise ValueError("query() runs SELECT statements only")
        return self._read(lambda: self._rows(sql, params))

    def stream(self: _Driven, payment_id: str, *, until: str | None = None) -> list[StoredEvent]:
        """A payment's events in order (only those recorded at or before ``until``)."""
        if until is None:
            rows = self._read(lambda: self._rows(_sql.STREAM, (payment_id,)))
        else:
            rows = self._read(lambda: self._rows(_sql.STREAM_UNTIL, (payment_id, until)))
        return [_rows.event_from_row(r) for r in rows]

    def iter_events(self: _Driven, after: int = 0, *, batch: int = 1000) -> Iterator[StoredEvent]:
        """
        Every event after global position ``after``, in order, streamed in
        batches. Every event handed out is durable (a consumer may act on it).
        """
        while True:
            rows = self._read(partial(self._rows, _sql.EVENTS_AFTER, (after, batch)))
            if rows:
                self._settle(rows)
            for row in rows:
                yield _rows.event_from_row(row)
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def iter_inbox(self: _Driven, after: int = 0, *, batch: int = 1000) -> Iterator[InboxRow]:
        """Every inbox row after id ``after``, in order, streamed in batches."""
        while True:
            rows = self._read(partial(self._rows, _sql.INBOX_AFTER, (after, batch)))
            for row in rows:
                yield _rows.inbox_row(row)
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def inbox_for(self: _Driven, payment_id: str, *, until: str | None = None) -> list[InboxRow]:
        """Every input attributed to a payment (its charge id's included), in order."""
        if until is None:
            rows = self._read(lambda: self._rows(_sql.INBOX_FOR_ALL, (payment_id, payment_id)))
        else:
            rows = self._read(
                lambda: self._rows(_sql.INBOX_FOR_UNTIL, (payment_id, payment_id, until))
            )
        return [_rows.inbox_row(r) for r in rows]

    def timeline(
        self: _Driven, payment_id: str, *, until: str | None = None
    ) -> list[TimelineEntry]:
        """
        Every input about a payment and every event it caused, interleaved in
        commit order (each input followed by its events).
        """
        inbox_sql, events_sql = _audit.timeline_sql(until is not None)
        bounds = [] if until is None else [until]

        def work() -> list[TimelineEntry]:
            return _audit.timeline_from_rows(
                self._rows(inbox_sql, [payment_id, payment_id, *bounds]),
                self._rows(events_sql, [payment_id, *bounds]),
            )

        return self._read(work)

    def is_empty(self: _Driven) -> bool:
        """Whether the log holds no row at all (a target ``migrate-log`` may fill)."""
        return not self._read(lambda: self._rows(_sql.ANY_ROW))

    def counts(self: _Driven) -> dict[str, int]:
        """Row counts of the log's tables."""
        row = self._read(lambda: self._rows(_sql.COUNTS))[0]
        return {"inbox": int(row[0]), "events": int(row[1]), "payments": int(row[2])}

    def _heads(self: _Driven) -> Heads:
        return _rows.heads_from_row(self._exec(_sql.HEADS).fetchone())

    def head(self: _Driven) -> dict[str, Any]:
        """The position and hash of the last inbox row and the last event."""
        heads = self._read(lambda: Log._heads(self))
        return {
            "inbox_id": heads.inbox_id,
            "inbox_hash": heads.inbox_hash,
            "event_position": heads.position,
            "event_hash": heads.events_hash,
        }

    def _verify_rows(self: _Driven, table: str, after: int) -> list[tuple[Any, ...]]:
        """A batch of ``table``'s hashed columns and hashes after a key (verify's reads)."""
        sql = _audit.VERIFY_INBOX_SQL if table == "inbox" else _audit.VERIFY_EVENTS_SQL
        return self._read(lambda: self._rows(sql, (after,)))

    def _repair(self: _Driven, rebuilt: Sequence[Payment], orphans: Sequence[str]) -> None:
        """Write replay's repair: the rebuilt projection rows, the orphans removed."""

        def fix() -> None:
            for payment in rebuilt:
                self._exec(_sql.REPAIR_PAYMENT, _rows.payment_to_row(payment))
            for orphan in orphans:
                self._exec(_sql.DELETE_PAYMENT, (orphan,))

        self._retrying(fix)

    # ------------------------------------------------------------------ consumers

    def consumer_position(self: _Driven, name: str) -> int:
        """The last event position the named consumer has processed (0: none)."""
        row = self._read(lambda: self._exec(_sql.CONSUMER_POSITION, (name,)).fetchone())
        return int(row[0]) if row else 0

    def set_consumer_position(self: _Driven, name: str, position: int, *, now: str) -> None:
        """Record the consumer's progress (inside the caller's transaction, if any)."""
        self._read(lambda: self._exec(_sql.SET_CONSUMER_POSITION, (name, position, now)))

    # ------------------------------------------------------- operational state

    def acquire_lease(
        self: _Driven, name: str, holder: str, *, now: str, expires_at: str
    ) -> Lease | None:
        """Take or extend the lease ``name`` for ``holder`` (``None``: held by another)."""
        return self._retrying(
            lambda: acquire_lease(self._exec, name, holder, now=now, expires_at=expires_at)
        )

    def renew_lease(self: _Driven, lease: Lease, *, now: str, expires_at: str) -> Lease | None:
        """Extend a lease still held; ``None`` if it was lost."""
        return self._retrying(
            lambda: renew_lease(self._exec, lease, now=now, expires_at=expires_at)
        )

    def release_lease(self: _Driven, lease: Lease, *, now: str) -> None:
        """Give a lease up at once."""
        self._retrying(lambda: release_lease(self._exec, lease, now=now))

    def lease_valid(self: _Driven, lease: Lease, *, now: str) -> bool:
        """Whether ``lease`` is still held (inside a transaction: as that transaction sees it)."""
        return self._read(lambda: lease_valid(self._exec, lease, now=now))

    def lease(self: _Driven, name: str) -> Lease | None:
        """The lease ``name`` as stored (expired or not)."""
        return self._read(lambda: lease_holder(self._exec, name))

    def create_consumer(self: _Driven, name: str, position: int, *, now: str) -> bool:
        """Create a consumer at ``position`` unless it exists; whether it was created."""
        return self._retrying(lambda: create_consumer(self._exec, name, position, now=now))

    def consumer_exists(self: _Driven, name: str) -> bool:
        return self._read(lambda: consumer_exists(self._exec, name))

    def position_before(self: _Driven, when: str) -> int:
        """The last event position recorded before ``when`` (0: none)."""
        return self._read(lambda: position_before(self._exec, when))

    def last_position(self: _Driven) -> int:
        """The last event position (0: no events)."""
        return self._read(lambda: last_position(self._exec))

    def advance_consumer(
        self: _Driven, name: str, position: int, *, now: str, lease: Lease | None = None
    ) -> None:
        """
        Move the consumer's position to ``position``, in a transaction of its own;
        with ``lease``, only while that lease is held.

        Raises:
            LeaseLostError: the lease was lost; the position did not move.
        """

        def work() -> None:
            if lease is not None and not lease_valid(self._exec, lease, now=now):
                raise LeaseLostError(
                    f"consumer {name!r} lost its lease (token {lease.token}); "
                    "its position was not advanced"
                )
            self._exec(_sql.SET_CONSUMER_POSITION, (name, position, now))

        self._retrying(work)

    def unresolved_hints(
        self: _Driven, *, after: int = 0, limit: int = 1000, charge_id: str | None = None
    ) -> list[UnresolvedHint]:
        """Accepted webhooks not followed by a read of their charge, oldest first."""
        return self._read(
            lambda: unresolved_hints(
                self._exec,
                after=after,
                limit=limit,
                charge_id=charge_id,
                indexed=self.hints_indexed,
            )
        )

    def reconcile_candidates(
        self: _Driven, *, now: str, cutoff: str, limit: int, stored_now: str | None = None
    ) -> list[Payment]:
        """
        Payments reconciliation may need to re-read, the least recently checked
        first: ``pending`` past ``expires_at`` (``now`` in Omise's
        ``YYYY-MM-DDTHH:MM:SSZ`` form) or not updated since ``cutoff``;
        ``created`` with an unknown create outcome or not updated since ``cutoff``;
        skipping those resting until a later ``next_at`` (``stored_now``: the
        current time in the stored form; ``None``: none is resting).
        """
        rest = stored_now if stored_now is not None else "~"  # "~" sorts after any time
        return self._read(
            lambda: reconcile_candidates(
                self._exec, now=now, cutoff=cutoff, stored_now=rest, limit=limit
            )
        )

    def note_checks(self: _Driven, checks: Sequence[Check], *, now: str) -> None:
        """Note that reconciliation takes these payments now (moves them back in the queue)."""
        if checks:
            self._retrying(lambda: note_checks(self._exec, checks, now=now))

    def finish_checks(self: _Driven, checks: Sequence[Check], *, counted: bool = True) -> None:
        """Record how each reconciliation attempt ended and when the payment is next due."""
        if checks:
            self._retrying(lambda: finish_checks(self._exec, checks, counted=counted))

    def check_attempts(self: _Driven, payment_ids: Sequence[str]) -> dict[str, int]:
        """How many times reconciliation has looked at each payment (0: never)."""
        return self._read(lambda: check_attempts(self._exec, payment_ids))

    def payments_for_order(self: _Driven, order_ref: str) -> list[Payment]:
        """Every attempt of an order, oldest first."""
        return self._read(lambda: payments_for_order(self._exec, order_ref))


__all__ = [
    "Check",
    "Execute",
    "Lease",
    "Log",
    "LogTransaction",
    "UnresolvedHint",
    "acquire_lease",
    "check_attempts",
    "finish_checks",
    "holder_id",
    "consumer_exists",
    "create_consumer",
    "last_position",
    "lease_holder",
    "lease_valid",
    "note_checks",
    "payments_for_order",
    "position_before",
    "reconcile_candidates",
    "release_lease",
    "renew_lease",
    "unresolved_hints",
]
