"""
The fake Omise's data: records, their JSON shapes, ids, times, request parsing.

Private to :mod:`kplus_fsm.adapters.fake`. The JSON shapes follow the objects
of the K PLUS guide (source and charge examples, API version 2019-05-29) and
omise-facts §1-§4.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl

import attrs
import httpx

#: Amount limits of ``mobile_banking_kbank`` in satang (K PLUS guide, "ข้อจำกัด").
MIN_AMOUNT: Final = 2_000
MAX_AMOUNT: Final = 15_000_000
SOURCE_TYPE: Final = "mobile_banking_kbank"
PLATFORM_TYPES: Final = frozenset({"IOS", "ANDROID", "WEB"})
#: Fee of the guide's example: a flat 10 THB plus 7 % VAT on it.
FEE: Final = 1_000
FEE_VAT: Final = 70
#: Error objects link here, with the code's underscores as hyphens in the anchor
#: (``#not-found``, ``#authentication-failure``): omise-go's recorded
#: ``charges/404-get.json``, omise-php's exception tests, and a live answer quoted
#: in omise-node issue #97.
ERROR_LOCATION: Final = "https://www.omise.co/api-errors#"
EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: Failure codes of the K PLUS guide, with English messages.
FAILURE_MESSAGES: Final[Mapping[str, str]] = {
    "payment_expired": "payment expired",
    "payment_rejected": "payment was rejected by the issuer",
    "failed_processing": "payment processing failed",
    "invalid_account": "no valid account for the selected payment method",
    "insufficient_fund": "insufficient funds in the account or the card has reached the "
    "credit limit",
}

_ID_ALPHABET: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
_FAILURE_CODE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_BRACKET_KEY: Final = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_BRACKET_PART: Final = re.compile(r"\[([^\[\]]*)\]")


class FakeOmiseError(Exception):
    """
    A refusal of the fake Omise: the HTTP ``status`` and the ``code`` and
    ``message`` of the Omise error object it answers with. Never carries a secret.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def error_object(code: str, message: str) -> dict[str, Any]:
    """An Omise error object (its ``location`` anchor spells the code with hyphens)."""
    return {
        "object": "error",
        "location": ERROR_LOCATION + code.replace("_", "-"),
        "code": code,
        "message": message,
    }


