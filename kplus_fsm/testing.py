"""
Helpers for testing code that embeds kplus_fsm: a controllable clock and
builders of Omise-shaped charge objects, error objects and webhook events.

The builders follow the shapes of Omise's recorded fixtures (2019-05-29 API
version); every field can be overridden.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from collections.abc import Mapping
from typing import Any

from ._model import METADATA_PAYMENT_ID
from ._time import omise_time

__all__ = ["FakeClock", "charge_json", "error_json", "webhook_json"]


def _random_id(prefix: str) -> str:
    """An id shaped like Omise's: a prefix and 19 lower-case letters and digits."""
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(19))


class FakeClock:
    """
    A clock that only moves when told to. Thread-safe. Call it to read the time.

    >>> clock = FakeClock()
    >>> clock.advance(minutes=10)
    """

    def __init__(self, start: dt.datetime | str = "2026-01-01T00:00:00+00:00") -> None:
        now = dt.datetime.fromisoformat(start) if isinstance(start, str) else start
        if now.tzinfo is None:
            now = now.replace(tzinfo=dt.UTC)
        self._now = now
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            return self._now

    def advance(self, delta: dt.timedelta | None = None, **kwargs: float) -> dt.datetime:
        """Move forward by ``delta`` or ``timedelta(**kwargs)``; return the new time."""
        step = delta if delta is not None else dt.timedelta(**kwargs)
        if step < dt.timedelta(0):
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += step
            return self._now

    def set(self, when: dt.datetime) -> None:
        """Jump to ``when`` (not before the current time)."""
        with self._lock:
            if when < self._now:
                raise ValueError("a clock does not go backwards")
            self._now = when


def charge_json(
    *,
    payment_id: str | None,
    charge_id: str | None = None,
    status: str = "pending",
    amount: int = 10_000,
    currency: str = "THB",
    livemode: bool = False,
    failure_code: str | None = None,
    failure_message: str | None = None,
    created_at: dt.datetime | None = None,
    expires_in: dt.timedelta = dt.timedelta(minutes=10),
    return_uri: str = "https://shop.example/return",
    **overrides: Any,
) -> dict[str, Any]:
    """An Omise charge object for a ``mobile_banking_kbank`` source."""
    created = created_at or dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cid = charge_id or _random_id("chrg_test_")
    terminal = status in ("successful", "failed", "expired")
    if status == "failed" and failure_code is None:
        failure_code = "payment_rejected"
    charge: dict[str, Any] = {
        "object": "charge",
        "id": cid,
        "location": f"/charges/{cid}",
        "livemode": livemode,
        "amount": amount,
        "currency": currency.lower() if currency == "thb" else currency,
        "description": None,
        "metadata": {} if payment_id is None else {METADATA_PAYMENT_ID: payment_id},
        "status": status,
        "authorized": status == "successful",
        "paid": status == "successful",
        "paid_at": omise_time(created) if status == "successful" else None,
        "capture": True,
        "authorize_uri": f"https://pay.omise.test/offsites/{cid}/pay",
        "return_uri": return_uri,
        "failure_code": failure_code,
        "failure_message": failure_message
        or (f"payment failed: {failure_code}" if failure_code else None),
        "expired": status == "expired",
        "expired_at": omise_time(created + expires_in) if terminal else None,
        "expires_at": omise_time(created + expires_in),
        "created_at": omise_time(created),
        "refunded_amount": 0,
        "source": {
            "object": "source",
            "id": "src_test_" + cid.rsplit("_", 1)[-1],
            "type": "mobile_banking_kbank",
            "flow": "app_redirect",
            "amount": amount,
            "currency": currency.upper(),
            "charge_status": status,
            "platform_type": None,
        },
    }
    charge.update(overrides)
    return charge


def error_json(code: str = "invalid_charge", message: str = "charge is invalid") -> dict[str, Any]:
    """An Omise error object."""
    return {
        "object": "error",
        "location": "https://www.omise.co/api-errors#" + code.replace("_", "-"),
        "code": code,
        "message": message,
    }


def webhook_json(
    charge: Mapping[str, Any],
    *,
    key: str = "charge.complete",
    event_id: str | None = None,
    created_at: str = "2026-01-01T00:00:00Z",
) -> dict[str, Any]:
    """An Omise event envelope carrying ``charge``, as POSTed to a webhook endpoint."""
    eid = event_id or _random_id("evnt_test_")
    return {
        "object": "event",
        "id": eid,
        "livemode": charge.get("livemode", False),
        "location": f"/events/{eid}",
        "key": key,
        "created_at": created_at,
        "data": dict(charge),
        "webhook_deliveries": [],
    }
