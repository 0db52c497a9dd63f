"""
The incident and audit queries behind ``kplus-fsm list``, ``anomalies``,
``stats``, ``export`` and ``checkpoint``.

Read-only SQL through ``store.query`` (:class:`kplus_fsm.typing.SQLStore`), on
SQLite or PostgreSQL alike: ``?`` placeholders (the PostgreSQL store translates
them), portable SQL, and a per-dialect variant only where the two differ (the lag
in seconds between two stored times, case-insensitive ``LIKE``). Every value is
a parameter, and the only text ever joined into a statement is one of
the constant fragments below. The queries read the base tables, not the views
of migration ``0002_views``, so that a log opened read-only before that
migration answers too; ``tests/cli/test_incident.py`` checks that the views and
these queries give the same answers.

One time parser for every ``--since``, ``--until`` and ``--as-of``:
:func:`parse_when` (ISO-8601, or relative to now such as ``-2h``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import attrs

from .. import _codec
from .._hints import hints_from_sql, unresolved_summary
from .._model import Payment, Status
from .._store import _rows
from .._store._rows import INBOX_COLUMNS
from .._store._schema_pg import LAG_SECONDS_SQL
from .._store._schema_sqlite import (
    ANOMALIES_SINCE_PARAMS,
    ANOMALY_CATEGORY_V4,
    HINTS_FROM,
    LAG_SECONDS_SQLITE,
    NO_ANSWER_MINUTES,
    WEBHOOK_LAG_JOINS,
    WEBHOOK_LAG_SEEN,
    anomalies_sql,
    paid_twice_orders,
    stuck_reason_sql,
)
from .._time import format_time, omise_time, parse_time, utc_now
from ..exceptions import DamagedLogError, InvalidTimeError
from ..typing import SQLStore, dialect_of

# ------------------------------------------------------------------------ times

_RELATIVE: Final = re.compile(r"-?\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw])", re.IGNORECASE)
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_ACCEPTED: Final = "use ISO-8601 such as 2026-03-01T10:00:00Z, or a time ago such as -30m, -2h, -7d"


def _quoted(text: str, limit: int = 40) -> str:
    """``text`` as a message may show it: repr, cut to ``limit`` characters."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def parse_when(text: str, *, now: dt.datetime) -> str:
    """
    A time given by a person, in the stored form (UTC, microseconds, ``Z``).

    Accepts ISO-8601 (``2026-03-01T10:00:00Z``, ``2026-03-01 17:00+07:00``,
    ``2026-03-01``; no offset means UTC), ``now``, or a time relative to ``now``:
    a number (ASCII digits) and a unit ``s``, ``m``, ``h``, ``d`` or ``w``, with
    or without a leading ``-`` (``-2h``, ``30m`` and ``-7d`` all mean "ago").
    The time must fall in the years 1000 to 9999 (UTC), the times kplus_fsm stores.

    Raises:
        ValueError: anything else; the message says what is accepted.
    """
    raw = text.strip()
    if raw.lower() == "now":
        return format_time(now)
    match = _RELATIVE.fullmatch(raw)
    if match is not None:
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
        try:
            return format_time(now - dt.timedelta(seconds=seconds))
        except (OverflowError, InvalidTimeError):
            raise ValueError(
                f"{_quoted(text)} reaches before the year 1000: times are accepted "
                "from 1000-01-01 to 9999-12-31 (UTC)"
            ) from None
    try:
        return format_time(parse_time(raw))
    except InvalidTimeError:
        raise ValueError(
            f"{_quoted(text)} is outside the times kplus_fsm stores: "
            "from 1000-01-01 to 9999-12-31 (UTC)"
        ) from None
    except (ValueError, OverflowError):
        raise ValueError(f"not a time: {_quoted(text)} ({_ACCEPTED})") from None


# ---------------------------------------------------------------------- payments

STUCK_PENDING: Final = "pending past expires_at"
STUCK_CREATE_UNKNOWN: Final = "create outcome unknown"
STUCK_NO_ANSWER: Final = "no create answer recorded"
STUCK_UNRESOLVED_HINT: Final = "unresolved webhook hint"
#: Every reason ``list --stuck`` gives, in the order they are tested.
STUCK_REASONS: Final = (
    STUCK_CREATE_UNKNOWN,
    STUCK_NO_ANSWER,
    STUCK_PENDING,
    STUCK_UNRESOLVED_HINT,
)

