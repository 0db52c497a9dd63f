"""
The database-independent half of ``verify``, ``replay`` and ``timeline``: every
store fetches rows its own way and hands them to these functions, so the hash
chain check, the fold and the comparison with the projection are the same code
on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import attrs
import orjson

from .. import _codec
from .._model import (
    EVENT_VERSIONS,
    KNOWN_FAILURE_CODES,
    STATUS_EVENT,
    EventKind,
    Payment,
    Status,
)
from ..exceptions import DamagedLogError, IntegrityError
from . import _rows
from ._reports import ReplayDifference, TimelineEntry, VerifyReport

# ----------------------------------------------------------- replay's fast fold

_CHANGE_KINDS: Final = frozenset(STATUS_EVENT.values()) | {EventKind.CHARGE_CORRECTED}

#: A payment's fields as a dict: what :func:`apply_event` folds into.
PaymentState = dict[str, Any]

_PAYMENT_FIELDS: Final = tuple(a.name for a in attrs.fields(Payment))


_STATUSES: Final = {s.value: s for s in Status}


def payment_state(payment: Payment) -> PaymentState:
    """The fields of ``payment`` (``Payment(**payment_state(p)) == p``)."""
    return {name: getattr(payment, name) for name in _PAYMENT_FIELDS}


#: The fields of a payment just requested, before its request's own.
_NEW_PAYMENT: Final[PaymentState] = payment_state(
    Payment(payment_id="", status=Status.CREATED, amount=0, currency="", return_uri="")
)


def apply_event(
    state: PaymentState | None,
    stream: str,
    kind: str,
    data: Mapping[str, Any],
    version: int,
    at: str,
    position: int,
) -> PaymentState:
    """
    Replay's fast copy of :func:`kplus_fsm._machine.evolve`, on a payment's
    fields: ``state`` (``None`` before the first event) after the event, changed
    in place, so that replay folds a whole stream into one dict and builds the
    :class:`Payment` once, at its end. Used by replay only; a property test
    (``tests/test_audit.py``) checks it agrees with ``evolve`` on any events.

    Raises:
        IntegrityError: the event does not fit (see :func:`~kplus_fsm._machine.evolve`).
    """
    try:
        return _fold_one(state, stream, kind, data, version, at)
    except (KeyError, TypeError, ValueError) as exc:
        raise _unfit(position, kind, exc) from exc


def _unfit(position: int, kind: str, exc: Exception) -> IntegrityError:
    return IntegrityError(
        f"event at position {position} ({kind}) cannot be folded: {exc!r}",
        table="events",
        row_id=position,
    )


def state_row(state: PaymentState) -> tuple[Any, ...]:
    """
    ``payment_to_row(Payment(**state))``, straight from the fields (replay
    compares it with the stored row and builds the :class:`Payment` only when
    they differ); a property test checks that the two agree.
    """
    livemode = state["livemode"]
    metadata, flags, webhook_ids = state["metadata"], state["flags"], state["webhook_event_ids"]
    return (
        state["payment_id"],
        state["status"]._value_,
        state["amount"],
        state["currency"],
        state["return_uri"],
        state["platform_type"],
        state["description"],
        _codec.dumps(dict(metadata)) if metadata else "{}",
        state["charge_id"],
        None if livemode is None else int(livemode),
        state["authorize_uri"],
        state["expires_at"],
        state["failure_code"],
        state["failure_message"],
        int(state["create_unknown"]),
        _codec.dumps(sorted(flags)) if flags else "[]",
        _codec.dumps(sorted(webhook_ids)) if webhook_ids else "[]",
        state["version"],
        state["created_at"],
        state["updated_at"],
        state["order_ref"],
    )


def _fold_one(
    state: PaymentState | None,
    stream: str,
    kind: str,
    data: Mapping[str, Any],
    version: int,
    at: str,
) -> PaymentState:
    if state is None:
        if kind != EventKind.PAYMENT_REQUESTED:
            raise ValueError(f"stream {stream} does not start with payment.requested")
        return {
            **_NEW_PAYMENT,
            "payment_id": data["payment_id"],
            "amount": data["amount"],
            "currency": data["currency"],
            "return_uri": data["return_uri"],
            "platform_type": data.get("platform_type"),
            "description": data.get("description"),
            "metadata": dict(data.get("metadata") or {}),
            "order_ref": data.get("order_ref"),
            "version": version,
            "created_at": at,
            "updated_at": at,
        }
    if kind == EventKind.PAYMENT_REQUESTED:
        raise ValueError("payment.requested in the middle of a stream")
    if kind == EventKind.CREATE_UNKNOWN:
        state["create_unknown"] = True
    elif kind in (EventKind.CREATE_FAILED, EventKind.NOT_CREATED):
        state["status"] = Status.FAILED
        state["failure_code"] = data["code"]
        state["failure_message"] = data.get("message")
        state["create_unknown"] = False
    elif kind == EventKind.WEBHOOK_ACCEPTED:
        state["webhook_event_ids"] = state["webhook_event_ids"] | {data["event_id"]}
    elif kind in _CHANGE_KINDS:
        status = _STATUSES[data["status"]]
        flags = set(state["flags"])
        if kind == EventKind.CHARGE_CORRECTED:
            flags.add("corrected")
        code = data.get("failure_code")
        if code is not None and code not in KNOWN_FAILURE_CODES:
            flags.add("unknown_failure_code")
        state["status"] = status
        state["charge_id"] = data["charge_id"]
        if data.get("livemode") is not None:
            state["livemode"] = data["livemode"]
        state["authorize_uri"] = data.get("authorize_uri") or state["authorize_uri"]
        state["expires_at"] = data.get("expires_at") or state["expires_at"]
        state["failure_code"] = code
        state["failure_message"] = data.get("failure_message")
        state["create_unknown"] = False
        state["flags"] = frozenset(flags)
    else:
        raise ValueError(f"unknown event kind {kind!r}")
    state["version"] = version
    state["updated_at"] = at
    return state


#: ``fetch(table, after)``: up to :data:`VERIFY_BATCH` rows of ``table``
#: (``inbox`` or ``events``) after ``after`` in key order: the hashed columns and
#: the hash, as :data:`VERIFY_INBOX_SQL` / :data:`VERIFY_EVENTS_SQL` select them.
Fetch = Callable[[str, int], Sequence[Sequence[Any]]]

VERIFY_BATCH: Final = 2000
#: How a :class:`DamagedLogError` message starts (SQLite's words follow).
DAMAGED_PREFIX: Final = "the log is damaged: "
PROGRESS_EVERY: Final = 5000

CHAINS: Final = (
    ("inbox", "id", _rows.INBOX_HASHED),
    ("events", "position", _rows.EVENT_HASHED),
)

#: The statements a store runs for ``fetch``: one batch of a chain, with the
#: placeholder ``{p}`` to fill (``?`` for SQLite, ``%s`` for psycopg).
VERIFY_INBOX_TEMPLATE: Final = (
    f"SELECT {', '.join(_rows.INBOX_HASHED)}, hash FROM inbox WHERE id > {{p}} "
    f"ORDER BY id LIMIT {VERIFY_BATCH}"
)
VERIFY_EVENTS_TEMPLATE: Final = (
    f"SELECT {', '.join(_rows.EVENT_HASHED)}, hash FROM events WHERE position > {{p}} "
    f"ORDER BY position LIMIT {VERIFY_BATCH}"
)
VERIFY_INBOX_SQL: Final = VERIFY_INBOX_TEMPLATE.format(p="?")
VERIFY_EVENTS_SQL: Final = VERIFY_EVENTS_TEMPLATE.format(p="?")
#: One row after a key (SQLite): how :data:`Probe` finds where a damaged file stops.
VERIFY_INBOX_PROBE_SQL: Final = (
    f"SELECT {', '.join(_rows.INBOX_HASHED)}, hash FROM inbox WHERE id > ? ORDER BY id LIMIT 1"
)
VERIFY_EVENTS_PROBE_SQL: Final = (
    f"SELECT {', '.join(_rows.EVENT_HASHED)}, hash FROM events WHERE position > ? "
    "ORDER BY position LIMIT 1"
)


#: ``probe(table, after)``: the one row of ``table`` after ``after`` (as ``fetch``
#: returns them), or ``None``; used to find, row by row, where a damaged file stops.
Probe = Callable[[str, int], Sequence[Any] | None]


def verify_chains(
    fetch: Fetch,
    *,
    schema_version: str | None,
    problem: str | None = None,
    progress: Callable[[int], None] | None = None,
    probe: Probe | None = None,
) -> VerifyReport:
    """
    Recompute both hash chains from the rows ``fetch`` returns, streaming, and
    name the first row that is missing or does not match. ``problem`` (a
    missing trigger, a newer schema) is reported without reading any row.

    A damaged file (``fetch`` raises :class:`DamagedLogError`) does not end the
    walk: ``probe`` reads on row by row to find the last readable row, the
    other chain is still walked, and the report (``damaged``) says for each
    chain how far it could be read and where reading stops.
    """
    counts = {"inbox": 0, "events": 0}
    heads = {"inbox": _codec.GENESIS, "events": _codec.GENESIS}
    damage: list[tuple[str, int, str]] = []  # (table, first unreadable key, SQLite's words)

    def report(
        problem: str | None, table: str | None = None, row_id: int | None = None
    ) -> VerifyReport:
        if problem is None and damage:
            table, row_id, _ = damage[0]
            problem = "the file is damaged: " + "; ".join(
                (
                    f"{t} rows 1 to {k - 1} read and match the hash chain, reading stops at "
                    f"row {k} ({why})"
                    if k > 1
                    else f"no {t} row can be read ({why})"
                )
                for t, k, why in damage
            )
        return VerifyReport(
            ok=problem is None,
            inbox_rows=counts["inbox"],
            events=counts["events"],
            inbox_head=heads["inbox"],
            events_head=heads["events"],
            schema_version=schema_version,
            problem=problem,
            table=table,
            row_id=row_id,
            damaged=bool(damage),
        )

    if problem is not None:
        return report(problem)
    for table, key, hashed in CHAINS:
        columns = (*hashed, "hash")
        after, expected_key = 0, 1
        while True:
            try:
                rows: Sequence[Sequence[Any]] = fetch(table, after)
            except DamagedLogError as exc:
                rows, stop = _readable_rows(probe, table, after)
                why = str(stop or exc).removeprefix(DAMAGED_PREFIX)
                damage.append((table, -1, why))
            for row in rows:
                values = dict(zip(columns, row, strict=True))
                if values[key] != expected_key:
                    return report(
                        f"{table} row {expected_key} is missing (next is {values[key]})",
                        table,
                        expected_key,
                    )
                computed = _codec.chain_hash(heads[table], values, hashed)
                if computed != values["hash"]:
                    return report(
                        f"{table} row {values[key]} does not match the hash chain",
                        table,
                        values[key],
                    )
                heads[table] = computed
                counts[table] += 1
                expected_key += 1
            if progress is not None:
                progress(len(rows))
            if damage and damage[-1][0] == table and damage[-1][1] == -1:
                damage[-1] = (table, expected_key, damage[-1][2])
                break
            if len(rows) < VERIFY_BATCH:
                break
            after = rows[-1][0]
    return report(None)


def _readable_rows(
    probe: Probe | None, table: str, after: int
) -> tuple[list[Sequence[Any]], DamagedLogError | None]:
    """The rows after ``after`` that ``probe`` can still read, one by one, and what stopped it."""
    rows: list[Sequence[Any]] = []
    if probe is None:
        return rows, None
    for _ in range(VERIFY_BATCH):
        try:
            row = probe(table, after)
        except DamagedLogError as exc:
            return rows, exc
        if row is None:
            break
        rows.append(row)
        after = row[0]
    return rows, None


def diff(replayed: Payment, stored: Payment | None) -> list[ReplayDifference]:
    """Every field of the stored projection row that differs from the replayed payment."""
    if replayed == stored:
        return []
    if stored is None:
        return [
            ReplayDifference(payment_id=replayed.payment_id, field="*", stored=None, replayed="row")
        ]
    a, b = replayed.to_json(), stored.to_json()
    return [
        ReplayDifference(payment_id=replayed.payment_id, field=k, stored=b[k], replayed=a[k])
        for k in a
        if a[k] != b[k]
    ]


def fold_streams(
    rows: Iterable[Sequence[Any]],
    load: Callable[[str], Payment | None],
    *,
    progress: Callable[[int], None] | None = None,
    stored: Iterable[Sequence[Any]] | None = None,
) -> tuple[int, int, list[ReplayDifference], list[Payment]]:
    """
    Fold event rows (in ``stream, version`` order, the columns of
    :data:`kplus_fsm._store._sql.REPLAY_COLUMNS`) one stream at a time and compare each
    payment with its stored row. Constant memory but for the differences.
    Returns the events and payments folded, the differences, and the replayed
    payments that differ (what a repair writes).

    The stored rows come from ``stored`` when given (``payments`` rows in
    :data:`kplus_fsm._store._rows.PAYMENT_COLUMNS` order, sorted by ``payment_id`` in
    the same order as the streams: read alongside, one query for the whole
    replay), else from ``load(payment_id)``, one lookup per payment.

    Each stream is folded into a dict of the payment's fields
    (:func:`apply_event`, which agrees with the machine's
    :func:`~kplus_fsm._machine.evolve`) and compared, as the row it encodes to
    (:func:`state_row`), with the stored row: a payment whose row is the
    stored one byte for byte is neither built nor decoded.

    Raises:
        IntegrityError: a stream skips a version or an event cannot be folded.
    """
    differences: list[ReplayDifference] = []
    rebuilt: list[Payment] = []
    n_events = n_payments = 0
    stored_rows = iter(stored) if stored is not None else None
    pending_row: Sequence[Any] | None = None
    # The current versions keyed by plain text (what rows hold): a faster lookup.
    loads, upcast = _codec.loads, _codec.upcast
    current_versions = {str(kind.value): v for kind, v in EVENT_VERSIONS.items()}
    fast_loads = orjson.loads  # what _codec.loads does for an unmarked object

    def stored_row(payment_id: str) -> Sequence[Any] | None:
        nonlocal pending_row
        assert stored_rows is not None
        row = pending_row
        while True:
            if row is None:
                row = next(stored_rows, None)
                if row is None:
                    pending_row = None
                    return None
            if row[0] == payment_id:
                pending_row = None
                return row
            if row[0] > payment_id:  # no row for this payment; keep this one for later
                pending_row = row
                return None
            row = None  # a row with no events: an orphan, reported by the caller

    def finish(stream: str, state: PaymentState) -> None:
        nonlocal n_payments
        n_payments += 1
        if stored_rows is not None:
            row = stored_row(stream)
            if row is not None and tuple(row) == state_row(state):
                return  # the stored row is the replayed one, byte for byte
            replayed = Payment(**state)
            found = diff(replayed, None if row is None else _rows.payment_from_row(tuple(row)))
        else:
            replayed = Payment(**state)
            found = diff(replayed, load(stream))
        differences.extend(found)
        if found:
            rebuilt.append(replayed)

    stream: str | None = None
    state: PaymentState | None = None
    expected_version = 1
    for position, row_stream, version, kind, stored_version, data, at in rows:
        if row_stream != stream:
            if stream is not None and state is not None:
                finish(stream, state)
            stream, state, expected_version = row_stream, None, 1
        if version != expected_version:
            raise IntegrityError(
                f"stream {row_stream} skips from version {expected_version - 1} to {version}",
                table="events",
                row_id=position,
            )
        try:
            payload = fast_loads(data) if data[:1] == "{" else loads(data)
        except ValueError:
            payload = loads(data)  # what orjson refuses, the standard library may read
        if current_versions.get(kind) != stored_version:
            payload = upcast(kind, stored_version, payload)[1]
        try:
            state = _fold_one(state, row_stream, kind, payload, version, at)
        except (KeyError, TypeError, ValueError) as exc:  # what apply_event reports
            raise _unfit(position, kind, exc) from exc
        expected_version += 1
        n_events += 1
        if progress is not None and n_events % PROGRESS_EVERY == 0:
            progress(PROGRESS_EVERY)
    if stream is not None and state is not None:
        finish(stream, state)
    if progress is not None and n_events % PROGRESS_EVERY:
        progress(n_events % PROGRESS_EVERY)
    return n_events, n_payments, differences, rebuilt


def orphan_differences(orphans: Iterable[str]) -> list[ReplayDifference]:
    """A difference for each projection row with no events behind it."""
    return [ReplayDifference(payment_id=o, field="*", stored="row", replayed=None) for o in orphans]


#: The ``inbox`` columns a timeline shows (no body, headers or hash: ``show`` stays cheap).
TIMELINE_INBOX_COLUMNS: Final = (
    "id",
    "received_at",
    "kind",
    "origin",
    "outcome",
    "reason",
    "external_id",
    "verification",
)
#: The ``events`` columns a timeline shows: every hashed one (no hash).
TIMELINE_EVENT_COLUMNS: Final = _rows.EVENT_HASHED


def timeline_sql(until: bool) -> tuple[str, str]:
    """
    The two ``SELECT``s (``?`` placeholders) a store runs for
    :func:`timeline_from_rows`: the payment's inputs, its charge id's too (found by
    subquery; parameters: the payment id twice), and its events (the payment id);
    with ``until``, each also takes the time as a last parameter.
    """
    inbox_sql = (
        f"SELECT {', '.join(TIMELINE_INBOX_COLUMNS)} FROM inbox WHERE (payment_id = ?"
        " OR (payment_id IS NULL AND charge_id ="
        " (SELECT charge_id FROM payments WHERE payment_id = ?)))"
    )
    events_sql = f"SELECT {', '.join(TIMELINE_EVENT_COLUMNS)} FROM events WHERE stream = ?"
    if until:
        inbox_sql += " AND received_at <= ?"
        events_sql += " AND recorded_at <= ?"
    return inbox_sql + " ORDER BY id", events_sql + " ORDER BY version"


def timeline_from_rows(
    inputs: Iterable[Sequence[Any]], events: Iterable[Sequence[Any]]
) -> list[TimelineEntry]:
    """
    A payment's inputs, each followed by the events it caused (its timeline),
    straight from rows: ``inputs`` in
    :data:`TIMELINE_INBOX_COLUMNS` order (by id), ``events`` in
    :data:`TIMELINE_EVENT_COLUMNS` order.
    """
    caused: dict[int, list[TimelineEntry]] = {}
    loads, upcast = _codec.loads, _codec.upcast
    for position, _stream, version, kind, event_version, data, at, causation in events:
        payload = loads(data)
        if EVENT_VERSIONS.get(kind) != event_version:
            payload = upcast(kind, event_version, payload)[1]
        entry = TimelineEntry(
            type="event",
            at=at,
            inbox_id=causation,
            kind=kind,
            position=position,
            version=version,
            data=payload,
        )
        if causation in caused:
            caused[causation].append(entry)
        else:
            caused[causation] = [entry]
    entries: list[TimelineEntry] = []
    for inbox_id, at, kind, origin, outcome, reason, external_id, verification in inputs:
        entries.append(
            TimelineEntry(
                type="input",
                at=at,
                inbox_id=inbox_id,
                kind=kind,
                origin=origin,
                outcome=outcome,
                reason=reason,
                external_id=external_id,
                verification=verification,
            )
        )
        if inbox_id in caused:
            entries.extend(caused.pop(inbox_id))
    return entries


__all__ = [
    "TIMELINE_EVENT_COLUMNS",
    "TIMELINE_INBOX_COLUMNS",
    "diff",
    "fold_streams",
    "timeline_sql",
    "orphan_differences",
    "timeline_from_rows",
    "verify_chains",
]
