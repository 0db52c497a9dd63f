"""
The peer: the ``eventsourcing`` library (9.5) with its SQLite persistence
(``PERSISTENCE_MODULE=eventsourcing.sqlite``, ``SQLITE_DBNAME=<file>``).

One aggregate per payment; every input is one domain event carrying the
input itself (the same ~2 KB payload the other sides store), and one
``Application.save()`` per input: one transaction holding one event. The
application keeps the aggregates in memory (no repository read per input),
the peer's best case.

Durability: eventsourcing opens its connections in WAL mode and never sets
``synchronous``, so they run at SQLite's default, ``FULL``. For ``NORMAL`` the
PRAGMA is set on every connection of its pool (:func:`set_synchronous`): the
idle ones already open, and the ones it opens later (its connection factory is
wrapped). ``PRAGMA synchronous`` is per connection in SQLite, so this is the
whole of it; :func:`synchronous_level` reads it back.

The full read: the whole notification log (``app.notification_log``), in
pages of 1,000, each notification decoded to a domain event object by the
application's mapper (``app.mapper.to_domain_event``), stdlib JSON as
eventsourcing ships it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from _workload import Step
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.sqlite import SQLiteConnection, SQLiteFactory

LEVELS = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}
PAGE = 1000


class PeerPayment(Aggregate):
    """A payment: one event per input, the input as the event's payload."""

    class InputRecorded(Aggregate.Event):
        kind: str
        payload: dict[str, Any]

        def apply(self, aggregate: Any) -> None:
            aggregate.inputs += 1

    @event("Created")
    def __init__(self, kind: str, payload: dict[str, Any]) -> None:
        self.inputs = 1

    def record(self, kind: str, payload: dict[str, Any]) -> None:
        self.trigger_event(self.InputRecorded, kind=kind, payload=payload)


class PeerApp(Application[UUID]):
    """The peer application; its notification log is read in pages of 1,000."""

    log_section_size = PAGE


def _pool_connections(app: Application[UUID]) -> tuple[Any, list[SQLiteConnection]]:
    factory = cast(SQLiteFactory, app.factory)
    pool = factory.datastore.pool
    return pool, list(pool._pool)


def set_synchronous(app: Application[UUID], level: str) -> None:
    """Run ``PRAGMA synchronous`` on every connection the application uses."""
    value = LEVELS[level]
    pool, idle = _pool_connections(app)
    for conn in idle:
        conn._sqlite_conn.execute(f"PRAGMA synchronous = {value}")
    create = pool._create_connection

    def create_with_level() -> SQLiteConnection:
        conn = cast(SQLiteConnection, create())
        conn._sqlite_conn.execute(f"PRAGMA synchronous = {value}")
        return conn

    pool._create_connection = create_with_level


def synchronous_level(app: Application[UUID]) -> int:
    """The ``synchronous`` level of a connection the application writes with."""
    factory = cast(SQLiteFactory, app.factory)
    with factory.datastore.get_connection(commit=True) as conn:
        return int(conn._sqlite_conn.execute("PRAGMA synchronous").fetchone()[0])


def journal_mode(app: Application[UUID]) -> str:
    factory = cast(SQLiteFactory, app.factory)
    with factory.datastore.get_connection(commit=False) as conn:
        return str(conn._sqlite_conn.execute("PRAGMA journal_mode").fetchone()[0])


def open_app(path: Path, synchronous: str = "FULL") -> PeerApp:
    """The peer on a SQLite file, at the given ``synchronous`` level (checked)."""
    app = PeerApp(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(path),
            "SQLITE_LOCK_TIMEOUT": "30",
        }
    )
    set_synchronous(app, synchronous)
    got = synchronous_level(app)
    if got != LEVELS[synchronous]:  # pragma: no cover - a changed eventsourcing
        raise RuntimeError(f"eventsourcing runs at synchronous={got}, wanted {synchronous}")
    if journal_mode(app) != "wal":  # pragma: no cover
        raise RuntimeError("eventsourcing did not open its file in WAL mode")
    return app


def payload_of(step: Step) -> dict[str, Any]:
    """The input as a JSON value (a webhook body is parsed, as the other sides do)."""
    if isinstance(step.body, bytes):
        return cast(dict[str, Any], json.loads(step.body))
    return step.body


class PeerWriter:
    """Saves one event per input, one ``save()`` (one transaction) per input."""

    def __init__(self, app: Application[UUID]) -> None:
        self.app = app
        self.aggregates: dict[str, PeerPayment] = {}

    def write(self, step: Step) -> None:
        payload = payload_of(step)
        agg = self.aggregates.get(step.payment_id)
        if agg is None:
            agg = self.aggregates[step.payment_id] = PeerPayment(step.kind, payload)
        else:
            agg.record(step.kind, payload)
        self.app.save(agg)


def build_log(
    app: Application[UUID],
    events: Iterable[tuple[str, str, dict[str, Any]]],
    *,
    batch: int = PAGE,
) -> int:
    """
    Append ``(stream, kind, data)`` events (each stream's events contiguous), one
    ``save()`` per ``batch`` events; return how many were saved.
    """
    pending: list[PeerPayment] = []
    in_batch = 0
    total = 0
    current: PeerPayment | None = None
    current_stream: str | None = None
    for stream, kind, data in events:
        if stream != current_stream or current is None:
            current = PeerPayment(kind, data)
            current_stream = stream
            pending.append(current)
        else:
            current.record(kind, data)
        in_batch += 1
        total += 1
        if in_batch >= batch:
            app.save(*pending)
            pending = [current]
            in_batch = 0
    if in_batch:
        app.save(*pending)
    return total


def read_all(app: PeerApp, on_event: Callable[[Any], None] | None = None) -> int:
    """Read the whole notification log, decoding every event; return how many."""
    log = app.notification_log
    mapper = app.mapper
    start = 1
    n = 0
    while True:
        page = log.select(start, PAGE)
        for notification in page:
            domain_event = mapper.to_domain_event(notification)
            if on_event is not None:
                on_event(domain_event)
            n += 1
        if len(page) < PAGE:
            return n
        start = page[-1].id + 1