_PAYMENT_SELECT: Final = f"SELECT {', '.join(_rows.PAYMENT_COLUMNS)} FROM payments"
_PAYMENTS_P: Final = ", ".join(f"p.{c}" for c in _rows.PAYMENT_COLUMNS)


def no_answer_cutoff(now: dt.datetime) -> str:
    """Before this (stored form), a ``created`` payment with no create answer is stuck."""
    return format_time(now - dt.timedelta(minutes=NO_ANSWER_MINUTES))


def stuck_reason(
    payment: Payment, *, now: dt.datetime, unresolved_hint: bool = False
) -> str | None:
    """
    Why ``payment`` is stuck at ``now`` (the ``list --stuck`` rule), or ``None``;
    ``unresolved_hint``: whether its charge has an unresolved webhook hint (which
    makes a pending payment stuck).
    """
    if payment.status is Status.CREATED and payment.create_unknown:
        return STUCK_CREATE_UNKNOWN
    if payment.status is Status.CREATED and payment.updated_at <= no_answer_cutoff(now):
        return STUCK_NO_ANSWER
    if (
        payment.status is Status.PENDING
        and payment.expires_at is not None
        and payment.expires_at <= omise_time(now)
    ):
        return STUCK_PENDING
    if unresolved_hint and payment.status is Status.PENDING:
        return STUCK_UNRESOLVED_HINT
    return None


@attrs.frozen(kw_only=True)
class Listed:
    """One payment of ``kplus-fsm list``, and why it is stuck (if it is)."""

    payment: Payment
    stuck: str | None

    def to_json(self) -> dict[str, Any]:
        return {**self.payment.to_json(), "stuck": self.stuck}


def list_payments(
    store: SQLStore,
    *,
    now: dt.datetime,
    status: str | None = None,
    stuck: bool = False,
    since: str | None = None,
    until: str | None = None,
    limit: int = 50,
) -> tuple[list[Listed], bool]:
    """
    Payments, newest first (by ``created_at``), filtered by status, stuckness
    (a create whose outcome is unknown or that has no answer after
    ``NO_ANSWER_MINUTES``, pending past ``expires_at``, or pending with an
    unresolved webhook hint on its charge) and creation time (``since`` <= ``created_at`` <=
    ``until``, stored form). Returns at most ``limit`` and whether there were more.
    """
    reason = stuck_reason_sql(now_sql="?", cutoff_sql="?")
    where: list[str] = []
    params: list[Any] = [no_answer_cutoff(now), omise_time(now)]
    if status is not None:
        where.append("p.status = ?")
        params.append(status)
    if since is not None:
        where.append("p.created_at >= ?")
        params.append(since)
    if until is not None:
        where.append("p.created_at <= ?")
        params.append(until)
    sql = f"SELECT {_PAYMENTS_P}, {reason} AS stuck FROM payments p"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if stuck:
        sql = f"SELECT * FROM ({sql}) AS s WHERE stuck IS NOT NULL"
    sql += " ORDER BY created_at DESC, payment_id DESC LIMIT ?"
    params.append(limit + 1)
    rows = store.query(sql, params)
    n = len(_rows.PAYMENT_COLUMNS)
    listed = [Listed(payment=_rows.payment_from_row(row[:n]), stuck=row[n]) for row in rows[:limit]]
    return listed, len(rows) > limit


# --------------------------------------------------------------------- anomalies

#: How an inbox row is classified, as the ``anomalies`` view of 0004_reason_code
#: does (a test checks that both classify every row alike): by outcome, then by
#: ``reason_code``, never by the wording of ``reason``.
ANOMALY_CATEGORY_SQL: Final = ANOMALY_CATEGORY_V4

ANOMALY_CATEGORIES: Final = (
    "conflict",
    "correction",
    "bad_signature",
    "stale_timestamp",
    "malformed",
    "mismatch",
    "unknown",
    "create_unknown",
    "not_created",
    "unresolved_hint",
    "order_paid_twice",
    "duplicate_delivery",
    "unknown_payment",
    "invalid_request",
    "oversized",
    "refund_refused",
)

