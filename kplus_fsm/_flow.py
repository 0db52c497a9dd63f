"""
The create flow and reconciliation: the tracker driving a :class:`ChargeAPI`.

Create (ARCHITECTURE §3, §5): write-ahead request → ``POST /charges`` → record
the charge, the error object, or the unknown outcome. A create is never
retried blindly: an unknown outcome is settled by a search on the payment id in
``metadata`` first, then by reconciliation; a second charge is created only when
the search finds none *and* the first attempt is older than ``retry_unknown_after``.

Reconciliation re-reads, with the secret key, every charge that is ``pending``
past its ``expires_at`` (or older than a threshold), and every payment whose
create outcome is unknown or that never got one; it is bounded per run and stops
at the first HTTP 429.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import structlog

from ._model import Origin, Outcome, Payment, PaymentRequest, Status
from .exceptions import GatewayError, GatewayRefusedError, GatewayUnavailableError

if TYPE_CHECKING:
    from ._ports import ChargeAPI
    from ._tracker import Result, Tracker

log = structlog.get_logger("kplus_fsm")

#: The source type of every K PLUS charge.
SOURCE_TYPE: Final = "mobile_banking_kbank"
#: Longer than any create call can take (60 s read timeout), so an attempt this
#: old with no recorded answer is over, one way or the other.
DEFAULT_RETRY_UNKNOWN_AFTER: Final = dt.timedelta(minutes=15)
DEFAULT_PENDING_THRESHOLD: Final = dt.timedelta(minutes=30)


def charge_params(request: PaymentRequest) -> dict[str, Any]:
    """``POST /charges`` parameters: the request's, with an inline K PLUS source."""
    params = request.charge_params()
    source: dict[str, Any] = {"type": SOURCE_TYPE}
    if request.platform_type is not None:
        source["platform_type"] = request.platform_type
    params["source"] = source
    return params


def _age(payment: Payment, now: dt.datetime) -> dt.timedelta:
    return now - _parse(payment.updated_at or payment.created_at)


