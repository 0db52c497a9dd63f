"""
The create flow, settling one payment, and reconciliation: the tracker driving
a :class:`ChargeAPI`.

Create: write-ahead request (origin ``create_charge``) → ``POST /charges`` →
record the charge, the error object, or the unknown outcome. A create is
**never** made twice for one payment: a recorded request is a write-ahead (by
``create_charge``, or by ``request_payment`` before the caller's own POST), so
when a payment already has one and no answer followed, the payment is settled
by *looking* for its charge, never by posting again.

Looking for a charge does not trust Omise's search alone (metadata is not
documented as searchable, and the search index can lag): a look is a search on
the payment id **and** a listing of the charges created around the attempt
(``GET /charges?from=…&to=…``), matched on ``metadata.payment_id`` locally. A
look that finds nothing is recorded (``charge_lookup``, outcome ``unknown``)
and means "not found yet". Only when the grace period after the last attempt
has passed and two such looks, made after it and at least
:data:`LOOK_SPACING` apart, agree is the create settled as never made
(``not_created``: the payment ends ``failed`` with ``failure_code``
``not_created``, and the order may be paid by a new attempt). A charge found
later still corrects it (an authoritative read overrides a terminal state).

Reconciliation re-reads, with the secret key, every charge that is ``pending``
past its ``expires_at`` (or not updated for a threshold), and settles every
payment still ``created`` (an unknown create, or no answer recorded). It is
fair: payments are taken least recently checked first, each attempt is
recorded (``reconcile_checks``) and moves the payment to the back of the queue,
and a payment that stays the same rests for a growing interval (1 minute,
doubling, at most an hour) before it is read again. A run is bounded and stops
at the first HTTP 429.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._logging import get_logger
from ._model import InputKind, Origin, Outcome, Payment, PaymentRequest, Status
from ._store._log import Check
from ._time import format_time, parse_time
from .exceptions import GatewayError, GatewayRefusedError, GatewayUnavailableError
from .failpoints import failpoint

if TYPE_CHECKING:
    from ._store._rows import InboxRow
    from ._tracker import Result, Tracker
    from .typing import ChargeAPI

log = get_logger("kplus_fsm")

#: The source type of every K PLUS charge.
SOURCE_TYPE: Final = "mobile_banking_kbank"
#: The ``origin`` of a payment request recorded by ``create_charge`` (its
#: ``POST /charges`` follows at once); ``request_payment`` records ``merchant``.
CREATE_ORIGIN: Final = "create_charge"
#: The ``origin`` of an unknown outcome inferred by a later call (an earlier
#: attempt left no answer), as opposed to one the API's own answer caused
#: (``create_response``: a timeout, a reset, a ``backend_error``).
RETRY_ORIGIN: Final = "create_retry"
#: How long after a create attempt "no charge found" is only "not found yet":
#: longer than any create call can take (60 s read timeout) plus Omise's search
#: index lag. An unknown create is settled as never made only after it.
DEFAULT_CREATE_GRACE: Final = dt.timedelta(minutes=15)
#: The older name of :data:`DEFAULT_CREATE_GRACE`.
DEFAULT_RETRY_UNKNOWN_AFTER: Final = DEFAULT_CREATE_GRACE
#: Two empty looks must be at least this far apart to agree.
LOOK_SPACING: Final = dt.timedelta(seconds=60)
#: The listing looks this far either side of the create attempts (the create
#: timeout, and clock differences between this host and Omise).
LIST_MARGIN: Final = dt.timedelta(minutes=15)
DEFAULT_PENDING_THRESHOLD: Final = dt.timedelta(minutes=30)
#: A payment reconciliation found unchanged rests this long, doubling per
#: attempt, up to :data:`BACKOFF_CAP`, before it is read again.
BACKOFF_BASE: Final = dt.timedelta(minutes=1)
BACKOFF_CAP: Final = dt.timedelta(hours=1)
#: A payment still ``created`` rests at most this long: its create is settled
#: by two looks after the grace period, which should not wait an hour.
CREATED_REST_CAP: Final = dt.timedelta(minutes=5)


def charge_params(request: PaymentRequest) -> dict[str, Any]:
    """``POST /charges`` parameters: the request's, with an inline K PLUS source."""
    params = request.charge_params()
    source: dict[str, Any] = {"type": SOURCE_TYPE}
    if request.platform_type is not None:
        source["platform_type"] = request.platform_type
    params["source"] = source
    return params


def _age(payment: Payment, now: dt.datetime) -> dt.timedelta:
    return now - parse_time(payment.updated_at or payment.created_at)


# ------------------------------------------------------------------ the history


