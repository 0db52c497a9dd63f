"""
The on-call and audit commands of ``kplus-fsm``: ``show``, ``list``,
``anomalies``, ``stats``, ``export``, ``checkpoint``, ``verify`` and ``replay``.

Added to the :data:`kplus_fsm.cli.cli` group by :mod:`kplus_fsm.cli`. Everything
here except ``replay`` (without ``--check``) opens the database read-only
(SQLite: ``mode=ro``, ``query_only``, the file is left byte for byte as it was;
PostgreSQL: every transaction read-only). Every command prints an aligned table
for people and, with ``--json``, an object for machines. Exit codes: 0 ok; 1 a
check found a problem (``verify``, ``replay --check``, ``checkpoint`` of a log
that does not verify, ``list --exit-code`` that lists a payment); 2 usage (a
bad option, time or checkpoint); 3 no such payment; 4 the database cannot be
read.

Long work (``verify``, ``replay``, ``checkpoint``, ``export --output``) shows a
progress bar on stderr when run in a terminal, never with ``--json``.

Start-up: these commands read the log and nothing else, so this module imports
no HTTP client, adapter, server or PostgreSQL driver (a test checks it).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import click

from .._model import Payment, Status
from .._store._classify import Access, LogKind
from .._store._urls import redact
from .._store.sqlite import SQLiteStore, TimelineEntry, VerifyReport
from .._time import format_time, utc_now
from .._tracker import Tracker
from ..exceptions import DamagedLogError, KplusFSMError, PaymentNotFoundError
from ..typing import SQLStore
from . import _export, _output, _params, _queries
from ._atomic import atomic_write
from ._open import damage_exit, open_reader, open_writer, reading, target
from ._output import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_STORE,
    baht,
    duration,
    echo_json,
    fail,
    pct,
    plural,
    progress,
    short_time,
    table,
)
from ._params import TIME, db_option, json_option, since_option

# -------------------------------------------------------------------------- show


def _event_detail(entry: TimelineEntry) -> str:
    data = entry.data if isinstance(entry.data, dict) else {}
    kind = entry.kind
    if kind == "payment.requested":
        return f"{baht(int(data.get('amount', 0)))} {data.get('currency', '')}".strip()
    if kind == "charge.create_unknown":
        return str(data.get("reason", ""))
    if kind == "charge.create_failed":
        return f"{data.get('code')}: {data.get('message') or ''}".rstrip(": ")
    if kind == "webhook.accepted":
        return f"{data.get('key')} {data.get('event_id')} (claims {data.get('status')})"
    status = data.get("status")
    text = f"{data.get('from', '')} -> {status}" if data.get("from") else f"-> {status}"
    if data.get("failure_code"):
        text += f" ({data['failure_code']})"
    if data.get("origin"):
        text += f" by {data['origin']}"
    return text


def _source(entry: TimelineEntry) -> str:
    origin = entry.origin or ""
    verification = entry.verification or ""
    if verification and verification != "not_applicable":
        short = verification if len(verification) <= 24 else verification[:21] + "..."
        return f"{origin} ({short})" if origin else short
    return origin


def _timeline_rows(timeline: Sequence[TimelineEntry]) -> list[list[str]]:
    rows = []
    for e in timeline:
        if e.type == "input":
            rows.append(
                [
                    short_time(e.at),
                    f"in #{e.inbox_id}",
                    e.kind,
                    _source(e),
                    e.outcome or "",
                    e.reason or "",
                ]
            )
        else:
            rows.append([short_time(e.at), f"ev @{e.position}", e.kind, "", "", _event_detail(e)])
    return rows


def _print_payment(
    payment: Payment,
    timeline: Sequence[TimelineEntry],
    *,
    as_of: str | None,
    stuck: str | None,
    hints: int = 0,
) -> None:
    head = f"== {payment.payment_id}: {payment.status.value.upper()}"
    if as_of is not None:
        head += f" as of {as_of}"
    click.echo(head)
    failure = "-"
    if payment.failure_code:
        failure = payment.failure_code
        if payment.failure_message:
            failure += f": {payment.failure_message}"
    flags = sorted(payment.flags)
    if payment.create_unknown:
        flags.insert(0, "create_unknown")
    if hints:
        flags.insert(0, "unresolved_hint")
    fields = [
        ("amount", f"{baht(payment.amount)} {payment.currency}"),
        ("payment_id", payment.payment_id),
        ("charge_id", payment.charge_id or "-"),
        ("authorize_uri", payment.authorize_uri or "-"),
        ("expires_at", payment.expires_at or "-"),
        ("failure", failure),
        ("flags", ", ".join(flags) or "-"),
        ("stuck", stuck or "no"),
        ("order_ref", payment.order_ref or "-"),
        ("created_at", short_time(payment.created_at)),
        ("updated_at", short_time(payment.updated_at)),
        ("version", str(payment.version)),
    ]
    for key, value in fields:
        click.echo(f"   {key:<14} {value}")
    click.echo("")
    rows = _timeline_rows(timeline)
    for text in table(("TIME (UTC)", "ROW", "KIND", "SOURCE", "OUTCOME", "REASON"), rows, "   "):
        click.echo(text)


@click.command()
@click.argument("payment_or_charge_id", type=_params.ID)
@db_option
@click.option(
    "--as-of",
    "as_of",
    type=TIME,
    default=None,
    help="The payment as it stood at this time (ISO-8601, or ago: -2h).",
)
@json_option
def show(payment_or_charge_id: str, db: str, as_of: str | None, as_json: bool) -> None:
    """
    Show a payment (by payment id or charge id): state, amount, ids,
    authorize_uri, failure, expires_at, flags, and the timeline (every input
    with its time, source, outcome and reason, each followed by its events).
    """
    with reading(db) as store:
        t = Tracker(store)
        try:
            current = t.get(payment_or_charge_id)
        except PaymentNotFoundError as exc:
            fail(str(exc), EXIT_NOT_FOUND)
        payment = current if as_of is None else t.state_as_of(current.payment_id, as_of)
        timeline = t.timeline(current, as_of=as_of)
        hints = (
            store.unresolved_hints(charge_id=current.charge_id)
            if current.charge_id is not None and as_of is None
            else []
        )
    when = dt.datetime.fromisoformat(as_of) if as_of is not None else utc_now()
    stuck = (
        _queries.stuck_reason(payment, now=when, unresolved_hint=bool(hints))
        if payment is not None
        else None
    )
    if as_json:
        out: dict[str, Any] = {
            "payment_id": current.payment_id,
            "charge_id": current.charge_id,
            "as_of": as_of,
            "exists": payment is not None,
        }
        if payment is not None:
            out.update(payment.to_json())
        out["stuck"] = stuck
        out["unresolved_hint"] = bool(hints)
        out["unresolved_hints"] = [h.to_json() for h in hints]
        out["timeline"] = [e.to_json() for e in timeline]
        echo_json(out)
        return
    if payment is None:
        click.echo(f"{current.payment_id} did not exist yet at {as_of}")
        return
    _print_payment(payment, timeline, as_of=as_of, stuck=stuck, hints=len(hints))


# -------------------------------------------------------------------------- list


@click.command("list")
@db_option
@click.option(
    "--status",
    type=click.Choice([s.value for s in Status]),
    default=None,
    help="Only payments in this state.",
)
@click.option(
    "--stuck",
    is_flag=True,
    help="Only stuck payments: a create with an unknown outcome or no answer, pending "
    "past expires_at, or an unresolved webhook hint.",
)
@since_option
@click.option("--until", type=TIME, default=None, help="Only created up to this time.")
@click.option(
    "--limit",
    type=_params.LIMIT,
    default=50,
    show_default=True,
    help="At most this many payments (newest first).",
)
@click.option(
    "--exit-code",
    "exit_code",
    is_flag=True,
    help="Exit 1 when any payment matches (with --stuck: when anything is stuck), "
    "for alerting; 0 when none does.",
)
@json_option
def list_(
    db: str,
    status: str | None,
    stuck: bool,
    since: str | None,
    until: str | None,
    limit: int,
    exit_code: bool,
    as_json: bool,
) -> None:
    """
    List payments, newest first: their state, amount, charge, times, flags, and
    why they are stuck. --since and --until filter on when the payment was created.
    With --exit-code, exit 1 when any payment matches (alert on `list --stuck
    --exit-code`).
    """
    now = utc_now()
    with reading(db) as store:
        listed, more = _queries.list_payments(
            store, now=now, status=status, stuck=stuck, since=since, until=until, limit=limit
        )
    found = EXIT_PROBLEM if exit_code and listed else EXIT_OK
    if as_json:
        echo_json(
            {
                "count": len(listed),
                "limit": limit,
                "truncated": more,
                "payments": [item.to_json() for item in listed],
            }
        )
        sys.exit(found)
    if not listed:
        click.echo("no payments match")
        return
    rows = []
    for item in listed:
        p = item.payment
        notes = sorted(p.flags)
        if item.stuck:
            notes.insert(0, f"STUCK: {item.stuck}")
        rows.append(
            [
                p.payment_id,
                p.status.value,
                baht(p.amount),
                p.charge_id or "-",
                short_time(p.created_at),
                short_time(p.updated_at),
                p.expires_at or "-",
                p.failure_code or "-",
                "; ".join(notes),
            ]
        )
    headers = (
        "PAYMENT",
        "STATUS",
        "AMOUNT (THB)",
        "CHARGE",
        "CREATED (UTC)",
        "UPDATED",
        "EXPIRES_AT",
        "FAILURE",
        "NOTES",
    )
    for text in table(headers, rows, right=(2,)):
        click.echo(text)
    tail = plural(len(listed), "payment")
    if more:
        tail += f" (the newest {limit}; more with --limit)"
    click.echo(tail)
    sys.exit(found)


# --------------------------------------------------------------------- anomalies


@click.command("anomalies")
@db_option
@since_option
@click.option(
    "--limit",
    type=_params.LIMIT,
    default=100,
    show_default=True,
    help="At most this many rows (newest first); the counts cover them all.",
)
@json_option
def anomalies(db: str, since: str | None, limit: int, as_json: bool) -> None:
    """
    Conflicts, corrections, rejected inputs (bad signature, stale timestamp,
    malformed body, mismatches), unknown outcomes, creates settled as never
    made, unresolved webhook hints, orders paid twice and duplicate deliveries,
    newest first, each with its payment, time and reason.
    """
    with reading(db) as store:
        found, counts = _queries.anomalies(store, since=since, limit=limit)
    if as_json:
        echo_json(
            {
                "since": since,
                "count": sum(counts.values()),
                "by_category": counts,
                "anomalies": [a.to_json() for a in found],
            }
        )
        return
    if not found:
        click.echo("no anomalies" + (f" since {since}" if since else ""))
        return
    rows = [
        [
            short_time(a.at),
            a.category,
            a.payment_id or "-",
            f"#{a.inbox_id}" + (f" @{a.position}" if a.position is not None else ""),
            a.kind + (f"/{a.origin}" if a.origin and a.origin not in ("merchant", a.kind) else ""),
            a.reason,
        ]
        for a in found
    ]
    for text in table(("TIME (UTC)", "CATEGORY", "PAYMENT", "ROW", "INPUT", "REASON"), rows):
        click.echo(text)
    total = sum(counts.values())
    shown = f"{len(found)} of {total}" if total > len(found) else str(total)
    summary = ", ".join(f"{c} {n}" for c, n in counts.items())
    noun = "anomaly" if total == 1 else "anomalies"
    click.echo(f"{shown} {noun}" + (f" since {since}" if since else "") + f": {summary}")


# ------------------------------------------------------------------------- stats


@click.command("stats")
@db_option
@since_option
@json_option
def stats(db: str, since: str | None, as_json: bool) -> None:
    """
    Payments by status and by failure code, conversion, webhook lag (charge
    created -> completion received) percentiles, duplicate and rejection rates.
    --since counts the payments created, and the inputs received, from then on.
    """
    with reading(db) as store:
        out = _queries.stats(store, since=since)
    if as_json:
        echo_json(out)
        return
    total = out["payments"]
    click.echo(f"payments created {'since ' + since if since else 'ever'}: {total:,}")
    rows = [
        [
            status,
            f"{v['payments']:,}",
            pct(v["payments"] / total if total else None),
            baht(v["amount"]),
        ]
        for status, v in out["by_status"].items()
    ]
    for text in table(("STATUS", "PAYMENTS", "SHARE", "AMOUNT (THB)"), rows, "  ", right=(1, 2, 3)):
        click.echo(text)
    if out["by_failure_code"]:
        click.echo("")
        codes = [[code, f"{n:,}"] for code, n in out["by_failure_code"].items()]
        for text in table(("FAILURE CODE", "PAYMENTS"), codes, "  ", right=(1,)):
            click.echo(text)
    conv = out["conversion"]
    lag = out["webhook_lag_seconds"]
    hooks = out["webhooks"]
    inputs = out["inputs"]
    click.echo("")
    click.echo(
        f"conversion    {pct(conv['of_ended'])} of ended payments successful "
        f"({conv['successful']:,} of {conv['ended']:,}); {pct(conv['of_all'])} of all; "
        f"{conv['open']:,} still open"
    )
    click.echo(
        "webhook lag   "
        + "  ".join(f"p{p} {duration(lag[f'p{p}'])}" for p in _queries.PERCENTILES)
        + f"  max {duration(lag['max'])}"
        + f"  (charge created -> completion received, over {lag['completions']:,} "
        "approvals and declines announced by a webhook)"
    )
    by_source = ", ".join(f"{k} {v:,}" for k, v in out["completions_by_source"].items())
    click.echo(f"completions   by source: {by_source or '-'}")
    click.echo(
        f"webhooks      {hooks['deliveries']:,} deliveries; duplicates {hooks['duplicates']:,} "
        f"({pct(hooks['duplicate_rate'])}); rejected {hooks['rejected']:,} "
        f"({pct(hooks['rejection_rate'])})"
    )
    click.echo(
        f"inputs        {inputs['total']:,}; rejected {inputs['rejected']:,} "
        f"({pct(inputs['rejection_rate'])})"
    )
    hints = out["unresolved_hints"]
    click.echo(
        f"follow-up     {hints['count']:,} unresolved webhook hints"
        + (f" (the oldest received {short_time(hints['oldest_at'])})" if hints["oldest_at"] else "")
        + f"; {plural(out['orders_paid_twice'], 'order')} paid twice"
    )


# ------------------------------------------------------------------------ export


def _export_file(
    store: SQLStore,
    rows: Iterator[dict[str, Any]],
    output: Path,
    fmt: str,
    *,
    since: str | None,
    total: int,
) -> tuple[_export.ExportTally, str | None, Path]:
    """
    Write the export to ``output`` crash-safely (kplus_fsm.cli._atomic): the name
    holds the previous file or the complete new one. An export cut short by
    damage goes to ``OUTPUT.incomplete`` instead, never over ``output``.
    """
    tally = _export.ExportTally()
    try:
        with (
            atomic_write(output) as target_file,
            progress("export", total, _output.interactive()) as update,
        ):
            problem = _export.write_rows(rows, target_file.file, fmt, tally, update)
            trailer = tally.trailer(store, since=since, problem=problem)
            _export.write_trailer(target_file.file, fmt, trailer)
            if problem is not None:
                target_file.path = output.with_name(output.name + ".incomplete")
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}; nothing was replaced", EXIT_STORE)
    return tally, problem, target_file.path


@click.command("export")
@db_option
@since_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="JSON lines, or CSV with every stored column of both tables.",
)
@click.option(
    "--output",
    "-o",
    type=_params.OUTPUT,
    default="-",
    show_default="stdout",
    help="Write to this file (crash-safe: the previous file or the complete new one).",
)
def export(db: str, since: str | None, fmt: str, output: Path) -> None:
    """
    Stream the audit trail: every input and every event as stored (with its
    hash), in commit order, each input followed by the events it caused, then
    a trailer (row counts and chain heads). Constant memory whatever the size
    of the log.
    """
    with reading(db) as store:
        bounds = _last_ids(store)
        rows = _queries.iter_audit(store, since=since, bounds=bounds)
        if str(output) == "-":
            tally = _export.ExportTally()
            try:
                problem = _export.write_rows(rows, sys.stdout, fmt, tally)
                trailer = tally.trailer(store, since=since, problem=problem)
                _export.write_trailer(sys.stdout, fmt, trailer)
                sys.stdout.flush()
            except BrokenPipeError:  # `kplus-fsm export | head`: the reader left
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
                return
            if problem is not None:
                fail(f"the export is incomplete (see its trailer): {problem}", EXIT_PROBLEM)
            return
        tally, problem, written = _export_file(
            store,
            rows,
            output,
            fmt,
            since=since,
            total=sum(bounds) if bounds[0] < _queries.MAX_ROW_ID else 0,
        )
    if problem is not None:
        fail(
            f"the export is incomplete: {problem}; the {tally.rows} rows that could be read "
            f"are in {written} (its trailer says where reading stopped); {output} was "
            "left as it was",
            EXIT_PROBLEM,
        )
    click.echo(f"exported {tally.rows} rows to {output}", err=True)


# -------------------------------------------------------------- verify, checkpoint


def _last_ids(store: SQLStore) -> tuple[int, int]:
    """
    The last inbox id and event position; on a damaged log whose last pages
    cannot be read, no bound (the readers stop where the damage starts).
    """
    try:
        return _queries.export_bounds(store)
    except DamagedLogError:
        return _queries.MAX_ROW_ID, _queries.MAX_ROW_ID


def _verify(store: SQLStore, *, bar: bool) -> VerifyReport:
    inbox, events = _last_ids(store)
    total = inbox + events if inbox < _queries.MAX_ROW_ID else 0
    with progress("verify", total, bar) as update:
        return store.verify(progress=update)


def _integrity(store: SQLStore) -> dict[str, Any] | None:
    """SQLite's ``PRAGMA integrity_check`` (``None`` on PostgreSQL, which has none)."""
    if not isinstance(store, SQLiteStore):
        return None
    messages = list(store.integrity_check())
    return {"pragma": "integrity_check", "ok": messages == ["ok"], "messages": messages}


