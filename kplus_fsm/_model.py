"""
The values of the machine: states, outcomes, inputs, domain events and the payment.

Pure: standard library and attrs only. Stored strings (enum values, event kinds,
field names) are contracts with every database ever written: never rename them.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

from .exceptions import InvalidPaymentRequestError, MalformedInputError

# --------------------------------------------------------------------------- states


class Status(enum.StrEnum):
    """
    The life of a K PLUS charge as kplus_fsm tracks it. The values are the
    strings stored in the log.
    """

    CREATED = "created"
    """The merchant asked for a charge; recorded before the API call."""
    PENDING = "pending"
    """Omise created the charge; the buyer has not yet approved it in K PLUS."""
    SUCCESSFUL = "successful"
    FAILED = "failed"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: Final = frozenset({Status.SUCCESSFUL, Status.FAILED, Status.EXPIRED})

#: How far along the life cycle each status is; news of a lower rank is stale.
RANK: Final[Mapping[Status, int]] = {
    Status.CREATED: 0,
    Status.PENDING: 1,
    Status.SUCCESSFUL: 2,
    Status.FAILED: 2,
    Status.EXPIRED: 2,
}


class Outcome(enum.StrEnum):
    """
    What one input did to its payment. Stored in ``inbox.outcome``.
    """

    APPLIED = "applied"
    """The input was accepted and its events appended."""
    DUPLICATE = "duplicate"
    """Nothing new: already applied (a redelivered webhook, a repeated read)."""
    STALE = "stale"
    """Older news than the current state (``pending`` after ``successful``)."""
    CONFLICT = "conflict"
    """Contradicts a terminal state and is not authoritative enough to correct it."""
    REJECTED = "rejected"
    """Refused: malformed, or for another payment/amount/currency/mode."""
    UNKNOWN = "unknown"
    """Cannot be placed: an unknown status or event key, or a create whose outcome is unknown."""


class ReasonCode(enum.StrEnum):
    """
    Why an input was refused, as a stable code. Stored in ``inbox.reason_code``
    beside the human ``reason`` text; the incident queries (``anomalies``)
    classify on the code, never on the wording, so a reworded message cannot
    reclassify an incident. ``None`` when the outcome itself says it all
    (applied, duplicate, stale, conflict, unknown).
    """

    SIGNATURE_INVALID = "signature_invalid"
    """A webhook whose signature is missing, malformed or does not verify."""
    SIGNATURE_STALE = "signature_stale"
    """A webhook whose signature timestamp is outside the tolerance (a replay?)."""
    BODY_TOO_LARGE = "body_too_large"
    """A request body over the receiver's size limit (not read, not stored)."""
    MALFORMED = "malformed"
    """Not JSON, wrong types or missing fields."""
    MISMATCH = "mismatch"
    """For another payment, amount, currency or mode, or a payment id reused with other terms."""
    NO_SUCH_PAYMENT = "no_such_payment"
    """About a payment this log does not hold."""
    INVALID_REQUEST = "invalid_request"
    """A payment request with a field out of its limits."""
    ORDER_BUSY = "order_busy"
    """An order already paid, or with an attempt whose outcome is not known yet."""
    REFUND_NOT_SUPPORTED = "refund_not_supported"
    """Opn cannot refund K PLUS charges."""


class Origin(enum.StrEnum):
    """
    Where a charge snapshot came from. Reads made with our secret key
    (``create_response``, ``refetch``, ``poll``) are authoritative; a webhook
    payload is a hint.
    """

    CREATE_RESPONSE = "create_response"
    REFETCH = "refetch"
    POLL = "poll"
    WEBHOOK = "webhook"

    @property
    def is_authoritative(self) -> bool:
        return self is not Origin.WEBHOOK


class InputKind(enum.StrEnum):
    """
    The kinds of input recorded in ``inbox.kind``.
    """

    PAYMENT_REQUEST = "payment_request"
    CHARGE_SNAPSHOT = "charge_snapshot"
    CREATE_ERROR = "create_error"
    CREATE_UNKNOWN = "create_unknown"
    WEBHOOK = "webhook"
    REFUND_REQUEST = "refund_request"
    CHARGE_LOOKUP = "charge_lookup"
    """A search and a listing of charges by creation time that found no charge."""
    NOT_CREATED = "not_created"
    """A create settled as never made, on the evidence of empty lookups."""


