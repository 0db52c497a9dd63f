"""
The tracker: what a backend embeds.

Each ``record_*`` / ``request_*`` method takes one input, stamps it with the
injected clock, lets the pure machine decide, and commits the inbox row, the
domain events and the projection in one transaction. It logs one structlog line
per input (ids, outcome, from/to status; never a body, never a secret), then runs
the post-commit callbacks. Host code never runs inside the append transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any, Final, NoReturn

import attrs

from . import _codec, _flow
from ._consumer import DEFAULT_LEASE_TTL, Consumer, Start
from ._logging import get_logger
from ._machine import Decision, decide, fold
from ._model import (
    ChargeLookup,
    ChargeSnapshot,
    ChargeView,
    CreateError,
    CreateUnknown,
    Input,
    InputKind,
    NotCreated,
    Origin,
    Outcome,
    Payment,
    PaymentRequest,
    ReasonCode,
    Status,
    StoredEvent,
    WebhookEvent,
    WebhookHint,
    is_text,
)
from ._store import open_store
from ._store._log import UnresolvedHint
from ._store._reports import ReplayReport, TimelineEntry, VerifyReport
from ._store._rows import InboxDraft, Recorded
from ._time import format_time, omise_time, parse_time, utc_now
from .exceptions import (
    InvalidInputError,
    InvalidPaymentRequestError,
    InvalidTimeError,
    KplusFSMError,
    MalformedInputError,
    OutcomeError,
    PaymentNotFoundError,
    RefundNotSupportedError,
)
from .typing import ChargeAPI, Clock, RecordItem, Store

log = get_logger("kplus_fsm")

"""A function returning the current time as an aware ``datetime``."""

#: Headers never stored, whatever their value: they carry credentials.
SECRET_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)

Raw = bytes | str | Mapping[str, Any]


@attrs.frozen(kw_only=True)
class Result:
    """
    What one input did: its ``outcome`` and ``reason``, the payment before and
    after, the events appended, and the inbox row that recorded it.
    """

    outcome: Outcome
    reason: str
    inbox_id: int
    input_kind: str
    payment: Payment | None
    previous: Payment | None
    events: tuple[StoredEvent, ...]
    #: Why the input was refused, as a stable code (``None`` unless ``rejected``).
    reason_code: ReasonCode | None = None

    @property
    def status(self) -> Status | None:
        """The payment's status after the input (``None``: no such payment)."""
        return self.payment.status if self.payment is not None else None

    @property
    def changed(self) -> bool:
        """Whether the input changed the payment's status."""
        before = self.previous.status if self.previous is not None else None
        return self.status != before

    def raise_for_outcome(self) -> Result:
        """
        Raise :class:`OutcomeError` if the input was ``rejected``, a ``conflict`` or
        ``unknown``; return ``self`` otherwise (``applied``, ``duplicate``, ``stale``).
        """
        if self.outcome in (Outcome.REJECTED, Outcome.CONFLICT, Outcome.UNKNOWN):
            raise OutcomeError(self.outcome.value, self.reason, inbox_id=self.inbox_id)
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "reason": self.reason,
            "reason_code": self.reason_code.value if self.reason_code else None,
            "inbox_id": self.inbox_id,
            "input_kind": self.input_kind,
            "from_status": self.previous.status.value if self.previous else None,
            "to_status": self.status.value if self.status else None,
            "payment": self.payment.to_json() if self.payment else None,
            "events": [attrs.asdict(e) for e in self.events],
        }


def _rejected(
    reason: str,
    payment_id: str | None = None,
    charge_id: str | None = None,
    *,
    code: ReasonCode | None,
) -> Callable[[Payment | None], Decision]:
    def decide_rejected(payment: Payment | None) -> Decision:
        return Decision(
            outcome=Outcome.REJECTED,
            reason=reason,
            payment_id=payment_id,
            charge_id=charge_id or (payment.charge_id if payment is not None else None),
            reason_code=code,
        )

    return decide_rejected


def _code_of(exc: InvalidInputError) -> ReasonCode:
    """The reason code of an input refused with ``exc``."""
    if isinstance(exc, RefundNotSupportedError):
        return ReasonCode.REFUND_NOT_SUPPORTED
    if isinstance(exc, InvalidPaymentRequestError):
        return ReasonCode.INVALID_REQUEST
    return ReasonCode.MALFORMED