@attrs.frozen(kw_only=True)
class CreateHistory:
    """What the log says about a ``created`` payment's create attempts and looks."""

    posted: bool
    """A ``POST /charges`` may have been made (a request by ``create_charge``, or an
    unknown outcome, is recorded)."""
    first_attempt: dt.datetime
    last_attempt: dt.datetime
    empty_looks: tuple[tuple[int, dt.datetime], ...]
    """(inbox id, time) of each recorded look that found no charge."""


def create_history(
    rows: Sequence[InboxRow], payment: Payment, *, before: int | None = None
) -> CreateHistory:
    """
    Read a payment's create attempts and empty looks from its inbox rows (those
    before inbox id ``before``, if given). A ``created`` payment has had at most
    one ``POST /charges``: the one that followed its first recorded request
    (every later call only looks). Its time, and the time its unknown answer was
    recorded, bound when the charge can have been made.
    """
    attempts: list[dt.datetime] = []
    looks: list[tuple[int, dt.datetime]] = []
    for row in rows:
        if before is not None and row.id >= before:
            continue
        if row.kind == InputKind.PAYMENT_REQUEST:
            # A recorded request is a write-ahead: its POST may follow at once
            # (create_charge's own, or the caller's after request_payment).
            if not attempts and row.outcome in (Outcome.APPLIED, Outcome.DUPLICATE):
                attempts.append(parse_time(row.received_at))
        elif row.kind == InputKind.CREATE_UNKNOWN:
            if row.origin == "create_response" or not attempts:
                attempts.append(parse_time(row.received_at))
        elif row.kind == InputKind.CHARGE_LOOKUP and row.outcome == Outcome.UNKNOWN:
            looks.append((row.id, parse_time(row.received_at)))
    created = parse_time(payment.created_at)
    return CreateHistory(
        posted=bool(attempts),
        first_attempt=min(attempts, default=created),
        last_attempt=max(attempts, default=created),
        empty_looks=tuple(looks),
    )


def settle_evidence(
    history: CreateHistory, *, now: dt.datetime, grace: dt.timedelta
) -> tuple[int, ...] | None:
    """
    The two empty looks that settle a create as never made (their inbox ids), or
    ``None``: the grace period after the last attempt has not passed, or fewer
    than two looks made after it are at least :data:`LOOK_SPACING` apart.
    """
    after = history.last_attempt + grace
    if now < after:
        return None
    late = [(i, t) for i, t in history.empty_looks if t >= after]
    if len(late) < 2:
        return None
    first = late[0]
    for inbox_id, when in late[1:]:
        if when - first[1] >= LOOK_SPACING:
            return (first[0], inbox_id)
    return None


# ------------------------------------------------------------------- a look


@attrs.frozen(kw_only=True)
class Look:
    """One look for a payment's charge: what was found, and whether every method answered."""

    charge: Mapping[str, Any] | None
    answered: bool
    methods: tuple[str, ...]
    window: tuple[dt.datetime, dt.datetime]
    error: GatewayError | None = None


def _matches(item: object, payment_id: str) -> bool:
    if not isinstance(item, Mapping) or item.get("object") != "charge":
        return False
    metadata = item.get("metadata")
    return isinstance(metadata, Mapping) and metadata.get("payment_id") == payment_id


def look_for_charge(api: ChargeAPI, payment: Payment, history: CreateHistory) -> Look:
    """
    Search for the payment's charge, and list the charges created around its
    attempts, matching ``metadata.payment_id`` locally; the first found wins.
    """
    window = (history.first_attempt - LIST_MARGIN, history.last_attempt + LIST_MARGIN)
    methods: list[str] = []
    error: GatewayError | None = None
    try:
        found = api.find_charge(payment.payment_id)
        methods.append("search")
        if found is not None:
            return Look(charge=found, answered=True, methods=tuple(methods), window=window)
    except GatewayError as exc:
        log.warning("search_failed", payment_id=payment.payment_id, error=type(exc).__name__)
        error = exc
    try:
        newest: Mapping[str, Any] | None = None
        for item in api.charges_created(since=window[0], until=window[1]):
            if _matches(item, payment.payment_id) and (
                newest is None
                or str(item.get("created_at") or "") >= str(newest.get("created_at") or "")
            ):
                newest = item
        methods.append("list")
        if newest is not None:
            return Look(charge=newest, answered=True, methods=tuple(methods), window=window)
    except GatewayError as exc:
        log.warning("listing_failed", payment_id=payment.payment_id, error=type(exc).__name__)
        error = error or exc
    return Look(
        charge=None, answered=error is None, methods=tuple(methods), window=window, error=error
    )


