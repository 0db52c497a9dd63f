"""
The SQLite schema of the event log, as ``sqlite_utils.Migrations``.

Migrations are append-only too: never edit one that has shipped; add a new one.
A database that has applied a migration this version does not know was written
by a newer kplus_fsm and is refused (:class:`SchemaVersionError`).
"""

from __future__ import annotations

from typing import Final

import sqlite_utils
from sqlite_utils.migrations import Migrations

from .exceptions import SchemaVersionError

MIGRATION_SET: Final = "kplus_fsm"

migrations = Migrations(MIGRATION_SET)

OUTCOMES_SQL: Final = "('applied','duplicate','stale','conflict','rejected','unknown')"

APPEND_ONLY_TABLES: Final = ("inbox", "events")

# SQL shared by both dialects' views and the incident queries (kplus_fsm/_queries.py).

#: The ``anomalies`` category of an inbox row ``i``; ``{like}`` is ``LIKE`` (SQLite:
#: case-insensitive for ASCII) or ``ILIKE`` (PostgreSQL).
ANOMALY_CATEGORY: Final = """CASE
                   WHEN i.outcome = 'duplicate' THEN 'duplicate_delivery'
                   WHEN i.outcome = 'conflict' THEN 'conflict'
                   WHEN i.outcome = 'unknown' AND i.kind = 'create_unknown'
                       THEN 'create_unknown'
                   WHEN i.outcome = 'unknown' THEN 'unknown'
                   WHEN i.reason {like} 'signature refused: the signature timestamp is % s %'
                       THEN 'stale_timestamp'
                   WHEN i.reason {like} 'signature refused:%' THEN 'bad_signature'
                   WHEN i.reason {like} '%mismatch%'
                     OR i.reason {like} '%already exists with different parameters%'
                       THEN 'mismatch'
                   WHEN i.reason {like} 'body too large%' THEN 'oversized'
                   WHEN i.kind = 'refund_request' THEN 'refund_refused'
                   WHEN i.reason = 'no such payment' THEN 'unknown_payment'
                   WHEN i.kind = 'payment_request' THEN 'invalid_request'
                   ELSE 'malformed'
               END"""

#: Per stream: when its charge was created and the position of its completion
#: (``webhook_lag``); ``{since}`` narrows the events (empty for the view).
WEBHOOK_LAG_SEEN: Final = """WITH seen AS (
            SELECT stream,
                   coalesce(min(CASE WHEN kind = 'charge.pending' THEN recorded_at END),
                            min(recorded_at)) AS charge_created_at,
                   min(CASE WHEN kind IN ('charge.successful', 'charge.failed',
                                          'charge.expired') THEN position END) AS completion
              FROM events
             WHERE kind IN ('payment.requested', 'charge.pending', 'charge.successful',
                            'charge.failed', 'charge.expired'){since}
             GROUP BY stream
        )"""
#: The completion event ``e`` and the input ``i`` that caused it, for each ``seen`` row ``s``.
WEBHOOK_LAG_JOINS: Final = """FROM seen s
          JOIN events e ON e.position = s.completion
          JOIN inbox i ON i.id = e.causation"""
#: Seconds between two stored times, in SQLite.
LAG_SECONDS_SQLITE: Final = "round((julianday({end}) - julianday({start})) * 86400.0, 3)"


