"""
Stored bytes: canonical JSON, the hash-chain link, input bodies, and the
upcasters that lift old event payloads. Which columns a row has, and which of
them each hash covers, is :mod:`kplus_fsm._store._rows`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import orjson

from ._model import EVENT_VERSIONS, EventKind

GENESIS: Final = "0" * 64
"""The ``previous hash`` of the first row of each chain."""

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
