"""
The inputs every side of the benchmark writes: realistic ~2 KB Omise charges
and webhook deliveries, generated outside the timed parts.

One payment is four inputs, each appending exactly one domain event:

1. the merchant's request (``payment.requested``),
2. the create response, a pending charge (``charge.pending``),
3. the signed ``charge.complete`` webhook, recorded as a hint
   (``webhook.accepted``),
4. the receiver's re-fetch, the successful charge (``charge.successful``).

:class:`Step` carries what each side needs: the input as received (a JSON value
or the raw webhook bytes), and for the raw writer the event payload and the
projection fields a hand-written tool would store.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import structlog

from kplus_fsm.adapters.signatures import signature_headers
from kplus_fsm.testing import charge_json, webhook_json

#: The webhook secret (base64) every intake of the benchmark uses.
WEBHOOK_SECRET: Final = "YmVuY2htYXJrLXdlYmhvb2stc2VjcmV0LTMyYnl0ZXMh"
RETURN_URI: Final = "https://shop.example/orders/return"
START: Final = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
SIGNED_AT: Final = int(START.timestamp())


def quiet_logging() -> None:
    """
    Log lines are the host's business: measured without them (WARNING and up
    only), configured as structlog's performance notes advise a production host
    (its loggers built once, on first use, instead of once per line).
    """
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )
    logging.getLogger().setLevel(logging.WARNING)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def payment_id(n: int, prefix: str = "order") -> str:
    return f"{prefix}-{n:08d}"


def charge_id(pid: str) -> str:
    """An Omise-shaped charge id (prefix + 19 characters) derived from the payment id."""
    return "chrg_test_" + pid.replace("-", "")[-19:].rjust(19, "0")


def full_charge(pid: str, status: str, *, amount: int = 35_000) -> dict[str, Any]:
    """
    A ``mobile_banking_kbank`` charge as the API returns it (~2 KB of JSON):
    :func:`kplus_fsm.testing.charge_json` with every field the real object
    carries (fees, refunds list, the full source), as the fake Omise serves it.
    """
    cid = charge_id(pid)
    charge = charge_json(
        payment_id=pid,
        charge_id=cid,
        status=status,
        amount=amount,
        created_at=START,
        return_uri=RETURN_URI,
    )
    paid = status == "successful"
    charge.update(
        {
            "acquirer_reference_number": None,
            "net": amount - 1070,
            "fee": 1000,
            "fee_vat": 70,
            "interest": 0,
            "interest_vat": 0,
            "funding_amount": amount,
            "transaction_fees": {"fee_flat": "10.0", "fee_rate": "0.0", "vat_rate": "7.0"},
            "platform_fee": {"fixed": None, "amount": None, "percentage": None},
            "funding_currency": "THB",
            "ip": None,
            "refunds": {
                "object": "list",
                "data": [],
                "limit": 20,
                "offset": 0,
                "total": 0,
                "location": f"/charges/{cid}/refunds",
                "order": "chronological",
                "from": "1970-01-01T00:00:00Z",
                "to": _iso(START),
            },
            "link": None,
            "card": None,
            "schedule": None,
            "customer": None,
            "dispute": None,
            "transaction": ("trxn_test_" + cid[-19:]) if paid else None,
            "reversed_at": None,
            "zero_interest_installments": False,
            "branch": None,
            "terminal": None,
            "device": None,
            "capturable": False,
            "disputable": False,
            "refundable": False,
            "partially_refundable": False,
            "reversed": False,
            "reversible": False,
            "voided": False,
            "can_perform_void": False,
            "approval_code": None,
        }
    )
    source = dict(charge["source"])
    source.update(
        {
            "livemode": False,
            "location": f"/sources/{source['id']}",
            "barcode": None,
            "bank": None,
            "created_at": _iso(START),
            "email": None,
            "installment_term": None,
            "ip": None,
            "absorption_type": None,
            "name": None,
            "mobile_number": None,
            "phone_number": None,
            "platform_type": "IOS",
            "scannable_code": None,
            "billing": None,
            "shipping": None,
            "items": [],
            "references": None,
            "provider_references": {
                "reference_number_1": "qCwDpJDaIyQGMzqA",
                "reference_number_2": None,
            },
            "store_id": None,
            "store_name": None,
            "terminal_id": None,
            "zero_interest_installments": None,
            "receipt_amount": None,
            "discounts": [],
        }
    )
    charge["source"] = source
    return charge


def completion_event(pid: str, *, event_id: str | None = None) -> dict[str, Any]:
    """The ``charge.complete`` event of a paid payment, as ``GET /events`` lists it."""
    eid = event_id or ("evnt_test_" + pid.replace("-", "")[-19:].rjust(19, "0"))
    return webhook_json(
        full_charge(pid, "successful"),
        key="charge.complete",
        event_id=eid,
        created_at=_iso(START),
    )


def signed_delivery(envelope: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """A webhook body as POSTed by Omise, with its headers (signed at ``SIGNED_AT``)."""
    body = json.dumps(envelope).encode()
    headers = {
        "content-type": "application/json",
        "user-agent": "Omise/2019-05-29",
        **{k.lower(): v for k, v in signature_headers(body, [WEBHOOK_SECRET], SIGNED_AT).items()},
    }
    return body, headers


@dataclass(frozen=True, slots=True)
class Step:
    """One input, as every side receives it, and what the raw writer stores for it."""

    kind: str  # "request", "charge" or "webhook"
    payment_id: str
    charge_id: str | None
    origin: str
    #: the input: a JSON value (request fields, a charge), or the raw webhook bytes
    body: dict[str, Any] | bytes
    headers: dict[str, str] | None
    event_kind: str
    #: the raw writer's event payload (the same facts the library's event carries)
    event_data: dict[str, Any]
    #: the payment's status after this input
    status: str


def _charge_facts(charge: dict[str, Any], origin: str, before: str) -> dict[str, Any]:
    return {
        "authorize_uri": charge["authorize_uri"],
        "charge_id": charge["id"],
        "expires_at": charge["expires_at"],
        "failure_code": charge["failure_code"],
        "failure_message": charge["failure_message"],
        "from": before,
        "livemode": charge["livemode"],
        "origin": origin,
        "paid_at": charge["paid_at"],
        "status": charge["status"],
    }


def payment_steps(n: int, prefix: str = "order") -> list[Step]:
    """The four inputs of payment number ``n``."""
    pid = payment_id(n, prefix)
    cid = charge_id(pid)
    request = {
        "payment_id": pid,
        "amount": 35_000,
        "currency": "THB",
        "return_uri": RETURN_URI,
        "platform_type": "IOS",
        "description": None,
        "metadata": {"order": pid.rsplit("-", 1)[-1]},
    }
    pending = full_charge(pid, "pending")
    done = full_charge(pid, "successful")
    envelope = completion_event(pid)
    body, headers = signed_delivery(envelope)
    return [
        Step(
            "request", pid, None, "merchant", request, None, "payment.requested", request, "created"
        ),
        Step(
            "charge",
            pid,
            cid,
            "create_response",
            pending,
            None,
            "charge.pending",
            _charge_facts(pending, "create_response", "created"),
            "pending",
        ),
        Step(
            "webhook",
            pid,
            cid,
            "webhook",
            body,
            headers,
            "webhook.accepted",
            {"event_id": envelope["id"], "key": envelope["key"], "status": "successful"},
            "pending",
        ),
        Step(
            "charge",
            pid,
            cid,
            "refetch",
            done,
            None,
            "charge.successful",
            _charge_facts(done, "refetch", "pending"),
            "successful",
        ),
    ]


def steps(payments: int, *, start: int = 0, prefix: str = "order") -> list[Step]:
    """The inputs of ``payments`` payments, payment after payment."""
    out: list[Step] = []
    for n in range(start, start + payments):
        out.extend(payment_steps(n, prefix))
    return out


def iter_steps(payments: int, *, start: int = 0, prefix: str = "order") -> Iterator[Step]:
    """Like :func:`steps`, generated lazily (for large logs)."""
    for n in range(start, start + payments):
        yield from payment_steps(n, prefix)


def input_bytes(step: Step) -> int:
    """The size of the input as received."""
    if isinstance(step.body, bytes):
        return len(step.body)
    return len(json.dumps(step.body, separators=(",", ":")))
