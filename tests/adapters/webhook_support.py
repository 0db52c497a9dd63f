"""
Shared setup of the webhook intake's tests (``tests/adapters/test_webhooks.py``,
``test_webhook_http.py``): secrets and ids, :class:`StubAPI` (a ChargeAPI that
counts re-fetches), signed test deliveries, and :class:`WithTracker`, the
``tracker`` and ``api`` fixtures as a base class of the test classes.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from kplus_fsm import InboxRow, Tracker
from kplus_fsm.adapters.signatures import signature_headers
from kplus_fsm.adapters.webhooks import ASGIApp, WebhookIntake
from kplus_fsm.testing import FakeClock, charge_json, webhook_json

SECRET = base64.b64encode(b"webhook-secret-0123456789abcdef!").decode()
OLD_SECRET = base64.b64encode(b"the-previous-secret-before-a-roll").decode()
OTHER_SECRET = base64.b64encode(b"someone-else-entirely-0123456789").decode()
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PID = "order-1"
CID = "chrg_test_5xkplus0000000000001"
SKEY = "skey_test_5xsecretsecretsecret01"


class StubAPI:
    """A ChargeAPI that serves charges from a dict and counts re-fetches."""

    def __init__(self) -> None:
        self.charges: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.fail: Exception | None = None

    def create_charge(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        # Webhook intake must never create a charge: fail loudly if it tries.
        raise AssertionError("webhook intake called create_charge")

    def retrieve_charge(self, charge_id: str) -> Mapping[str, Any]:
        self.calls.append(charge_id)
        if self.fail is not None:
            raise self.fail
        return dict(self.charges[charge_id])

    def find_charge(self, payment_id: str) -> Mapping[str, Any] | None:
        return None

    def charges_created(self, *, since: dt.datetime, until: dt.datetime) -> list[Mapping[str, Any]]:
        return []


def open_payment(
    tracker: Tracker, api: StubAPI | None = None, pid: str = PID, cid: str = CID
) -> None:
    """A payment whose charge was created and is pending, here and at the API."""
    tracker.request_payment(payment_id=pid, amount=10_000, return_uri="https://shop.example/r")
    charge = charge_json(payment_id=pid, charge_id=cid)
    tracker.record_charge(charge, origin="create_response")
    if api is not None:
        api.charges[cid] = charge


def event(status: str = "successful", *, event_id: str = "evnt_test_1", **kw: Any) -> bytes:
    charge = charge_json(payment_id=kw.pop("pid", PID), charge_id=kw.pop("cid", CID), status=status)
    return json.dumps(webhook_json(charge, event_id=event_id, **kw)).encode()


def signed(body: bytes, secrets: tuple[str, ...] = (SECRET,), at: float = NOW) -> dict[str, str]:
    return {"Content-Type": "application/json", **signature_headers(body, secrets, int(at))}


def intake_for(tracker: Tracker, api: StubAPI | None = None, **kw: Any) -> WebhookIntake:
    kw.setdefault("secrets", (SECRET,))
    return WebhookIntake(tracker, client=api, now=lambda: NOW, **kw)


def last_inbox(tracker: Tracker) -> InboxRow:
    return list(tracker.store.iter_inbox())[-1]


def inbox_rows(tracker: Tracker) -> list[InboxRow]:
    return list(tracker.store.iter_inbox())


async def _asgi(app: ASGIApp, method: str, url: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        return await c.request(method, url, **kwargs)


def asgi_call(app: ASGIApp, method: str, url: str, **kwargs: Any) -> httpx.Response:
    return asyncio.run(_asgi(app, method, url, **kwargs))


class WithTracker:
    """The fixtures: ``tracker`` on a fresh log file, ``api`` a :class:`StubAPI`."""

    @pytest.fixture
    def tracker(self, db_path: Path, clock: FakeClock) -> Iterator[Tracker]:
        with Tracker(db_path, clock=clock) as t:
            yield t

    @pytest.fixture
    def api(self) -> StubAPI:
        return StubAPI()
