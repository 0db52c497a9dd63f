"""
The PostgreSQL schema of the event log: the same tables, columns, stored strings,
triggers and views as :mod:`kplus_fsm._store._schema_sqlite` (SQLite), in PostgreSQL types.

Column names and stored values are identical on both databases, so the same
codec, the same hash chains and the same export formats apply: a log moved from
SQLite verifies on PostgreSQL with the same head hashes. Every text column is
``COLLATE "C"`` (byte order, as SQLite compares text), so times stored as
``YYYY-MM-DDTHH:MM:SS.ffffffZ`` compare and sort the same way on both.

Migrations carry the same names as the SQLite ones (``0001_initial``,
``0002_views``) and are recorded in ``kplus_fsm_migrations``; a database that
has applied one this version does not know is refused (:class:`SchemaVersionError`).
Migrations are append-only: never edit one that has shipped; add a new one.
"""

from __future__ import annotations

from typing import Final

from ._schema_sqlite import (
    ANOMALY_CATEGORY,
    ANOMALY_CATEGORY_V3,
    APPEND_ONLY_TABLES,
    HINT_INDEXES,
    INDEX_ACCOUNTING,
    LEGACY_REASON_CODE,
    NO_ANSWER_MINUTES,
    OUTCOMES_SQL,
    UNRESOLVED_HINT_SELECT,
    WEBHOOK_LAG_JOINS,
    WEBHOOK_LAG_SEEN,
    anomalies_sql,
    paid_twice_orders,
    stuck_reason_sql,
)

MIGRATIONS_TABLE: Final = "kplus_fsm_migrations"

T: Final = 'TEXT COLLATE "C"'


def _append_only_trigger_sql(table: str, op: str) -> str:
    return (
        f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
        f"FOR EACH {'STATEMENT' if op == 'TRUNCATE' else 'ROW'} "
        "EXECUTE FUNCTION kplus_fsm_append_only()"
    )


_INITIAL: Final = (
    f"""
    CREATE TABLE inbox (
        id BIGINT PRIMARY KEY CHECK (id >= 1),
        received_at {T} NOT NULL,
        kind {T} NOT NULL,
        origin {T},
        payment_id {T},
        charge_id {T},
        external_id {T},
        body {T} NOT NULL,
        body_encoding {T} NOT NULL CHECK (body_encoding IN ('json','text','base64')),
        headers {T},
        verification {T} NOT NULL,
        outcome {T} NOT NULL CHECK (outcome IN {OUTCOMES_SQL}),
        reason {T} NOT NULL,
        hash {T} NOT NULL
    )
    """,
    "CREATE INDEX inbox_payment ON inbox (payment_id, id)",
    "CREATE INDEX inbox_charge ON inbox (charge_id, id)",
    "CREATE INDEX inbox_external ON inbox (external_id)",
    "CREATE INDEX inbox_outcome ON inbox (outcome, id)",
    f"""
    CREATE TABLE events (
        position BIGINT PRIMARY KEY CHECK (position >= 1),
        stream {T} NOT NULL,
        version INTEGER NOT NULL CHECK (version >= 1),
        kind {T} NOT NULL,
        event_version INTEGER NOT NULL,
        data {T} NOT NULL,
        recorded_at {T} NOT NULL,
        causation BIGINT NOT NULL REFERENCES inbox (id),
        hash {T} NOT NULL,
        CONSTRAINT events_stream_version UNIQUE (stream, version)
    )
    """,
    "CREATE INDEX events_causation ON events (causation)",
    f"""
    CREATE TABLE payments (
        payment_id {T} PRIMARY KEY,
        status {T} NOT NULL
            CHECK (status IN ('created','pending','successful','failed','expired')),
        amount BIGINT NOT NULL,
        currency {T} NOT NULL,
        return_uri {T} NOT NULL,
        platform_type {T},
        description {T},
        metadata {T} NOT NULL,
        charge_id {T},
        livemode INTEGER,
        authorize_uri {T},
        expires_at {T},
        failure_code {T},
        failure_message {T},
        create_unknown INTEGER NOT NULL,
        flags {T} NOT NULL,
        webhook_event_ids {T} NOT NULL,
        version INTEGER NOT NULL,
        created_at {T} NOT NULL,
        updated_at {T} NOT NULL
    )
    """,
    "CREATE INDEX payments_charge ON payments (charge_id)",
    "CREATE INDEX payments_status ON payments (status, expires_at)",
    f"""
    CREATE TABLE consumers (
        name {T} PRIMARY KEY,
        position BIGINT NOT NULL,
        updated_at {T} NOT NULL
    )
    """,
    """
    CREATE FUNCTION kplus_fsm_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'restrict_violation';
    END
    $$
    """,
    *(
        _append_only_trigger_sql(table, op)
        for table in APPEND_ONLY_TABLES
        for op in ("UPDATE", "DELETE", "TRUNCATE")
    ),
)