ANOMALY_COLUMNS: Final = (
    "at",
    "category",
    "payment_id",
    "charge_id",
    "inbox_id",
    "position",
    "kind",
    "origin",
    "external_id",
    "verification",
    "outcome",
    "reason",
)


def _anomaly_sql(
    since: str | None, dialect: str = "sqlite", source_sql: str = HINTS_FROM
) -> tuple[str, list[Any]]:
    sql = anomalies_sql(dialect=dialect, since=since is not None, hints_from_sql=source_sql)
    return sql, [since] * ANOMALIES_SINCE_PARAMS if since is not None else []


@attrs.frozen(kw_only=True)
class Anomaly:
    """One anomaly: a refused, conflicting or unplaceable input, a duplicate, a correction."""

    at: str
    category: str
    payment_id: str | None
    charge_id: str | None
    inbox_id: int
    position: int | None
    kind: str
    origin: str | None
    external_id: str | None
    verification: str
    outcome: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def anomalies(
    store: SQLStore, *, since: str | None = None, limit: int = 100
) -> tuple[list[Anomaly], dict[str, int]]:
    """
    The newest ``limit`` anomalies (received at or after ``since``), and the
    count of every category over the whole window.
    """
    sql, params = _anomaly_sql(since, dialect_of(store), hints_from_sql(store))
    columns = ", ".join(ANOMALY_COLUMNS)
    blanks = ", ".join("NULL" for _ in ANOMALY_COLUMNS[2:])
    # One statement, the anomalies gathered once: the newest ``limit`` rows (part 0)
    # and the count of each category (part 1). A correction (an event) sorts before
    # the input that caused it: positions first, NULLs last, on both databases.
    rows = store.query(
        f"WITH a AS MATERIALIZED ({sql})"
        f" SELECT * FROM (SELECT 0 AS part, {columns}, CAST(NULL AS BIGINT) AS n FROM a"
        " ORDER BY inbox_id DESC, position IS NULL, position DESC, category LIMIT ?) AS top"
        f" UNION ALL SELECT 1, NULL, category, {blanks}, count(*) FROM a GROUP BY category",
        [*params, limit],
    )
    found = [Anomaly(**dict(zip(ANOMALY_COLUMNS, r[1:-1], strict=True))) for r in rows if r[0] == 0]
    counts = sorted(
        ((str(r[2]), int(r[-1])) for r in rows if r[0] == 1), key=lambda c: (-c[1], c[0])
    )
    return found, dict(counts)


# ------------------------------------------------------------------------- stats

_LAG_SQL: Final = f"""
    {WEBHOOK_LAG_SEEN}
    SELECT i.origin, e.kind, {{lag}}
      {WEBHOOK_LAG_JOINS}
"""
_LAG_SINCE: Final = " AND stream IN (SELECT payment_id FROM payments WHERE created_at >= ?)"

#: Where a completion came from when a webhook announced it: the intake's
#: re-fetch after the delivery, or the delivery's own payload.
WEBHOOK_ORIGINS: Final = frozenset({"refetch", "webhook"})
#: The completions the lag percentiles cover: the buyer's approval or the bank's
#: decline. An expiry comes when the charge's lifetime ends, whatever the webhooks do.
LAG_COMPLETIONS: Final = frozenset({"charge.successful", "charge.failed"})

PERCENTILES: Final = (50, 90, 95, 99)


