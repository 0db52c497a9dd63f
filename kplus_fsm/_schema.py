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