def json_bytes(obj: Any) -> bytes:
    """The compact UTF-8 JSON of ``obj``."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


#: An empty array as a value (``"key": []``) or an element (``[]``) of indented
#: JSON: ``[`` and ``]`` are followed by a comma or the line's end only outside
#: strings (a string cannot hold a raw newline).
_EMPTY_ARRAY: Final = re.compile(r"^( *)((?:\"(?:[^\"\\]|\\.)*\": )?)\[\](,?)$", re.MULTILINE)


def pretty_json_bytes(obj: Any) -> bytes:
    """
    ``obj`` as Omise's webhook deliveries are written: two-space indents, an
    empty array as ``[``, a blank line, ``]``, and a final newline (the recorded
    delivery payload of omise-php's ``events/evnt_test_no1t4tnemucod0e51mo-get.json``).
    """
    text = json.dumps(obj, ensure_ascii=False, indent=2)
    text = _EMPTY_ARRAY.sub(lambda m: f"{m[1]}{m[2]}[\n\n{m[1]}]{m[3]}", text)
    return (text + "\n").encode("utf-8")


def json_response(obj: Any, status: int = 200) -> httpx.Response:
    """An ``application/json`` response carrying ``obj``."""
    return httpx.Response(
        status, content=json_bytes(obj), headers={"Content-Type": "application/json"}
    )


def iso(when: dt.datetime) -> str:
    """Omise's timestamp format: ``2024-03-19T09:35:06Z``."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def delivery_time(when: dt.datetime) -> str:
    """``webhook_delivery.created_at`` as recorded data has it: ``2023-03-02 10:27:09 UTC``."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_time(value: Any, field: str) -> dt.datetime:
    """An ISO-8601 time (``Z`` or an offset; a bare date is midnight UTC)."""
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, str) and value.strip():
        try:
            when = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise FakeOmiseError(400, "bad_request", f"{field} is not an ISO 8601 time") from None
    else:
        raise FakeOmiseError(400, "bad_request", f"{field} is not an ISO 8601 time")
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


class ShiftedClock:
    """The default clock: the system's UTC time plus an offset that only grows."""

    def __init__(self) -> None:
        self._offset = dt.timedelta(0)
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            offset = self._offset
        return dt.datetime.now(dt.UTC) + offset

    def advance(self, delta: dt.timedelta) -> None:
        """Move the clock forward by ``delta``."""
        with self._lock:
            self._offset += delta


class IdMaker:
    """Omise-shaped ids (prefix + 19 characters); reproducible with a seed."""

    def __init__(self, seed: int | None) -> None:
        # Ids are not secrets; the seeded generator makes test runs reproducible.
        self._random: random.Random = (
            random.Random(seed)  # noqa: S311
            if seed is not None
            else secrets.SystemRandom()
        )
        self._lock = threading.Lock()

    def __call__(self, prefix: str) -> str:
        with self._lock:
            return prefix + "".join(self._random.choice(_ID_ALPHABET) for _ in range(19))

    def token(self, length: int) -> str:
        """A random mixed-case reference like ``4MfooeeupTWe8k2P``."""
        alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
        with self._lock:
            return "".join(self._random.choice(alphabet) for _ in range(length))


# --- request parsing -----------------------------------------------------------------


def _assign(target: dict[str, Any], parts: list[str], value: str) -> None:
    node: Any = target
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "":
            if not isinstance(node, list):
                raise FakeOmiseError(400, "bad_request", "malformed parameter name")
            if last:
                node.append(value)
                return
            node.append({})
            node = node[-1]
            continue
        if not isinstance(node, dict):
            raise FakeOmiseError(400, "bad_request", "malformed parameter name")
        if last:
            node[part] = value
            return
        child_is_list = parts[index + 1] == ""
        existing = node.get(part)
        if existing is None or isinstance(existing, str):
            node[part] = [] if child_is_list else {}
        elif isinstance(existing, list) != child_is_list:
            raise FakeOmiseError(400, "bad_request", f"parameter {part} has conflicting shapes")
        node = node[part]


def parse_pairs(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Form or query pairs with bracket keys (``source[type]=…``, ``a[]=…``) as nested data."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        match = _BRACKET_KEY.fullmatch(key)
        if match is None:
            result[key] = value
            continue
        parts = [match.group(1), *_BRACKET_PART.findall(match.group(2))]
        _assign(result, parts, value)
    return result


def parse_params(request: httpx.Request) -> dict[str, Any]:
    """
    The parameters of a request: its query string, then its body (JSON or form
    data, whatever the method: omise-python sends JSON bodies on GET), the body
    winning. JSON ``null`` means "not given".
    """
    params = parse_pairs(parse_qsl(request.url.query.decode("ascii"), keep_blank_values=True))
    body = request.content
    if body.strip():
        ctype = request.headers.get("Content-Type", "").lower()
        text = body.decode("utf-8", errors="replace")
        if "json" in ctype or ("form" not in ctype and text.lstrip().startswith(("{", "["))):
            try:
                data = json.loads(text)
            except ValueError:
                raise FakeOmiseError(
                    400, "bad_request", "the request body is not valid JSON"
                ) from None
            if not isinstance(data, dict):
                raise FakeOmiseError(400, "bad_request", "the request body must be a JSON object")
        else:
            data = parse_pairs(parse_qsl(text, keep_blank_values=True))
        params.update(data)
    return {k: v for k, v in params.items() if v is not None}


def as_int(value: Any, field: str, code: str = "bad_request") -> int:
    """An integer given as a JSON number or a string of digits."""
    if isinstance(value, bool):
        raise FakeOmiseError(400, code, f"{field} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,18}", value.strip()):
        return int(value.strip())
    raise FakeOmiseError(400, code, f"{field} must be an integer")


def as_str(value: Any, field: str, code: str = "bad_request") -> str:
    """A string (numbers are accepted and written in decimal)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise FakeOmiseError(400, code, f"{field} must be a string")
    return str(value)


def check_amount(value: Any) -> int:
    """An amount in satang within the K PLUS limits (error ``invalid_amount``)."""
    if value is None:
        raise FakeOmiseError(400, "invalid_amount", "amount is required")
    amount = as_int(value, "amount", "invalid_amount")
    if amount < MIN_AMOUNT:
        raise FakeOmiseError(
            400, "invalid_amount", f"amount must be at least {MIN_AMOUNT} (THB20.00)"
        )
    if amount > MAX_AMOUNT:
        raise FakeOmiseError(
            400, "invalid_amount", f"amount must be at most {MAX_AMOUNT} (THB150,000.00)"
        )
    return amount


def check_currency(value: Any, code: str) -> str:
    """THB in any case, returned upper-case."""
    if value is None:
        raise FakeOmiseError(400, code, "currency is required")
    currency = as_str(value, "currency", code).strip().upper()
    if currency != "THB":
        raise FakeOmiseError(400, code, "currency is not supported for mobile_banking_kbank")
    return currency


def check_failure_code(value: Any) -> str:
    """A failure code: lower-case letters, digits and underscores."""
    code = as_str(value, "failure_code").strip()
    if not _FAILURE_CODE.fullmatch(code):
        raise FakeOmiseError(400, "bad_request", "failure_code is not a valid code")
    return code


def failure_message(code: str) -> str:
    """The English message of a failure code."""
    return FAILURE_MESSAGES.get(code, code.replace("_", " "))


# --- records -------------------------------------------------------------------------


@attrs.define(kw_only=True)
class SourceRecord:
    """A source as stored by the fake (mutable; guarded by the fake's lock)."""

    id: str
    amount: int
    currency: str
    platform_type: str | None
    created_at: dt.datetime
    charge_id: str | None = None
    charge_status: str = "unknown"
    provider_reference: str | None = None


@attrs.define(kw_only=True)
class ChargeRecord:
    """A charge as stored by the fake (mutable; guarded by the fake's lock)."""

    id: str
    amount: int
    currency: str
    source_id: str
    description: str | None
    metadata: dict[str, Any]
    return_uri: str
    authorize_uri: str
    created_at: dt.datetime
    expires_at: dt.datetime
    status: str = "pending"
    paid_at: dt.datetime | None = None
    authorized_at: dt.datetime | None = None
    expired_at: dt.datetime | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    transaction: str | None = None
    refunded_amount: int = 0
    source_type: str = SOURCE_TYPE
    event_ids: list[str] = attrs.Factory(list)


def _opt(when: dt.datetime | None) -> str | None:
    return None if when is None else iso(when)


def render_source(source: SourceRecord) -> dict[str, Any]:
    """The JSON of a source, with the fields of the guide's example."""
    return {
        "object": "source",
        "id": source.id,
        "livemode": False,
        "location": f"/sources/{source.id}",
        "amount": source.amount,
        "barcode": None,
        "bank": None,
        "created_at": iso(source.created_at),
        "currency": source.currency,
        "email": None,
        "flow": "app_redirect",
        "installment_term": None,
        "ip": None,
        "absorption_type": None,
        "name": None,
        "mobile_number": None,
        "phone_number": None,
        "platform_type": source.platform_type,
        "scannable_code": None,
        "qr_settings": None,
        "billing": None,
        "shipping": None,
        "items": [],
        "references": None,
        "provider_references": None
        if source.provider_reference is None
        else {"reference_number_1": source.provider_reference, "reference_number_2": None},
        "store_id": None,
        "store_name": None,
        "terminal_id": None,
        "type": SOURCE_TYPE,
        "zero_interest_installments": None,
        "charge_status": source.charge_status,
        "receipt_amount": None,
        "discounts": [],
        "promotion_code": None,
    }


def render_list(
    data: list[Any],
    *,
    location: str,
    offset: int,
    limit: int,
    total: int,
    order: str,
    start: dt.datetime,
    end: dt.datetime,
) -> dict[str, Any]:
    """An Omise list object."""
    return {
        "object": "list",
        "data": data,
        "limit": limit,
        "offset": offset,
        "total": total,
        "location": location,
        "order": order,
        "from": iso(start),
        "to": iso(end),
    }


def render_charge(charge: ChargeRecord, source: SourceRecord, now: dt.datetime) -> dict[str, Any]:
    """
    The JSON of a charge: the fields of the guide's example plus those of the
    charges Omise recorded in 2025 (``authorization_type``, ``authorized_amount``,
    ``captured_amount``, ``linked_account``, ``merchant_advice``,
    ``merchant_advice_code``, ``authorized_at``, ``multi_capture``: omise-php's
    ``charges-get.json``), in that recording's order.
    """
    successful = charge.status == "successful"
    return {
        "object": "charge",
        "id": charge.id,
        "location": f"/charges/{charge.id}",
        "amount": charge.amount,
        "authorization_type": None,
        "authorized_amount": charge.amount,
        "captured_amount": charge.amount,
        "acquirer_reference_number": None,
        "net": charge.amount - FEE - FEE_VAT,
        "fee": FEE,
        "fee_vat": FEE_VAT,
        "interest": 0,
        "interest_vat": 0,
        "funding_amount": charge.amount,
        "refunded_amount": charge.refunded_amount,
        "transaction_fees": {"fee_flat": "10.0", "fee_rate": "0.0", "vat_rate": "7.0"},
        "platform_fee": {"fixed": None, "amount": None, "percentage": None},
        "currency": charge.currency,
        "funding_currency": charge.currency,
        "ip": None,
        "refunds": render_list(
            [],
            location=f"/charges/{charge.id}/refunds",
            offset=0,
            limit=20,
            total=0,
            order="chronological",
            start=EPOCH,
            end=now,
        ),
        "link": None,
        "description": charge.description,
        "metadata": json.loads(json.dumps(charge.metadata)),
        "card": None,
        "source": render_source(source),
        "schedule": None,
        "linked_account": None,
        "customer": None,
        "dispute": None,
        "transaction": charge.transaction,
        "failure_code": charge.failure_code,
        "failure_message": charge.failure_message,
        "merchant_advice": None,
        "merchant_advice_code": None,
        "status": charge.status,
        "authorize_uri": charge.authorize_uri,
        "return_uri": charge.return_uri,
        "created_at": iso(charge.created_at),
        "paid_at": _opt(charge.paid_at),
        "authorized_at": _opt(charge.authorized_at),
        "expires_at": iso(charge.expires_at),
        "expired_at": _opt(charge.expired_at),
        "reversed_at": None,
        "multi_capture": False,
        "zero_interest_installments": False,
        "branch": None,
        "terminal": None,
        "device": None,
        "authorized": successful,
        "capturable": False,
        "capture": True,
        "disputable": False,
        "livemode": False,
        "refundable": False,
        "partially_refundable": False,
        "reversed": False,
        "reversible": False,
        "voided": False,
        "paid": successful,
        "expired": charge.status == "expired",
        "can_perform_void": False,
        "approval_code": None,
    }


def page_bounds(params: Mapping[str, Any]) -> tuple[int, int, str]:
    """``offset``, ``limit`` (default 20, at most 100) and ``order`` of a list request."""
    offset = as_int(params.get("offset", 0), "offset")
    limit = as_int(params.get("limit", 20), "limit")
    order = as_str(params.get("order", "chronological"), "order")
    if offset < 0:
        raise FakeOmiseError(400, "bad_request", "offset must not be negative")
    if limit < 0:
        raise FakeOmiseError(400, "bad_request", "limit must not be negative")
    if order not in ("chronological", "reverse_chronological"):
        raise FakeOmiseError(
            400, "bad_request", "order must be chronological or reverse_chronological"
        )
    return offset, min(limit, 100), order


def time_window(params: Mapping[str, Any], now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """``from`` (default the epoch) and ``to`` (default now) of a list request."""
    start = parse_time(params["from"], "from") if "from" in params else EPOCH
    end = parse_time(params["to"], "to") if "to" in params else now.replace(microsecond=0)
    return start, end


Clock = Callable[[], dt.datetime]
