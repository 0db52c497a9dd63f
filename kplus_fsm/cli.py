"""
``kplus-fsm``: the command line of kplus_fsm.

Every command takes ``--db`` (default: ``$KPLUS_FSM_DB``, else ``./kplus.db``):
a SQLite file (a path or ``sqlite:///path``) or a ``postgresql://`` URL
(:func:`kplus_fsm.open_store`). A URL's password is never printed: every message
shows the location through :func:`kplus_fsm.redact`.
``show``, ``list``, ``anomalies``, ``stats``, ``export``, ``checkpoint``,
``verify`` and ``replay --check`` (in :mod:`kplus_fsm._cli_incident`) open the
database read-only.

Every command opens its log through :mod:`kplus_fsm._cli_open`, which
classifies the target before writing a byte (:mod:`kplus_fsm._classify`), and
validates its options with the parameter types of :mod:`kplus_fsm._params`.

Exit codes (:mod:`kplus_fsm._exits`): 0 success; 1 a check found a problem
(``verify``, ``replay --check``, a damaged log); 2 usage error; 3 no such
payment; 4 the database or a file cannot be used (missing, not a kplus_fsm log,
written by a newer version, read-only where a write is needed).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, cast

import click
import structlog

from . import __version__, _params, validate_payment_request
from ._cli_open import open_tracker, target
from ._demo import run_demo, run_offline_demo
from ._exits import (
    EXIT_DEFERRED,
    EXIT_NOT_FOUND,
    EXIT_PAID,
    EXIT_PROBLEM,
    EXIT_STORE,
    EXIT_USAGE,
    fail,
)
from ._flow import ReconcileItem, ReconcileReport
from ._model import NOT_CREATED_CODE, Outcome, Status
from ._store._classify import Access
from ._store._urls import is_postgres, redact, sqlite_path
from ._tracker import Result, Tracker
from .adapters.fake import FakeOptions
from .adapters.fake import run_server as run_fake_server
from .adapters.omise import DEFAULT_BASE_URL as DEFAULT_API_URL
from .adapters.omise import OmiseClient
from .exceptions import GatewayError, InvalidInputError, KplusFSMError, StoreError

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
    type=_params.DB,
    help="The event log: a SQLite file (path or sqlite:///path) or a postgresql:// URL.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


def _fail(message: str, code: int) -> NoReturn:
    fail(message, code)


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
    # A file name from argv may hold bytes that are not UTF-8 (surrogate escapes):
    # print them escaped rather than die on them in a UTF-8 locale.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
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
    type=_params.DB,
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
    target(db, Access.CREATE)
    # The demo hands the location to Tracker, which takes a path or a URL alike.
    location = db if is_postgres(db) else Path(sqlite_path(db))
    try:
        scenarios = (run_offline_demo if offline else run_demo)(
            cast(Path, location), say=click.echo
        )
    except KplusFSMError as exc:
        _fail(str(exc), EXIT_STORE)
    except OSError as exc:
        _fail(f"the demo cannot use {shown(db)}: {exc.strerror or exc}", EXIT_STORE)
    where = shown(db) if isinstance(location, str) else str(location.resolve())
    click.echo("")
    click.echo(f"Database: {where}")
    click.echo(f"Inspect a payment:  kplus-fsm show {scenarios[0].payment_id} --db {shown(db)}")
    click.echo(f"Check the log:      kplus-fsm verify --db {shown(db)}")


def _client_from_env() -> OmiseClient:
    secret_key = os.environ.get("OMISE_SECRET_KEY")
    if not secret_key:
        _fail(
            "OMISE_SECRET_KEY is not set: the Opn secret key is needed to create charges",
            EXIT_USAGE,
        )
    return OmiseClient(
        secret_key=secret_key,
        public_key=os.environ.get("OMISE_PUBLIC_KEY") or None,
        base_url=os.environ.get("OMISE_API_URL") or DEFAULT_API_URL,
    )


def _open_rw(db: str, access: Access = Access.CREATE) -> Tracker:
    """The tracker of ``db``, classified first (kplus_fsm._cli_open); refusals exit 4."""
    return open_tracker(db, access)


@cli.command()
@db_option
@click.option(
    "--order-ref",
    default=None,
    type=_params.ID,
    help="Your order's reference (1-64 safe chars): the attempt is chosen for it (its open "
    "attempt, its paid one, else a new ORDER_REF.N). Recommended.",
)
@click.option(
    "--payment-id",
    default=None,
    type=_params.ID,
    help="Your id for this payment attempt (1-64 safe chars); optional with --order-ref.",
)
@click.option("--amount", required=True, type=int, help="In satang: 35000 is THB 350.00.")
@click.option("--currency", default="THB", show_default=True)
@click.option("--platform-type", default=None, help="IOS or ANDROID (the buyer's device).")
@click.option("--return-uri", required=True, help="Where K PLUS sends the buyer back.")
@json_option
def pay(
    db: str,
    order_ref: str | None,
    payment_id: str | None,
    amount: int,
    currency: str,
    platform_type: str | None,
    return_uri: str,
    as_json: bool,
) -> None:
    """
    Create a K PLUS charge through the tracker and print where to send the buyer.

    Give --order-ref (a new attempt is made only when the order has none open or
    paid) or --payment-id (or both). The API is configured from the environment:
    OMISE_SECRET_KEY (required), OMISE_PUBLIC_KEY, OMISE_API_URL. Paying an
    existing payment again never creates a second charge. Exit 0 only with the
    authorize_uri of a pending charge; 1 this attempt cannot be paid (refused,
    failed, expired, or the request was refused); 5 the create's outcome is
    unknown (settle it: kplus-fsm reconcile ID); 6 already paid.
    """
    if payment_id is None and order_ref is None:
        _fail("give --order-ref (the order to pay) or --payment-id (the attempt)", 2)
    fields: dict[str, Any] = {
        "amount": amount,
        "currency": currency,
        "platform_type": platform_type,
        "return_uri": return_uri,
    }
    if order_ref is not None:
        fields["order_ref"] = order_ref
    if payment_id is not None:
        fields["payment_id"] = payment_id
    try:
        validate_payment_request(**{"payment_id": "probe", **fields})
    except InvalidInputError as exc:
        _fail(f"invalid payment: {exc.reason}", EXIT_USAGE)
    with _client_from_env() as client, _open_rw(db) as tracker:
        try:
            result = tracker.create_charge(client, **fields)
            paid_by = _paid_attempt(tracker, order_ref)
        except InvalidInputError as exc:  # pragma: no cover - validated above
            _fail(f"invalid payment: {exc.reason}", EXIT_USAGE)
        except StoreError as exc:
            _fail(str(exc), EXIT_STORE)
    code, message = _pay_verdict(result, order_ref, paid_by)
    payment = result.payment
    out = {
        "payment_id": payment.payment_id if payment else payment_id,
        "order_ref": payment.order_ref if payment else order_ref,
        "charge_id": payment.charge_id if payment else None,
        "status": payment.status.value if payment else None,
        "authorize_uri": payment.authorize_uri if payment else None,
        "amount": payment.amount if payment else amount,
        "currency": payment.currency if payment else currency,
        "failure_code": payment.failure_code if payment else None,
        "create_unknown": payment.create_unknown if payment else False,
        "outcome": result.outcome.value,
        "reason": result.reason,
    }
    if as_json:
        _echo_json(out)
    else:
        for key in ("payment_id", "order_ref", "charge_id", "status", "authorize_uri"):
            click.echo(f"{key:<14} {out[key] if out[key] is not None else '-'}")
        if result.outcome is not Outcome.APPLIED:
            click.echo(f"{'note':<14} {result.outcome.value}: {result.reason}")
    if message:
        click.echo(f"kplus-fsm: {message}", err=True)
    if code:
        sys.exit(code)


def _paid_attempt(tracker: Tracker, order_ref: str | None) -> str | None:
    """The payment id of the order's successful attempt, if any."""
    if order_ref is None:
        return None
    for attempt in tracker.attempts(order_ref):
        if attempt.status is Status.SUCCESSFUL:
            return attempt.payment_id
    return None