def _parse(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def create_charge(
    tracker: Tracker,
    api: ChargeAPI,
    requested: Result,
    *,
    retry_unknown_after: dt.timedelta = DEFAULT_RETRY_UNKNOWN_AFTER,
) -> Result:
    """
    Continue the create flow after the write-ahead request was recorded as
    ``requested``. See :meth:`kplus_fsm.Tracker.create_charge`.
    """
    payment = requested.payment
    if requested.outcome is Outcome.REJECTED or payment is None:
        return requested
    if payment.status is not Status.CREATED:
        return requested  # the charge exists (or the payment ended): never a second one
    if requested.outcome is Outcome.DUPLICATE:
        # An earlier attempt may have reached Omise: settle by search before anything else.
        settled, searched = _search(tracker, api, payment)
        if settled is not None:
            return settled
        if not searched:
            # The search did not answer: "no charge found" is unknown, so a new create
            # could be a second charge. Reconciliation (or a later retry) settles it.
            log.warning(
                "create_deferred",
                payment_id=payment.payment_id,
                reason="an earlier create may have reached Omise and the search failed",
            )
            return requested
        if _age(payment, tracker.clock()) < retry_unknown_after:
            log.warning(
                "create_deferred",
                payment_id=payment.payment_id,
                reason="an earlier create may still be in flight; search found no charge yet",
            )
            return requested
    try:
        charge = api.create_charge(charge_params(payment.request()))
    except GatewayRefusedError as exc:
        return tracker.record_create_error(
            payment.payment_id, dict(exc.error), http_status=exc.http_status
        )
    except GatewayUnavailableError as exc:
        unknown = tracker.record_create_unknown(payment.payment_id, reason=str(exc))
        settled = _settle_by_search(tracker, api, unknown.payment or payment)
        return settled if settled is not None else unknown
    return tracker.record_charge(
        charge, origin=Origin.CREATE_RESPONSE, payment_id=payment.payment_id
    )


def _settle_by_search(tracker: Tracker, api: ChargeAPI, payment: Payment) -> Result | None:
    return _search(tracker, api, payment)[0]


def _search(tracker: Tracker, api: ChargeAPI, payment: Payment) -> tuple[Result | None, bool]:
    """
    Search for the payment's charge and record it if found. Returns the result
    (``None``: nothing found or no answer) and whether the search answered.
    """
    try:
        found = api.find_charge(payment.payment_id)
    except GatewayError as exc:
        log.warning("search_failed", payment_id=payment.payment_id, error=type(exc).__name__)
        return None, False
    if found is None:
        return None, True
    return tracker.record_charge(found, origin=Origin.POLL, payment_id=payment.payment_id), True


@attrs.frozen(kw_only=True)
class ReconcileItem:
    """What reconciliation did for one payment."""

    payment_id: str
    action: str
    """``refetched``, ``found``, ``not_found``, ``error`` or ``skipped``."""
    outcome: str | None = None
    from_status: str | None = None
    to_status: str | None = None
    reason: str = ""


@attrs.frozen(kw_only=True)
class ReconcileReport:
    """The result of one reconciliation run."""

    checked: int
    changed: int
    errors: int
    rate_limited: bool
    retry_after: float | None
    items: tuple[ReconcileItem, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "changed": self.changed,
            "errors": self.errors,
            "rate_limited": self.rate_limited,
            "retry_after": self.retry_after,
            "items": [attrs.asdict(i) for i in self.items],
        }


def is_due(payment: Payment, now: dt.datetime, *, pending_threshold: dt.timedelta) -> bool:
    """Whether reconciliation should re-read this payment now."""
    if payment.status is Status.CREATED:
        return payment.create_unknown or _age(payment, now) >= pending_threshold
    if payment.status is not Status.PENDING:
        return False
    if payment.expires_at is not None:
        try:
            if now >= _parse(payment.expires_at):
                return True
        except ValueError:
            return True  # an unreadable expiry: read the charge rather than guess
    return _age(payment, now) >= pending_threshold


def reconcile(
    tracker: Tracker,
    api: ChargeAPI,
    candidates: list[Payment],
    *,
    now: dt.datetime,
    pending_threshold: dt.timedelta = DEFAULT_PENDING_THRESHOLD,
    limit: int = 100,
) -> ReconcileReport:
    """See :meth:`kplus_fsm.Tracker.reconcile`."""
    items: list[ReconcileItem] = []
    changed = errors = 0
    for payment in candidates:
        if len(items) >= limit:
            break
        if not is_due(payment, now, pending_threshold=pending_threshold):
            continue
        try:
            if payment.charge_id is not None:
                charge: Mapping[str, Any] | None = api.retrieve_charge(payment.charge_id)
                action = "refetched"
            else:
                charge = api.find_charge(payment.payment_id)
                action = "found" if charge is not None else "not_found"
        except GatewayUnavailableError as exc:
            errors += 1
            items.append(
                ReconcileItem(payment_id=payment.payment_id, action="error", reason=str(exc))
            )
            if exc.http_status == 429:
                return _report(items, changed, errors, rate_limited=True, exc=exc)
            continue
        except GatewayError as exc:
            errors += 1
            items.append(
                ReconcileItem(payment_id=payment.payment_id, action="error", reason=str(exc))
            )
            continue
        if charge is None:
            items.append(
                ReconcileItem(
                    payment_id=payment.payment_id,
                    action=action,
                    from_status=payment.status.value,
                    to_status=payment.status.value,
                    reason="no charge carries this payment id",
                )
            )
            continue
        result = tracker.record_charge(charge, origin=Origin.POLL, payment_id=payment.payment_id)
        if result.changed:
            changed += 1
        items.append(
            ReconcileItem(
                payment_id=payment.payment_id,
                action=action,
                outcome=result.outcome.value,
                from_status=payment.status.value,
                to_status=result.status.value if result.status else None,
                reason=result.reason,
            )
        )
    return _report(items, changed, errors, rate_limited=False, exc=None)


def _report(
    items: list[ReconcileItem],
    changed: int,
    errors: int,
    *,
    rate_limited: bool,
    exc: GatewayUnavailableError | None,
) -> ReconcileReport:
    return ReconcileReport(
        checked=len(items),
        changed=changed,
        errors=errors,
        rate_limited=rate_limited,
        retry_after=exc.retry_after if exc is not None else None,
        items=tuple(items),
    )
