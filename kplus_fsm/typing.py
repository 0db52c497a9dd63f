"""
The ports of kplus_fsm, for the code that plugs into it: what the tracker needs
from an event log (:class:`Store`, :class:`SQLStore`), the unit it records
(:class:`RecordItem`), the transaction a consumer's handler writes in
(:class:`Transaction`), the payment API (:class:`ChargeAPI`) and the clock
(:data:`Clock`).

:class:`kplus_fsm.SQLiteStore` is the embedded default;
:class:`kplus_fsm.PostgresStore` keeps the same log on a PostgreSQL server for
several hosts. :func:`kplus_fsm.open_store` picks one from a location (a path or
a URL). ``tests/store_contract.py`` is the contract test suite any store must
pass; both stores run it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import attrs

if TYPE_CHECKING:
    from ._machine import Decision
    from ._model import Payment, StoredEvent
    from ._store._log import Check, Lease, UnresolvedHint
    from ._store._reports import ReplayReport, TimelineEntry, VerifyReport
    from ._store._rows import InboxDraft, InboxRow, Recorded

T = TypeVar("T")

Clock = Callable[[], dt.datetime]
"""A function returning the current time as an aware ``datetime``."""

#: The SQL dialects of the stores.
Dialect = Literal["sqlite", "postgresql"]


class Cursor(Protocol):
    """What a statement run on a :class:`Transaction` returns (both drivers' cursors)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Transaction(Protocol):
    """
    The write transaction :meth:`Store.write_transaction` runs its work in, the
    same on every store: statements are written with ``?`` placeholders
    (translated for PostgreSQL), and they commit, or roll back, together with
    whatever else the transaction writes (a consumer's position). ``dialect``
    says which SQL the database speaks; ``connection`` is the driver's own
    connection (``sqlite3.Connection`` or ``psycopg.Connection``), for what
    portable SQL cannot say.
    """

    @property
    def dialect(self) -> Dialect: ...

    @property
    def connection(self) -> Any: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...


#: The old name of :class:`Transaction` (what a transaction's work receives).
TransactionHandle = Transaction


@attrs.frozen(kw_only=True)
class RecordItem:
    """
    One input on its way into the log: the draft as received, the pure
    ``decide`` function (it may run more than once), the time it is recorded
    at (the stored form), and the ids its payment is found by (the payment id,
    else the charge id).
    """

    draft: InboxDraft
    decide: Callable[[Payment | None], Decision]
    now: str
    payment_id: str | None = None
    charge_id: str | None = None


class Store(Protocol):
    """
    An append-only event log with a current-state projection.

    Guarantees every implementation must keep (and the contract suite checks):
    one transaction per :meth:`record` (inbox row + events + projection, or
    nothing); ``UNIQUE(stream, version)``; inbox and events never updated or
    deleted; a hash chain over both; concurrent writers serialised or retried,
    never surfacing a version clash or a busy database to the caller.
    """

    @property
    def dialect(self) -> Dialect: ...

    def record(
        self,
        draft: InboxDraft,
        decide: Callable[[Payment | None], Decision],
        *,
        now: str,
        payment_id: str | None = None,
        charge_id: str | None = None,
    ) -> Recorded: ...

    def record_many(self, items: Sequence[RecordItem]) -> list[Recorded | Exception]:
        """
        Record the items in one transaction, in order; an item's own failure is
        returned in its place and does not stop the others (a savepoint per item).
        """
        ...

    def get(self, payment_id: str) -> Payment | None: ...

    def find(self, id_: str) -> Payment | None: ...

    def stream(self, payment_id: str, *, until: str | None = None) -> list[StoredEvent]: ...

    def iter_events(self, after: int = 0, *, batch: int = 1000) -> Iterator[StoredEvent]: ...

    def iter_inbox(self, after: int = 0, *, batch: int = 1000) -> Iterator[InboxRow]: ...

    def inbox_for(self, payment_id: str, *, until: str | None = None) -> list[InboxRow]: ...

    def timeline(self, payment_id: str, *, until: str | None = None) -> list[TimelineEntry]: ...

    def reconcile_candidates(
        self, *, now: str, cutoff: str, limit: int, stored_now: str | None = None
    ) -> list[Payment]: ...

    def note_checks(self, checks: Sequence[Check], *, now: str) -> None: ...

    def finish_checks(self, checks: Sequence[Check], *, counted: bool = True) -> None: ...

    def check_attempts(self, payment_ids: Sequence[str]) -> dict[str, int]: ...

    def unresolved_hints(
        self, *, after: int = 0, limit: int = 1000, charge_id: str | None = None
    ) -> list[UnresolvedHint]: ...

    def payments_for_order(self, order_ref: str) -> list[Payment]: ...

    def consumer_position(self, name: str) -> int: ...

    def set_consumer_position(self, name: str, position: int, *, now: str) -> None: ...

    def create_consumer(self, name: str, position: int, *, now: str) -> bool: ...

    def consumer_exists(self, name: str) -> bool: ...

    def advance_consumer(
        self, name: str, position: int, *, now: str, lease: Lease | None = None
    ) -> None: ...

    def position_before(self, when: str) -> int: ...

    def last_position(self) -> int: ...

    def acquire_lease(
        self, name: str, holder: str, *, now: str, expires_at: str
    ) -> Lease | None: ...

    def renew_lease(self, lease: Lease, *, now: str, expires_at: str) -> Lease | None: ...

    def release_lease(self, lease: Lease, *, now: str) -> None: ...

    def lease_valid(self, lease: Lease, *, now: str) -> bool: ...

    def lease(self, name: str) -> Lease | None: ...

    def write_transaction(self, work: Callable[[Transaction], T]) -> T:
        """
        Run ``work(transaction)`` in one write transaction (retried when the
        database asks for it, so ``work`` may run more than once).
        """
        ...

    def verify(self, *, progress: Callable[[int], None] | None = None) -> VerifyReport: ...

    def replay(
        self, *, repair: bool = False, progress: Callable[[int], None] | None = None
    ) -> ReplayReport: ...

    def head(self) -> dict[str, Any]: ...

    def counts(self) -> dict[str, int]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Store: ...

    def __exit__(self, *exc: object) -> None: ...


class SQLStore(Store, Protocol):
    """
    A store that also answers read-only SQL: what the incident and audit
    commands (``kplus-fsm list``, ``anomalies``, ``stats``, ``export``,
    ``checkpoint``) need. Statements use ``?`` placeholders whatever the
    database (the PostgreSQL store translates them); ``dialect`` is
    ``"sqlite"`` or ``"postgresql"`` for the few expressions that differ.
    Both stores of kplus_fsm are SQL stores (:func:`kplus_fsm.open_store`).
    """

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    @property
    def hints_indexed(self) -> bool:
        """Whether :meth:`query` may name SQLite's partial indexes of hints (``INDEXED BY``)."""
        ...

    def is_empty(self) -> bool:
        """Whether the log holds no row at all (a log ``migrate-log`` may fill)."""
        ...

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterator[Sequence[Any]]) -> int:
        """
        Append ``rows`` to ``table`` verbatim, inside the caller's
        :meth:`write_transaction`; the number of rows (``migrate-log``).
        """
        ...


