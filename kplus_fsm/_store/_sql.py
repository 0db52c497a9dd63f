"""
The log's portable SQL, each statement written once: ``?`` placeholders and
SQL that SQLite and PostgreSQL both run (the PostgreSQL store translates the
placeholders). Column lists come from :mod:`kplus_fsm._store._rows`; values are
always parameters. What differs between the dialects (schemas, locks, upsert
of a whole batch, server-side cursors) stays in each store's own module.
"""

from __future__ import annotations

from typing import Final

from ._rows import EVENT_COLUMNS, INBOX_COLUMNS, PAYMENT_COLUMNS

_PAYMENTS: Final = ", ".join(PAYMENT_COLUMNS)
_EVENTS: Final = ", ".join(EVENT_COLUMNS)
_INBOX: Final = ", ".join(INBOX_COLUMNS)


def _marks(n: int) -> str:
    return ", ".join("?" * n)


# ------------------------------------------------------------------- payments

LOOKUP: Final = f"SELECT {_PAYMENTS} FROM payments WHERE payment_id = ?"
#: The payment that first claimed a charge id.
LOOKUP_CHARGE: Final = (
    f"SELECT {_PAYMENTS} FROM payments WHERE charge_id = ? ORDER BY created_at LIMIT 1"
)
#: The projection row of a payment, new or moved on (both dialects' upsert).
#: ``created_at`` is set once, by the request, and never named again: SQLite
#: rewrites the entry of every index whose column an ``UPDATE`` names, even to
#: the same value, and ``payments_created`` would cost a page per input.
UPSERT_PAYMENT: Final = (
    f"INSERT INTO payments ({_PAYMENTS}) VALUES ({_marks(len(PAYMENT_COLUMNS))})"
    " ON CONFLICT (payment_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in PAYMENT_COLUMNS[1:] if c != "created_at")
)
#: The projection row of a payment, new or replaced whole (replay's repair).
REPAIR_PAYMENT: Final = (
    f"INSERT INTO payments ({_PAYMENTS}) VALUES ({_marks(len(PAYMENT_COLUMNS))})"
    " ON CONFLICT (payment_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in PAYMENT_COLUMNS[1:])
)
DELETE_PAYMENT: Final = "DELETE FROM payments WHERE payment_id = ?"
PAYMENTS_BY_ID: Final = f"SELECT {_PAYMENTS} FROM payments ORDER BY payment_id"
#: Projection rows with no event behind them (replay reports and repairs them).
ORPHANS: Final = (
    "SELECT payment_id FROM payments p WHERE NOT EXISTS"
    " (SELECT 1 FROM events e WHERE e.stream = p.payment_id) ORDER BY payment_id"
)

# --------------------------------------------------------------------- events

INSERT_EVENT: Final = f"INSERT INTO events ({_EVENTS}) VALUES ({_marks(len(EVENT_COLUMNS))})"
STREAM: Final = f"SELECT {_EVENTS} FROM events WHERE stream = ? ORDER BY version"
STREAM_UNTIL: Final = (
    f"SELECT {_EVENTS} FROM events WHERE stream = ? AND recorded_at <= ? ORDER BY version"
)
EVENTS_AFTER: Final = f"SELECT {_EVENTS} FROM events WHERE position > ? ORDER BY position LIMIT ?"
#: Every event, stream by stream (replay): the columns a fold reads (the first
#: seven of ``EVENT_COLUMNS``, ``position`` to ``recorded_at``; no causation, no hash).
REPLAY_COLUMNS: Final = EVENT_COLUMNS[:7]
EVENTS_BY_STREAM: Final = f"SELECT {', '.join(REPLAY_COLUMNS)} FROM events ORDER BY stream, version"

# ---------------------------------------------------------------------- inbox

INSERT_INBOX: Final = f"INSERT INTO inbox ({_INBOX}) VALUES ({_marks(len(INBOX_COLUMNS))})"
INBOX_AFTER: Final = f"SELECT {_INBOX} FROM inbox WHERE id > ? ORDER BY id LIMIT ?"
#: Every input about a payment: its own, and its charge's that name no payment
#: (one statement, one snapshot; parameters: the payment id twice).
INBOX_FOR: Final = (
    f"SELECT {_INBOX} FROM inbox WHERE (payment_id = ?"
    " OR (payment_id IS NULL AND charge_id = (SELECT charge_id FROM payments"
    " WHERE payment_id = ?)))"
)
INBOX_FOR_ALL: Final = INBOX_FOR + " ORDER BY id"
INBOX_FOR_UNTIL: Final = INBOX_FOR + " AND received_at <= ? ORDER BY id"

# ---------------------------------------------------------------- the log

#: The ends of both chains in one row: last inbox id and hash, last position and hash.
HEADS: Final = (
    "SELECT i.id, i.hash, e.position, e.hash FROM (SELECT 1 AS one) AS one"
    " LEFT JOIN (SELECT id, hash FROM inbox ORDER BY id DESC LIMIT 1) AS i ON 1 = 1"
    " LEFT JOIN (SELECT position, hash FROM events ORDER BY position DESC LIMIT 1)"
    " AS e ON 1 = 1"
)
COUNTS: Final = (
    "SELECT (SELECT count(*) FROM inbox), (SELECT count(*) FROM events),"
    " (SELECT count(*) FROM payments)"
)

# ------------------------------------------------------------------ consumers

CONSUMER_POSITION: Final = "SELECT position FROM consumers WHERE name = ?"
SET_CONSUMER_POSITION: Final = (
    "INSERT INTO consumers (name, position, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
    " updated_at = excluded.updated_at"
)

__all__ = [
    "CONSUMER_POSITION",
    "COUNTS",
    "DELETE_PAYMENT",
    "EVENTS_AFTER",
    "EVENTS_BY_STREAM",
    "HEADS",
    "INBOX_AFTER",
    "INBOX_FOR_ALL",
    "INBOX_FOR_UNTIL",
    "INSERT_EVENT",
    "INSERT_INBOX",
    "LOOKUP",
    "LOOKUP_CHARGE",
    "ORPHANS",
    "PAYMENTS_BY_ID",
    "REPAIR_PAYMENT",
    "SET_CONSUMER_POSITION",
    "STREAM",
    "STREAM_UNTIL",
    "UPSERT_PAYMENT",
]

#: One row if the log holds any row at all (``is_empty``: a ``migrate-log`` target).
ANY_ROW: Final = (
    "SELECT 1 WHERE EXISTS (SELECT 1 FROM inbox) OR EXISTS (SELECT 1 FROM events)"
    " OR EXISTS (SELECT 1 FROM payments) OR EXISTS (SELECT 1 FROM consumers)"
)
