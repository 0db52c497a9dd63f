"""
The unresolved webhook hints, as the whole-log questions ask about them: where
to read the hints from on this store (:func:`hints_from_sql`) and how many are
unresolved and since when (:func:`unresolved_summary`).

Shared by ``kplus-fsm stats`` and ``anomalies`` (:mod:`kplus_fsm.cli._queries`)
and by ``serve``'s ``GET /ready`` and ``GET /metrics``
(:mod:`kplus_fsm._server.metrics`), which is why it belongs to neither.

Invariants: read-only SQL through ``store.query``, every value a parameter; the
text joined into a statement is one of the constant fragments of
:mod:`kplus_fsm._store._schema_sqlite`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ._store._schema_sqlite import HINTS_FROM, HINTS_FROM_SQLITE, UNRESOLVED_HINT_WHERE
from ._time import parse_time
from .typing import SQLStore


def hints_from_sql(store: SQLStore) -> str:
    """Where the whole-log hint questions read hints from, for this store (see _schema)."""
    return HINTS_FROM_SQLITE if store.hints_indexed else HINTS_FROM


def unresolved_summary(store: SQLStore, *, now: dt.datetime) -> dict[str, Any]:
    """How many unresolved webhook hints there are, and the oldest one's time and age."""
    row = store.query(
        f"SELECT count(*), min(h.received_at) FROM {hints_from_sql(store)}"
        f" WHERE {UNRESOLVED_HINT_WHERE}"
    )[0]
    oldest = row[1]
    age = None
    if oldest is not None:
        age = round((now - parse_time(str(oldest))).total_seconds(), 3)
    return {"count": int(row[0]), "oldest_at": oldest, "oldest_age_seconds": age}


__all__ = ["hints_from_sql", "unresolved_summary"]