def settle(
    tracker: Tracker,
    api: ChargeAPI,
    payment: Payment,
    *,
    grace: dt.timedelta = DEFAULT_CREATE_GRACE,
) -> tuple[Result | None, Look]:
    """
    Settle a ``created`` payment by looking for its charge: record the charge
    if found (a poll), else record the empty look and, once the evidence is
    there (:func:`settle_evidence`), the settlement as never created. Returns
    the last result recorded (``None``: the look did not answer, nothing was
    recorded) and the look.
    """
    history = create_history(tracker.store.inbox_for(payment.payment_id), payment)
    look = look_for_charge(api, payment, history)
    if look.charge is not None:
        found = tracker.record_charge(
            look.charge, origin=Origin.POLL, payment_id=payment.payment_id
        )
        return found, look
    if not look.answered:
        return None, look
    result = tracker.record_lookup(payment.payment_id, methods=look.methods, window=look.window)
    after = result.payment
    if after is None or after.status is not Status.CREATED:
        return result, look
    history = attrs.evolve(
        history,
        empty_looks=(*history.empty_looks, (result.inbox_id, tracker.clock())),
    )
    evidence = settle_evidence(history, now=tracker.clock(), grace=grace)
    if evidence is None:
        return result, look
    minutes = int(grace.total_seconds() // 60)
    settled = tracker.record_not_created(
        payment.payment_id,
        reason=f"no charge carries this payment id: a search and a listing found none, "
        f"twice, more than {minutes} minutes after the last create attempt",
        evidence=evidence,
    )
    return settled, look


# ------------------------------------------------------------------ create


def create_charge(
    tracker: Tracker,
    api: ChargeAPI,
    requested: Result,
    *,
    grace: dt.timedelta = DEFAULT_CREATE_GRACE,
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
        rows = tracker.store.inbox_for(payment.payment_id)
        if create_history(rows, payment, before=requested.inbox_id).posted:
            return _settle_earlier(tracker, api, payment, requested, grace=grace)
    failpoint("create.after_request")
    try:
        charge = api.create_charge(charge_params(payment.request()))
    except GatewayRefusedError as exc:
        return tracker.record_create_error(
            payment.payment_id, dict(exc.error), http_status=exc.http_status
        )
    except GatewayUnavailableError as exc:
        unknown = tracker.record_create_unknown(payment.payment_id, reason=str(exc))
        settled, _look = settle(tracker, api, unknown.payment or payment, grace=grace)
        if settled is not None and settled.outcome is not Outcome.UNKNOWN:
            return settled
        return unknown
    failpoint("create.after_post")
    return tracker.record_charge(
        charge, origin=Origin.CREATE_RESPONSE, payment_id=payment.payment_id
    )


def _settle_earlier(
    tracker: Tracker,
    api: ChargeAPI,
    payment: Payment,
    requested: Result,
    *,
    grace: dt.timedelta,
) -> Result:
    """An earlier create may have reached Omise: look, never post again."""
    current = payment
    if not payment.create_unknown:
        flagged = tracker.record_create_unknown(
            payment.payment_id,
            reason="an earlier create attempt left no recorded answer "
            "(the process may have stopped during the call)",
            origin=RETRY_ORIGIN,
        )
        current = flagged.payment or payment
        requested = flagged
    settled, _look = settle(tracker, api, current, grace=grace)
    if settled is None:
        log.warning(
            "create_deferred",
            payment_id=payment.payment_id,
            reason="an earlier create may have reached Omise and the look for its charge "
            "did not answer",
        )
        return requested
    if settled.outcome is Outcome.UNKNOWN:
        log.warning(
            "create_deferred",
            payment_id=payment.payment_id,
            reason="an earlier create may have reached Omise; no charge found yet",
        )
    return settled


# ------------------------------------------------------------- reconciliation


@attrs.frozen(kw_only=True)
class ReconcileItem:
    """What reconciliation did for one payment."""

    payment_id: str
    action: str
    """``refetched``, ``found``, ``not_found``, ``not_created``, ``error`` or ``skipped``."""
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
    """Whether reconciliation should re-read this payment now (backoff aside)."""
    if payment.status is Status.CREATED:
        return payment.create_unknown or _age(payment, now) >= pending_threshold
    if payment.status is not Status.PENDING:
        return False
    if payment.expires_at is not None:
        try:
            if now >= parse_time(payment.expires_at):
                return True
        except ValueError:
            return True  # an unreadable expiry: read the charge rather than guess
    return _age(payment, now) >= pending_threshold


def backoff(attempts: int) -> dt.timedelta:
    """How long a payment found unchanged after ``attempts`` looks rests (with jitter)."""
    base = BACKOFF_BASE * int(2 ** min(max(attempts - 1, 0), 12))
    rest = min(base, BACKOFF_CAP)
    return rest * (0.8 + 0.4 * random.random())  # noqa: S311 - jitter, not crypto


def _rest(payment: Payment, attempts: int) -> dt.timedelta:
    """How long ``payment`` rests after its ``attempts``-th look found it unchanged."""
    rest = backoff(attempts)
    if payment.status is Status.CREATED:
        return min(rest, CREATED_REST_CAP)  # two looks must come soon after the grace
    return rest


def refresh(tracker: Tracker, api: ChargeAPI, payment: Payment) -> ReconcileItem:
    """
    Read one payment's charge now and record it (a poll); a payment with no
    charge yet is settled by a look (:func:`settle`). Never raises for an API
    failure: the item says ``error``.
    """
    return _refresh(tracker, api, payment)[0]


def _refresh(
    tracker: Tracker, api: ChargeAPI, payment: Payment
) -> tuple[ReconcileItem, GatewayError | None]:
    try:
        if payment.charge_id is not None:
            charge = api.retrieve_charge(payment.charge_id)
            result = tracker.record_charge(
                charge, origin=Origin.POLL, payment_id=payment.payment_id
            )
            action = "refetched"
        elif payment.status is Status.CREATED:
            settled, look = settle(tracker, api, payment)
            if settled is None:
                assert look.error is not None
                raise look.error
            result = settled
            action = (
                "found"
                if look.charge is not None
                else ("not_created" if settled.status is Status.FAILED else "not_found")
            )
        else:
            skipped = ReconcileItem(
                payment_id=payment.payment_id,
                action="skipped",
                from_status=payment.status.value,
                to_status=payment.status.value,
                reason=f"the payment is {payment.status} and has no charge to read",
            )
            return skipped, None
    except GatewayError as exc:
        return ReconcileItem(payment_id=payment.payment_id, action="error", reason=str(exc)), exc
    item = ReconcileItem(
        payment_id=payment.payment_id,
        action=action,
        outcome=result.outcome.value,
        from_status=payment.status.value,
        to_status=result.status.value if result.status else None,
        reason=result.reason,
    )
    return item, None


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
    due = [p for p in candidates if is_due(p, now, pending_threshold=pending_threshold)][:limit]
    store = tracker.store
    attempts = store.check_attempts([p.payment_id for p in due])
    stamp = format_time(now)
    # Noted before any call: a payment whose read hangs or crashes the run still
    # moves to the back of the queue.
    store.note_checks(
        [
            Check(
                payment_id=p.payment_id,
                next_at=format_time(now + _rest(p, attempts[p.payment_id] + 1)),
            )
            for p in due
        ],
        now=stamp,
    )
    items: list[ReconcileItem] = []
    finished: list[Check] = []
    changed = errors = 0
    for payment in due:
        item, error = _refresh(tracker, api, payment)
        items.append(item)
        moved = item.to_status is not None and item.to_status != payment.status.value
        if item.action == "error":
            errors += 1
        elif moved:
            changed += 1
        rest = backoff(1) if moved else _rest(payment, attempts[payment.payment_id] + 1)
        finished.append(
            Check(
                payment_id=payment.payment_id,
                next_at=format_time(now + rest),
                action=item.action,
                reason=item.reason[:500] or None,
            )
        )
        if isinstance(error, GatewayUnavailableError) and error.http_status == 429:
            # Omise asks us to slow down: stop here. The payments not reached get no
            # attempt counted and are due again once the server's hint has passed.
            store.finish_checks(finished)
            wait = dt.timedelta(seconds=error.retry_after or BACKOFF_BASE.total_seconds())
            store.finish_checks(
                [
                    Check(
                        payment_id=p.payment_id,
                        next_at=format_time(now + wait),
                        action="skipped",
                        reason="not reached: Omise rate-limited the run",
                    )
                    for p in due[len(items) :]
                ],
                counted=False,
            )
            return _report(items, changed, errors, rate_limited=True, retry_after=error.retry_after)
    store.finish_checks(finished)
    return _report(items, changed, errors, rate_limited=False, retry_after=None)


def _report(
    items: list[ReconcileItem],
    changed: int,
    errors: int,
    *,
    rate_limited: bool,
    retry_after: float | None,
) -> ReconcileReport:
    return ReconcileReport(
        checked=len(items),
        changed=changed,
        errors=errors,
        rate_limited=rate_limited,
        retry_after=retry_after,
        items=tuple(items),
    )
