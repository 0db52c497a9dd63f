"""
The only place that knows how stored rows look: canonical JSON, the hash chain,
and the mapping between rows and values (with upcasters for old event versions).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import orjson

from ._model import EVENT_VERSIONS, EventKind, Payment, Status, StoredEvent

GENESIS: Final = "0" * 64
"""The ``previous hash`` of the first row of each chain."""

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


_SORTED: Final = orjson.OPT_SORT_KEYS

#: The first character of a value :func:`dumps` had to encode with the standard
#: library (JSON allows leading whitespace); :func:`loads` decodes those with it too.
_STDLIB_MARK: Final = " "


def _stdlib_dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> str:
    """
    Canonical JSON: sorted keys, no spaces, UTF-8 kept as is (orjson, ~8x the
    standard library). What orjson cannot encode exactly (integers beyond 64
    bits, non-string keys) is encoded by the standard library and marked with a
    leading space, so that :func:`loads` reads it back exactly too.
    """
    try:
        return orjson.dumps(value, option=_SORTED).decode("utf-8")
    except orjson.JSONEncodeError:
        return _STDLIB_MARK + _stdlib_dumps(value)


def loads(text: str | bytes) -> Any:
    """Decode JSON written by :func:`dumps` (or any standard JSON text)."""
    if text[:1] in (" ", b" "):
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # the standard library's reading (and error) of odd text


#: ``bytes.translate`` table: ASCII digits to ``0``, every other byte to ``.``.
_DIGIT_MAP: Final = bytes(0x30 if 0x30 <= b <= 0x39 else 0x2E for b in range(256))
#: 19 digits in a row: the shortest integer literal orjson would read inexactly
#: (below -2**63; from 2**64 up it takes 20).
_LONG_NUMBER: Final = b"0" * 19


def parse_json(raw: bytes | str) -> Any:
    """
    Parse JSON as received (a webhook body, an API response) exactly as
    ``json.loads`` does, ~5x faster: orjson when its reading is the standard
    library's (no integer literal of 19 digits or more, which it would turn into
    a float; text it accepts), the standard library otherwise (NaN, UTF-16,
    lone surrogates, ...), which also raises the errors.

    Raises:
        ValueError: not JSON (``json.JSONDecodeError``).
        RecursionError: nested too deeply.
    """
    try:
        data = raw.encode("utf-8") if isinstance(raw, str) else raw
    except UnicodeEncodeError:
        return json.loads(raw)
    if _LONG_NUMBER not in data.translate(_DIGIT_MAP):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def chain_hash(previous: str, row: Mapping[str, Any], columns: tuple[str, ...]) -> str:
    """``sha256(previous || JSON array of the row's columns)``, hex: see :func:`hash_values`."""
    return hash_values(previous, [row[c] for c in columns])


def hash_values(previous: str, values: Sequence[Any]) -> str:
    """
    ``sha256(previous || JSON array of values)``, hex. The array is the
    standard library's compact form (``json.dumps(..., separators=(",", ":"),
    ensure_ascii=False)``), which orjson produces byte for byte for the values
    rows hold (text, integers, null): it is used, and the standard library only
    for text orjson refuses.
    """
    try:
        payload = orjson.dumps(values)
    except orjson.JSONEncodeError:
        payload = _stdlib_dumps(list(values)).encode("utf-8")
    return hashlib.sha256(previous.encode("ascii") + payload).hexdigest()


def encode_body(raw: bytes | str | Mapping[str, Any] | list[Any] | None) -> tuple[str, str]:
    """
    Store any raw input as text: JSON values canonically (``json``), text as
    is (``text``), bytes as UTF-8 text when they decode, else base64 (``base64``).
    """
    if raw is None:
        return "", "text"
    if isinstance(raw, Mapping | list):
        return dumps(raw), "json"
    if isinstance(raw, str):
        return raw, "text"
    try:
        return raw.decode("utf-8"), "text"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def decode_body(body: str, encoding: str) -> bytes | str | Any:
    """The inverse of :func:`encode_body`."""
    if encoding == "json":
        return loads(body)
    if encoding == "base64":
        return base64.b64decode(body)
    return body


# ------------------------------------------------------------------------ events

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


#: ``(kind, from_version) -> function`` lifting a payload one version up. Add an
#: entry here whenever a kind's payload changes shape and bump EVENT_VERSIONS.
UPCASTERS: Final[dict[tuple[str, int], Upcaster]] = {}


def upcast(kind: str, event_version: int, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Lift a stored payload to the current version of its kind."""
    try:
        current = EVENT_VERSIONS[EventKind(kind)]
    except ValueError:
        return event_version, data
    while event_version < current:
        data = UPCASTERS[kind, event_version](data)
        event_version += 1
    return event_version, data


def event_from_row(row: Mapping[str, Any] | tuple[Any, ...]) -> StoredEvent:
    """A :class:`StoredEvent` from an ``events`` row (mapping or tuple in column order)."""
    if not isinstance(row, Mapping):
        position, stream, version, kind, event_version, data, recorded_at, causation = row[:8]
        if EVENT_VERSIONS.get(kind) != event_version:
            event_version, payload = upcast(kind, event_version, loads(data))
        else:
            payload = loads(data)
        return StoredEvent(
            position=position,
            stream=stream,
            version=version,
            kind=kind,
            event_version=event_version,
            data=payload,
            recorded_at=recorded_at,
            causation=causation,
        )
    version, data = upcast(row["kind"], row["event_version"], loads(row["data"]))
    return StoredEvent(
        position=row["position"],
        stream=row["stream"],
        version=row["version"],
        kind=row["kind"],
        event_version=version,
        data=data,
        recorded_at=row["recorded_at"],
        causation=row["causation"],
    )


EVENT_COLUMNS: Final = (*EVENT_HASHED, "hash")

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
"""The ``payments`` columns; ``order_ref`` was added by migration ``0003_followup``."""


def payment_to_row(p: Payment) -> tuple[Any, ...]:
    """The ``payments`` row of a payment, in :data:`PAYMENT_COLUMNS` order."""
    return (
        p.payment_id,
        p.status.value,
        p.amount,
        p.currency,
        p.return_uri,
        p.platform_type,
        p.description,
        dumps(dict(p.metadata)),
        p.charge_id,
        None if p.livemode is None else int(p.livemode),
        p.authorize_uri,
        p.expires_at,
        p.failure_code,
        p.failure_message,
        int(p.create_unknown),
        dumps(sorted(p.flags)),
        dumps(sorted(p.webhook_event_ids)),
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
        metadata=loads(row["metadata"]),
        charge_id=row["charge_id"],
        livemode=None if livemode is None else bool(livemode),
        authorize_uri=row["authorize_uri"],
        expires_at=row["expires_at"],
        failure_code=row["failure_code"],
        failure_message=row["failure_message"],
        create_unknown=bool(row["create_unknown"]),
        flags=frozenset(loads(row["flags"])),
        webhook_event_ids=frozenset(loads(row["webhook_event_ids"])),
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        order_ref=row.get("order_ref"),
    )