#: Omise charge statuses the machine understands (``reversed`` is card-only).
CHARGE_STATUSES: Final = frozenset({"pending", "successful", "failed", "expired"})

#: Failure codes documented for K PLUS by the seed, plus those Omise's docs and
#: recorded fixtures show for charges in general. Others are kept and flagged.
KNOWN_FAILURE_CODES: Final = frozenset(
    {
        "payment_expired",
        "payment_rejected",
        "failed_processing",
        "invalid_account",
        "insufficient_fund",
        "stolen_or_lost_card",
        "failed_fraud_check",
    }
)

#: Webhook event keys whose ``data`` is the charge. Others are kept as ``unknown``.
CHARGE_EVENT_KEYS: Final = frozenset(
    {"charge.create", "charge.complete", "charge.update", "charge.expire"}
)

#: The metadata key that carries our payment id on every charge we create.
METADATA_PAYMENT_ID: Final = "payment_id"
#: The metadata key that carries the order reference (when the request has one).
METADATA_ORDER_REF: Final = "order_ref"
#: The ``failure_code`` of a payment whose create was settled as never made.
NOT_CREATED_CODE: Final = "not_created"

# ------------------------------------------------------------------ payment request

MIN_AMOUNT: Final = 2_000
MAX_AMOUNT: Final = 15_000_000
CURRENCY: Final = "THB"
PLATFORM_TYPES: Final = frozenset({"IOS", "ANDROID"})
PAYMENT_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}")
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_MAX_URI: Final = 2048
#: What a URI may not hold: whitespace (``str.isspace``: the regex's Unicode
#: ``\s`` is the same set) and the C0 controls and DEL.
_URI_SPACE_OR_CONTROL: Final = re.compile(r"[\s\x00-\x1f\x7f]")
_MAX_DESCRIPTION: Final = 255


def _check_payment_id(value: object) -> str:
    if not isinstance(value, str) or not PAYMENT_ID_RE.fullmatch(value):
        raise InvalidPaymentRequestError(
            "payment_id",
            "1 to 64 characters of A-Z a-z 0-9 . _ : -, starting with a letter or digit",
            got=_describe(value),
        )
    return value


def _check_order_ref(value: object) -> str:
    if not isinstance(value, str) or not PAYMENT_ID_RE.fullmatch(value):
        raise InvalidPaymentRequestError(
            "order_ref",
            "1 to 64 characters of A-Z a-z 0-9 . _ : -, starting with a letter or digit",
            got=_describe(value),
        )
    return value


def _check_return_uri(value: object) -> str:
    limit = "an absolute URI such as https://shop.example/return or myapp://return"
    if not isinstance(value, str) or not value or len(value) > _MAX_URI:
        raise InvalidPaymentRequestError("return_uri", limit, got=_describe(value))
    scheme, sep, rest = value.partition(":")
    if (
        not sep
        or not is_text(value)
        or not _SCHEME_RE.fullmatch(scheme)
        or not rest
        or _URI_SPACE_OR_CONTROL.search(value)
    ):
        raise InvalidPaymentRequestError("return_uri", limit, got=_describe(value))
    if scheme.lower() in ("http", "https"):
        host = rest[2:].split("/", 1)[0] if rest.startswith("//") else ""
        if not host:
            raise InvalidPaymentRequestError("return_uri", limit, got=_describe(value))
    return value


def _json_value(value: Any) -> Any:
    """``value`` as it reads back from JSON; TypeError if JSON cannot hold it."""
    if isinstance(value, str):
        if not is_text(value):
            raise TypeError("JSON strings are Unicode text (a lone surrogate is not)")
        return value
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError("NaN and infinities are not JSON")
        return value
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) and is_text(k) for k in value):
            raise TypeError("JSON object keys are strings of Unicode text")
        return {k: _json_value(v) for k, v in value.items()}
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def is_text(value: str) -> bool:
    """
    Whether ``value`` is Unicode text that UTF-8 (and so SQLite) can hold: no lone
    surrogates, which a JSON ``"\\ud800"`` escape parses into.
    """
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _describe(value: object) -> str:
    """A short, safe description of a refused value for an error message."""
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return repr(shown)
    if isinstance(value, bool | int | float) or value is None:
        return repr(value)
    return type(value).__name__


