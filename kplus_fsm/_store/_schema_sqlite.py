"""
The SQLite schema of the event log: migrations run by ``sqlite_utils.Migrations``
(built only when a log is migrated), views, and the classifications.

Migrations are append-only too: never edit one that has shipped; add a new one.
A database that has applied a migration this version does not know was written
by a newer kplus_fsm and is refused (:class:`SchemaVersionError`).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeAlias

from ..exceptions import SchemaVersionError

if TYPE_CHECKING:
    import sqlite_utils
    from sqlite_utils.migrations import Migrations

MIGRATION_SET: Final = "kplus_fsm"
#: sqlite-utils' table of applied migrations (its default name).
MIGRATIONS_TABLE: Final = "_sqlite_migrations"

MigrationFn: TypeAlias = "Callable[[sqlite_utils.Database], None]"

#: This version's migrations, in order: registered here when this module is
#: imported, handed to sqlite-utils only when a log is migrated (so that reading
#: a log never imports sqlite-utils: start-up time, docs/performance.md).
_STEPS: list[tuple[str, MigrationFn]] = []
#: The names of this version's migrations, in order (kept here rather than read
#: from sqlite-utils' private list).
_NAMES: list[str] = []


def _migration(name: str) -> Callable[[MigrationFn], MigrationFn]:
    """Register a migration in :data:`_STEPS` and :data:`_NAMES`."""

    def register(fn: MigrationFn) -> MigrationFn:
        _NAMES.append(name)
        _STEPS.append((name, fn))
        return fn

    return register


@functools.cache
def migrations() -> Migrations:
    """This version's migrations as ``sqlite_utils.Migrations`` (built on first use)."""
    from sqlite_utils.migrations import Migrations  # noqa: PLC0415 - see _STEPS

    built = Migrations(MIGRATION_SET)
    for name, fn in _STEPS:
        built(name=name)(fn)
    return built


OUTCOMES_SQL: Final = "('applied','duplicate','stale','conflict','rejected','unknown')"

APPEND_ONLY_TABLES: Final = ("inbox", "events")

# SQL shared by both dialects' views and the incident queries (kplus_fsm/cli/_queries.py).

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


@_migration("0001_initial")
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
            db.execute(_append_only_trigger_sql(table, op))


def _append_only_trigger_sql(table: str, op: str) -> str:
    """The trigger that refuses ``op`` (``UPDATE`` or ``DELETE``) on an append-only table."""
    return f"""
                CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table}
                BEGIN
                    SELECT RAISE(ABORT, '{table} is append-only: {op} refused');
                END
                """


@_migration("0002_views")
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


# SQL of migration 0003_followup, shared by both dialects' views and the incident
# queries (kplus_fsm/cli/_queries.py). Portable: base tables only, no dialect functions.

#: The inputs that read a charge with the secret key: what resolves a webhook hint.
AUTHORITATIVE_READ: Final = (
    "r.kind = 'charge_snapshot' AND r.origin IN ('create_response', 'refetch', 'poll')"
)

#: An accepted webhook ``h`` (it carried a charge and was matched to a payment) with
#: no authoritative read of that charge recorded after it: an *unresolved hint*.
UNRESOLVED_HINT_WHERE: Final = f"""h.kind = 'webhook'
   AND h.outcome IN ('applied', 'stale', 'conflict')
   AND h.charge_id IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM inbox r
                    WHERE r.charge_id = h.charge_id AND r.id > h.id
                      AND {AUTHORITATIVE_READ})"""