#: Seconds between two stored times (the SQLite views use ``julianday``).
LAG_SECONDS_SQL: Final = (
    "round(CAST(extract(epoch FROM (CAST({end} AS timestamptz) - CAST({start} AS timestamptz)))"
    " AS numeric), 3)"
)

_VIEWS: Final = (
    "CREATE INDEX payments_created ON payments (created_at)",
    "CREATE INDEX inbox_kind ON inbox (kind, outcome, received_at)",
    "CREATE INDEX events_kind ON events (kind, stream)",
    """
    CREATE VIEW timeline AS
    SELECT i.payment_id AS payment_id, CAST('input' AS TEXT) AS type, i.id AS inbox_id,
           CAST(NULL AS BIGINT) AS position, i.received_at AS at, i.kind AS kind,
           i.origin AS origin, i.verification AS verification, i.outcome AS outcome,
           i.reason AS reason, i.external_id AS external_id, i.charge_id AS charge_id,
           CAST(NULL AS INTEGER) AS version, CAST(NULL AS TEXT) AS data
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
    """,
    """
    CREATE VIEW stuck_payments AS
    SELECT payment_id, status, amount, currency, charge_id, expires_at, create_unknown,
           flags, created_at, updated_at,
           CASE WHEN status = 'created' THEN 'create outcome unknown'
                ELSE 'pending past expires_at' END AS reason
      FROM payments
     WHERE (status = 'pending'
            AND expires_at <= to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
        OR (status = 'created' AND create_unknown = 1)
    """,
    f"""
    CREATE VIEW anomalies AS
    SELECT i.received_at AS at,
           {ANOMALY_CATEGORY.format(like="ILIKE")} AS category,
           coalesce(i.payment_id, (SELECT p.payment_id FROM payments p
                                    WHERE p.charge_id = i.charge_id
                                    ORDER BY p.created_at LIMIT 1)) AS payment_id,
           i.charge_id AS charge_id, i.id AS inbox_id, CAST(NULL AS BIGINT) AS position,
           i.kind AS kind, i.origin AS origin, i.external_id AS external_id,
           i.verification AS verification, i.outcome AS outcome, i.reason AS reason
      FROM inbox i
     WHERE i.outcome IN ('conflict', 'rejected', 'unknown')
        OR (i.outcome = 'duplicate' AND i.kind = 'webhook')
    UNION ALL
    SELECT e.recorded_at, 'correction', e.stream, i.charge_id, e.causation, e.position,
           i.kind, i.origin, i.external_id, i.verification, i.outcome, i.reason
      FROM events e JOIN inbox i ON i.id = e.causation
     WHERE e.kind = 'charge.corrected'
    """,
    f"""
    CREATE VIEW webhook_lag AS
    {WEBHOOK_LAG_SEEN.format(since="")}
    SELECT s.stream AS payment_id, e.kind AS completion, i.origin AS via,
           s.charge_created_at AS charge_created_at,
           e.recorded_at AS completion_received_at,
           {LAG_SECONDS_SQL.format(end="e.recorded_at", start="s.charge_created_at")}
               AS lag_seconds
      {WEBHOOK_LAG_JOINS}
    """,
    """
    CREATE VIEW payment_stats AS
    SELECT status, failure_code, count(*) AS payments, sum(amount) AS amount
      FROM payments
     GROUP BY status, failure_code
    """,
)