def dialect_of(store: Store) -> Dialect:
    """The SQL dialect of a store."""
    return store.dialect


class ChargeAPI(Protocol):
    """
    The four calls the tracker's create flow and reconciliation need from the
    payment API. ``kplus_fsm.adapters.omise.OmiseClient`` implements it over HTTP;
    any object with these methods will do (a test double, another transport).

    Errors: :class:`~kplus_fsm.exceptions.GatewayRefusedError` for an Omise error
    object, :class:`~kplus_fsm.exceptions.GatewayUnavailableError` for no definite
    answer. Nothing else.
    """

    def create_charge(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """``POST /charges`` with ``params`` (never retried blindly); the charge."""
        ...

    def retrieve_charge(self, charge_id: str) -> Mapping[str, Any]:
        """``GET /charges/:id``: the charge, read with the secret key."""
        ...

    def find_charge(self, payment_id: str) -> Mapping[str, Any] | None:
        """The charge whose ``metadata.payment_id`` is ``payment_id``, or ``None``."""
        ...

    def charges_created(
        self, *, since: dt.datetime, until: dt.datetime
    ) -> Iterable[Mapping[str, Any]]:
        """
        Every charge created in ``[since, until]`` (``GET /charges?from=…&to=…``,
        every page), so that an unknown create can be found without trusting the
        search index. Raises like the other calls; raises
        :class:`~kplus_fsm.exceptions.GatewayUnavailableError` rather than stop
        early, so an incomplete listing is never taken for "not found".
        """
        ...


__all__ = [
    "ChargeAPI",
    "Clock",
    "Cursor",
    "Dialect",
    "RecordItem",
    "SQLStore",
    "Store",
    "Transaction",
    "TransactionHandle",
    "dialect_of",
]