#: Where unresolved hints are read from. On SQLite the whole-log questions
#: (``stats``, ``anomalies``, the view) name the partial index of hints
#: (``inbox_hints``, by charge): walked in charge order, each probe of the
#: partial index of reads (``inbox_reads``) lands next to the last one, which is
#: 4-10x faster on a million-event log than the planner's own choice (the
#: kind/outcome index, in time order, a random probe each). PostgreSQL's planner
#: is left to itself.
HINTS_FROM: Final = "inbox h"
HINTS_FROM_SQLITE: Final = "inbox h INDEXED BY inbox_hints"
#: The incremental scan of the follow-up (hints above an inbox id) on SQLite:
#: the inbox key seeks straight to the new rows (no index of its own: one
#: would be written on every input; see :data:`INDEX_ACCOUNTING`).
HINTS_FROM_SQLITE_AFTER: Final = "inbox h NOT INDEXED"


def unresolved_hint_select(source_sql: str = HINTS_FROM) -> str:
    """
    The columns of an unresolved hint (the ``unresolved_hints`` view and queries),
    read from ``source_sql`` (:data:`HINTS_FROM` or one of its SQLite variants).
    """
    return f"""SELECT h.id AS inbox_id, h.received_at AS received_at,
       coalesce(h.payment_id, (SELECT p.payment_id FROM payments p
                                WHERE p.charge_id = h.charge_id
                                ORDER BY p.created_at LIMIT 1)) AS payment_id,
       h.charge_id AS charge_id, h.external_id AS event_id,
       h.verification AS verification, h.outcome AS outcome
  FROM {source_sql}
 WHERE {UNRESOLVED_HINT_WHERE}"""


UNRESOLVED_HINT_SELECT: Final = unresolved_hint_select()

#: The partial indexes that answer "which hints are unresolved" (both dialects).
HINT_INDEXES: Final = (
    "CREATE INDEX inbox_hints ON inbox (charge_id, id, received_at)"
    " WHERE kind = 'webhook' AND outcome IN ('applied', 'stale', 'conflict')",
    "CREATE INDEX inbox_reads ON inbox (charge_id, id)"
    " WHERE kind = 'charge_snapshot' AND origin IN ('create_response', 'refetch', 'poll')",
)

#: Orders with more than one successful attempt (K PLUS charges cannot be refunded
#: through Opn: the extra payment must be returned by hand).
PAID_TWICE_ORDERS: Final = """SELECT order_ref FROM payments
         WHERE {status} = 'successful' AND order_ref IS NOT NULL
         GROUP BY order_ref HAVING count(*) > 1"""


def paid_twice_orders(dialect: str) -> str:
    """
    :data:`PAID_TWICE_ORDERS` for a dialect. On SQLite the status test is
    ``+status``, which keeps the planner on the partial ``payments_order`` index
    (payments with an order, a few) rather than ``payments_status`` (every
    successful payment): 0.3 s to nothing on a million-event log.
    """
    return PAID_TWICE_ORDERS.format(status="+status" if dialect == "sqlite" else "status")