@migrations(name="0001_initial")
def _initial(db: sqlite_utils.Database) -> None:
    db.execute(
        f"""
        CREATE TABLE inbox (
            id INTEGER PRIMARY KEY,
            received_at TEXT NOT NULL,
            kind TEXT NOT NULL,
            origin TEXT,
            payment_id TEXT,
            charge_id TEXT,
            external_id TEXT,
            body TEXT NOT NULL,
            body_encoding TEXT NOT NULL CHECK (body_encoding IN ('json','text','base64')),
            headers TEXT,
            verification TEXT NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN {OUTCOMES_SQL}),
            reason TEXT NOT NULL,
            hash TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX inbox_payment ON inbox (payment_id, id)")
    db.execute("CREATE INDEX inbox_charge ON inbox (charge_id, id)")
    db.execute("CREATE INDEX inbox_external ON inbox (external_id)")
    db.execute("CREATE INDEX inbox_outcome ON inbox (outcome, id)")
    db.execute(
        """
        CREATE TABLE events (
            position INTEGER PRIMARY KEY,
            stream TEXT NOT NULL,
            version INTEGER NOT NULL CHECK (version >= 1),
            kind TEXT NOT NULL,
            event_version INTEGER NOT NULL,
            data TEXT NOT NULL,
            recorded_at TEXT NOT NULL,
            causation INTEGER NOT NULL REFERENCES inbox (id),
            hash TEXT NOT NULL,
            UNIQUE (stream, version)
        )
        """
    )
    db.execute("CREATE INDEX events_causation ON events (causation)")
    db.execute(
        """
        CREATE TABLE payments (
            payment_id TEXT PRIMARY KEY,
            status TEXT NOT NULL
                CHECK (status IN ('created','pending','successful','failed','expired')),
            amount INTEGER NOT NULL,
            currency TEXT NOT NULL,
            return_uri TEXT NOT NULL,
            platform_type TEXT,
            description TEXT,
            metadata TEXT NOT NULL,
            charge_id TEXT,
            livemode INTEGER,
            authorize_uri TEXT,
            expires_at TEXT,
            failure_code TEXT,
            failure_message TEXT,
            create_unknown INTEGER NOT NULL,
            flags TEXT NOT NULL,
            webhook_event_ids TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX payments_charge ON payments (charge_id)")
    db.execute("CREATE INDEX payments_status ON payments (status, expires_at)")
    db.execute(
        """
        CREATE TABLE consumers (
            name TEXT PRIMARY KEY,
            position INTEGER NOT NULL,
            updated_at TEXT NOT NULL
        )
        """
    )
    for table in APPEND_ONLY_TABLES:
        for op in ("UPDATE", "DELETE"):
            db.execute(
                f"""
                CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table}
                BEGIN
                    SELECT RAISE(ABORT, '{table} is append-only: {op} refused');
                END
                """
            )


@migrations(name="0002_views")
def _views(db: sqlite_utils.Database) -> None:
    """
    Read-only views for sqlite-utils and Datasette users (the same answers as
    ``kplus-fsm show``, ``list --stuck``, ``anomalies`` and ``stats``), and the
    indexes that keep those questions fast on a large log. Views and indexes hold
    no data of their own: the hash chains and the triggers are untouched.
    """
    db.execute("CREATE INDEX payments_created ON payments (created_at)")
    db.execute("CREATE INDEX inbox_kind ON inbox (kind, outcome, received_at)")
    db.execute("CREATE INDEX events_kind ON events (kind, stream)")
    db.execute(
        """
        CREATE VIEW timeline AS
        SELECT i.payment_id AS payment_id, 'input' AS type, i.id AS inbox_id,
               NULL AS position, i.received_at AS at, i.kind AS kind, i.origin AS origin,
               i.verification AS verification, i.outcome AS outcome, i.reason AS reason,
               i.external_id AS external_id, i.charge_id AS charge_id,
               NULL AS version, NULL AS data
          FROM inbox i
         WHERE i.payment_id IS NOT NULL
        UNION ALL
        SELECT p.payment_id, 'input', i.id, NULL, i.received_at, i.kind, i.origin,
               i.verification, i.outcome, i.reason, i.external_id, i.charge_id, NULL, NULL
          FROM inbox i JOIN payments p ON p.charge_id = i.charge_id
         WHERE i.payment_id IS NULL
        UNION ALL
        SELECT e.stream, 'event', e.causation, e.position, e.recorded_at, e.kind, NULL,
               NULL, NULL, NULL, NULL, NULL, e.version, e.data
          FROM events e
        """
    )
    db.execute(
        """
        CREATE VIEW stuck_payments AS
        SELECT payment_id, status, amount, currency, charge_id, expires_at, create_unknown,
               flags, created_at, updated_at,
               CASE WHEN status = 'created' THEN 'create outcome unknown'
                    ELSE 'pending past expires_at' END AS reason
          FROM payments
         WHERE (status = 'pending' AND expires_at <= strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
            OR (status = 'created' AND create_unknown = 1)
        """
    )
    db.execute(
        f"""
        CREATE VIEW anomalies AS
        SELECT i.received_at AS at,
               {ANOMALY_CATEGORY.format(like="LIKE")} AS category,
               coalesce(i.payment_id, (SELECT p.payment_id FROM payments p
                                        WHERE p.charge_id = i.charge_id
                                        ORDER BY p.created_at LIMIT 1)) AS payment_id,
               i.charge_id AS charge_id, i.id AS inbox_id, NULL AS position, i.kind AS kind,
               i.origin AS origin, i.external_id AS external_id,
               i.verification AS verification, i.outcome AS outcome, i.reason AS reason
          FROM inbox i
         WHERE i.outcome IN ('conflict', 'rejected', 'unknown')
            OR (i.outcome = 'duplicate' AND i.kind = 'webhook')
        UNION ALL
        SELECT e.recorded_at, 'correction', e.stream, i.charge_id, e.causation, e.position,
               i.kind, i.origin, i.external_id, i.verification, i.outcome, i.reason
          FROM events e JOIN inbox i ON i.id = e.causation
         WHERE e.kind = 'charge.corrected'
        """
    )
    db.execute(
        f"""
        CREATE VIEW webhook_lag AS
        {WEBHOOK_LAG_SEEN.format(since="")}
        SELECT s.stream AS payment_id, e.kind AS completion, i.origin AS via,
               s.charge_created_at AS charge_created_at,
               e.recorded_at AS completion_received_at,
               {LAG_SECONDS_SQLITE.format(end="e.recorded_at", start="s.charge_created_at")}
                   AS lag_seconds
          {WEBHOOK_LAG_JOINS}
        """
    )
    db.execute(
        """
        CREATE VIEW payment_stats AS
        SELECT status, failure_code, count(*) AS payments, sum(amount) AS amount
          FROM payments
         GROUP BY status, failure_code
        """
    )


KNOWN: Final = frozenset(m.name for m in migrations._migrations)
TRIGGERS: Final = frozenset(
    f"{t}_no_{op}" for t in APPEND_ONLY_TABLES for op in ("update", "delete")
)


def applied(db: sqlite_utils.Database) -> list[str]:
    """Names of the kplus_fsm migrations applied to ``db``, in order."""
    return [m.name for m in migrations.applied(db)]


def check_version(db: sqlite_utils.Database) -> None:
    """
    Raise :class:`SchemaVersionError` if ``db`` was written by a newer kplus_fsm.
    """
    unknown = [name for name in applied(db) if name not in KNOWN]
    if unknown:
        raise SchemaVersionError(
            "this database was written by a newer kplus_fsm: it has schema migrations "
            f"{', '.join(unknown)} that this version does not know; upgrade kplus_fsm "
            "to read or write it"
        )


def migrate(db: sqlite_utils.Database) -> None:
    """Check the version, then apply any pending migrations."""
    check_version(db)
    if migrations.pending(db):
        migrations.apply(db)


def schema_version(db: sqlite_utils.Database) -> str | None:
    """The name of the newest applied migration (``None`` for an empty file)."""
    names = applied(db)
    return names[-1] if names else None