def _claimed_ids(body: bytes | str) -> tuple[str | None, str | None, str | None]:
    """The (event id, charge id, payment id) an untrusted body claims, if readable."""
    try:
        obj = _codec.parse_json(body)
    except (ValueError, RecursionError):
        return None, None, None
    if not isinstance(obj, dict):
        return None, None, None
    data = obj.get("data")
    data = data if isinstance(data, dict) else {}
    metadata = data.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}

    def text(value: object) -> str | None:
        if not isinstance(value, str) or not value or not is_text(value[:128]):
            return None
        return value[:128]

    return text(obj.get("id")), text(data.get("id")), text(metadata.get("payment_id"))


def _safe_headers(headers: Mapping[str, str] | None) -> str | None:
    if headers is None:
        return None
    kept = {
        str(k).lower(): str(v) for k, v in headers.items() if str(k).lower() not in SECRET_HEADERS
    }
    return _storable_json(kept)


def _storable_json(value: Any) -> str:
    """
    ``_codec.dumps(value)``, or the same JSON with ASCII escapes when it holds text
    that UTF-8 cannot carry (lone surrogates): what SQLite and the hash chain need.
    """
    text = _codec.dumps(value)
    if is_text(text):
        return text
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _encode_body(raw: Raw) -> tuple[str, str]:
    """
    ``_codec.encode_body(raw)``, made storable: a body holding lone surrogates (a
    ``"\\ud800"`` escape parsed by the host, text decoded with ``surrogateescape``)
    is kept exactly, as ASCII-escaped JSON.
    """
    body, encoding = _codec.encode_body(raw)
    if is_text(body):
        return body, encoding
    return _storable_json(raw if encoding == "json" else body), "json"


def _parse_json(raw: Raw) -> Any:
    if isinstance(raw, Mapping):
        return raw
    try:
        return _codec.parse_json(raw)
    except (ValueError, RecursionError) as exc:
        raise MalformedInputError(f"body is not valid JSON: {type(exc).__name__}") from None


@attrs.frozen
class _StoreInput:
    """An input ready for the store: its inbox draft, the decision, its ids."""

    draft: InboxDraft
    decide: Callable[[Payment | None], Decision]
    payment_id: str | None
    charge_id: str | None


def _event_input(
    body: Raw,
    *,
    origin: str,
    headers: Mapping[str, str] | None,
    verification: str,
    apply_payload: bool,
) -> _StoreInput | tuple[InboxDraft, InvalidInputError]:
    """An event envelope (a webhook body or an event read back) as a store input,
    or the draft to record as refused and why."""
    raw_body, encoding = _encode_body(body)

    def draft(external_id: str | None = None) -> InboxDraft:
        return InboxDraft(
            kind=InputKind.WEBHOOK,
            body=raw_body,
            body_encoding=encoding,
            origin=origin,
            external_id=external_id,
            headers=_safe_headers(headers),
            verification=verification,
        )

    try:
        parsed = _parse_json(body)
    except MalformedInputError as exc:
        return draft(), exc
    try:
        event = WebhookEvent.from_json(parsed)
    except MalformedInputError as exc:
        external = parsed.get("id") if isinstance(parsed, Mapping) else None
        return draft(external if isinstance(external, str) and is_text(external) else None), exc
    hint = WebhookHint(event=event, apply_payload=apply_payload)
    charge = event.charge
    return _StoreInput(
        draft(event.event_id),
        partial(decide, inp=hint),
        charge.payment_id if charge else None,
        charge.charge_id if charge else None,
    )


@attrs.frozen(kw_only=True)
class ImportReport:
    """What :meth:`Tracker.import_events` recorded: inputs by outcome, and commits."""

    total: int
    outcomes: dict[str, int]
    commits: int
    first_inbox_id: int | None
    last_inbox_id: int | None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class _ImportTally:
    total: int = 0
    commits: int = 0
    outcomes: dict[str, int] = attrs.field(factory=dict)
    first: int | None = None
    last: int | None = None

    def merge(self, batch: _ImportTally) -> None:
        self.total += batch.total
        self.commits += 1
        for key, n in batch.outcomes.items():
            self.outcomes[key] = self.outcomes.get(key, 0) + n
        if self.first is None:
            self.first = batch.first
        self.last = batch.last if batch.last is not None else self.last

    def add(self, result: Result) -> None:
        self.total += 1
        key = result.outcome.value
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if self.first is None:
            self.first = result.inbox_id
        self.last = result.inbox_id

    def freeze(self) -> ImportReport:
        return ImportReport(
            total=self.total,
            outcomes=dict(sorted(self.outcomes.items())),
            commits=self.commits,
            first_inbox_id=self.first,
            last_inbox_id=self.last,
        )