def _pay_verdict(result: Result, order_ref: str | None, paid_by: str | None) -> tuple[int, str]:
    """``pay``'s exit code and what to tell the operator (see the exit code table)."""
    payment = result.payment
    if order_ref is None and payment is not None:
        order_ref = payment.order_ref
    retry = (
        f"pay the order with a new attempt: kplus-fsm pay --order-ref {order_ref} ..."
        if order_ref is not None
        else "pay the order with a new attempt (kplus-fsm pay --order-ref ORDER ...)"
    )
    if payment is not None and payment.status is Status.SUCCESSFUL:
        pid = payment.payment_id
        return EXIT_PAID, f"payment {pid} is already paid (successful): do not charge again"
    if paid_by is not None:
        return (
            EXIT_PAID,
            f"order {order_ref} is already paid by attempt {paid_by}: do not charge again",
        )
    if payment is None or result.outcome is Outcome.REJECTED:
        return EXIT_PROBLEM, f"refused: {result.reason}"
    pid = payment.payment_id
    if payment.status is Status.PENDING and payment.authorize_uri:
        return 0, ""
    if payment.status is Status.FAILED:
        if payment.failure_code == NOT_CREATED_CODE:
            why = "its create was settled as never made (not_created)"
        else:
            detail = payment.failure_message or "no message"
            why = f"it failed ({payment.failure_code}: {detail})"
        return EXIT_PROBLEM, f"payment {pid} cannot be paid: {why}; {retry}"
    if payment.status is Status.EXPIRED:
        return EXIT_PROBLEM, f"payment {pid} expired before the buyer approved it; {retry}"
    if payment.status is Status.CREATED:
        return EXIT_DEFERRED, (
            f"payment {pid}: the create's outcome is unknown (Omise may have made the charge), "
            "so there is no authorize_uri yet. Do not pay this order under another payment id; "
            f"settle it with: kplus-fsm reconcile {pid}"
        )
    return EXIT_PROBLEM, f"payment {pid} is pending but Omise gave no authorize_uri"