#: The ``anomalies`` category of an inbox row ``i`` from 0003 on; ``{like}`` is
#: ``LIKE`` (SQLite) or ``ILIKE`` (PostgreSQL).
ANOMALY_CATEGORY_V3: Final = """CASE
                   WHEN i.outcome = 'duplicate' THEN 'duplicate_delivery'
                   WHEN i.outcome = 'conflict' THEN 'conflict'
                   WHEN i.outcome = 'unknown' AND i.kind IN ('create_unknown', 'charge_lookup')
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


#: The :class:`~kplus_fsm.ReasonCode` of a refused inbox row, read from its
#: ``reason`` text the way the anomaly classification of 0001-0003 read it.
#: Used exactly twice: once by migration ``0004_reason_code`` to classify the
#: rows written before it (after that every refusal is written with its code),
#: and by a read-only log from before 0004, which computes the column on the fly.
#: ``{like}`` is ``LIKE`` (SQLite) or ``ILIKE`` (PostgreSQL).
LEGACY_REASON_CODE: Final = """CASE
                   WHEN outcome <> 'rejected' THEN NULL
                   WHEN reason {like} 'signature refused: the signature timestamp is % s %'
                       THEN 'signature_stale'
                   WHEN reason {like} 'signature refused:%' THEN 'signature_invalid'
                   WHEN reason {like} '%mismatch%'
                     OR reason {like} '%already exists with different parameters%'
                       THEN 'mismatch'
                   WHEN reason {like} 'body too large%' THEN 'body_too_large'
                   WHEN kind = 'refund_request' THEN 'refund_not_supported'
                   WHEN reason = 'no such payment' THEN 'no_such_payment'
                   WHEN kind = 'payment_request' THEN 'invalid_request'
                   ELSE 'malformed'
               END"""

#: The ``anomalies`` category of an inbox row ``i`` from 0004 on: by outcome,
#: then by ``reason_code`` (never by the wording of ``reason``), then by kind.
ANOMALY_CATEGORY_V4: Final = """CASE
                   WHEN i.outcome = 'duplicate' THEN 'duplicate_delivery'
                   WHEN i.outcome = 'conflict' THEN 'conflict'
                   WHEN i.outcome = 'unknown' AND i.kind IN ('create_unknown', 'charge_lookup')
                       THEN 'create_unknown'
                   WHEN i.outcome = 'unknown' THEN 'unknown'
                   WHEN i.reason_code = 'signature_stale' THEN 'stale_timestamp'
                   WHEN i.reason_code = 'signature_invalid' THEN 'bad_signature'
                   WHEN i.reason_code = 'mismatch' THEN 'mismatch'
                   WHEN i.reason_code = 'body_too_large' THEN 'oversized'
                   WHEN i.reason_code = 'refund_not_supported' OR i.kind = 'refund_request'
                       THEN 'refund_refused'
                   WHEN i.reason_code = 'no_such_payment' THEN 'unknown_payment'
                   WHEN i.reason_code IN ('invalid_request', 'order_busy')
                     OR i.kind = 'payment_request'
                       THEN 'invalid_request'
                   ELSE 'malformed'
               END"""


#: How many ``?`` parameters :func:`anomalies_sql` takes with ``since=True``.
ANOMALIES_SINCE_PARAMS: Final = 4


def anomalies_sql(
    *,
    dialect: str,
    since: bool = False,
    hints_from_sql: str = HINTS_FROM,
    category_sql: str = ANOMALY_CATEGORY_V4,
) -> str:
    """
    Every anomaly, one row each in the ``anomalies`` columns: refused, conflicting
    or unplaceable inputs and duplicate deliveries (classified by
    ``category_sql``: :data:`ANOMALY_CATEGORY_V4`, or V3 for the view of
    migration 0003), corrections, creates settled as never made,
    unresolved webhook hints, and the successful attempts of orders paid twice.
    With ``since``, only those at or after a time: the statement then takes that
    time :data:`ANOMALIES_SINCE_PARAMS` times as ``?`` parameters.
    """
    like = "ILIKE" if dialect == "postgresql" else "LIKE"
    inbox_since = " AND i.received_at >= ?" if since else ""
    event_since = " AND e.recorded_at >= ?" if since else ""
    hint_since = " AND h.received_at >= ?" if since else ""
    return f"""
        SELECT i.received_at AS at, {category_sql.format(like=like)} AS category,
               coalesce(i.payment_id, (SELECT p.payment_id FROM payments p
                                        WHERE p.charge_id = i.charge_id
                                        ORDER BY p.created_at LIMIT 1)) AS payment_id,
               i.charge_id AS charge_id, i.id AS inbox_id, CAST(NULL AS BIGINT) AS position,
               i.kind AS kind, i.origin AS origin, i.external_id AS external_id,
               i.verification AS verification, i.outcome AS outcome, i.reason AS reason
          FROM inbox i
         WHERE (i.outcome IN ('conflict', 'rejected', 'unknown')
                OR (i.outcome = 'duplicate' AND i.kind = 'webhook')){inbox_since}
        UNION ALL
        SELECT e.recorded_at, CASE WHEN e.kind = 'charge.corrected' THEN 'correction'
                                   ELSE 'not_created' END,
               e.stream, i.charge_id, e.causation, e.position,
               i.kind, i.origin, i.external_id, i.verification, i.outcome, i.reason
          FROM events e JOIN inbox i ON i.id = e.causation
         WHERE e.kind IN ('charge.corrected', 'charge.not_created'){event_since}
        UNION ALL
        SELECT h.received_at, 'unresolved_hint',
               coalesce(h.payment_id, (SELECT p.payment_id FROM payments p
                                        WHERE p.charge_id = h.charge_id
                                        ORDER BY p.created_at LIMIT 1)),
               h.charge_id, h.id, CAST(NULL AS BIGINT), h.kind, h.origin, h.external_id,
               h.verification, h.outcome,
               'no authoritative read of the charge recorded after this webhook'
          FROM {hints_from_sql}
         WHERE {UNRESOLVED_HINT_WHERE}{hint_since}
        UNION ALL
        SELECT e.recorded_at, 'order_paid_twice', e.stream, p.charge_id, e.causation,
               e.position, i.kind, i.origin, i.external_id, i.verification, i.outcome,
               'order ' || p.order_ref || ' has more than one successful attempt'
          FROM payments p
          JOIN events e ON e.stream = p.payment_id
          JOIN inbox i ON i.id = e.causation
         WHERE p.status = 'successful'
           AND p.order_ref IN ({paid_twice_orders(dialect)})
           AND e.position = (SELECT max(x.position) FROM events x
                              WHERE x.stream = p.payment_id
                                AND x.kind IN ('charge.successful', 'charge.corrected'))
           {event_since}
    """


#: Why a payment is stuck (``list --stuck``, the ``stuck_payments`` view): the
#: ``CASE`` over a payment ``p``; ``{now}`` is the current time in Omise's form
#: and ``{cutoff}`` the time before which a create with no answer is stuck. An
#: unresolved hint makes a *pending* payment stuck (a webhook said it ended and
#: nothing has read the charge since); on an ended payment it is only listed by
#: ``anomalies`` (a delivery after the final read, or a receiver without the
#: secret key, which applies payloads unread).
STUCK_REASON: Final = """CASE
            WHEN p.status = 'created' AND p.create_unknown = 1 THEN 'create outcome unknown'
            WHEN p.status = 'created' AND p.updated_at <= {cutoff}
                THEN 'no create answer recorded'
            WHEN p.status = 'pending' AND p.expires_at <= {now} THEN 'pending past expires_at'
            WHEN p.status = 'pending' AND EXISTS (
                SELECT 1 FROM inbox h WHERE h.charge_id = p.charge_id AND {hint})
                THEN 'unresolved webhook hint'
        END"""


def stuck_reason_sql(*, now_sql: str, cutoff_sql: str) -> str:
    """:data:`STUCK_REASON` with its time expressions (SQL text or ``?``)."""
    return STUCK_REASON.format(now=now_sql, cutoff=cutoff_sql, hint=UNRESOLVED_HINT_WHERE)


#: A create with no recorded answer this long after its request is stuck.
NO_ANSWER_MINUTES: Final = 15


@_migration("0003_followup")
def _followup(db: sqlite_utils.Database) -> None:
    """
    What the self-healing receiver, fair reconciliation, leases and payment
    attempts need: ``payments.order_ref``; ``leases`` (one holder per name, with
    a fencing token); ``reconcile_checks`` (when reconciliation last looked at a
    payment, so that every due payment gets its turn); the views
    ``unresolved_hints`` and ``orders_paid_twice``; and ``stuck_payments`` and
    ``anomalies`` made anew with the new reasons and categories. The hash-chained
    tables are untouched.
    """
    db.execute("ALTER TABLE payments ADD COLUMN order_ref TEXT")
    db.execute(
        "CREATE INDEX payments_order ON payments (order_ref, status) WHERE order_ref IS NOT NULL"
    )
    for statement in HINT_INDEXES:
        db.execute(statement)
    db.execute(
        """
        CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            token INTEGER NOT NULL CHECK (token >= 1),
            acquired_at TEXT NOT NULL,
            expires_at TEXT NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE reconcile_checks (
            payment_id TEXT PRIMARY KEY,
            attempts INTEGER NOT NULL,
            last_at TEXT NOT NULL,
            next_at TEXT NOT NULL,
            last_action TEXT,
            last_reason TEXT
        )
        """
    )
    db.execute(f"CREATE VIEW unresolved_hints AS {unresolved_hint_select(HINTS_FROM_SQLITE)}")
    db.execute(
        f"""
        CREATE VIEW orders_paid_twice AS
        SELECT order_ref, count(*) AS successful_attempts, sum(amount) AS amount,
               group_concat(payment_id, ',') AS payment_ids
          FROM payments
         WHERE status = 'successful' AND order_ref IN ({paid_twice_orders("sqlite")})
         GROUP BY order_ref
        """
    )
    now = "strftime('%Y-%m-%dT%H:%M:%SZ', 'now')"
    cutoff = f"strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-{NO_ANSWER_MINUTES} minutes')"
    db.execute("DROP VIEW stuck_payments")
    db.execute(
        f"""
        CREATE VIEW stuck_payments AS
        SELECT * FROM (
            SELECT p.payment_id, p.status, p.amount, p.currency, p.charge_id, p.expires_at,
                   p.create_unknown, p.flags, p.created_at, p.updated_at,
                   {stuck_reason_sql(now_sql=now, cutoff_sql=cutoff)} AS reason
              FROM payments p
             WHERE p.status IN ('created', 'pending')
        ) AS s
         WHERE reason IS NOT NULL
        """
    )
    db.execute("DROP VIEW anomalies")
    anomalies = anomalies_sql(
        dialect="sqlite", hints_from_sql=HINTS_FROM_SQLITE, category_sql=ANOMALY_CATEGORY_V3
    )
    db.execute(f"CREATE VIEW anomalies AS {anomalies}")


@_migration("0004_reason_code")
def _reason_code(db: sqlite_utils.Database) -> None:
    """
    ``inbox.reason_code``: why an input was refused, as a stable code, so that
    the incident queries classify on it rather than on the wording of
    ``reason``. Outside the hash chain (no hash changes). The rows written
    before are classified once, here, by :data:`LEGACY_REASON_CODE` (the
    append-only trigger on ``UPDATE`` is lifted for that one statement, inside
    the migration's transaction, and put back); ``anomalies`` is made anew on
    the code.
    """
    db.execute("ALTER TABLE inbox ADD COLUMN reason_code TEXT")
    db.execute("DROP TRIGGER inbox_no_update")
    db.execute(
        f"UPDATE inbox SET reason_code = {LEGACY_REASON_CODE.format(like='LIKE')}"
        " WHERE outcome = 'rejected'"
    )
    db.execute(_append_only_trigger_sql("inbox", "UPDATE"))
    db.execute("DROP VIEW anomalies")
    anomalies = anomalies_sql(dialect="sqlite", hints_from_sql=HINTS_FROM_SQLITE)
    db.execute(f"CREATE VIEW anomalies AS {anomalies}")


#: Migration ``0005_index_accounting``: every index of a hash-chained table is
#: written on every input (a WAL frame each, two ``pwrite`` calls per frame),
#: so each one is kept only where a question needs it; the accounting is in
#: docs/million-events.md ("Index accounting"). Portable (both dialects).
#:
#: - ``events_causation``: dropped. No query looks events up by their input
#:   (the joins go from an event to its input, by the inbox key), and the
#:   parent rows it would guard are append-only.
#: - ``events_kind (kind, stream)``: made partial, on the two rare kinds
#:   ``anomalies`` looks for (corrections, creates settled as never made). The
#:   webhook-lag part of ``stats`` reads every completion and is as fast
#:   walking the ``(stream, version)`` key, which it groups by anyway.
#: - ``inbox_external (external_id)``: made partial: only inputs that carry a
#:   webhook event id have an entry (the lookup by event id stays one probe).
#: - ``inbox_charge (charge_id, id)``: made partial on the inputs that name no
#:   payment: the only ones found by their charge id (a payment's timeline;
#:   every other by-charge question has its own partial index of hints or
#:   reads, or goes through ``payments_charge``).
#: - ``inbox_kind (kind, outcome, received_at)`` and ``inbox_outcome (outcome,
#:   id)``: merged into ``inbox_outcome_kind (outcome, kind, received_at)``,
#:   which seeks ``anomalies``' outcomes and covers ``stats``' counts by kind
#:   and outcome (SQLite groups in the index's order). The follow-up's scan of
#:   new hints (above an inbox id) walks the inbox key instead
#:   (:data:`HINTS_FROM_SQLITE_AFTER`).
#: - the partial indexes of hints and reads (:data:`HINT_INDEXES`) are made if
#:   missing (a log migrated to 0003 by a development version of it): with
#:   ``inbox_charge`` partial, they are what the hint questions probe.
INDEX_ACCOUNTING: Final = (
    "CREATE INDEX IF NOT EXISTS inbox_hints ON inbox (charge_id, id, received_at)"
    " WHERE kind = 'webhook' AND outcome IN ('applied', 'stale', 'conflict')",
    "CREATE INDEX IF NOT EXISTS inbox_reads ON inbox (charge_id, id)"
    " WHERE kind = 'charge_snapshot' AND origin IN ('create_response', 'refetch', 'poll')",
    "DROP INDEX events_causation",
    "DROP INDEX events_kind",
    "CREATE INDEX events_rare_kind ON events (kind, stream)"
    " WHERE kind IN ('charge.corrected', 'charge.not_created')",
    "DROP INDEX inbox_external",
    "CREATE INDEX inbox_event_id ON inbox (external_id) WHERE external_id IS NOT NULL",
    "DROP INDEX inbox_charge",
    "CREATE INDEX inbox_unmatched_charge ON inbox (charge_id, id) WHERE payment_id IS NULL",
    "DROP INDEX inbox_kind",
    "DROP INDEX inbox_outcome",
    "CREATE INDEX inbox_outcome_kind ON inbox (outcome, kind, received_at)",
)


@_migration("0005_index_accounting")
def _index_accounting(db: sqlite_utils.Database) -> None:
    """
    Fewer pages written per input (:data:`INDEX_ACCOUNTING`). Indexes hold no
    data of their own: no row, hash or trigger changes.
    """
    for statement in INDEX_ACCOUNTING:
        db.execute(statement)


#: This version's migrations, in the order they apply.
NAMES: Final = tuple(_NAMES)
KNOWN: Final = frozenset(NAMES)
TRIGGERS: Final = frozenset(
    f"{t}_no_{op}" for t in APPEND_ONLY_TABLES for op in ("update", "delete")
)


def applied(db: sqlite3.Connection | sqlite_utils.Database) -> list[str]:
    """
    Names of the kplus_fsm migrations applied to ``db``, in the order they were
    applied (as sqlite-utils records them: its table, by ``rowid``).
    """
    if not db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (MIGRATIONS_TABLE,)
    ).fetchone():
        return []
    rows = db.execute(
        f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = ? ORDER BY rowid",
        (MIGRATION_SET,),
    ).fetchall()
    return [str(row[0]) for row in rows]


def pending(db: sqlite3.Connection | sqlite_utils.Database) -> list[str]:
    """This version's migrations not yet applied to ``db``, in order."""
    done = set(applied(db))
    return [name for name in NAMES if name not in done]


def check_version(db: sqlite3.Connection | sqlite_utils.Database) -> None:
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


def schema_version(db: sqlite3.Connection | sqlite_utils.Database) -> str | None:
    """The name of the newest applied migration (``None`` for an empty file)."""
    names = applied(db)
    return names[-1] if names else None