class Tracker:
    """
    Tracks K PLUS payments in an append-only event log.

    Args:
        store: where the log is — a path to the SQLite file (created if missing),
            a ``sqlite:///path`` URL, a ``postgresql://`` URL (see
            :func:`kplus_fsm.open_store`) — or a store object.
        clock: returns the current aware ``datetime``; inject a fake one in tests.
        synchronous: SQLite durability when ``store`` is a path.

    Every ``record_*`` method returns a :class:`Result` for anything the machine
    could decide (``applied``, ``duplicate``, ``stale``, ``conflict``,
    ``rejected``, ``unknown``). Input that cannot even be read (not JSON, wrong
    types) is still recorded in ``inbox`` with outcome ``rejected``, and then a
    :class:`~kplus_fsm.exceptions.MalformedInputError` carrying ``inbox_id`` is
    raised. Storage failures raise :class:`~kplus_fsm.exceptions.StoreError` and
    leave nothing written.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | Store,
        *,
        clock: Clock = utc_now,
        synchronous: str = "FULL",
    ) -> None:
        if isinstance(store, str | os.PathLike):
            store = open_store(store, synchronous=synchronous)
        self.store: Store = store
        self.clock = clock
        self._callbacks: list[Callable[[Result], None]] = []

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- the inputs

    def request_payment(self, request: PaymentRequest | None = None, /, **fields: Any) -> Result:
        """
        Record a merchant's request for a payment (write-ahead: before the API
        call). Pass a :class:`PaymentRequest` or its fields as keywords.

        The same request again is a ``duplicate``; the same payment id with other
        parameters is ``rejected`` (use ``raise_for_outcome()`` to make it raise).
        A request naming an ``order_ref`` is refused (``rejected``) while another
        attempt of that order is open or has been paid.

        Raises:
            InvalidPaymentRequestError: a field is out of its limits (the request is
                recorded in ``inbox`` as ``rejected`` first).
        """
        return self._request(request, fields, origin="merchant")

    def _request(
        self, request: PaymentRequest | None, fields: Mapping[str, Any], *, origin: str
    ) -> Result:
        if request is None:
            try:
                request = PaymentRequest.create(**fields)
            except InvalidPaymentRequestError as exc:
                pid = fields.get("payment_id")
                # Keeps the reason as recorded (with "got ...").
                exc.inbox_id = self._refuse_request(
                    fields, exc.reason, pid if isinstance(pid, str) else None
                )
                raise exc from None
            except TypeError as exc:
                # An unexpected or missing field: recorded like any other refused input.
                reason = f"payment request: {exc}"
                inbox_id = self._refuse_request(fields, reason, None)
                raise InvalidInputError(reason, inbox_id=inbox_id) from None
        draft = InboxDraft(
            kind=InputKind.PAYMENT_REQUEST,
            body=_codec.dumps(request.to_json()),
            body_encoding="json",
            origin=origin,
        )
        if request.order_ref is not None:
            busy = self._order_busy(request)
            if busy is not None:
                return self._finish(
                    self._commit(
                        draft,
                        _rejected(busy, request.payment_id, code=ReasonCode.ORDER_BUSY),
                        payment_id=request.payment_id,
                    )
                )
        return self._apply(request, draft, payment_id=request.payment_id)

    def _order_busy(self, request: PaymentRequest) -> str | None:
        """
        Why another attempt of the request's order forbids this one (``None``: it
        may go). A request for an attempt that exists already is never refused for
        its siblings: it is that attempt again (a duplicate, or a conflict of
        parameters), and creates nothing.
        """
        assert request.order_ref is not None
        if self.store.find(request.payment_id) is not None:
            return None
        for other in self.store.payments_for_order(request.order_ref):
            if other.payment_id == request.payment_id:
                continue
            if other.status is Status.SUCCESSFUL:
                return f"order {request.order_ref} is already paid by attempt {other.payment_id}"
            if not other.is_terminal:
                return (
                    f"order {request.order_ref} has an attempt in progress: {other.payment_id} "
                    f"({other.status}); settle it first (kplus-fsm reconcile {other.payment_id})"
                )
        return None

    def record_charge(
        self, charge: Raw, *, origin: Origin | str, payment_id: str | None = None
    ) -> Result:
        """
        Record a charge object read from Omise: the create response, a re-fetch,
        a poll (authoritative), or a webhook payload's charge (a hint).

        The payment is found by ``payment_id``, else ``metadata.payment_id``, else
        the charge id.

        Raises:
            MalformedInputError: not a charge object (recorded as ``rejected`` first).
        """
        origin = Origin(origin)
        body, encoding = _encode_body(charge)
        draft = InboxDraft(
            kind=InputKind.CHARGE_SNAPSHOT, body=body, body_encoding=encoding, origin=origin.value
        )
        try:
            view = ChargeView.from_json(_parse_json(charge))
        except MalformedInputError as exc:
            self._refuse(draft, exc, payment_id=payment_id)
        return self._apply(
            ChargeSnapshot(charge=view, origin=origin),
            draft,
            payment_id=payment_id or view.payment_id,
            charge_id=view.charge_id,
        )

    def record_create_error(
        self, payment_id: str, error: Raw, *, http_status: int | None = None
    ) -> Result:
        """
        Record Omise's error object answering the create of ``payment_id``'s
        charge: a definite failure (``failed`` with the error code).

        Raises:
            MalformedInputError: not an Omise error object (recorded first).
        """
        body, encoding = _encode_body(error)
        draft = InboxDraft(
            kind=InputKind.CREATE_ERROR,
            body=body,
            body_encoding=encoding,
            origin="create_response",
            headers=None if http_status is None else _codec.dumps({"status": http_status}),
        )
        try:
            inp = CreateError.from_json(_parse_json(error), http_status=http_status)
        except MalformedInputError as exc:
            self._refuse(draft, exc, payment_id=payment_id)
        return self._apply(inp, draft, payment_id=payment_id)

    def record_create_unknown(
        self, payment_id: str, *, reason: str, origin: str = "create_response"
    ) -> Result:
        """
        Record that the create of ``payment_id``'s charge may or may not have
        reached Omise (a timeout, a connection reset). The payment stays
        ``created`` and is flagged until a read settles it; never create a second
        charge before that. ``origin`` is ``create_response`` when the API's
        answer (or its absence) says so, ``create_retry`` when a later call
        finds an earlier attempt that left no answer.
        """
        inp = CreateUnknown(reason=reason)
        draft = InboxDraft(
            kind=InputKind.CREATE_UNKNOWN,
            body=_codec.dumps({"reason": reason}),
            body_encoding="json",
            origin=origin,
        )
        return self._apply(inp, draft, payment_id=payment_id)

    def record_lookup(
        self,
        payment_id: str,
        *,
        methods: Iterable[str],
        window: tuple[dt.datetime, dt.datetime] | None = None,
    ) -> Result:
        """
        Record a look for ``payment_id``'s charge that found none (``methods``:
        ``search``, ``list``; ``window``: the creation times listed). Evidence for
        settling an unknown create, never proof: outcome ``unknown`` while the
        payment is ``created`` (``stale`` once its charge is known).
        """
        inp = ChargeLookup(
            payment_id=payment_id,
            methods=tuple(methods),
            window_start=format_time(window[0]) if window is not None else None,
            window_end=format_time(window[1]) if window is not None else None,
        )
        draft = InboxDraft(
            kind=InputKind.CHARGE_LOOKUP,
            body=_codec.dumps(inp.to_json()),
            body_encoding="json",
            origin="poll",
        )
        return self._apply(inp, draft, payment_id=payment_id)

    def record_not_created(
        self, payment_id: str, *, reason: str, evidence: Iterable[int]
    ) -> Result:
        """
        Settle ``payment_id``'s create as never made (``failed``,
        ``failure_code`` ``not_created``), on the ``evidence`` of empty lookups
        (their inbox ids). The create flow and reconciliation call it once the
        grace period has passed and two lookups agree; a charge found later
        still corrects the payment.
        """
        inp = NotCreated(payment_id=payment_id, reason=reason, evidence=tuple(evidence))
        draft = InboxDraft(
            kind=InputKind.NOT_CREATED,
            body=_codec.dumps(inp.to_json()),
            body_encoding="json",
            origin="reconcile",
        )
        return self._apply(inp, draft, payment_id=payment_id)

    def record_webhook(
        self,
        body: Raw,
        *,
        headers: Mapping[str, str] | None = None,
        verification: str = "unverified",
        apply_payload: bool = True,
    ) -> Result:
        """
        Record a webhook delivery: the raw body and its non-secret headers.

        ``verification`` says what the intake found (``verified``, ``unverified``,
        or why it failed). With ``apply_payload=False`` the event is recorded as a
        hint only, and the caller re-fetches the charge and records that with
        :meth:`record_charge` (docs/concepts.md, "Why webhooks are hints"); with
        ``True`` the payload moves the state forward as an unverified snapshot
        (it never overrides a terminal state). A redelivered event id is a
        ``duplicate``.

        Raises:
            MalformedInputError: not an event envelope (recorded first).
        """
        item = _event_input(
            body,
            origin="webhook",
            headers=headers,
            verification=verification,
            apply_payload=apply_payload,
        )
        if isinstance(item, tuple):
            draft, exc = item
            self._refuse(draft, exc)
        return self._finish(
            self._commit(
                item.draft, item.decide, payment_id=item.payment_id, charge_id=item.charge_id
            )
        )

    def import_events(
        self,
        events: Iterable[Raw],
        *,
        batch_size: int = 500,
        apply_payload: bool = True,
    ) -> ImportReport:
        """
        Record historical Omise event objects (a backfill from ``GET /events``
        or ``GET /charges/:id/events``, read with the secret key), ``batch_size``
        inputs per transaction: one durable commit per batch instead of one per
        input. Each event is recorded exactly as :meth:`record_webhook` records
        a delivery (origin ``backfill``, verification ``fetched``): deduped by
        event id, so importing the same events again, or events already
        delivered as webhooks, gives ``duplicate`` outcomes and changes nothing.
        A malformed event is recorded as ``rejected`` and counted; it does not
        stop the import.

        Raises:
            StoreError: a batch could not be committed; the batches before it
                are committed (import again: what is in is a ``duplicate``).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        report = _ImportTally()
        batch: list[_StoreInput] = []

        def flush() -> None:
            now = format_time(self.clock())
            results = self.store.record_many(
                [
                    RecordItem(
                        draft=it.draft,
                        decide=it.decide,
                        now=now,
                        payment_id=it.payment_id,
                        charge_id=it.charge_id,
                    )
                    for it in batch
                ]
            )
            batch.clear()
            failure = None
            tally = _ImportTally()
            for rec in results:
                if isinstance(rec, Exception):
                    failure = failure or rec
                    continue
                tally.add(self._finish(rec, quiet=True))
            report.merge(tally)
            log.info(  # one line per batch; anything not routine also has its own line
                "inputs_imported",
                count=tally.total,
                first_inbox_id=tally.first,
                last_inbox_id=tally.last,
                outcomes=tally.outcomes,
            )
            if failure is not None:
                raise failure

        for body in events:
            item = _event_input(
                body,
                origin="backfill",
                headers=None,
                verification="fetched",
                apply_payload=apply_payload,
            )
            if isinstance(item, tuple):
                draft, exc = item
                item = _StoreInput(draft, _rejected(exc.reason, code=_code_of(exc)), None, None)
            batch.append(item)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        return report.freeze()

    def refuse_webhook(
        self,
        body: bytes | str,
        *,
        headers: Mapping[str, str] | None,
        verification: str,
        reason: str,
        reason_code: ReasonCode | None = None,
    ) -> Result:
        """
        Record a delivery the intake refused before trusting it (a bad signature,
        a stale timestamp): the raw body and the reason, outcome ``rejected``.
        ``reason_code`` is what ``anomalies`` classifies it by
        (:attr:`ReasonCode.SIGNATURE_INVALID`, ``SIGNATURE_STALE``,
        ``BODY_TOO_LARGE``); without one it counts as ``malformed``.

        The ids the body *claims* (event id, charge id, ``metadata.payment_id``)
        are read leniently and stored with the row, so the refusal shows in that
        payment's timeline; nothing in the body is applied.
        """
        raw_body, encoding = _encode_body(body)
        event_id, charge_id, payment_id = _claimed_ids(body)
        rec = self._commit(
            InboxDraft(
                kind=InputKind.WEBHOOK,
                body=raw_body,
                body_encoding=encoding,
                origin="webhook",
                external_id=event_id,
                headers=_safe_headers(headers),
                verification=verification,
            ),
            _rejected(reason, payment_id, charge_id, code=reason_code),
            payment_id=None,
        )
        return self._finish(rec)

    def request_refund(self, payment_id: str, *, amount: int | None = None) -> NoReturn:
        """
        Opn cannot refund mobile-banking (K PLUS) charges. The request is recorded
        as ``rejected`` and :class:`RefundNotSupportedError` is raised: refund the
        buyer outside Opn (e.g. a bank transfer) and keep your own record.
        """
        reason = (
            "Opn Payments cannot refund mobile_banking_kbank (K PLUS) charges; "
            "refund the buyer outside Opn"
        )
        rec = self._commit(
            InboxDraft(
                kind=InputKind.REFUND_REQUEST,
                body=_codec.dumps({"payment_id": payment_id, "amount": amount}),
                body_encoding="json",
                origin="merchant",
            ),
            _rejected(reason, payment_id, code=ReasonCode.REFUND_NOT_SUPPORTED),
            payment_id=payment_id,
        )
        self._finish(rec)
        raise RefundNotSupportedError(reason, inbox_id=rec.inbox.id)

    # ---------------------------------------------------------- the payment API

    def create_charge(
        self,
        api: ChargeAPI,
        request: PaymentRequest | None = None,
        /,
        *,
        retry_unknown_after: dt.timedelta = _flow.DEFAULT_CREATE_GRACE,
        **fields: Any,
    ) -> Result:
        """
        The whole create flow: record the request (write-ahead), ``POST /charges``
        through ``api`` (a :class:`ChargeAPI`, e.g. ``OmiseClient``), then record
        the charge (``pending``), the error object (``failed``), or the unknown
        outcome of a timeout, a reset or a ``backend_error`` (``created``,
        flagged; then settled by looking for the charge).

        Never creates a second charge for a payment: if the payment already has
        a charge or has ended, its current state is returned; if an earlier
        attempt may have reached Omise, the payment is settled by looking for
        its charge (a search and a listing by creation time), never by posting
        again. A create whose charge is still not found ``retry_unknown_after``
        (the grace period) after the attempt, by two looks, ends ``failed`` with
        ``failure_code`` ``not_created``: pay the order with a new attempt.

        With ``order_ref`` and no ``payment_id``, the attempt is chosen for the
        order: its open attempt if it has one (no second charge), the paid
        attempt if it was paid, else a new attempt ``<order_ref>.<n>``
        (:meth:`attempts` lists them).

        Returns the :class:`Result` of the last input recorded; ``rejected`` when
        the payment id exists with other parameters, or the order has another
        attempt open or paid.

        Raises:
            InvalidPaymentRequestError: a field is out of its limits (recorded).
            StoreError: the log could not be written.
        """
        if request is None and fields.get("payment_id") is None and "order_ref" in fields:
            order_ref = fields["order_ref"]
            try:
                PaymentRequest.create(**{**fields, "payment_id": "probe"})
            except InvalidPaymentRequestError as exc:
                exc.inbox_id = self._refuse_request(fields, exc.reason, None)
                raise exc from None
            except TypeError as exc:
                reason = f"payment request: {exc}"
                raise InvalidInputError(
                    reason, inbox_id=self._refuse_request(fields, reason, None)
                ) from None
            fields = {**fields, "payment_id": self.next_attempt_id(order_ref)}
        requested = self._request(request, fields, origin=_flow.CREATE_ORIGIN)
        return _flow.create_charge(self, api, requested, grace=retry_unknown_after)

    def next_attempt_id(self, order_ref: str) -> str:
        """
        The payment id to pay ``order_ref`` with now: the order's paid attempt,
        else its open attempt (``created`` or ``pending``), else a new one,
        ``<order_ref>.<n>`` for the order's ``n``-th attempt. Deterministic, so
        two concurrent calls for one order choose the same attempt (and the
        second is a duplicate, never a second charge).
        """
        attempts = self.store.payments_for_order(order_ref)
        for attempt in attempts:
            if attempt.status is Status.SUCCESSFUL:
                return attempt.payment_id
        open_ = [a for a in attempts if not a.is_terminal]
        if open_:
            return open_[-1].payment_id
        taken = {a.payment_id for a in attempts}
        n = len(attempts) + 1
        while f"{order_ref}.{n}" in taken:
            n += 1
        return f"{order_ref}.{n}"

    def attempts(self, order_ref: str) -> list[Payment]:
        """Every payment made for ``order_ref``, oldest first (empty: none)."""
        return self.store.payments_for_order(order_ref)

    def refresh(self, api: ChargeAPI, id_: str) -> Result:
        """
        Settle one payment now: read its charge with the secret key and record it
        (a poll), whatever the reconciliation queue says. A payment with no
        charge yet is looked for (a search and a listing), as reconciliation
        does. For the return-URL page ("is it paid?") and the on-call engineer
        whose customer says they paid.

        Raises:
            PaymentNotFoundError: no payment with that payment id or charge id.
            GatewayError: the API did not answer (nothing recorded).
        """
        payment = self.get(id_)
        if payment.charge_id is not None:
            charge = api.retrieve_charge(payment.charge_id)
            return self.record_charge(charge, origin=Origin.POLL, payment_id=payment.payment_id)
        settled, look = _flow.settle(self, api, payment)
        if settled is None:
            assert look.error is not None
            raise look.error
        return settled

    def reconcile(
        self,
        api: ChargeAPI,
        *,
        now: dt.datetime | None = None,
        pending_threshold: dt.timedelta = _flow.DEFAULT_PENDING_THRESHOLD,
        limit: int = 100,
    ) -> _flow.ReconcileReport:
        """
        Re-read, with the secret key, every charge ``pending`` past its
        ``expires_at`` or not updated for ``pending_threshold``, and settle every
        payment still ``created`` (an unknown create, or none recorded) by
        looking for its charge. At most ``limit`` payments per run, the least
        recently checked first; a payment found unchanged rests (1 minute,
        doubling, at most an hour) before its next read. Stops at the first
        HTTP 429 (``rate_limited`` in the report). ``kplus-fsm serve`` runs it
        every minute; without ``serve``, run it from cron.

        Raises:
            ValueError: ``limit`` is less than 1.
            InvalidTimeError: ``now`` (or the clock), or ``now - pending_threshold``,
                falls outside the years 1000 to 9999; nothing is read or written.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        when = now if now is not None else self.clock()
        try:
            cutoff = format_time(when - pending_threshold)
        except OverflowError:
            raise InvalidTimeError(
                f"pending_threshold {pending_threshold} reaches before the year 1000"
            ) from None
        candidates = self.store.reconcile_candidates(
            now=omise_time(when),
            cutoff=cutoff,
            limit=limit * 4,
            stored_now=format_time(when),
        )
        return _flow.reconcile(
            self, api, candidates, now=when, pending_threshold=pending_threshold, limit=limit
        )

    # ------------------------------------------------------------------ machinery

    def _refuse_request(
        self, fields: Mapping[str, Any], reason: str, payment_id: str | None
    ) -> int:
        """Record a payment request that could not be built; return its inbox id."""
        rec = self._commit(
            InboxDraft(
                kind=InputKind.PAYMENT_REQUEST,
                body=_storable_json(_jsonable(fields)),
                body_encoding="json",
                origin="merchant",
            ),
            _rejected(reason, payment_id, code=ReasonCode.INVALID_REQUEST),
            payment_id=None,
        )
        self._finish(rec)
        return rec.inbox.id

    def _refuse(
        self, draft: InboxDraft, exc: InvalidInputError, *, payment_id: str | None = None
    ) -> NoReturn:
        rec = self._commit(
            draft, _rejected(exc.reason, payment_id, code=_code_of(exc)), payment_id=None
        )
        self._finish(rec)
        raise type(exc)(exc.reason, inbox_id=rec.inbox.id) from None

    def _apply(
        self,
        inp: Input,
        draft: InboxDraft,
        *,
        payment_id: str | None,
        charge_id: str | None = None,
    ) -> Result:
        rec = self._commit(
            draft, lambda p: decide(p, inp), payment_id=payment_id, charge_id=charge_id
        )
        return self._finish(rec)

    def _commit(
        self,
        draft: InboxDraft,
        decider: Callable[[Payment | None], Decision],
        *,
        payment_id: str | None,
        charge_id: str | None = None,
    ) -> Recorded:
        return self.store.record(
            draft,
            decider,
            now=format_time(self.clock()),
            payment_id=payment_id,
            charge_id=charge_id,
        )

    def _finish(self, rec: Recorded, *, quiet: bool = False) -> Result:
        result = Result(
            outcome=rec.decision.outcome,
            reason=rec.decision.reason,
            inbox_id=rec.inbox.id,
            input_kind=rec.inbox.kind,
            payment=rec.after,
            previous=rec.before,
            events=rec.events,
            reason_code=rec.decision.reason_code,
        )
        routine = result.outcome in _QUIET
        if not (quiet and routine):
            self._log_input(rec, result, "info" if routine else "warning")
        for callback in list(self._callbacks):
            try:
                callback(result)
            except Exception as exc:  # host code must not undo a committed input
                log.exception(
                    "on_commit_callback_failed",
                    callback=getattr(callback, "__qualname__", repr(callback)),
                    inbox_id=rec.inbox.id,
                    error=type(exc).__name__,
                )
        return result

    @staticmethod
    def _log_input(rec: Recorded, result: Result, level: str) -> None:
        """The one structlog line of an input (ids and outcome; never a body or a secret)."""
        getattr(log, level)(
            "input_recorded",
            inbox_id=rec.inbox.id,
            input=rec.inbox.kind,
            origin=rec.inbox.origin,
            payment_id=rec.inbox.payment_id,
            charge_id=rec.inbox.charge_id,
            external_id=rec.inbox.external_id,
            outcome=result.outcome.value,
            reason=result.reason,
            reason_code=result.reason_code.value if result.reason_code else None,
            from_status=rec.before.status.value if rec.before else None,
            to_status=result.status.value if result.status else None,
            events=[e.kind for e in rec.events],
        )

    # ----------------------------------------------------------------- reactions

    def on_commit(self, callback: Callable[[Result], None]) -> Callable[[], None]:
        """
        Call ``callback(result)`` after every input this tracker commits (in this
        process only; for durable, at-least-once reactions use :meth:`consumer`).
        An exception in a callback is logged and swallowed: the input is already
        committed. Returns a function that removes the callback.
        """
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    def consumer(
        self,
        name: str,
        *,
        start: Start | None = None,
        lease_ttl: dt.timedelta = DEFAULT_LEASE_TTL,
    ) -> Consumer:
        """
        A named, durable, leased consumer of the event log (see :class:`Consumer`).
        ``start`` says where a consumer that does not exist yet begins:
        ``"beginning"`` (every event ever recorded), ``"now"`` (only events
        recorded after it is created, on its first run), an event position or a
        time (see :data:`kplus_fsm.Start`); it is required then (no silent replay
        of history) and ignored once the consumer exists. React to
        ``event.to_status`` (e.g. ``is Status.SUCCESSFUL``), which covers every
        route to a status, corrections included.

        Raises:
            ConsumerStartError: ``start`` is not one of those forms.
            ValueError: an empty name or a non-positive ``lease_ttl``.
        """
        return Consumer(self, name, start=start, lease_ttl=lease_ttl)

    def unresolved_hints(
        self, *, after: int = 0, limit: int = 1000, charge_id: str | None = None
    ) -> list[UnresolvedHint]:
        """
        Accepted webhooks whose charge has had no authoritative read (create
        response, re-fetch or poll) recorded after them, oldest first: the
        deliveries still to follow up. Derived from the log; recording a read of
        the charge resolves them.
        """
        return self.store.unresolved_hints(after=after, limit=limit, charge_id=charge_id)

    # --------------------------------------------------------------------- reads

    def find(self, id_: str) -> Payment | None:
        """A payment by payment id or charge id, or ``None``."""
        return self.store.find(id_)

    def get(self, id_: str) -> Payment:
        """
        A payment by payment id or charge id.

        Raises:
            PaymentNotFoundError: no such payment.
        """
        payment = self.store.find(id_)
        if payment is None:
            raise PaymentNotFoundError(f"no payment with payment id or charge id {id_!r}")
        return payment

    def timeline(
        self, id_: str | Payment, *, as_of: str | dt.datetime | None = None
    ) -> list[TimelineEntry]:
        """
        Every input about a payment and every event it caused, in order; with
        ``as_of``, only what had been recorded by then. ``id_`` is a payment id,
        a charge id, or the :class:`Payment` itself (from :meth:`get`: saves
        looking it up again).

        Raises:
            PaymentNotFoundError: no such payment.
        """
        payment = id_ if isinstance(id_, Payment) else self.get(id_)
        until = None if as_of is None else format_time(parse_time(as_of))
        return self.store.timeline(payment.payment_id, until=until)

    def state_as_of(self, id_: str, as_of: str | dt.datetime) -> Payment | None:
        """
        The payment as it stood at ``as_of`` (``None`` if it did not exist yet),
        folded from the events recorded by then.

        Raises:
            PaymentNotFoundError: no such payment (now).
        """
        payment = self.get(id_)
        until = format_time(parse_time(as_of))
        return fold(self.store.stream(payment.payment_id, until=until))

    def events(self, after: int = 0) -> Iterator[StoredEvent]:
        """Every event after global position ``after``, in order."""
        return self.store.iter_events(after)

    def verify(self) -> VerifyReport:
        """Check the hash chains, the append-only triggers and the schema version."""
        return self.store.verify()

    def replay(self, *, repair: bool = False) -> ReplayReport:
        """Rebuild the projection from the events and report every difference."""
        return self.store.replay(repair=repair)


_QUIET: Final = frozenset({Outcome.APPLIED, Outcome.DUPLICATE, Outcome.STALE})


def _jsonable(value: Any) -> Any:
    """Make arbitrary (bad) input storable as JSON without losing what it was."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


__all__ = [
    "Clock",
    "Consumer",
    "ImportReport",
    "KplusFSMError",
    "Result",
    "Tracker",
    "format_time",
    "parse_time",
    "utc_now",
]