def _unreadable_report(found: Any) -> dict[str, Any]:
    """The verify report of a file so damaged its schema cannot be read."""
    return {
        "ok": False,
        "inbox_rows": 0,
        "events": 0,
        "inbox_head": None,
        "events_head": None,
        "schema_version": None,
        "problem": f"the file is damaged: {found.detail}; nothing could be read",
        "table": None,
        "row_id": None,
        "checkpoint": None,
        "checkpoint_ok": None,
        "damaged": True,
        "integrity_check": None,
    }


@click.command()
@db_option
@click.option(
    "--checkpoint",
    "checkpoint_arg",
    type=_params.CHECKPOINT,
    default=None,
    help="Also prove the log still holds the prefix of this checkpoint "
    "(a file written by `kplus-fsm checkpoint --json`, or the JSON itself).",
)
@json_option
def verify(db: str, checkpoint_arg: _queries.Checkpoint | str | None, as_json: bool) -> None:
    """
    Check the hash chains, the append-only triggers, the schema version and
    the file itself (SQLite's integrity_check); exit 1 naming the first bad
    row, or how far a damaged file can be read. With --checkpoint, also check
    that the log still holds the exact prefix the checkpoint anchors.
    """
    cp = None
    if checkpoint_arg is not None:
        ctx = click.get_current_context()
        option = next(p for p in ctx.command.params if p.name == "checkpoint_arg")
        cp = _params.CHECKPOINT.load(checkpoint_arg, option, ctx)
    found = target(db, Access.READ, report_unreadable=False)
    if found.kind is LogKind.DAMAGED and not found.schema_readable:
        out = _unreadable_report(found)
        if as_json:
            echo_json(out)
        else:
            click.echo(f"FAILED: {out['problem']}")
        sys.exit(EXIT_PROBLEM)
    with reading(db, found) as store:
        report = _verify(store, bar=_output.interactive(as_json))
        integrity = _integrity(store)
        problem, table, row_id = report.problem, report.table, report.row_id
        damaged = report.damaged
        if problem is None and integrity is not None and not integrity["ok"]:
            problem = f"SQLite's integrity_check found damage: {integrity['messages'][0]}"
            damaged = True
        if found.kind is LogKind.DAMAGED:  # cut short, tables missing: seen before reading
            damaged = True
            problem = problem or f"the file is damaged: {found.detail}"
        cp_problem = None
        if problem is None and cp is not None:
            cp_problem = _queries.check_checkpoint(store, cp)
            if cp_problem is not None:
                problem, table, row_id = cp_problem.problem, cp_problem.table, cp_problem.row_id
        ok = problem is None
        if as_json:
            echo_json(
                {
                    "ok": ok,
                    "inbox_rows": report.inbox_rows,
                    "events": report.events,
                    "inbox_head": report.inbox_head,
                    "events_head": report.events_head,
                    "schema_version": report.schema_version,
                    "problem": problem,
                    "table": table,
                    "row_id": row_id,
                    "checkpoint": cp.to_json() if cp is not None else None,
                    "checkpoint_ok": None if cp is None or not report.ok else cp_problem is None,
                    "damaged": damaged,
                    "integrity_check": integrity,
                }
            )
        elif ok:
            click.echo(
                f"ok: {report.inbox_rows} inputs and {report.events} events match the hash "
                f"chain; schema {report.schema_version}; events head {report.events_head}"
            )
            if cp is not None:
                click.echo(
                    f"ok: the log still holds the checkpoint of "
                    f"{cp.created_at or 'unknown time'} (inbox row {cp.inbox_id}, events row "
                    f"{cp.event_position}); {report.inbox_rows - cp.inbox_id} inputs and "
                    f"{report.events - cp.event_position} events appended since"
                )
        else:
            click.echo(f"FAILED: {problem}")
            if integrity is not None and not integrity["ok"]:
                for message in integrity["messages"]:
                    click.echo(f"  integrity_check: {message}")
        if not ok:
            sys.exit(EXIT_PROBLEM)


