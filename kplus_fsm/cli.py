"""
``kplus-fsm``: the command line of kplus_fsm.

Every command takes ``--db`` (default: ``$KPLUS_FSM_DB``, else ``./kplus.db``).
``show``, ``verify`` and ``replay --check`` open the database read-only.

Exit codes: 0 success; 1 a check found a problem (``verify``, ``replay
--check``); 2 usage error; 3 no such payment; 4 the database cannot be read
(missing, not a kplus_fsm log, written by a newer version).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import structlog

from . import __version__
from ._demo import print_payment, run_demo
from ._store import SQLiteStore
from ._tracker import Tracker, format_time, parse_time
from .exceptions import KplusFSMError, PaymentNotFoundError, StoreError

EXIT_PROBLEM = 1
EXIT_NOT_FOUND = 3
EXIT_STORE = 4

DEFAULT_DB = "kplus.db"


def _default_db() -> str:
    return os.environ.get("KPLUS_FSM_DB") or DEFAULT_DB


db_option = click.option(
    "--db",
    "db",
    default=_default_db,
    show_default="$KPLUS_FSM_DB or ./kplus.db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The SQLite event log.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"kplus-fsm: {message}", err=True)
    sys.exit(code)


def _open_ro(db: Path) -> Tracker:
    if not db.exists():
        _fail(f"no database at {db}", EXIT_STORE)
    try:
        return Tracker(SQLiteStore(db, read_only=True))
    except KplusFSMError as exc:
        _fail(str(exc), EXIT_STORE)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kplus-fsm")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log to stderr: -v warnings, -vv every input recorded.",
)
def cli(verbose: int) -> None:
    """Track K PLUS (Opn/Omise) payments in an append-only, replayable event log."""
    level = {0: logging.ERROR, 1: logging.WARNING}.get(verbose, logging.INFO)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


@cli.command()
@click.option(
    "--db",
    "db",
    default="kplus-demo.db",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the demo's event log (appended to if it exists).",
)
def demo(db: Path) -> None:
    """
    Run real K PLUS payment scenarios into a SQLite event log and print each
    payment's timeline: paid, declined, expired, reordered and duplicated
    webhooks, a forged webhook, a create timeout settled by reconciliation, a
    refused create and a late correction.
    """
    try:
        scenarios = run_demo(db)
    except KplusFSMError as exc:
        _fail(str(exc), EXIT_STORE)
    click.echo("")
    click.echo(f"Database: {db.resolve()}")
    click.echo(f"Inspect a payment:  kplus-fsm show {scenarios[0].payment_id} --db {db}")
    click.echo(f"Check the log:      kplus-fsm verify --db {db}")


@cli.command()
@click.argument("payment_or_charge_id")
@db_option
@click.option(
    "--as-of",
    "as_of",
    default=None,
    help="Show the payment as it stood at this time (ISO-8601).",
)
@json_option
def show(payment_or_charge_id: str, db: Path, as_of: str | None, as_json: bool) -> None:
    """Show a payment (by payment id or charge id): its state and full timeline."""
    with _open_ro(db) as t:
        try:
            current = t.get(payment_or_charge_id)
            when = None
            if as_of is not None:
                try:
                    when = format_time(parse_time(as_of))
                except ValueError:
                    _fail(f"--as-of: not an ISO-8601 time: {as_of!r}", 2)
            payment = current if when is None else t.state_as_of(current.payment_id, when)
            timeline = t.timeline(current.payment_id, as_of=when)
        except PaymentNotFoundError as exc:
            _fail(str(exc), EXIT_NOT_FOUND)
        except StoreError as exc:
            _fail(str(exc), EXIT_STORE)
        if as_json:
            out: dict[str, Any] = {
                "payment_id": current.payment_id,
                "charge_id": current.charge_id,
                "as_of": when,
                "exists": payment is not None,
            }
            if payment is not None:
                out.update(payment.to_json())
            out["timeline"] = [e.to_json() for e in timeline]
            _echo_json(out)
            return
        if payment is None:
            click.echo(f"{current.payment_id} did not exist yet at {when}")
            return
        if when is None:
            print_payment(t, payment.payment_id, say=click.echo)
        else:
            click.echo(f"== {payment.payment_id}: {payment.status.value.upper()} as of {when}")
            for e in timeline:
                label = e.outcome if e.type == "input" else ""
                click.echo(f"   {e.at}  {e.type:<5} {e.kind:<24} {label or '':<9} {e.reason or ''}")


@cli.command()
@db_option
@json_option
def verify(db: Path, as_json: bool) -> None:
    """Check the hash chains, the append-only triggers and the schema version."""
    with _open_ro(db) as t:
        report = t.verify()
    if as_json:
        _echo_json(
            {
                "ok": report.ok,
                "inbox_rows": report.inbox_rows,
                "events": report.events,
                "inbox_head": report.inbox_head,
                "events_head": report.events_head,
                "schema_version": report.schema_version,
                "problem": report.problem,
                "table": report.table,
                "row_id": report.row_id,
            }
        )
    elif report.ok:
        click.echo(
            f"ok: {report.inbox_rows} inputs and {report.events} events match the hash chain; "
            f"schema {report.schema_version}; events head {report.events_head}"
        )
    else:
        click.echo(f"FAILED: {report.problem}")
    if not report.ok:
        sys.exit(EXIT_PROBLEM)


@cli.command()
@db_option
@click.option(
    "--check",
    is_flag=True,
    help="Only compare (read-only); exit 1 and list every difference.",
)
@json_option
def replay(db: Path, check: bool, as_json: bool) -> None:
    """Rebuild the payments projection from the events and compare it."""
    if check:
        t = _open_ro(db)
    else:
        if not db.exists():
            _fail(f"no database at {db}", EXIT_STORE)
        try:
            t = Tracker(db)
        except KplusFSMError as exc:
            _fail(str(exc), EXIT_STORE)
    with t:
        try:
            report = t.replay(repair=not check)
        except KplusFSMError as exc:
            _fail(str(exc), EXIT_PROBLEM)
    diffs = [
        {"payment_id": d.payment_id, "field": d.field, "stored": d.stored, "replayed": d.replayed}
        for d in report.differences
    ]
    if as_json:
        _echo_json(
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


def main() -> None:
    """The console-script entry point."""
    cli(prog_name="kplus-fsm")


__all__ = ["cli", "main"]
