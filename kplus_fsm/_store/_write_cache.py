"""
The SQLite writer's cache: the chain heads and recently written payments,
valid while no other connection has committed (``PRAGMA data_version``
unchanged). It saves the writer its reads; the rows written are the same
either way. :class:`Staged` is what one batch has written so far, kept apart
until the batch commits.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from .._model import Payment
from ._rows import Heads, Plan

#: The most payments the cache holds (then it starts over).
CACHE_PAYMENTS: Final = 4096


@attrs.define(eq=False)
class Staged:
    """What a batch has written so far: payments after it, their rows, charge ids, heads."""

    payments: dict[str, Payment] = attrs.field(factory=dict)
    rows: dict[str, tuple[Any, ...]] = attrs.field(factory=dict)
    charges: dict[str, str] = attrs.field(factory=dict)
    heads: Heads | None = None

    def clear(self) -> None:
        self.payments.clear()
        self.rows.clear()
        self.charges.clear()
        self.heads = None

    def add(self, planned: Plan) -> None:
        after = planned.recorded.after
        if planned.payment_row is None or after is None:
            return
        self.payments[after.payment_id] = after
        self.rows[after.payment_id] = planned.payment_row
        if after.charge_id is not None:
            self.charges.setdefault(after.charge_id, after.payment_id)


@attrs.define(eq=False)
class WriteCache:
    """Heads, payments and charge owners the last commits of this connection wrote."""

    version: int | None = None
    heads: Heads | None = None
    payments: dict[str, Payment] = attrs.field(factory=dict)
    charges: dict[str, str] = attrs.field(factory=dict)

    def check(self, data_version: int) -> None:
        """Drop everything if another connection has committed since (``data_version`` moved)."""
        if data_version != self.version:
            self.forget()
            self.version = data_version

    def payment(self, payment_id: str, staged: Staged) -> Payment | None:
        """The payment as the batch (else the last commits) left it, if known here."""
        return staged.payments.get(payment_id) or self.payments.get(payment_id)

    def charge_owner(self, charge_id: str, staged: Staged) -> str | None:
        return staged.charges.get(charge_id) or self.charges.get(charge_id)

    def remember(self, staged: Staged) -> None:
        """Keep what a committed batch wrote."""
        if len(self.payments) + len(staged.payments) > CACHE_PAYMENTS:
            self.payments.clear()
            self.charges.clear()
        self.payments.update(staged.payments)
        for charge_id, payment_id in staged.charges.items():
            self.charges.setdefault(charge_id, payment_id)
        self.heads = staged.heads

    def forget(self) -> None:
        self.version = None
        self.heads = None
        self.payments.clear()
        self.charges.clear()


__all__ = ["CACHE_PAYMENTS", "Staged", "WriteCache"]
