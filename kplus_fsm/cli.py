"""
``kplus-fsm``: the command line of kplus_fsm.

Every command takes ``--db`` (default: ``$KPLUS_FSM_DB``, else ``./kplus.db``):
a SQLite file (a path or ``sqlite:///path``) or a ``postgresql://`` URL
(:func:`kplus_fsm.open_store`). A URL's password is never printed: every message
shows the location through :func:`kplus_fsm.redact`.
``show``, ``list``, ``anomalies``, ``stats``, ``export``, ``checkpoint``,
``verify`` and ``replay --check`` (in :mod:`kplus_fsm._cli_incident`) open the
database read-only.

Exit codes: 0 success; 1 a check found a problem (``verify``, ``replay
--check``); 2 usage error; 3 no such payment; 4 the database cannot be read
(missing, not a kplus_fsm log, written by a newer version).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, cast

import click
import structlog

from . import __version__, validate_payment_request
from ._demo import run_demo, run_offline_demo
from ._model import Outcome, Status
from ._tracker import Tracker
from ._urls import is_postgres, redact, sqlite_path
from .adapters.fake import run_server as run_fake_server
from .adapters.omise import DEFAULT_BASE_URL as DEFAULT_API_URL
from .adapters.omise import OmiseClient
from .exceptions import InvalidInputError, KplusFSMError, StoreError

EXIT_PROBLEM = 1
EXIT_NOT_FOUND = 3
EXIT_STORE = 4

DEFAULT_DB = "kplus.db"


def _default_db() -> str:
    return os.environ.get("KPLUS_FSM_DB") or DEFAULT_DB


def db_exists(db: str) -> bool:
    """Whether the log at ``db`` may exist: a SQLite file that exists, or any server URL."""
    if is_postgres(db):
        return True
    try:
        return Path(sqlite_path(db)).exists()
    except ValueError:
        return False


def shown(db: str) -> str:
    """``db`` as it may be printed: a URL without its password."""
    return redact(db)


db_option = click.option(
    "--db",
    "db",
    default=_default_db,
    show_default="$KPLUS_FSM_DB or ./kplus.db",
    metavar="PATH|URL",
    type=str,
    help="The event log: a SQLite file (path or sqlite:///path) or a postgresql:// URL.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"kplus-fsm: {message}", err=True)
    sys.exit(code)


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
    metavar="PATH|URL",
    type=str,
    help="Where to write the demo's event log (appended to if it exists): "
    "a SQLite file or a postgresql:// URL.",
)
@click.option(
    "--offline",
    is_flag=True,
    help="Feed the inputs straight into the tracker: no fake API, no sockets.",
)
def demo(db: str, offline: bool) -> None:
    """
    Run real K PLUS payment scenarios into a SQLite event log and print each
    payment's timeline. Starts the fake Omise and the webhook receiver on
    127.0.0.1 and drives them over real HTTP: a paid charge with a duplicated
    webhook, a decline (insufficient_fund), reordered webhooks, a create cut off
    and settled by reconciliation, a lost webhook, a forged webhook, an expiry,
    and a refused create. Needs no configuration.
    """
    # The demo hands the location to Tracker, which takes a path or a URL alike.
    target = db if is_postgres(db) else Path(sqlite_path(db))
    try:
        scenarios = (run_offline_demo if offline else run_demo)(cast(Path, target), say=click.echo)
    except KplusFSMError as exc:
        _fail(str(exc), EXIT_STORE)
    where = shown(db) if isinstance(target, str) else str(target.resolve())
    click.echo("")
    click.echo(f"Database: {where}")
    click.echo(f"Inspect a payment:  kplus-fsm show {scenarios[0].payment_id} --db {shown(db)}")
    click.echo(f"Check the log:      kplus-fsm verify --db {shown(db)}")


def _client_from_env() -> OmiseClient:
    secret_key = os.environ.get("OMISE_SECRET_KEY")
    if not secret_key:
        _fail("OMISE_SECRET_KEY is not set: the Opn secret key is needed to create charges", 2)
    return OmiseClient(
        secret_key=secret_key,
        public_key=os.environ.get("OMISE_PUBLIC_KEY") or None,
        base_url=os.environ.get("OMISE_API_URL") or DEFAULT_API_URL,
    )


def _open_rw(db: str) -> Tracker:
    try:
        return Tracker(db)
    except ValueError as exc:  # a malformed sqlite:// URL
        _fail(str(exc), 2)
    except KplusFSMError as exc:
        _fail(str(exc), EXIT_STORE)


@cli.command()
@db_option
@click.option("--payment-id", required=True, help="Your id for this payment (1-64 safe chars).")
@click.option("--amount", required=True, type=int, help="In satang: 35000 is THB 350.00.")
@click.option("--currency", default="THB", show_default=True)
@click.option("--platform-type", default=None, help="IOS or ANDROID (the buyer's device).")
@click.option("--return-uri", required=True, help="Where K PLUS sends the buyer back.")
@json_option
def pay(
    db: str,
    payment_id: str,
    amount: int,
    currency: str,
    platform_type: str | None,
    return_uri: str,
    as_json: bool,
) -> None:
    """
    Create a K PLUS charge through the tracker and print where to send the buyer.

    The API is configured from the environment: OMISE_SECRET_KEY (required),
    OMISE_PUBLIC_KEY, OMISE_API_URL. Paying an existing payment id again never
    creates a second charge: with the same parameters it prints the existing
    payment; with other parameters it is an error (exit 1). Exit 1 also when Omise
    refused the charge or its outcome is unknown (`kplus-fsm reconcile` settles it).
    """
    fields: dict[str, Any] = {
        "payment_id": payment_id,
        "amount": amount,
        "currency": currency,
        "platform_type": platform_type,
        "return_uri": return_uri,
    }
    try:
        validate_payment_request(**fields)
    except InvalidInputError as exc:
        _fail(f"invalid payment: {exc.reason}", 2)
    with _client_from_env() as client, _open_rw(db) as tracker:
        try:
            result = tracker.create_charge(client, **fields)
        except InvalidInputError as exc:  # pragma: no cover - validated above
            _fail(f"invalid payment: {exc.reason}", 2)
        except StoreError as exc:
            _fail(str(exc), EXIT_STORE)
    payment = result.payment
    assert payment is not None
    out = {
        "payment_id": payment.payment_id,
        "charge_id": payment.charge_id,
        "status": payment.status.value,
        "authorize_uri": payment.authorize_uri,
        "amount": payment.amount,
        "currency": payment.currency,
        "failure_code": payment.failure_code,
        "create_unknown": payment.create_unknown,
        "outcome": result.outcome.value,
        "reason": result.reason,
    }
    if as_json:
        _echo_json(out)
    else:
        for key in ("payment_id", "charge_id", "status", "authorize_uri"):
            click.echo(f"{key:<14} {out[key] if out[key] is not None else '-'}")
        if result.outcome is not Outcome.APPLIED:
            click.echo(f"{'note':<14} {result.outcome.value}: {result.reason}")
    if result.outcome is Outcome.REJECTED:
        click.echo(f"kplus-fsm: {result.reason}", err=True)
        sys.exit(EXIT_PROBLEM)
    if payment.status is Status.FAILED or payment.create_unknown:
        sys.exit(EXIT_PROBLEM)


@cli.command()
@db_option
@click.option("--limit", default=100, show_default=True, help="At most this many payments.")
@click.option(
    "--pending-minutes",
    default=30,
    show_default=True,
    help="Also re-read pending charges not updated for this long.",
)
@json_option
def reconcile(db: str, limit: int, pending_minutes: int, as_json: bool) -> None:
    """
    Re-read every charge pending past its expires_at (or for too long) and
    settle every create whose outcome is unknown. Run it from cron. Exit 1 when
    a read failed or Omise rate-limited the run. API from OMISE_SECRET_KEY,
    OMISE_API_URL.
    """
    if not db_exists(db):
        _fail(f"no database at {shown(db)}", EXIT_STORE)
    with _client_from_env() as client, _open_rw(db) as tracker:
        report = tracker.reconcile(
            client, limit=limit, pending_threshold=dt.timedelta(minutes=pending_minutes)
        )
    if as_json:
        _echo_json(report.to_json())
    else:
        click.echo(
            f"checked {report.checked}, changed {report.changed}, errors {report.errors}"
            + (
                f"; rate limited (retry after {report.retry_after} s)"
                if report.rate_limited
                else ""
            )
        )
        for item in report.items:
            click.echo(
                f"  {item.payment_id:<32} {item.action:<10} {item.from_status or '-':>10} -> "
                f"{item.to_status or '-':<10} {item.reason}"
            )
    if report.errors or report.rate_limited:
        sys.exit(EXIT_PROBLEM)


@cli.command("fake-omise")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option(
    "--secret-key", required=True, help="The secret key clients must use (skey_test_...)."
)
@click.option("--public-key", required=True, help="The public key (pkey_test_...).")
@click.option("--webhook-url", default=None, help="Where to POST webhook events.")
@click.option(
    "--webhook-secret", default=None, help="Base64 secret to sign webhooks with (Omise-Signature)."
)
@click.option(
    "--charge-minutes",
    default=10,
    show_default=True,
    type=int,
    help="How long a charge stays pending before it expires.",
)
def fake_omise(
    host: str,
    port: int,
    secret_key: str,
    public_key: str,
    webhook_url: str | None,
    webhook_secret: str | None,
    charge_minutes: int,
) -> None:
    """
    Serve a fake Opn (Omise) API for integration tests: sources, charges, events,
    search, the test-mode mark_as_paid / mark_as_failed / expire, an authorize
    page, signed webhooks, and test controls under /_fake/. GET / answers when
    ready. Serves until Ctrl-C.
    """
    try:
        run_fake_server(
            host,
            port,
            secret_key=secret_key,
            public_key=public_key,
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            charge_lifetime=dt.timedelta(minutes=charge_minutes),
            announce=lambda url: click.echo(f"fake Omise listening on {url} (Ctrl-C to stop)"),
        )
    except ValueError as exc:
        _fail(str(exc), 2)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_STORE)


# The on-call and audit commands (show, list, anomalies, stats, export, checkpoint,
# verify, replay), migrate-log and serve live in their own modules, which register
# them on `cli`.
from . import _cli_incident, _cli_migrate, _cli_serve  # noqa: E402, F401


def main() -> None:
    """The console-script entry point."""
    cli(prog_name="kplus-fsm")


__all__ = ["cli", "main"]
