"""
THE rules of a K PLUS payment's life, in one place.

Pure: no I/O, no clock, no logging. Everything the machine knows arrives in its
arguments; everything it decides leaves in its return value. That is what makes
``replay`` deterministic.

Invariants (each one is a test):

1. States only move forward: ``created`` (rank 0) → ``pending`` (1) → a terminal
   state (2). Skipping ``pending`` is legal: a fast webhook can beat the create
   response.
2. News of a lower rank than the current state is ``stale``: recorded, no change.
3. A terminal state changes only by an *authoritative* read (a charge read with
   our secret key: create response, re-fetch, poll), as a ``charge.corrected``
   event that flags the payment. A webhook payload that contradicts a terminal
   state is a ``conflict`` and changes nothing.
4. A create whose outcome is unknown (timeout, connection reset) is not a
   failure: the payment stays ``created``, flagged ``create_unknown`` until a read
   settles it.
5. A snapshot whose payment id, charge id, amount, currency or livemode does not
   match the payment is ``rejected``.
6. Unknown statuses and webhook keys are ``unknown``: kept and reported, never a
   crash. Unknown failure codes are applied and flag the payment.
7. A webhook event id is applied once; a redelivery is a ``duplicate``.
8. The state is derived from ``status`` only, never from ``expired`` or
   ``expired_at`` (Omise sets those on successful charges too).

The table :data:`TRANSITIONS` maps ``(state, signal)`` to a :class:`Rule`;
``state`` is ``None`` before the payment exists. :func:`decide` classifies an
input into a signal, runs the identity checks of invariant 5 and the dedupe of
invariant 7, and looks the rest up in the table. :func:`evolve` folds one stored
event into the payment; live state and replay both use it.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs

from ._model import (
    CHARGE_EVENT_KEYS,
    CHARGE_STATUSES,
    KNOWN_FAILURE_CODES,
    NOT_CREATED_CODE,
    RANK,
    STATUS_EVENT,
    ChargeLookup,
    ChargeSnapshot,
    ChargeView,
    CreateError,
    CreateUnknown,
    EventKind,
    Input,
    NewEvent,
    NotCreated,
    Origin,
    Outcome,
    Payment,
    PaymentRequest,
    ReasonCode,
    Status,
    StoredEvent,
    WebhookHint,
)
from .exceptions import IntegrityError

__all__ = [
    "SIGNAL_STATUS",
    "TRANSITIONS",
    "Decision",
    "Rule",
    "Signal",
    "decide",
    "evolve",
    "fold",
    "signal_of",
]


class Signal(enum.StrEnum):
    """
    What an input says, once classified: the column of the transition table.
    ``read_*`` come from authoritative reads, ``hint_*`` from webhook payloads.
    """

    REQUEST = "request"
    CREATE_UNKNOWN = "create_unknown"
    CREATE_ERROR = "create_error"
    READ_PENDING = "read_pending"
    READ_SUCCESSFUL = "read_successful"
    READ_FAILED = "read_failed"
    READ_EXPIRED = "read_expired"
    HINT_PENDING = "hint_pending"
    HINT_SUCCESSFUL = "hint_successful"
    HINT_FAILED = "hint_failed"
    HINT_EXPIRED = "hint_expired"
    UNKNOWN_STATUS = "unknown_status"
    LOOKUP_EMPTY = "lookup_empty"
    NOT_CREATED = "not_created"


_READ: Final = {
    Status.PENDING: Signal.READ_PENDING,
    Status.SUCCESSFUL: Signal.READ_SUCCESSFUL,
    Status.FAILED: Signal.READ_FAILED,
    Status.EXPIRED: Signal.READ_EXPIRED,
}
_HINT: Final = {
    Status.PENDING: Signal.HINT_PENDING,
    Status.SUCCESSFUL: Signal.HINT_SUCCESSFUL,
    Status.FAILED: Signal.HINT_FAILED,
    Status.EXPIRED: Signal.HINT_EXPIRED,
}
_STATUS_KINDS: Final = frozenset(STATUS_EVENT.values())
_CHANGE_KINDS: Final = _STATUS_KINDS | {EventKind.CHARGE_CORRECTED}
SIGNAL_STATUS: Final[Mapping[Signal, Status]] = MappingProxyType(
    {**{v: k for k, v in _READ.items()}, **{v: k for k, v in _HINT.items()}}
)


@attrs.frozen
class Rule:
    """
    One cell of the table: the outcome, the state after (``None``: unchanged),
    the event kind to append (``None``: none), why, and why as a code (refusals).
    """

    outcome: Outcome
    to: Status | None
    event: EventKind | None
    reason: str
    code: ReasonCode | None = None


def _apply(to: Status, event: EventKind, reason: str) -> Rule:
    return Rule(Outcome.APPLIED, to, event, reason)


def _keep(outcome: Outcome, reason: str, code: ReasonCode | None = None) -> Rule:
    return Rule(outcome, None, None, reason, code)


def _status_rules(state: Status) -> dict[Signal, Rule]:
    """The snapshot columns for one existing state, from invariants 1-3."""
    rules: dict[Signal, Rule] = {}
    for observed in (Status.PENDING, Status.SUCCESSFUL, Status.FAILED, Status.EXPIRED):
        for signal, authoritative in ((_READ[observed], True), (_HINT[observed], False)):
            source = "an authoritative read" if authoritative else "a webhook payload"
            if observed == state:
                rules[signal] = _keep(Outcome.DUPLICATE, f"already {state}")
            elif RANK[observed] > RANK[state]:
                rules[signal] = _apply(
                    observed, STATUS_EVENT[observed], f"{state} -> {observed} by {source}"
                )
            elif RANK[observed] < RANK[state]:
                rules[signal] = _keep(Outcome.STALE, f"{observed} is older news than {state}")
            elif authoritative:
                rules[signal] = _apply(
                    observed,
                    EventKind.CHARGE_CORRECTED,
                    f"corrected {state} -> {observed}: an authoritative read overrides",
                )
            else:
                rules[signal] = _keep(
                    Outcome.CONFLICT,
                    f"a webhook payload claims {observed} but the payment is {state}; "
                    "only an authoritative read can correct a terminal state",
                )
    rules[Signal.UNKNOWN_STATUS] = _keep(
        Outcome.UNKNOWN, "unknown charge status; kept and reported"
    )
    return rules


def _build_table() -> Mapping[tuple[Status | None, Signal], Rule]:
    table: dict[tuple[Status | None, Signal], Rule] = {}
    # Before the payment exists only a payment request is meaningful.
    for signal in Signal:
        table[None, signal] = _keep(Outcome.REJECTED, "no such payment", ReasonCode.NO_SUCH_PAYMENT)
    table[None, Signal.REQUEST] = _apply(
        Status.CREATED, EventKind.PAYMENT_REQUESTED, "payment requested"
    )
    for state in Status:
        table.update({(state, s): r for s, r in _status_rules(state).items()})
        # The same request again (a retry of the merchant's call) changes nothing.
        table[state, Signal.REQUEST] = _keep(Outcome.DUPLICATE, "payment already requested")
    # created: the create call's own answers.
    table[Status.CREATED, Signal.CREATE_UNKNOWN] = Rule(
        Outcome.UNKNOWN,
        None,
        EventKind.CREATE_UNKNOWN,
        "create outcome unknown; stays created until a read settles it",
    )
    table[Status.CREATED, Signal.CREATE_ERROR] = _apply(
        Status.FAILED, EventKind.CREATE_FAILED, "Omise refused the create"
    )
    # pending: a charge exists, so the create did reach Omise.
    table[Status.PENDING, Signal.CREATE_UNKNOWN] = _keep(
        Outcome.STALE, "the charge is already known; the create did reach Omise"
    )
    table[Status.PENDING, Signal.CREATE_ERROR] = _keep(
        Outcome.CONFLICT, "a create error, yet the charge exists"
    )
    for state in (Status.SUCCESSFUL, Status.FAILED, Status.EXPIRED):
        table[state, Signal.CREATE_UNKNOWN] = _keep(
            Outcome.STALE, f"the payment is already {state}"
        )
        table[state, Signal.CREATE_ERROR] = _keep(
            Outcome.CONFLICT, f"a create error, yet the payment is {state}"
        )
    table[Status.FAILED, Signal.CREATE_ERROR] = _keep(Outcome.DUPLICATE, "already failed")
    # Looking for the charge of a create whose outcome is unknown.
    table[Status.CREATED, Signal.LOOKUP_EMPTY] = _keep(
        Outcome.UNKNOWN,
        "no charge found for this payment yet; the create outcome stays unknown "
        "(a search index can lag)",
    )
    table[Status.CREATED, Signal.NOT_CREATED] = _apply(
        Status.FAILED,
        EventKind.NOT_CREATED,
        "settled as never created: no charge found after the grace period by two lookups",
    )
    for state in (Status.PENDING, Status.SUCCESSFUL, Status.FAILED, Status.EXPIRED):
        table[state, Signal.LOOKUP_EMPTY] = _keep(
            Outcome.STALE, f"the payment is already {state}; an empty lookup changes nothing"
        )
        table[state, Signal.NOT_CREATED] = _keep(
            Outcome.STALE, f"the payment is already {state}; it cannot be settled as not created"
        )
    return MappingProxyType(table)


TRANSITIONS: Final[Mapping[tuple[Status | None, Signal], Rule]] = _build_table()
"""
The frozen transition table: ``(state or None, signal) -> Rule``, every cell
filled. ``docs/state-machine.md`` is generated from it.
"""


@attrs.frozen(kw_only=True)
class Decision:
    """
    What one input does: its outcome and reason, the events to append, the
    payment id and charge id the input is about (for the inbox row), and for a
    refusal the reason as a stable code.
    """

    outcome: Outcome
    reason: str
    events: tuple[NewEvent, ...] = ()
    payment_id: str | None = None
    charge_id: str | None = None
    signal: Signal | None = None
    reason_code: ReasonCode | None = None


def signal_of(inp: Input) -> Signal:
    """The table column for an input (webhooks: for their charge payload)."""
    if isinstance(inp, PaymentRequest):
        return Signal.REQUEST
    if isinstance(inp, CreateUnknown):
        return Signal.CREATE_UNKNOWN
    if isinstance(inp, CreateError):
        return Signal.CREATE_ERROR
    if isinstance(inp, ChargeLookup):
        return Signal.LOOKUP_EMPTY
    if isinstance(inp, NotCreated):
        return Signal.NOT_CREATED
    if isinstance(inp, ChargeSnapshot):
        return _charge_signal(inp.charge, authoritative=inp.origin.is_authoritative)
    assert inp.event.charge is not None
    return _charge_signal(inp.event.charge, authoritative=False)


def _charge_signal(charge: ChargeView, *, authoritative: bool) -> Signal:
    if charge.status not in CHARGE_STATUSES:
        return Signal.UNKNOWN_STATUS
    status = Status(charge.status)
    return (_READ if authoritative else _HINT)[status]


def decide(payment: Payment | None, inp: Input) -> Decision:
    """
    Decide what ``inp`` does to ``payment`` (``None`` if it does not exist yet).

    Pure and total: every input gets a decision; nothing raises.
    """
    if isinstance(inp, PaymentRequest):
        return _decide_request(payment, inp)
    if isinstance(inp, WebhookHint):
        return _decide_webhook(payment, inp)
    pid = payment.payment_id if payment is not None else None
    if isinstance(inp, ChargeSnapshot):
        charge = inp.charge
        pid = pid or charge.payment_id
        mismatch = _mismatch(payment, charge)
        if mismatch is not None:
            return Decision(
                outcome=Outcome.REJECTED,
                reason=mismatch,
                payment_id=pid,
                charge_id=charge.charge_id,
                signal=signal_of(inp),
                reason_code=ReasonCode.MISMATCH,
            )
        return _from_table(payment, inp, extra=_charge_data(charge, inp.origin))
    data: dict[str, Any]
    if isinstance(inp, CreateError):
        data = {"code": inp.code, "message": inp.message, "http_status": inp.http_status}
    elif isinstance(inp, ChargeLookup):
        data = {}
    elif isinstance(inp, NotCreated):
        data = {"code": NOT_CREATED_CODE, "message": inp.reason, "evidence": list(inp.evidence)}
    else:
        data = {"reason": inp.reason}
    return _from_table(payment, inp, extra=data)


def _from_table(
    payment: Payment | None,
    inp: Input,
    *,
    extra: Mapping[str, Any],
    prefix: tuple[NewEvent, ...] = (),
    webhook: str | None = None,
) -> Decision:
    signal = signal_of(inp)
    state = payment.status if payment is not None else None
    rule = TRANSITIONS[state, signal]
    events = list(prefix)
    if rule.event is not None:
        data = dict(extra)
        if payment is not None and rule.event in _CHANGE_KINDS:
            data["from"] = payment.status.value
            if webhook is not None:
                data["webhook_event_id"] = webhook
        events.append(NewEvent(kind=rule.event, data=data))
    reason = rule.reason
    charge_id = None
    if isinstance(inp, ChargeSnapshot):
        charge_id = inp.charge.charge_id
    elif isinstance(inp, WebhookHint) and inp.event.charge is not None:
        charge_id = inp.event.charge.charge_id
    elif payment is not None:
        charge_id = payment.charge_id
    code = extra.get("failure_code")
    if rule.outcome is Outcome.APPLIED and code is not None and code not in KNOWN_FAILURE_CODES:
        reason += f"; unknown failure code {code!r} kept and flagged"
    if signal is Signal.UNKNOWN_STATUS and isinstance(extra.get("status"), str):
        reason = f"unknown charge status {extra['status']!r}; kept and reported"
    return Decision(
        outcome=rule.outcome,
        reason=reason,
        events=tuple(events),
        payment_id=payment.payment_id if payment is not None else None,
        charge_id=charge_id,
        signal=signal,
        reason_code=rule.code,
    )


def _decide_request(payment: Payment | None, req: PaymentRequest) -> Decision:
    if payment is not None and payment.request() != req:
        diffs = [
            f"{name} {_short(old)} != {_short(new)}"
            for name, old in payment.request().to_json().items()
            if (new := req.to_json()[name]) != old
        ]
        return Decision(
            outcome=Outcome.REJECTED,
            reason=f"payment {req.payment_id} already exists with different parameters: "
            + ", ".join(diffs),
            payment_id=req.payment_id,
            charge_id=payment.charge_id,
            signal=Signal.REQUEST,
            reason_code=ReasonCode.MISMATCH,
        )
    return attrs.evolve(_from_table(payment, req, extra=req.to_json()), payment_id=req.payment_id)


def _decide_webhook(payment: Payment | None, hint: WebhookHint) -> Decision:
    event = hint.event
    charge = event.charge
    pid = payment.payment_id if payment is not None else (charge.payment_id if charge else None)
    cid = charge.charge_id if charge is not None else None
    unknown_key = charge is None or event.key not in CHARGE_EVENT_KEYS
    if payment is None and not unknown_key:
        return Decision(
            outcome=Outcome.REJECTED,
            reason="no such payment",
            payment_id=pid,
            charge_id=cid,
            reason_code=ReasonCode.NO_SUCH_PAYMENT,
        )
    if payment is not None and event.event_id in payment.webhook_event_ids:
        return Decision(
            outcome=Outcome.DUPLICATE,
            reason=f"webhook event {event.event_id} already applied",
            payment_id=pid,
            charge_id=cid,
        )
    if charge is None or event.key not in CHARGE_EVENT_KEYS or payment is None:
        return Decision(
            outcome=Outcome.UNKNOWN,
            reason=f"unknown event key {event.key!r}; kept and reported",
            payment_id=pid,
            charge_id=cid,
        )
    mismatch = _mismatch(payment, charge)
    if mismatch is None and (
        event.livemode is not None
        and payment.livemode is not None
        and event.livemode != payment.livemode
    ):
        mismatch = "livemode mismatch between the event and the payment"
    if mismatch is not None:
        return Decision(
            outcome=Outcome.REJECTED,
            reason=mismatch,
            payment_id=pid,
            charge_id=cid,
            signal=signal_of(hint),
            reason_code=ReasonCode.MISMATCH,
        )
    accepted = NewEvent(
        kind=EventKind.WEBHOOK_ACCEPTED,
        data={"event_id": event.event_id, "key": event.key, "status": charge.status},
    )
    if not hint.apply_payload:
        return Decision(
            outcome=Outcome.APPLIED,
            reason=f"webhook {event.key} recorded as a hint (claims {charge.status}); "
            "the state follows the re-fetch",
            events=(accepted,),
            payment_id=pid,
            charge_id=cid,
            signal=signal_of(hint),
        )
    return _from_table(
        payment,
        hint,
        extra=_charge_data(charge, Origin.WEBHOOK),
        prefix=(accepted,),
        webhook=event.event_id,
    )


def _mismatch(payment: Payment | None, charge: ChargeView) -> str | None:
    if payment is None:
        return None
    if charge.payment_id is not None and charge.payment_id != payment.payment_id:
        return (
            f"payment id mismatch: the charge is for {_short(charge.payment_id)}, "
            f"not {payment.payment_id}"
        )
    if payment.charge_id is not None and charge.charge_id != payment.charge_id:
        return f"charge id mismatch: {_short(charge.charge_id)} != {payment.charge_id}"
    if charge.amount != payment.amount:
        return f"amount mismatch: charge {charge.amount} != payment {payment.amount} satang"
    if charge.currency != payment.currency:
        return f"currency mismatch: charge {_short(charge.currency)} != payment {payment.currency}"
    if (
        charge.livemode is not None
        and payment.livemode is not None
        and charge.livemode != payment.livemode
    ):
        return (
            f"livemode mismatch: charge livemode={charge.livemode}, "
            f"payment livemode={payment.livemode}"
        )
    return None


def _short(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _charge_data(charge: ChargeView, origin: Origin) -> dict[str, Any]:
    return {
        "charge_id": charge.charge_id,
        "status": charge.status,
        "origin": origin.value,
        "livemode": charge.livemode,
        "authorize_uri": charge.authorize_uri,
        "expires_at": charge.expires_at,
        "failure_code": charge.failure_code,
        "failure_message": charge.failure_message,
        "paid_at": charge.paid_at,
    }


# ------------------------------------------------------------------------- folding


def evolve(payment: Payment | None, event: StoredEvent) -> Payment:
    """
    Fold one stored event into the payment: THE rule of what each event does
    to a payment, which live state (every write) and ``fold`` use. Replay folds
    a million events through a faster copy of it on plain dicts
    (:func:`kplus_fsm._store._audit.apply_event`); a property test checks that the two
    agree on any sequence of events.

    Raises:
        IntegrityError: the event does not fit (an unknown kind, a first event
            that is not ``payment.requested``, or a missing field).
    """
    try:
        return _evolve(payment, event)
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(
            f"event at position {event.position} ({event.kind}) cannot be folded: {exc!r}",
            table="events",
            row_id=event.position,
        ) from exc


def _evolve(payment: Payment | None, event: StoredEvent) -> Payment:
    kind, data = event.kind, event.data
    if payment is None:
        if kind != EventKind.PAYMENT_REQUESTED:
            raise ValueError(f"stream {event.stream} does not start with payment.requested")
        return Payment(
            payment_id=data["payment_id"],
            status=Status.CREATED,
            amount=data["amount"],
            currency=data["currency"],
            return_uri=data["return_uri"],
            platform_type=data.get("platform_type"),
            description=data.get("description"),
            metadata=dict(data.get("metadata") or {}),
            order_ref=data.get("order_ref"),
            version=event.version,
            created_at=event.recorded_at,
            updated_at=event.recorded_at,
        )
    if kind == EventKind.PAYMENT_REQUESTED:
        raise ValueError("payment.requested in the middle of a stream")
    # Every event stamps its version and time on the payment.
    changes: dict[str, Any] = {"version": event.version, "updated_at": event.recorded_at}
    if kind == EventKind.CREATE_UNKNOWN:
        changes["create_unknown"] = True
    elif kind in (EventKind.CREATE_FAILED, EventKind.NOT_CREATED):
        # The create failed, or was settled as never made: no charge exists.
        changes["status"] = Status.FAILED
        changes["failure_code"] = data["code"]
        changes["failure_message"] = data.get("message")
        changes["create_unknown"] = False
    elif kind == EventKind.WEBHOOK_ACCEPTED:
        changes["webhook_event_ids"] = payment.webhook_event_ids | {data["event_id"]}
    elif kind in _CHANGE_KINDS:
        # The charge moved (or was corrected) to data["status"], as a read or a
        # payload showed it: take its fields; keep what it does not carry.
        code = data.get("failure_code")
        flags = set(payment.flags)
        if kind == EventKind.CHARGE_CORRECTED:
            flags.add("corrected")
        if code is not None and code not in KNOWN_FAILURE_CODES:
            flags.add("unknown_failure_code")
        livemode = data.get("livemode")
        changes["status"] = Status(data["status"])
        changes["charge_id"] = data["charge_id"]
        changes["livemode"] = payment.livemode if livemode is None else livemode
        changes["authorize_uri"] = data.get("authorize_uri") or payment.authorize_uri
        changes["expires_at"] = data.get("expires_at") or payment.expires_at
        changes["failure_code"] = code
        changes["failure_message"] = data.get("failure_message")
        changes["create_unknown"] = False
        changes["flags"] = frozenset(flags)
    else:
        raise ValueError(f"unknown event kind {kind!r}")
    return _replace(payment, changes)


#: The fields of a :class:`Payment`, in order, and a getter of all of them at once.
_PAYMENT_FIELDS: Final = tuple(a.name for a in attrs.fields(Payment))
_payment_values: Final = operator.attrgetter(*_PAYMENT_FIELDS)


def _replace(payment: Payment, changes: dict[str, Any]) -> Payment:
    """``attrs.evolve(payment, **changes)``, without introspecting the class on every call."""
    fields = dict(zip(_PAYMENT_FIELDS, _payment_values(payment), strict=True))
    fields.update(changes)
    return Payment(**fields)


def fold(events: Iterable[StoredEvent], payment: Payment | None = None) -> Payment | None:
    """Fold events in order, starting from ``payment``."""
    for event in events:
        payment = evolve(payment, event)
    return payment
