"""
``kplus-fsm pay`` and ``kplus-fsm reconcile``: the commands that talk to the
Opn (Omise) API and record what it says.

Added to the :data:`kplus_fsm.cli.cli` group by :mod:`kplus_fsm.cli`. The API
client (and with it httpx and the adapters) is imported only when one of these
commands runs: the other commands never load it.

The API is configured from the environment: ``OMISE_SECRET_KEY`` (required),
``OMISE_PUBLIC_KEY``, ``OMISE_API_URL``. Exit codes: ``pay`` 0 only with the
authorize_uri of a pending charge, 1 this attempt cannot be paid, 2 usage, 4
the log cannot be used, 5 the create's outcome is unknown, 6 already paid;
``reconcile`` 0, 1 a read failed or Omise rate-limited the run, 2 usage, 3 an
ID names no payment, 4 the log cannot be used.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from .. import validate_payment_request
from .._flow import ReconcileItem, ReconcileReport
from .._model import NOT_CREATED_CODE, Outcome, Status
from .._store._classify import Access
from .._tracker import Result, Tracker
from ..exceptions import GatewayError, InvalidInputError, StoreError
from . import _params
from ._open import open_tracker, target
from ._output import (
    EXIT_DEFERRED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PAID,
    EXIT_PROBLEM,
    EXIT_STORE,
    EXIT_USAGE,
    echo_json,
    fail,
)
from ._params import db_option, json_option

if TYPE_CHECKING:
    from ..adapters.omise import OmiseClient


def _client_from_env() -> OmiseClient:
    secret_key = os.environ.get("OMISE_SECRET_KEY")
    if not secret_key:
        fail(
            "OMISE_SECRET_KEY is not set: the Opn secret key is needed to create charges",
            EXIT_USAGE,
        )
    from ..adapters.omise import DEFAULT_BASE_URL, OmiseClient  # noqa: PLC0415 - see the docstring

    return OmiseClient(
        secret_key=secret_key,
        public_key=os.environ.get("OMISE_PUBLIC_KEY") or None,
        base_url=os.environ.get("OMISE_API_URL") or DEFAULT_BASE_URL,
    )


@click.command()
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
        fail("give --order-ref (the order to pay) or --payment-id (the attempt)", EXIT_USAGE)
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
        fail(f"invalid payment: {exc.reason}", EXIT_USAGE)
    with _client_from_env() as client, open_tracker(db, Access.CREATE) as tracker:
        try:
            result = tracker.create_charge(client, **fields)
            paid_by = _paid_attempt(tracker, order_ref)
        except InvalidInputError as exc:  # pragma: no cover - validated above
            fail(f"invalid payment: {exc.reason}", EXIT_USAGE)
        except StoreError as exc:
            fail(str(exc), EXIT_STORE)
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
        echo_json(out)
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
        return EXIT_OK, ""
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


@click.command()
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
                fail(f"{flag} applies to the bulk run, not to named payments", EXIT_USAGE)
    with _client_from_env() as client, open_tracker(db, Access.WRITE) as tracker:
        try:
            if ids:
                report, unknown = _reconcile_ids(tracker, client, ids)
            else:
                report = tracker.reconcile(
                    client, limit=limit, pending_threshold=dt.timedelta(minutes=pending_minutes)
                )
                unknown = []
        except StoreError as exc:
            fail(str(exc), EXIT_STORE)
    if as_json:
        echo_json({**report.to_json(), **({"unknown_ids": unknown} if ids else {})})
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


__all__ = ["pay", "reconcile"]
