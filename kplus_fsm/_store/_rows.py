"""
How the log's rows look, in one place: every column list (by name; the hashed
ones are a contract with every log ever written), the mapping between rows and
values, and what one input writes, independent of the database (:func:`plan`:
the inbox row, the event rows, the projection row and the hash-chain links,
from the payment before the input, the machine's decision and the chain heads).

Every store (SQLite, PostgreSQL) reads the heads and the payment inside its
write transaction, calls :func:`plan`, and inserts the rows it returns: the
stored bytes and hashes are therefore the same whatever the database. Rows are
decoded by column name, never by position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from .. import _codec
from .._machine import Decision, evolve
from .._model import EVENT_VERSIONS, Payment, Status, StoredEvent

# ------------------------------------------------------------------ row layouts
# Every column list of the log, by name. The hashed lists are a contract with
# every log ever written: a row's hash covers exactly these values, in this order.

INBOX_HASHED: Final = (
    "id",
    "received_at",
    "kind",
    "origin",
    "payment_id",
    "charge_id",
    "external_id",
    "body",
    "body_encoding",
    "headers",
    "verification",
    "outcome",
    "reason",
)
EVENT_HASHED: Final = (
    "position",
    "stream",
    "version",
    "kind",
    "event_version",
    "data",
    "recorded_at",
    "causation",
)
#: Every column of ``inbox``, in table order: the hashed ones, the hash, and
#: ``reason_code`` (0004; outside the hash, so no old row's hash changes).
INBOX_COLUMNS: Final = (*INBOX_HASHED, "hash", "reason_code")
EVENT_COLUMNS: Final = (*EVENT_HASHED, "hash")


# ------------------------------------------------------------- rows and values


def event_from_row(row: Mapping[str, Any] | Sequence[Any]) -> StoredEvent:
    """A :class:`StoredEvent` from an ``events`` row (a mapping, or :data:`EVENT_COLUMNS`)."""
    fields = row if isinstance(row, Mapping) else dict(zip(EVENT_COLUMNS, row, strict=False))
    kind, event_version = fields["kind"], fields["event_version"]
    payload = _codec.loads(fields["data"])
    if EVENT_VERSIONS.get(kind) != event_version:
        event_version, payload = _codec.upcast(kind, event_version, payload)
    return StoredEvent(
        position=fields["position"],
        stream=fields["stream"],
        version=fields["version"],
        kind=kind,
        event_version=event_version,
        data=payload,
        recorded_at=fields["recorded_at"],
        causation=fields["causation"],
    )


# ---------------------------------------------------------------------- payments

PAYMENT_COLUMNS: Final = (
    "payment_id",
    "status",
    "amount",
    "currency",
    "return_uri",
    "platform_type",
    "description",
    "metadata",
    "charge_id",
    "livemode",
    "authorize_uri",
    "expires_at",
    "failure_code",
    "failure_message",
    "create_unknown",
    "flags",
    "webhook_event_ids",
    "version",
    "created_at",
    "updated_at",
    "order_ref",
)

#: The columns of a consumer's position (``consumers``).
CONSUMER_COLUMNS: Final = ("name", "position", "updated_at")

#: What ``migrate-log`` copies, table by table, in the order the target needs
#: it (inbox before the events citing it); the only tables and columns
#: ``copy_rows`` accepts.
COPIED: Final = (
    ("inbox", INBOX_COLUMNS),
    ("events", EVENT_COLUMNS),
    ("payments", PAYMENT_COLUMNS),
    ("consumers", CONSUMER_COLUMNS),
)


def check_copied(table: str, columns: Sequence[str]) -> None:
    """Refuse (``ValueError``) a table or column list ``migrate-log`` does not copy."""
    if (table, tuple(columns)) not in COPIED:
        raise ValueError(f"not a table and column list migrate-log copies: {table!r}")


"""The ``payments`` columns; ``order_ref`` was added by migration ``0003_followup``."""


def payment_to_row(p: Payment) -> tuple[Any, ...]:
    """The ``payments`` row of a payment, in :data:`PAYMENT_COLUMNS` order."""
    # Positional, in PAYMENT_COLUMNS order (tests/test_rows.py checks it column by
    # column): this runs once per input and once per replayed payment.
    livemode = p.livemode
    return (
        p.payment_id,
        p.status._value_,  # .value, without the enum property
        p.amount,
        p.currency,
        p.return_uri,
        p.platform_type,
        p.description,
        _codec.dumps(dict(p.metadata)) if p.metadata else "{}",
        p.charge_id,
        None if livemode is None else int(livemode),
        p.authorize_uri,
        p.expires_at,
        p.failure_code,
        p.failure_message,
        int(p.create_unknown),
        _codec.dumps(sorted(p.flags)) if p.flags else "[]",
        _codec.dumps(sorted(p.webhook_event_ids)) if p.webhook_event_ids else "[]",
        p.version,
        p.created_at,
        p.updated_at,
        p.order_ref,
    )


def payment_from_row(row: Mapping[str, Any] | tuple[Any, ...]) -> Payment:
    """The inverse of :func:`payment_to_row`."""
    if not isinstance(row, Mapping):
        row = dict(zip(PAYMENT_COLUMNS, row, strict=True))
    livemode = row["livemode"]
    return Payment(
        payment_id=row["payment_id"],
        status=Status(row["status"]),
        amount=row["amount"],
        currency=row["currency"],
        return_uri=row["return_uri"],
        platform_type=row["platform_type"],
        description=row["description"],
        metadata=_codec.loads(row["metadata"]),
        charge_id=row["charge_id"],
        livemode=None if livemode is None else bool(livemode),
        authorize_uri=row["authorize_uri"],
        expires_at=row["expires_at"],
        failure_code=row["failure_code"],
        failure_message=row["failure_message"],
        create_unknown=bool(row["create_unknown"]),
        flags=frozenset(_codec.loads(row["flags"])),
        webhook_event_ids=frozenset(_codec.loads(row["webhook_event_ids"])),
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        order_ref=row.get("order_ref"),
    )


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
    #: Why the input was refused, as a :class:`~kplus_fsm.ReasonCode` value
    #: (``None`` unless refused; a log written before 0.4 has it classified from ``reason``).
    reason_code: str | None = None

    def raw(self) -> Any:
        """The input as it was received (bytes, text or a JSON value)."""
        return _codec.decode_body(self.body, self.body_encoding)


def inbox_row(row: Sequence[Any]) -> InboxRow:
    """An :class:`InboxRow` from an ``inbox`` row selected as :data:`INBOX_COLUMNS`."""
    return InboxRow(**dict(zip(INBOX_COLUMNS, row, strict=True)))


#: Where each hashed column sits in :data:`INBOX_COLUMNS` and :data:`EVENT_COLUMNS`
#: (the hashed ones first, in hash order): what :func:`plan` builds positionally.
assert INBOX_COLUMNS[: len(INBOX_HASHED)] == INBOX_HASHED
assert EVENT_COLUMNS[: len(EVENT_HASHED)] == EVENT_HASHED


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


def heads_from_row(row: Sequence[Any] | None) -> Heads:
    """The chain heads from a row of ``_sql.HEADS`` (NULLs: an empty chain)."""
    assert row is not None
    return Heads(
        inbox_id=row[0] or 0,
        inbox_hash=row[1] or _codec.GENESIS,
        position=row[2] or 0,
        events_hash=row[3] or _codec.GENESIS,
    )


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

    Rows are built positionally (this runs once per input, and under group
    commit while other threads wait): the inbox row's values in
    :data:`INBOX_HASHED` order, then the hash and ``reason_code``
    (:data:`INBOX_COLUMNS`); an event's in :data:`EVENT_HASHED` order, then its
    hash. tests/test_rows.py checks every value by column name, and the hashes
    against ones computed independently.
    """
    inbox_id = heads.inbox_id + 1
    pid = decision.payment_id if decision.payment_id is not None else payment_id
    cid = decision.charge_id if decision.charge_id is not None else charge_id
    outcome: str = decision.outcome._value_  # .value, without the enum property
    code = decision.reason_code
    reason_code: str | None = code._value_ if code is not None else None
    # The hash covers exactly the INBOX_HASHED values, in that order.
    hashed_inbox: list[Any] = [
        inbox_id,  # id
        now,  # received_at
        draft.kind,  # kind
        draft.origin,  # origin
        pid,  # payment_id
        cid,  # charge_id
        draft.external_id,  # external_id
        draft.body,  # body
        draft.body_encoding,  # body_encoding
        draft.headers,  # headers
        draft.verification,  # verification
        outcome,  # outcome
        decision.reason,  # reason
    ]
    inbox_hash = _codec.hash_values(heads.inbox_hash, hashed_inbox)
    stored_inbox = (*hashed_inbox, inbox_hash, reason_code)
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
            kind = new.kind._value_
            event_version = EVENT_VERSIONS[new.kind]
            data = new.data
            # The EVENT_HASHED values, in that order.
            hashed_event = (
                position,  # position
                stream,  # stream
                version,  # version
                kind,  # kind
                event_version,  # event_version
                _codec.dumps(data if type(data) is dict else dict(data)),  # data
                now,  # recorded_at
                inbox_id,  # causation
            )
            events_hash = _codec.hash_values(events_hash, hashed_event)
            rows.append((*hashed_event, events_hash))
            event = StoredEvent(
                position=position,
                stream=stream,
                version=version,
                kind=kind,
                event_version=event_version,
                data=data,
                recorded_at=now,
                causation=inbox_id,
            )
            stored.append(event)
            after = evolve(after, event)
        assert after is not None
        payment_row = payment_to_row(after)
    return Plan(
        inbox_row=stored_inbox,
        event_rows=tuple(rows),
        payment_row=payment_row,
        recorded=Recorded(
            inbox=InboxRow(
                id=inbox_id,
                received_at=now,
                kind=draft.kind,
                origin=draft.origin,
                payment_id=pid,
                charge_id=cid,
                external_id=draft.external_id,
                body=draft.body,
                body_encoding=draft.body_encoding,
                headers=draft.headers,
                verification=draft.verification,
                outcome=outcome,
                reason=decision.reason,
                hash=inbox_hash,
                reason_code=reason_code,
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