def percentile(ordered: Sequence[float], pct: float) -> float | None:
    """The nearest-rank percentile of an ascending sequence (``None`` if empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def stats(
    store: SQLStore, *, since: str | None = None, now: dt.datetime | None = None
) -> dict[str, Any]:
    """
    Payments (created at or after ``since``) by status and by failure code,
    conversion, webhook lag percentiles, and the duplicate and rejection rates of
    the inputs (received at or after ``since``); the unresolved webhook hints and
    the orders paid twice (whenever they arose). A JSON-ready dict.
    """
    p_where = " WHERE created_at >= ?" if since is not None else ""
    i_where = " WHERE received_at >= ?" if since is not None else ""
    params = [since] if since is not None else []
    by_status: dict[str, dict[str, int]] = {s.value: {"payments": 0, "amount": 0} for s in Status}
    for status, n, amount in store.query(
        f"SELECT status, count(*), coalesce(sum(amount), 0) FROM payments{p_where} GROUP BY status",
        params,
    ):
        by_status[status] = {"payments": int(n), "amount": int(amount)}
    codes = store.query(
        "SELECT coalesce(failure_code, '-'), count(*) FROM payments WHERE status = 'failed'"
        + (" AND created_at >= ?" if since is not None else "")
        + " GROUP BY 1 ORDER BY 2 DESC, 1",
        params,
    )
    total = sum(v["payments"] for v in by_status.values())
    successful = by_status["successful"]["payments"]
    ended = sum(by_status[s.value]["payments"] for s in Status if s.is_terminal)
    inputs: dict[str, dict[str, int]] = {}
    for kind, outcome, n in store.query(
        f"SELECT kind, outcome, count(*) FROM inbox{i_where} GROUP BY kind, outcome", params
    ):
        inputs.setdefault(kind, {})[outcome] = int(n)
    n_inputs = sum(sum(v.values()) for v in inputs.values())
    rejected = sum(v.get("rejected", 0) for v in inputs.values())
    hooks = inputs.get("webhook", {})
    n_hooks = sum(hooks.values())
    lags: list[float] = []
    via: dict[str, int] = {}
    for origin, completion, seconds in store.query(
        _LAG_SQL.format(
            since=_LAG_SINCE if since is not None else "",
            lag=(
                LAG_SECONDS_SQL if dialect_of(store) == "postgresql" else LAG_SECONDS_SQLITE
            ).format(end="e.recorded_at", start="s.charge_created_at"),
        ),
        params,
    ):
        via[origin] = via.get(origin, 0) + 1
        if origin in WEBHOOK_ORIGINS and completion in LAG_COMPLETIONS and seconds is not None:
            lags.append(float(seconds))
    lags.sort()
    lag: dict[str, Any] = {"completions": len(lags)}
    for pct in PERCENTILES:
        lag[f"p{pct}"] = percentile(lags, pct)
    lag["max"] = lags[-1] if lags else None
    return {
        "since": since,
        "payments": total,
        "by_status": by_status,
        "by_failure_code": {str(c): int(n) for c, n in codes},
        "conversion": {
            "successful": successful,
            "ended": ended,
            "open": total - ended,
            "of_ended": _rate(successful, ended),
            "of_all": _rate(successful, total),
        },
        "webhook_lag_seconds": lag,
        "completions_by_source": dict(sorted(via.items())),
        "inputs": {
            "total": n_inputs,
            "rejected": rejected,
            "rejection_rate": _rate(rejected, n_inputs),
            "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(inputs.items())},
        },
        "webhooks": {
            "deliveries": n_hooks,
            "duplicates": hooks.get("duplicate", 0),
            "duplicate_rate": _rate(hooks.get("duplicate", 0), n_hooks),
            "rejected": hooks.get("rejected", 0),
            "rejection_rate": _rate(hooks.get("rejected", 0), n_hooks),
        },
        "unresolved_hints": {
            k: v
            for k, v in unresolved_summary(store, now=now or utc_now()).items()
            if k != "oldest_age_seconds"  # stats read the log only, not the clock
        },
        "orders_paid_twice": int(
            store.query(f"SELECT count(*) FROM ({paid_twice_orders(dialect_of(store))}) AS o")[0][0]
        ),
    }


# ------------------------------------------------------------------------ export

EVENT_ONLY: Final = ("position", "stream", "version", "event_version", "data", "recorded_at")
EXPORT_COLUMNS: Final = (
    "table",
    *_rows.INBOX_HASHED,
    *EVENT_ONLY,
    "causation",
    "hash",
    "reason_code",
)
"""
The CSV header of ``kplus-fsm export --format csv``: every stored column of both
tables (``reason_code``, added in 0.4, last, so the columns before it keep their places).
"""

_BATCH: Final = 2000


def _keyset(
    store: SQLStore, sql: str, params: Sequence[Any], *, batch: int = _BATCH
) -> Iterator[tuple[Any, ...]]:
    """
    Rows of ``sql`` (``WHERE key > ? ... ORDER BY key LIMIT ?``), one batch at a
    time. A batch that meets damage (:class:`DamagedLogError`) is read again in
    halves, down to one row, so every row before the damage is still yielded;
    then the error is raised.
    """
    after, size = 0, batch
    while True:
        try:
            rows = store.query(sql, [after, *params, size])
        except DamagedLogError:
            if size == 1:
                raise
            size = max(1, size // 2)
            continue
        yield from rows
        if len(rows) < size:
            return
        after = rows[-1][0]


def export_bounds(store: SQLStore) -> tuple[int, int]:
    """The last inbox id and the last event position when the export starts."""
    head = store.head()
    return int(head["inbox_id"]), int(head["event_position"])


def iter_audit(
    store: SQLStore, *, since: str | None = None, bounds: tuple[int, int] | None = None
) -> Iterator[dict[str, Any]]:
    """
    Every inbox row and every event as stored (the hashed columns and the hash,
    so a reader can recompute the chains), in commit order: each input followed
    by the events it caused. Streamed in batches; bounded by the log's head when
    it starts (``bounds``), so rows appended meanwhile are left for the next export.
    """
    last_inbox, _ = bounds if bounds is not None else export_bounds(store)
    t_since = " AND received_at >= ?" if since is not None else ""
    e_since = " AND recorded_at >= ?" if since is not None else ""
    extra = [since] if since is not None else []
    inbox = _keyset(
        store,
        f"SELECT {', '.join(INBOX_COLUMNS)} FROM inbox WHERE id > ? AND id <= ?{t_since} "
        "ORDER BY id LIMIT ?",
        [last_inbox, *extra],
    )
    events = _keyset(
        store,
        f"SELECT {', '.join(_rows.EVENT_COLUMNS)} FROM events WHERE position > ? "
        f"AND causation <= ?{e_since} ORDER BY position LIMIT ?",
        [last_inbox, *extra],
    )
    causation = _rows.EVENT_COLUMNS.index("causation")
    pending = next(events, None)
    for row in inbox:
        while pending is not None and pending[causation] < row[0]:
            yield {"table": "events", **dict(zip(_rows.EVENT_COLUMNS, pending, strict=True))}
            pending = next(events, None)
        yield {"table": "inbox", **dict(zip(INBOX_COLUMNS, row, strict=True))}
        while pending is not None and pending[causation] == row[0]:
            yield {"table": "events", **dict(zip(_rows.EVENT_COLUMNS, pending, strict=True))}
            pending = next(events, None)
    while pending is not None:
        yield {"table": "events", **dict(zip(_rows.EVENT_COLUMNS, pending, strict=True))}
        pending = next(events, None)


# -------------------------------------------------------------------- checkpoints

CHECKPOINT_KEYS: Final = (
    "inbox_id",
    "inbox_hash",
    "event_position",
    "event_hash",
    "schema_version",
    "created_at",
)
_HASH: Final = re.compile(r"[0-9a-f]{64}")
#: The largest row id or position a log can hold (SQLite's and PostgreSQL's BIGINT).
MAX_ROW_ID: Final = 2**63 - 1


@attrs.frozen(kw_only=True)
class Checkpoint:
    """
    The position and hash of the last inbox row and the last event at a moment:
    kept outside the database, it proves later that the log still holds that
    exact prefix (a rewrite of the whole file changes the hashes).
    """

    inbox_id: int
    inbox_hash: str
    event_position: int
    event_hash: str
    schema_version: str | None
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in CHECKPOINT_KEYS}

    @classmethod
    def from_json(cls, obj: object) -> Checkpoint:
        """
        Read a checkpoint object.

        Raises:
            ValueError: a key is missing or has the wrong type.
        """
        if not isinstance(obj, Mapping):
            raise ValueError("a checkpoint is a JSON object")
        for key in ("inbox_id", "event_position"):
            value = obj.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"checkpoint: {key!r} must be a non-negative integer")
            if value > MAX_ROW_ID:
                raise ValueError(
                    f"checkpoint: {key!r} is larger than any row a log can hold "
                    f"(at most {MAX_ROW_ID}, SQLite's largest integer)"
                )
        for key in ("inbox_hash", "event_hash"):
            value = obj.get(key)
            if not isinstance(value, str) or not _HASH.fullmatch(value):
                raise ValueError(f"checkpoint: {key!r} must be 64 lower-case hex digits")
        version = obj.get("schema_version")
        if version is not None and not isinstance(version, str):
            raise ValueError("checkpoint: 'schema_version' must be a string")
        created = obj.get("created_at")
        return cls(
            inbox_id=obj["inbox_id"],
            inbox_hash=obj["inbox_hash"],
            event_position=obj["event_position"],
            event_hash=obj["event_hash"],
            schema_version=version,
            created_at=created if isinstance(created, str) else "",
        )


#: A checkpoint file is a few hundred bytes; anything past this is not one.
MAX_CHECKPOINT_BYTES: Final = 64 * 1024


def load_checkpoint(file_or_json: str) -> Checkpoint:
    """
    A checkpoint from a file path or an inline JSON string.

    Raises:
        ValueError: neither a readable file nor JSON, or not a checkpoint.
    """
    text = file_or_json.strip()
    if not text.startswith("{"):
        shown = _quoted(file_or_json, 80)
        if not file_or_json or "\x00" in file_or_json:
            raise ValueError(f"--checkpoint: neither inline JSON nor a file name: {shown}")
        try:
            if not stat.S_ISREG(os.stat(file_or_json).st_mode):  # a FIFO would block
                raise ValueError(f"--checkpoint: {shown} is not a regular file")
            with open(file_or_json, "rb") as fh:
                data = fh.read(MAX_CHECKPOINT_BYTES + 1)
        except OSError as exc:
            raise ValueError(
                f"--checkpoint: not inline JSON, and {shown} cannot be read ({exc.strerror or exc})"
            ) from None
        if len(data) > MAX_CHECKPOINT_BYTES:
            raise ValueError(
                f"--checkpoint: {shown} is larger than a checkpoint "
                f"(over {MAX_CHECKPOINT_BYTES} bytes)"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"--checkpoint: {shown} is not UTF-8 text") from None
    if len(text) > MAX_CHECKPOINT_BYTES:
        raise ValueError("--checkpoint: longer than a checkpoint")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("--checkpoint: not valid JSON") from None
    return Checkpoint.from_json(obj)


@attrs.frozen(kw_only=True)
class CheckpointProblem:
    """Why a log does not hold a checkpoint's prefix."""

    problem: str
    table: str
    row_id: int | None


