"""
What one input writes, independent of the database: the inbox row, the event
rows, the projection row and the hash-chain links, computed from the payment
before the input, the machine's decision and the heads of the two chains.

Every store (SQLite, PostgreSQL) reads the heads and the payment inside its
write transaction, calls :func:`plan`, and inserts the rows it returns: the
stored bytes and hashes are therefore the same whatever the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs

from . import _codec
from ._machine import Decision, evolve
from ._model import EVENT_VERSIONS, Payment, StoredEvent

INBOX_COLUMNS: Final = (*_codec.INBOX_HASHED, "hash")


@attrs.frozen(kw_only=True)
class InboxDraft:
    """An input as received, before the machine decided its outcome."""

    kind: str
    body: str
    body_encoding: str
    origin: str | None = None
    external_id: str | None = None
    headers: str | None = None
    verification: str = "not_applicable"


@attrs.frozen(kw_only=True)
class InboxRow:
    """One stored input with its outcome."""

    id: int
    received_at: str
    kind: str
    origin: str | None
    payment_id: str | None
    charge_id: str | None
    external_id: str | None
    body: str
    body_encoding: str
    headers: str | None
    verification: str
    outcome: str
    reason: str
    hash: str

    def raw(self) -> Any:
        """The input as it was received (bytes, text or a JSON value)."""
        return _codec.decode_body(self.body, self.body_encoding)


def inbox_row(row: Sequence[Any]) -> InboxRow:
    """An :class:`InboxRow` from an ``inbox`` row in :data:`INBOX_COLUMNS` order."""
    return InboxRow(
        id=row[0],
        received_at=row[1],
        kind=row[2],
        origin=row[3],
        payment_id=row[4],
        charge_id=row[5],
        external_id=row[6],
        body=row[7],
        body_encoding=row[8],
        headers=row[9],
        verification=row[10],
        outcome=row[11],
        reason=row[12],
        hash=row[13],
    )


@attrs.frozen(kw_only=True)
class Recorded:
    """What one committed input wrote."""

    inbox: InboxRow
    decision: Decision
    events: tuple[StoredEvent, ...]
    before: Payment | None
    after: Payment | None


@attrs.frozen(kw_only=True)
class Heads:
    """The ends of the two hash chains: the last inbox id and event position, and their hashes."""

    inbox_id: int = 0
    inbox_hash: str = _codec.GENESIS
    position: int = 0
    events_hash: str = _codec.GENESIS


@attrs.frozen(kw_only=True)
class Plan:
    """The rows one input writes, in column order, and the chain heads after them."""

    inbox_row: tuple[Any, ...]
    event_rows: tuple[tuple[Any, ...], ...]
    payment_row: tuple[Any, ...] | None
    recorded: Recorded
    heads: Heads


def plan(
    draft: InboxDraft,
    decision: Decision,
    before: Payment | None,
    heads: Heads,
    *,
    now: str,
    payment_id: str | None,
    charge_id: str | None,
) -> Plan:
    """
    The rows for one input: an inbox row chained to ``heads.inbox_hash``, one
    event row per decided event chained to ``heads.events_hash`` (versions
    following ``before.version``), and the payment's projection after them.
    """
    inbox_id = heads.inbox_id + 1
    # In _codec.INBOX_HASHED order (the hash covers exactly these values).
    hashed = (
        inbox_id,
        now,
        draft.kind,
        draft.origin,
        decision.payment_id if decision.payment_id is not None else payment_id,
        decision.charge_id if decision.charge_id is not None else charge_id,
        draft.external_id,
        draft.body,
        draft.body_encoding,
        draft.headers,
        draft.verification,
        decision.outcome.value,
        decision.reason,
    )
    inbox_hash = _codec.hash_values(heads.inbox_hash, hashed)
    inbox_row = (*hashed, inbox_hash)
    position, events_hash = heads.position, heads.events_hash
    rows: list[tuple[Any, ...]] = []
    stored: list[StoredEvent] = []
    after = before
    payment_row = None
    if decision.events:
        stream = decision.payment_id
        if stream is None:  # pragma: no cover - the machine always names it
            raise ValueError("events without a payment id")
        version = before.version if before is not None else 0
        for new in decision.events:
            position += 1
            version += 1
            kind, event_version = new.kind.value, EVENT_VERSIONS[new.kind]
            # In _codec.EVENT_HASHED order.
            ev = (
                position,
                stream,
                version,
                kind,
                event_version,
                _codec.dumps(dict(new.data)),
                now,
                inbox_id,
            )
            events_hash = _codec.hash_values(events_hash, ev)
            rows.append((*ev, events_hash))
            event = StoredEvent(
                position=position,
                stream=stream,
                version=version,
                kind=kind,
                event_version=event_version,
                data=new.data,
                recorded_at=now,
                causation=inbox_id,
            )
            stored.append(event)
            after = evolve(after, event)
        assert after is not None
        payment_row = _codec.payment_to_row(after)
    return Plan(
        inbox_row=inbox_row,
        event_rows=tuple(rows),
        payment_row=payment_row,
        recorded=Recorded(
            inbox=InboxRow(
                id=inbox_id,
                received_at=now,
                kind=draft.kind,
                origin=draft.origin,
                payment_id=hashed[4],
                charge_id=hashed[5],
                external_id=draft.external_id,
                body=draft.body,
                body_encoding=draft.body_encoding,
                headers=draft.headers,
                verification=draft.verification,
                outcome=decision.outcome.value,
                reason=decision.reason,
                hash=inbox_hash,
            ),
            decision=decision,
            events=tuple(stored),
            before=before,
            after=after,
        ),
        heads=Heads(
            inbox_id=inbox_id, inbox_hash=inbox_hash, position=position, events_hash=events_hash
        ),
    )