@cli.command()
@db_option
@click.argument("ids", nargs=-1, metavar="[ID ...]", type=_params.ID)
@click.option(
    "--limit",
    type=_params.LIMIT,
    default=100,
    show_default=True,
    help="At most this many payments.",
)
@click.option(
    "--pending-minutes",
    type=_params.PENDING_MINUTES,
    default=30,
    show_default=True,
    help="Also re-read pending charges not updated for this long (0 to 525600).",
)
@json_option
@click.pass_context
def reconcile(
    ctx: click.Context,
    db: str,
    ids: tuple[str, ...],
    limit: int,
    pending_minutes: int,
    as_json: bool,
) -> None:
    """
    Without IDs: re-read every charge pending past its expires_at (or for too
    long) and settle every create whose outcome is unknown; run it from cron.
    With IDs (payment ids or charge ids): read those payments' charges now and
    record them, whatever their age, touching no other payment. Exit 1 when a
    read failed or Omise rate-limited the run; 3 when an ID names no payment
    (the others are still read). API from OMISE_SECRET_KEY, OMISE_API_URL.
    """
    target(db, Access.WRITE)
    if ids:
        for option in ("limit", "pending_minutes"):
            if ctx.get_parameter_source(option) is not click.core.ParameterSource.DEFAULT:
                flag = "--" + option.replace("_", "-")
                _fail(f"{flag} applies to the bulk run, not to named payments", EXIT_USAGE)
    with _client_from_env() as client, _open_rw(db, Access.WRITE) as tracker:
        try:
            if ids:
                report, unknown = _reconcile_ids(tracker, client, ids)
            else:
                report = tracker.reconcile(
                    client, limit=limit, pending_threshold=dt.timedelta(minutes=pending_minutes)
                )
                unknown = []
        except StoreError as exc:
            _fail(str(exc), EXIT_STORE)
    if as_json:
        _echo_json({**report.to_json(), **({"unknown_ids": unknown} if ids else {})})
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
    for id_ in unknown:
        click.echo(f"kplus-fsm: no payment with payment id or charge id {id_!r}", err=True)
    if report.errors or report.rate_limited:
        sys.exit(EXIT_PROBLEM)
    if unknown:
        sys.exit(EXIT_NOT_FOUND)


def _reconcile_ids(
    tracker: Tracker, api: OmiseClient, ids: tuple[str, ...]
) -> tuple[ReconcileReport, list[str]]:
    """Read each named payment's charge now (``Tracker.refresh``); unknown ids apart."""
    items: list[ReconcileItem] = []
    unknown: list[str] = []
    changed = errors = 0
    seen: set[str] = set()
    for id_ in ids:
        payment = tracker.find(id_)
        if payment is None:
            unknown.append(id_)
            continue
        if payment.payment_id in seen:
            continue
        seen.add(payment.payment_id)
        try:
            result = tracker.refresh(api, payment.payment_id)
        except GatewayError as exc:
            errors += 1
            items.append(
                ReconcileItem(payment_id=payment.payment_id, action="error", reason=str(exc))
            )
            continue
        after = result.payment
        to_status = after.status.value if after is not None else None
        if to_status is not None and to_status != payment.status.value:
            changed += 1
        items.append(
            ReconcileItem(
                payment_id=payment.payment_id,
                action="refetched" if payment.charge_id is not None else _looked(result),
                outcome=result.outcome.value,
                from_status=payment.status.value,
                to_status=to_status,
                reason=result.reason,
            )
        )
    report = ReconcileReport(
        checked=len(items),
        changed=changed,
        errors=errors,
        rate_limited=False,
        retry_after=None,
        items=tuple(items),
    )
    return report, unknown


def _looked(result: Result) -> str:
    """What a look for a payment's charge did (a payment with no charge id yet)."""
    if result.payment is not None and result.payment.charge_id is not None:
        return "found"
    if result.status is Status.FAILED and result.input_kind == "not_created":
        return "not_created"
    return "not_found"