def check_checkpoint(store: SQLStore, cp: Checkpoint) -> CheckpointProblem | None:
    """
    Whether the log still holds the prefix ``cp`` anchors: the row at each
    checkpoint position exists and carries the checkpoint's hash. Run it after
    a successful ``store.verify()`` (which proved every stored hash is
    the recomputed chain), so the stored hash at a position *is* the chain's.
    """
    for table, key, position, expected in (
        ("inbox", "id", cp.inbox_id, cp.inbox_hash),
        ("events", "position", cp.event_position, cp.event_hash),
    ):
        if position == 0:
            if expected != _codec.GENESIS:
                return CheckpointProblem(
                    problem=f"the checkpoint's empty {table} chain has a hash other than genesis",
                    table=table,
                    row_id=None,
                )
            continue
        rows = store.query(f"SELECT hash FROM {table} WHERE {key} = ?", [position])
        if not rows:
            count = store.query(f"SELECT count(*) FROM {table}")[0][0]
            return CheckpointProblem(
                problem=f"the log is shorter than the checkpoint: {table} has {count} rows, "
                f"the checkpoint was taken at {table} row {position}",
                table=table,
                row_id=position,
            )
        if rows[0][0] != expected:
            return CheckpointProblem(
                problem=f"{table} row {position} hash differs from the checkpoint "
                "(the log was rewritten up to there)",
                table=table,
                row_id=position,
            )
    return None


__all__ = [
    "ANOMALY_CATEGORIES",
    "ANOMALY_CATEGORY_SQL",
    "EXPORT_COLUMNS",
    "Anomaly",
    "Checkpoint",
    "CheckpointProblem",
    "Listed",
    "anomalies",
    "check_checkpoint",
    "export_bounds",
    "iter_audit",
    "list_payments",
    "load_checkpoint",
    "omise_time",
    "parse_when",
    "percentile",
    "stats",
    "stuck_reason",
]
