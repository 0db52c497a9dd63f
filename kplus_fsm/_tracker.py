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
import sqlite_utils
import structlog

from . import _codec, _flow
from ._machine import Decision, decide, fold
from ._model import (
    ChargeSnapshot,
    ChargeView,
    CreateError,
    CreateUnknown,
    Input,
    InputKind,
    Origin,
    Outcome,
    Payment,
    PaymentRequest,
    Status,
    StoredEvent,
    WebhookEvent,
    WebhookHint,
    is_text,
)
from ._open import open_store
from ._ports import ChargeAPI, Store
from ._store import InboxDraft, Recorded, ReplayReport, TimelineEntry, VerifyReport
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

log = structlog.get_logger("kplus_fsm")

Clock = Callable[[], dt.datetime]
"""A function returning the current time as an aware ``datetime``."""

#: Headers never stored, whatever their value: they carry credentials.
SECRET_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)

Raw = bytes | str | Mapping[str, Any]


def utc_now() -> dt.datetime:
    """The default clock: the system's UTC time."""
    return dt.datetime.now(dt.UTC)


#: The earliest and latest times kplus_fsm stores (UTC): four-digit years, so
#: that the stored text sorts as the times do.
MIN_YEAR: Final = 1000
MAX_YEAR: Final = 9999
_RANGE_TEXT: Final = "from 1000-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z (UTC)"


def _in_range(when: dt.datetime) -> dt.datetime:
    """``when`` in UTC; :class:`InvalidTimeError` if naive or outside the stored years."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidTimeError("times must be timezone-aware (the clock returned a naive datetime)")
    try:
        utc = when.astimezone(dt.UTC)
    except OverflowError:
        utc = None
    if utc is None or utc.year < MIN_YEAR:
        raise InvalidTimeError(
            f"{when.isoformat()} is outside the times kplus_fsm stores: {_RANGE_TEXT}"
        )
    return utc


def format_time(when: dt.datetime) -> str:
    """
    The stored time format: UTC, microseconds, ``Z`` (sorts as text: the year
    always has four digits).

    Raises:
        InvalidTimeError: ``when`` is naive, or before the year 1000 (or past
            9999) in UTC. A ``ValueError``.
    """
    utc = _in_range(when)
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"  # ~10x strftime


def parse_time(text: str | dt.datetime) -> dt.datetime:
    """
    Parse an ISO-8601 time (``Z`` allowed); naive times are taken as UTC.

    Raises:
        ValueError: not ISO-8601; :class:`InvalidTimeError` (a ``ValueError``)
            for a time before the year 1000 or past 9999 in UTC.
    """
    when = text if isinstance(text, dt.datetime) else dt.datetime.fromisoformat(text)
    when = when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
    _in_range(when)
    return when


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
            "inbox_id": self.inbox_id,
            "input_kind": self.input_kind,
            "from_status": self.previous.status.value if self.previous else None,
            "to_status": self.status.value if self.status else None,
            "payment": self.payment.to_json() if self.payment else None,
            "events": [attrs.asdict(e) for e in self.events],
        }


def _rejected(
    reason: str, payment_id: str | None = None, charge_id: str | None = None
) -> Callable[[Payment | None], Decision]:
    def decide_rejected(payment: Payment | None) -> Decision:
        return Decision(
            outcome=Outcome.REJECTED,
            reason=reason,
            payment_id=payment_id,
            charge_id=charge_id or (payment.charge_id if payment is not None else None),
        )

    return decide_rejected


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

        Raises:
            InvalidPaymentRequestError: a field is out of its limits (the request is
                recorded in ``inbox`` as ``rejected`` first).
        """
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
        return self._apply(
            request,
            InboxDraft(
                kind=InputKind.PAYMENT_REQUEST,
                body=_codec.dumps(request.to_json()),
                body_encoding="json",
                origin="merchant",
            ),
            payment_id=request.payment_id,
        )

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

    def record_create_unknown(self, payment_id: str, *, reason: str) -> Result:
        """
        Record that the create of ``payment_id``'s charge may or may not have
        reached Omise (a timeout, a connection reset). The payment stays
        ``created`` and is flagged until a read settles it; never create a second
        charge before that.
        """
        inp = CreateUnknown(reason=reason)
        draft = InboxDraft(
            kind=InputKind.CREATE_UNKNOWN,
            body=_codec.dumps({"reason": reason}),
            body_encoding="json",
            origin="create_response",
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
        :meth:`record_charge` (ARCHITECTURE §4); with ``True`` the payload moves
        the state forward as an unverified snapshot (it never overrides a
        terminal state). A redelivered event id is a ``duplicate``.

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
                [(it.draft, it.decide, now, it.payment_id, it.charge_id) for it in batch]
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
                item = _StoreInput(draft, _rejected(exc.reason, None), None, None)
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
    ) -> Result:
        """
        Record a delivery the intake refused before trusting it (a bad signature,
        a stale timestamp): the raw body and the reason, outcome ``rejected``.

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
            _rejected(reason, payment_id, charge_id),
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
            _rejected(reason, payment_id),
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
        retry_unknown_after: dt.timedelta = _flow.DEFAULT_RETRY_UNKNOWN_AFTER,
        **fields: Any,
    ) -> Result:
        """
        The whole create flow: record the request (write-ahead), ``POST /charges``
        through ``api`` (a :class:`ChargeAPI`, e.g. ``OmiseClient``), then record
        the charge (``pending``), the error object (``failed``), or the unknown
        outcome of a timeout or reset (``created``, flagged; then settled by a
        search on the payment id when the search answers).

        Never creates a second charge for a payment: if the payment already has a
        charge or has ended, its current state is returned; if an earlier attempt
        may have reached Omise, a search settles it first, and a new create is made
        only when the search finds nothing and the earlier attempt is older than
        ``retry_unknown_after``.

        Returns the :class:`Result` of the last input recorded; ``rejected`` when
        the payment id exists with other parameters.

        Raises:
            InvalidPaymentRequestError: a field is out of its limits (recorded).
            StoreError: the log could not be written.
        """
        requested = (
            self.request_payment(**fields) if request is None else self.request_payment(request)
        )
        return _flow.create_charge(self, api, requested, retry_unknown_after=retry_unknown_after)

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
        payment whose create outcome is unknown (by a search on its payment id).
        At most ``limit`` payments per run, oldest first; stops at the first HTTP
        429 (``rate_limited`` in the report). Run it from cron.

        Raises:
            InvalidTimeError: ``now`` (or the clock), or ``now - pending_threshold``,
                falls outside the years 1000 to 9999; nothing is read or written.
        """
        when = now if now is not None else self.clock()
        try:
            cutoff = format_time(when - pending_threshold)
        except OverflowError:
            raise InvalidTimeError(
                f"pending_threshold {pending_threshold} reaches before the year 1000"
            ) from None
        candidates = self.store.reconcile_candidates(
            now=format_time(when)[:19] + "Z",
            cutoff=cutoff,
            limit=limit * 4,
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
            _rejected(reason, payment_id),
            payment_id=None,
        )
        self._finish(rec)
        return rec.inbox.id

    def _refuse(
        self, draft: InboxDraft, exc: InvalidInputError, *, payment_id: str | None = None
    ) -> NoReturn:
        rec = self._commit(draft, _rejected(exc.reason, payment_id), payment_id=None)
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

    def consumer(self, name: str) -> Consumer:
        """A named durable consumer of the event log (see :class:`Consumer`)."""
        return Consumer(self, name)

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