@click.command()
@db_option
@click.option(
    "--output",
    "-o",
    type=_params.OUTPUT,
    default=None,
    help="Also write the checkpoint (its JSON) to this file, crash-safe: the "
    "previous file or the complete new one.",
)
@json_option
def checkpoint(db: str, output: Path | None, as_json: bool) -> None:
    """
    Verify the log, then print its position and head hashes: keep them outside
    the database (a ticket, a log line, an email to the auditor). Later,
    `kplus-fsm verify --checkpoint` proves the log still holds that exact prefix.
    """
    with reading(db) as store:
        report = _verify(store, bar=_output.interactive(as_json))
    if not report.ok:
        fail(f"the log does not verify, so no checkpoint: {report.problem}", EXIT_PROBLEM)
    cp = _queries.Checkpoint(
        inbox_id=report.inbox_rows,
        inbox_hash=report.inbox_head,
        event_position=report.events,
        event_hash=report.events_head,
        schema_version=report.schema_version,
        created_at=format_time(utc_now()),
    )
    if output is not None and str(output) != "-":
        try:
            with atomic_write(output) as target_file:
                target_file.file.write(json.dumps(cp.to_json(), indent=2) + "\n")
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror or exc}; nothing was replaced", EXIT_STORE)
    if as_json:
        echo_json(cp.to_json())
        return
    click.echo(f"checkpoint of {redact(db)} (verified first):")
    for key, value in cp.to_json().items():
        click.echo(f"  {key:<15} {value}")
    click.echo("Keep this line outside the database (a ticket, a log line, an email):")
    click.echo(json.dumps(cp.to_json(), separators=(",", ":")))
    if output is not None and str(output) != "-":
        click.echo(f"Written to {output}.")
    click.echo(f"Later: kplus-fsm verify --db {redact(db)} --checkpoint '<that line>'")