@attrs.frozen(kw_only=True)
class PaymentRequest:
    """
    A merchant's request to take a K PLUS payment. Construct it with
    :meth:`create` (or :func:`kplus_fsm.validate_payment_request`), which checks
    every field against Opn's limits and raises
    :class:`~kplus_fsm.exceptions.InvalidPaymentRequestError` naming the field.
    """

    payment_id: str
    amount: int
    currency: str = CURRENCY
    return_uri: str
    platform_type: str | None = None
    description: str | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    order_ref: str | None = None
    """The merchant's order this payment is an attempt for (see :meth:`Tracker.attempts`)."""

    @classmethod
    def create(
        cls,
        *,
        payment_id: object,
        amount: object,
        return_uri: object,
        currency: object = CURRENCY,
        platform_type: object = None,
        description: object = None,
        metadata: object = None,
        order_ref: object = None,
    ) -> PaymentRequest:
        """
        Validate and normalise a payment request.

        Raises:
            InvalidPaymentRequestError: a field is missing or out of its limits; the
                error names the field (``.field``) and the limit (``.limit``).
        """
        pid = _check_payment_id(payment_id)
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise InvalidPaymentRequestError(
                "amount", "an integer number of satang", got=_describe(amount)
            )
        if not MIN_AMOUNT <= amount <= MAX_AMOUNT:
            raise InvalidPaymentRequestError(
                "amount",
                f"from {MIN_AMOUNT} to {MAX_AMOUNT} satang (THB 20.00 to 150,000.00)",
                got=_describe(amount),
            )
        if not isinstance(currency, str) or currency.upper() != CURRENCY:
            raise InvalidPaymentRequestError(
                "currency", "THB (K PLUS charges are in Thai baht only)", got=_describe(currency)
            )
        platform: str | None = None
        if platform_type is not None:
            if not isinstance(platform_type, str) or platform_type.upper() not in PLATFORM_TYPES:
                raise InvalidPaymentRequestError(
                    "platform_type", "IOS or ANDROID, or absent", got=_describe(platform_type)
                )
            platform = platform_type.upper()
        uri = _check_return_uri(return_uri)
        if description is not None and (
            not isinstance(description, str)
            or len(description) > _MAX_DESCRIPTION
            or not is_text(description)
        ):
            raise InvalidPaymentRequestError(
                "description",
                f"a string of at most {_MAX_DESCRIPTION} characters",
                got=_describe(description),
            )
        meta: dict[str, Any] = {}
        if metadata is not None:
            if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
                raise InvalidPaymentRequestError(
                    "metadata", "an object with string keys", got=_describe(metadata)
                )
            for reserved in (METADATA_PAYMENT_ID, METADATA_ORDER_REF):
                if reserved in metadata:
                    raise InvalidPaymentRequestError(
                        "metadata",
                        f"free of the key {reserved!r}, which kplus_fsm sets itself",
                    )
            try:
                # As the log stores it (tuples become lists), so that the same request
                # retried compares equal to the stored one.
                meta = _json_value(metadata)
            except (TypeError, RecursionError):
                raise InvalidPaymentRequestError(
                    "metadata", "an object with string keys and JSON values", got="dict"
                ) from None
        return cls(
            payment_id=pid,
            amount=amount,
            currency=currency.upper(),
            return_uri=uri,
            platform_type=platform,
            description=description,
            metadata=meta,
            order_ref=None if order_ref is None else _check_order_ref(order_ref),
        )

    def to_json(self) -> dict[str, Any]:
        """
        The stored form (the inbox body and the ``payment.requested`` data).
        ``order_ref`` appears only when set, so a request without one is stored
        exactly as before order references existed.
        """
        out = {
            "payment_id": self.payment_id,
            "amount": self.amount,
            "currency": self.currency,
            "return_uri": self.return_uri,
            "platform_type": self.platform_type,
            "description": self.description,
            "metadata": dict(self.metadata),
        }
        if self.order_ref is not None:
            out["order_ref"] = self.order_ref
        return out

    def charge_params(self) -> dict[str, Any]:
        """
        The ``POST /charges`` parameters for this request, with the payment id in
        ``metadata`` so that any later webhook or search finds the payment.
        """
        metadata = {**self.metadata, METADATA_PAYMENT_ID: self.payment_id}
        if self.order_ref is not None:
            metadata[METADATA_ORDER_REF] = self.order_ref
        params: dict[str, Any] = {
            "amount": self.amount,
            "currency": self.currency,
            "return_uri": self.return_uri,
            "metadata": metadata,
        }
        if self.description is not None:
            params["description"] = self.description
        return params


# ------------------------------------------------------------------------- inputs


