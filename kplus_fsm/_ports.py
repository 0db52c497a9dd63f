"""
The store port: what the tracker needs from an event log.

:class:`kplus_fsm.SQLiteStore` is the embedded default; a PostgreSQL store can
follow behind the same interface. ``tests/store_contract.py`` is the contract
test suite any store must pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import sqlite_utils

    from ._machine import Decision
    from ._model import Payment, StoredEvent
    from ._store import (
        InboxDraft,
        InboxRow,
        Recorded,
        ReplayReport,
        TimelineEntry,
        VerifyReport,
    )


class Store(Protocol):
    """
    An append-only event log with a current-state projection.

    Guarantees every implementation must keep (and the contract suite checks):
    one transaction per :meth:`record` (inbox row + events + projection, or
    nothing); ``UNIQUE(stream, version)``; inbox and events never updated or
    deleted; a hash chain over both; concurrent writers serialised or retried,
    never surfacing a version clash or a busy database to the caller.
    """

    def record(
        self,
        draft: InboxDraft,
        decide: Callable[[Payment | None], Decision],
        *,
        now: str,
        payment_id: str | None = None,
        charge_id: str | None = None,
    ) -> Recorded: ...

    def get(self, payment_id: str) -> Payment | None: ...

    def find(self, id_: str) -> Payment | None: ...

    def stream(self, payment_id: str, *, until: str | None = None) -> list[StoredEvent]: ...

    def iter_events(self, after: int = 0, *, batch: int = 1000) -> Iterator[StoredEvent]: ...

    def iter_inbox(self, after: int = 0, *, batch: int = 1000) -> Iterator[InboxRow]: ...

    def inbox_for(self, payment_id: str, *, until: str | None = None) -> list[InboxRow]: ...

    def timeline(self, payment_id: str, *, until: str | None = None) -> list[TimelineEntry]: ...

    def reconcile_candidates(self, *, now: str, cutoff: str, limit: int) -> list[Payment]: ...

    def consumer_position(self, name: str) -> int: ...

    def set_consumer_position(self, name: str, position: int, *, now: str) -> None: ...

    def write_transaction(self, work: Callable[[sqlite_utils.Database], Any]) -> Any: ...

    def verify(self) -> VerifyReport: ...

    def replay(self, *, repair: bool = False) -> ReplayReport: ...

    def head(self) -> dict[str, Any]: ...

    def counts(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class ChargeAPI(Protocol):
    """
    The three calls the tracker's create flow and reconciliation need from the
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