# ------------------------------------------------------------------------ replay


@click.command()
@db_option
@click.option(
    "--check",
    is_flag=True,
    help="Only compare (read-only); exit 1 and list every difference.",
)
@json_option
def replay(db: str, check: bool, as_json: bool) -> None:
    """Rebuild the payments projection from the events and compare it."""
    found = target(db, Access.READ if check else Access.WRITE)
    store = open_reader(db, found) if check else open_writer(db)
    folded = [0]
    try:
        events = _last_ids(store)[1]
        total = events if events < _queries.MAX_ROW_ID else 0
        with progress("replay", total, _output.interactive(as_json)) as update:

            def count(n: int) -> None:
                folded[0] += n
                update(n)

            report = store.replay(repair=not check, progress=count)
    except DamagedLogError as exc:
        fail(
            f"replay stopped: {exc}; {folded[0]} events were folded before; "
            "nothing was repaired; see kplus-fsm verify",
            EXIT_PROBLEM,
        )
    except KplusFSMError as exc:
        fail(str(exc), EXIT_PROBLEM)
    finally:
        store.close()
    diffs = [
        {"payment_id": d.payment_id, "field": d.field, "stored": d.stored, "replayed": d.replayed}
        for d in report.differences
    ]
    if as_json:
        echo_json(
            {
                "ok": report.ok,
                "events": report.events,
                "payments": report.payments,
                "differences": diffs,
                "repaired": report.repaired,
            }
        )
    else:
        click.echo(f"replayed {report.events} events into {report.payments} payments")
        for d in diffs:
            click.echo(
                f"  {d['payment_id']}: {d['field']}: stored {d['stored']!r}, "
                f"replayed {d['replayed']!r}"
            )
        if report.repaired:
            click.echo(f"repaired {len(diffs)} differences from the events")
        elif report.ok:
            click.echo("no differences")
    if check and not report.ok:
        sys.exit(EXIT_PROBLEM)
    damage_exit(found)


#: The commands of this module (all of them read the log; only ``replay`` may repair it).
COMMANDS: Final = (show, list_, anomalies, stats, export, checkpoint, verify, replay)

__all__ = [
    "COMMANDS",
    "anomalies",
    "checkpoint",
    "export",
    "list_",
    "replay",
    "show",
    "stats",
    "verify",
]