#: The current time in Omise's ``expires_at`` form, and the no-answer cutoff in the stored form.
_NOW: Final = """to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""
_CUTOFF: Final = (
    f"to_char((now() - interval '{NO_ANSWER_MINUTES} minutes') AT TIME ZONE 'UTC', "
    """'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
)

_FOLLOWUP: Final = (
    f"ALTER TABLE payments ADD COLUMN order_ref {T}",
    "CREATE INDEX payments_order ON payments (order_ref, status) WHERE order_ref IS NOT NULL",
    *HINT_INDEXES,
    f"""
    CREATE TABLE leases (
        name {T} PRIMARY KEY,
        holder {T} NOT NULL,
        token BIGINT NOT NULL CHECK (token >= 1),
        acquired_at {T} NOT NULL,
        expires_at {T} NOT NULL
    )
    """,
    f"""
    CREATE TABLE reconcile_checks (
        payment_id {T} PRIMARY KEY,
        attempts INTEGER NOT NULL,
        last_at {T} NOT NULL,
        next_at {T} NOT NULL,
        last_action {T},
        last_reason {T}
    )
    """,
    f"CREATE VIEW unresolved_hints AS {UNRESOLVED_HINT_SELECT}",
    f"""
    CREATE VIEW orders_paid_twice AS
    SELECT order_ref, count(*) AS successful_attempts, sum(amount) AS amount,
           string_agg(payment_id, ',' ORDER BY payment_id) AS payment_ids
      FROM payments
     WHERE status = 'successful' AND order_ref IN ({paid_twice_orders("postgresql")})
     GROUP BY order_ref
    """,
    "DROP VIEW stuck_payments",
    f"""
    CREATE VIEW stuck_payments AS
    SELECT * FROM (
        SELECT p.payment_id, p.status, p.amount, p.currency, p.charge_id, p.expires_at,
               p.create_unknown, p.flags, p.created_at, p.updated_at,
               {stuck_reason_sql(now_sql=_NOW, cutoff_sql=_CUTOFF)} AS reason
          FROM payments p
         WHERE p.status IN ('created', 'pending')
    ) AS s
     WHERE reason IS NOT NULL
    """,
    "DROP VIEW anomalies",
    "CREATE VIEW anomalies AS "
    + anomalies_sql(dialect="postgresql", category_sql=ANOMALY_CATEGORY_V3),
)


#: ``inbox.reason_code`` (see the SQLite migration of the same name).
_REASON_CODE: Final = (
    f"ALTER TABLE inbox ADD COLUMN reason_code {T}",
    "DROP TRIGGER inbox_no_update ON inbox",
    f"UPDATE inbox SET reason_code = {LEGACY_REASON_CODE.format(like='ILIKE')}"
    " WHERE outcome = 'rejected'",
    _append_only_trigger_sql("inbox", "UPDATE"),
    "DROP VIEW anomalies",
    f"CREATE VIEW anomalies AS {anomalies_sql(dialect='postgresql')}",
)

#: The migrations, in order: (name, statements). The names match the SQLite
#: migrations of :mod:`kplus_fsm._store._schema_sqlite`, so both report the same schema version.
MIGRATIONS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("0001_initial", _INITIAL),
    ("0002_views", _VIEWS),
    ("0003_followup", _FOLLOWUP),
    ("0004_reason_code", _REASON_CODE),
    ("0005_index_accounting", INDEX_ACCOUNTING),
)

KNOWN: Final = frozenset(name for name, _ in MIGRATIONS)

#: The append-only triggers ``verify`` requires (and requires enabled).
TRIGGERS: Final = frozenset(
    f"{t}_no_{op}" for t in APPEND_ONLY_TABLES for op in ("update", "delete", "truncate")
)

CREATE_MIGRATIONS_TABLE: Final = f"""
    CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
        name {T} PRIMARY KEY,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
"""