def _is(value: object, types: type | tuple[type, ...]) -> bool:
    """isinstance, except that a bool is not an int here."""
    if value.__class__ is bool:
        return types is bool or (isinstance(types, tuple) and bool in types)
    return isinstance(value, types)


def _get(obj: Mapping[str, Any], key: str, types: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if value.__class__ is str and types is str:  # the common case, checked at once
        if not value.isascii() and not is_text(value):
            raise MalformedInputError(f"{what}: field {key!r} is not valid Unicode text")
        return value
    if value is None or not _is(value, types):
        raise MalformedInputError(f"{what}: field {key!r} is missing or not {_type_name(types)}")
    return _text_checked(value, key, what)


def _opt(obj: Mapping[str, Any], key: str, types: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    if value.__class__ is str and types is str:  # the common case, checked at once
        if not value.isascii() and not is_text(value):
            raise MalformedInputError(f"{what}: field {key!r} is not valid Unicode text")
        return value
    if not _is(value, types):
        raise MalformedInputError(f"{what}: field {key!r} is not {_type_name(types)}")
    return _text_checked(value, key, what)


def _text_checked(value: Any, key: str, what: str) -> Any:
    if isinstance(value, str) and not is_text(value):
        raise MalformedInputError(f"{what}: field {key!r} is not valid Unicode text")
    return value


def _type_name(types: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "a boolean", dict: "an object"}
    if isinstance(types, tuple):
        return " or ".join(names.get(t, t.__name__) for t in types)
    return names.get(types, types.__name__)


@attrs.frozen(kw_only=True)
class ChargeView:
    """
    The fields of an Omise charge object that the machine reads. Everything
    else stays in the raw input in ``inbox``.
    """

    charge_id: str
    status: str
    amount: int
    currency: str
    livemode: bool | None
    payment_id: str | None
    authorize_uri: str | None
    expires_at: str | None
    failure_code: str | None
    failure_message: str | None
    created_at: str | None
    paid_at: str | None

    @classmethod
    def from_json(cls, obj: object) -> ChargeView:
        """
        Read a charge object.

        Raises:
            MalformedInputError: not a charge object, or a field of the wrong type.
        """
        what = "charge"
        if not isinstance(obj, Mapping):
            raise MalformedInputError("charge: not a JSON object")
        if obj.get("object") != "charge":
            raise MalformedInputError(
                f"charge: 'object' is {_describe(obj.get('object'))}, not 'charge'"
            )
        metadata = obj.get("metadata")
        payment_id = None
        if metadata is not None:
            if not isinstance(metadata, Mapping):
                raise MalformedInputError("charge: field 'metadata' is not an object")
            raw_pid = metadata.get(METADATA_PAYMENT_ID)
            if raw_pid is not None and not isinstance(raw_pid, str):
                raise MalformedInputError("charge: metadata.payment_id is not a string")
            if raw_pid is not None and not is_text(raw_pid):
                raise MalformedInputError("charge: metadata.payment_id is not valid Unicode text")
            payment_id = raw_pid
        currency = _get(obj, "currency", str, what)
        return cls(
            charge_id=_get(obj, "id", str, what),
            status=_get(obj, "status", str, what),
            amount=_get(obj, "amount", int, what),
            currency=currency.upper(),
            livemode=_opt(obj, "livemode", bool, what),
            payment_id=payment_id,
            authorize_uri=_opt(obj, "authorize_uri", str, what),
            expires_at=_opt(obj, "expires_at", str, what),
            failure_code=_opt(obj, "failure_code", str, what),
            failure_message=_opt(obj, "failure_message", str, what),
            created_at=_opt(obj, "created_at", str, what) or _opt(obj, "created", str, what),
            paid_at=_opt(obj, "paid_at", str, what),
        )


@attrs.frozen(kw_only=True)
class ChargeSnapshot:
    """
    A charge as read from one place: the create response, a re-fetch, a poll,
    or a webhook payload (``origin``).
    """

    charge: ChargeView
    origin: Origin


@attrs.frozen(kw_only=True)
class CreateError:
    """
    Omise answered a create with an error object: a definite failure.
    """

    code: str
    message: str
    http_status: int | None = None

    @classmethod
    def from_json(cls, obj: object, *, http_status: int | None = None) -> CreateError:
        """
        Read an Omise error object (``{"object": "error", "code", "message"}``).

        Raises:
            MalformedInputError: not an error object.
        """
        if not isinstance(obj, Mapping) or obj.get("object") != "error":
            raise MalformedInputError("create error: not an Omise error object")
        return cls(
            code=_get(obj, "code", str, "create error"),
            message=_opt(obj, "message", str, "create error") or "",
            http_status=http_status,
        )


@attrs.frozen(kw_only=True)
class CreateUnknown:
    """
    A create whose outcome is unknown: a timeout or a connection reset after the
    request may have reached Omise. Never a failure.
    """

    reason: str


@attrs.frozen(kw_only=True)
class WebhookEvent:
    """
    An Omise event envelope as delivered to a webhook endpoint.

    ``charge`` is the charge in ``data`` for charge event keys, else ``None``.
    """

    event_id: str
    key: str
    livemode: bool | None
    created_at: str | None
    charge: ChargeView | None

    @classmethod
    def from_json(cls, obj: object) -> WebhookEvent:
        """
        Read an event envelope (``object: event``, ``id``, ``key``, ``data``).

        Raises:
            MalformedInputError: not an event envelope, or its charge is malformed.
        """
        what = "webhook event"
        if not isinstance(obj, Mapping):
            raise MalformedInputError("webhook event: body is not a JSON object")
        if obj.get("object") != "event":
            raise MalformedInputError(
                f"webhook event: 'object' is {_describe(obj.get('object'))}, not 'event'"
            )
        event_id = _get(obj, "id", str, what)
        key = _get(obj, "key", str, what)
        data = obj.get("data")
        if not isinstance(data, Mapping):
            raise MalformedInputError("webhook event: field 'data' is missing or not an object")
        charge = None
        if key in CHARGE_EVENT_KEYS or (
            key.startswith("charge.") and data.get("object") == "charge"
        ):
            charge = ChargeView.from_json(data)
        return cls(
            event_id=event_id,
            key=key,
            livemode=_opt(obj, "livemode", bool, what),
            created_at=_opt(obj, "created_at", str, what) or _opt(obj, "created", str, what),
            charge=charge,
        )


@attrs.frozen(kw_only=True)
class WebhookHint:
    """
    A webhook event offered to the machine. With ``apply_payload=False`` its
    charge is recorded as a hint only and the state follows the re-fetch that
    the intake makes next (docs/concepts.md, "Why webhooks are hints"); with
    ``True`` (no API access) the payload itself moves the state forward, as an
    unverified snapshot.
    """

    event: WebhookEvent
    apply_payload: bool


@attrs.frozen(kw_only=True)
class ChargeLookup:
    """
    A look for a payment's charge that found none: a search on the payment id
    and a listing of the charges created around the create attempt (``methods``
    says which ran). Evidence, never proof: a search index can lag.
    """

    payment_id: str
    methods: tuple[str, ...]
    window_start: str | None = None
    window_end: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "payment_id": self.payment_id,
            "found": False,
            "methods": list(self.methods),
            "window_start": self.window_start,
            "window_end": self.window_end,
        }


@attrs.frozen(kw_only=True)
class NotCreated:
    """
    A create settled as never made: no answer was recorded, the grace period
    has passed and two empty lookups (``evidence``: their inbox ids) agree.
    The payment ends ``failed`` with ``failure_code`` ``not_created``; a new
    attempt (a new payment id) may then be paid.
    """

    payment_id: str
    reason: str
    evidence: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "payment_id": self.payment_id,
            "reason": self.reason,
            "evidence": list(self.evidence),
        }