class Consumer:
    """
    A named, durable reader of the event log: it remembers (in the database) the
    last position it processed, so a host reacts once to each transition (ship
    the order on ``charge.successful``), across restarts.

    - :meth:`process`: at-least-once. The handler runs outside any transaction;
      the position advances after each event it handled. If the process dies
      between the two, that event is handled again: make the handler idempotent.
    - :meth:`process_in_transaction`: exactly-once for writes to the same
      database. The handler gets a ``sqlite_utils.Database`` inside the write
      transaction that also advances the position; both commit or neither does.
    """

    def __init__(self, tracker: Tracker, name: str) -> None:
        if not name:
            raise ValueError("a consumer needs a name")
        self.tracker = tracker
        self.name = name

    @property
    def position(self) -> int:
        """The last event position processed."""
        return self.tracker.store.consumer_position(self.name)

    def pending(self, *, limit: int | None = None) -> list[StoredEvent]:
        """The events not yet processed (at most ``limit``)."""
        out: list[StoredEvent] = []
        for event in self.tracker.store.iter_events(self.position):
            if limit is not None and len(out) >= limit:
                break
            out.append(event)
        return out

    def process(self, handler: Callable[[StoredEvent], object], *, limit: int | None = None) -> int:
        """
        Hand each unprocessed event to ``handler`` in order; return how many were
        handled. If the handler raises, the position stays before that event and
        the exception propagates.
        """
        done = 0
        store = self.tracker.store
        for event in store.iter_events(self.position):
            if limit is not None and done >= limit:
                break
            handler(event)
            store.write_transaction(partial(self._advance, position=event.position))
            done += 1
        return done

    def _advance(self, _db: sqlite_utils.Database, *, position: int) -> None:
        self.tracker.store.set_consumer_position(
            self.name, position, now=format_time(self.tracker.clock())
        )

    def process_in_transaction(
        self,
        handler: Callable[[StoredEvent, sqlite_utils.Database], object],
        *,
        batch: int = 100,
    ) -> int:
        """
        Hand up to ``batch`` unprocessed events to ``handler(event, db)`` inside one
        write transaction that also advances the position. Return how many.
        If the handler raises, the handler's writes and the position roll back.
        """
        store = self.tracker.store

        def work(db: sqlite_utils.Database) -> int:
            start = store.consumer_position(self.name)
            n = 0
            last = start
            for event in store.iter_events(start, batch=batch):
                if n >= batch:
                    break
                handler(event, db)
                last = event.position
                n += 1
            if n:
                store.set_consumer_position(self.name, last, now=format_time(self.tracker.clock()))
            return n

        return int(store.write_transaction(work))


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
