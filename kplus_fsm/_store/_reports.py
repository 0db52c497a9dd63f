"""
What the log's reads and audits report: a payment's timeline, the result of
``verify`` and the result of ``replay``. Plain values, shared by both stores.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs


@attrs.frozen(kw_only=True)
class TimelineEntry:
    """
    One line of a payment's timeline: an input (``type="input"``) or one of the
    events it caused (``type="event"``), in commit order.
    """

    type: Literal["input", "event"]
    at: str
    inbox_id: int
    kind: str
    position: int | None = None
    version: int | None = None
    origin: str | None = None
    outcome: str | None = None
    reason: str | None = None
    external_id: str | None = None
    verification: str | None = None
    data: Any = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class VerifyReport:
    """
    The result of :meth:`SQLiteStore.verify`. ``ok`` is false when ``problem``
    names the first bad row (``table``, ``row_id``) or a missing guard.
    """

    ok: bool
    inbox_rows: int
    events: int
    inbox_head: str
    events_head: str
    schema_version: str | None
    problem: str | None = None
    table: str | None = None
    row_id: int | None = None
    damaged: bool = False
    """The file is damaged: ``problem`` says how far each chain could be read."""


@attrs.frozen(kw_only=True)
class ReplayDifference:
    payment_id: str
    field: str
    stored: Any
    replayed: Any


@attrs.frozen(kw_only=True)
class ReplayReport:
    """
    The result of :meth:`SQLiteStore.replay`: how many events and payments were
    replayed, and every difference between the replayed and stored projection.
    """

    events: int
    payments: int
    differences: tuple[ReplayDifference, ...]
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.differences


__all__ = ["ReplayDifference", "ReplayReport", "TimelineEntry", "VerifyReport"]