Input = (
    PaymentRequest
    | ChargeSnapshot
    | CreateError
    | CreateUnknown
    | WebhookHint
    | ChargeLookup
    | NotCreated
)

# ------------------------------------------------------------------ domain events


class EventKind(enum.StrEnum):
    """
    The stable ``kind`` strings of the domain events stored in ``events``.
    """

    PAYMENT_REQUESTED = "payment.requested"
    CREATE_UNKNOWN = "charge.create_unknown"
    CREATE_FAILED = "charge.create_failed"
    CHARGE_PENDING = "charge.pending"
    CHARGE_SUCCESSFUL = "charge.successful"
    CHARGE_FAILED = "charge.failed"
    CHARGE_EXPIRED = "charge.expired"
    CHARGE_CORRECTED = "charge.corrected"
    WEBHOOK_ACCEPTED = "webhook.accepted"
    NOT_CREATED = "charge.not_created"


#: The current ``event_version`` of each kind's payload. Older versions are
#: upcast on read (``kplus_fsm._codec.UPCASTERS``).
EVENT_VERSIONS: Final[Mapping[EventKind, int]] = dict.fromkeys(EventKind, 1)

STATUS_EVENT: Final[Mapping[Status, EventKind]] = {
    Status.PENDING: EventKind.CHARGE_PENDING,
    Status.SUCCESSFUL: EventKind.CHARGE_SUCCESSFUL,
    Status.FAILED: EventKind.CHARGE_FAILED,
    Status.EXPIRED: EventKind.CHARGE_EXPIRED,
}