@cli.command("fake-omise")
@click.option("--host", default="127.0.0.1", show_default=True, type=_params.HOST)
@click.option("--port", default=8765, show_default=True, type=_params.PORT)
@click.option(
    "--secret-key", required=True, help="The secret key clients must use (skey_test_...)."
)
@click.option("--public-key", required=True, help="The public key (pkey_test_...).")
@click.option("--webhook-url", default=None, help="Where to POST webhook events.")
@click.option(
    "--webhook-secret", default=None, help="Base64 secret to sign webhooks with (Omise-Signature)."
)
@click.option(
    "--expiry-model",
    type=click.Choice(["bank_timeout", "lifetime"]),
    default="bank_timeout",
    show_default=True,
    help="bank_timeout: an unpaid charge fails payment_expired after --bank-timeout-minutes "
    "(likely); lifetime: it expires at expires_at (the fake's old model).",
)
@click.option(
    "--charge-minutes",
    default=None,
    type=_params.CHARGE_MINUTES,
    help="expires_at minus created_at [default: 7 days under bank_timeout, 10 under lifetime].",
)
@click.option(
    "--bank-timeout-minutes",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="How long the bank waits for the buyer (bank_timeout model).",
)
@click.option(
    "--expiry-webhook/--no-expiry-webhook",
    default=True,
    show_default=True,
    help="Whether an expiry sends charge.complete (off: only a read finds out).",
)
@click.option(
    "--expire-endpoint/--no-expire-endpoint",
    default=False,
    show_default=True,
    help="Whether POST /charges/:id/expire works for K PLUS (off: failed_expire).",
)
@click.option(
    "--search-metadata/--no-search-metadata",
    default=True,
    show_default=True,
    help="Whether the search query finds metadata values.",
)
@click.option(
    "--search-lag",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds before a new charge can be found by /search (GET /charges lists it at once).",
)
@click.option(
    "--kplus-enabled/--kplus-disabled",
    default=True,
    show_default=True,
    help="Disabled: creating a K PLUS source or charge answers service_not_found.",
)
@click.option(
    "--api-version",
    default="2019-05-29",
    show_default=True,
    help="The account's default Omise-Version (before 2017-11-02: service_not_found).",
)
@click.option(
    "--rate-limit",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Requests per second before HTTP 429 (default: no limit).",
)
@click.option(
    "--rate-burst", default=10, show_default=True, type=click.IntRange(min=1), help="Burst size."
)
@click.option(
    "--retry-after/--no-retry-after",
    default=True,
    show_default=True,
    help="Whether a 429 carries Retry-After.",
)
def fake_omise(
    host: str,
    port: int,
    secret_key: str,
    public_key: str,
    webhook_url: str | None,
    webhook_secret: str | None,
    expiry_model: str,
    charge_minutes: int | None,
    bank_timeout_minutes: float,
    expiry_webhook: bool,
    expire_endpoint: bool,
    search_metadata: bool,
    search_lag: float,
    kplus_enabled: bool,
    api_version: str,
    rate_limit: float | None,
    rate_burst: int,
    retry_after: bool,
) -> None:
    """
    Serve a fake Opn (Omise) API for integration tests: sources, charges, events,
    search, the test-mode mark_as_paid / mark_as_failed, an authorize page, signed
    webhooks, and test controls under /_fake/ (POST /_fake/options changes the
    switches below while it runs). GET / answers when ready. Serves until Ctrl-C.
    """
    try:
        options = FakeOptions(
            expiry_model="lifetime" if expiry_model == "lifetime" else "bank_timeout",
            charge_lifetime=None
            if charge_minutes is None
            else dt.timedelta(minutes=charge_minutes),
            bank_timeout=dt.timedelta(minutes=bank_timeout_minutes),
            expiry_webhook=expiry_webhook,
            expire_endpoint=expire_endpoint,
            search_metadata=search_metadata,
            search_lag=search_lag,
            kplus_enabled=kplus_enabled,
            api_version=api_version,
            rate_limit=rate_limit,
            rate_burst=rate_burst,
            retry_after_header=retry_after,
        )
        run_fake_server(
            host,
            port,
            secret_key=secret_key,
            public_key=public_key,
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            options=options,
            announce=lambda url: click.echo(f"fake Omise listening on {url} (Ctrl-C to stop)"),
        )
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_STORE)


# The on-call and audit commands (show, list, anomalies, stats, export, checkpoint,
# verify, replay), migrate-log, consume and serve live in their own modules, which
# register them on `cli`.
from . import _cli_consume, _cli_incident, _cli_migrate, _cli_serve  # noqa: E402, F401


def main() -> None:
    """The console-script entry point."""
    cli(prog_name="kplus-fsm")


__all__ = ["EXIT_NOT_FOUND", "EXIT_PROBLEM", "EXIT_STORE", "EXIT_USAGE", "cli", "main"]