@attrs.frozen(kw_only=True)
class NewEvent:
    """
    A domain event the machine decided to append (not yet stored).
    """

    kind: EventKind
    data: Mapping[str, Any]


@attrs.frozen(kw_only=True)
class StoredEvent:
    """
    A domain event as stored: its global ``position``, its ``version`` within the
    payment's stream, the inbox row that caused it, and when it was recorded.
    """

    position: int
    stream: str
    version: int
    kind: str
    event_version: int
    data: Mapping[str, Any]
    recorded_at: str
    causation: int

    @property
    def to_status(self) -> Status | None:
        """
        The status this event moved its payment to, whatever the route (a
        webhook, a re-fetch, reconciliation, a correction), or ``None`` when it
        did not change the status (``webhook.accepted``, ``charge.create_unknown``).
        The one signal to act on: ``event.to_status is Status.SUCCESSFUL`` means
        "this payment just became paid".
        """
        return _event_status(self.kind, self.data)


def _event_status(kind: str, data: Mapping[str, Any]) -> Status | None:
    if kind == EventKind.PAYMENT_REQUESTED:
        return Status.CREATED
    if kind in (EventKind.CREATE_FAILED, EventKind.NOT_CREATED):
        return Status.FAILED
    if kind in _STATUS_OF_KIND:
        return _STATUS_OF_KIND[kind]
    if kind == EventKind.CHARGE_CORRECTED:
        status = data.get("status")
        return Status(status) if status in _STATUS_VALUES else None
    return None


_STATUS_OF_KIND: Final[Mapping[str, Status]] = {
    EventKind.CHARGE_PENDING.value: Status.PENDING,
    EventKind.CHARGE_SUCCESSFUL.value: Status.SUCCESSFUL,
    EventKind.CHARGE_FAILED.value: Status.FAILED,
    EventKind.CHARGE_EXPIRED.value: Status.EXPIRED,
}
_STATUS_VALUES: Final = frozenset(s.value for s in Status)


# ------------------------------------------------------------------------ payment


@attrs.frozen(kw_only=True)
class Payment:
    """
    The current state of one payment: the fold of its events.
    """

    payment_id: str
    status: Status
    amount: int
    currency: str
    return_uri: str
    platform_type: str | None = None
    description: str | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    charge_id: str | None = None
    livemode: bool | None = None
    authorize_uri: str | None = None
    expires_at: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    create_unknown: bool = False
    """A create timed out or was cut off and nothing has settled it yet."""
    flags: frozenset[str] = frozenset()
    """Anomalies that stay with the payment: ``corrected``, ``unknown_failure_code``."""
    webhook_event_ids: frozenset[str] = frozenset()
    version: int = 0
    created_at: str = ""
    updated_at: str = ""
    order_ref: str | None = None
    """The order this payment is an attempt for, if the request named one."""

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    def request(self) -> PaymentRequest:
        """The payment request this payment was created from."""
        return PaymentRequest(
            payment_id=self.payment_id,
            amount=self.amount,
            currency=self.currency,
            return_uri=self.return_uri,
            platform_type=self.platform_type,
            description=self.description,
            metadata=dict(self.metadata),
            order_ref=self.order_ref,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (sets as sorted lists)."""
        return {
            "payment_id": self.payment_id,
            "status": self.status.value,
            "amount": self.amount,
            "currency": self.currency,
            "return_uri": self.return_uri,
            "platform_type": self.platform_type,
            "description": self.description,
            "metadata": dict(self.metadata),
            "charge_id": self.charge_id,
            "livemode": self.livemode,
            "authorize_uri": self.authorize_uri,
            "expires_at": self.expires_at,
            "failure_code": self.failure_code,
            "failure_message": self.failure_message,
            "create_unknown": self.create_unknown,
            "flags": sorted(self.flags),
            "webhook_event_ids": sorted(self.webhook_event_ids),
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "order_ref": self.order_ref,
        }
