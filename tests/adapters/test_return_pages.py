"""
The return page of docs/integrations/*_app.py (``GET /orders/<order_ref>/return``):
the buyer is back from K PLUS, the page reads the charge now (``Tracker.refresh``)
and says whether the order is paid; an unknown order is a 404; Omise down shows
what the log knows. Each app against the fake Omise, in process.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from kplus_fsm import Status, Tracker
from kplus_fsm.adapters.fake import FakeOmise
from kplus_fsm.adapters.omise import OmiseClient, RetryPolicy
from kplus_fsm.adapters.webhooks import WebhookIntake

ROOT = Path(__file__).resolve().parents[2]
SK, PK = "skey_test_5returnpage000000000001", "pkey_test_5returnpage000000000001"
RETURN_URI = "https://shop.example/orders/{}/return"

#: (status code, JSON) of ``GET path`` on one of the apps.
Get = Callable[[str], tuple[int, dict[str, Any]]]


def _load(name: str) -> ModuleType:
    path = ROOT / "docs" / "integrations" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"kplus_docs_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake() -> Iterator[FakeOmise]:
    with FakeOmise(secret_key=SK, public_key=PK) as fake:
        yield fake


@pytest.fixture
def intake(tmp_path: Path, fake: FakeOmise) -> Iterator[WebhookIntake]:
    api = OmiseClient(secret_key=SK, transport=fake.transport(), retry=RetryPolicy(attempts=1))
    with Tracker(tmp_path / "shop.db") as tracker, api:
        yield WebhookIntake(tracker, client=api)


def flask_get(intake: WebhookIntake) -> Get:
    client = _load("flask_app").create_app(intake).test_client()

    def get(path: str) -> tuple[int, dict[str, Any]]:
        response = client.get(path)
        return response.status_code, response.get_json()

    return get


def fastapi_get(intake: WebhookIntake) -> Get:
    app = _load("fastapi_app").create_app(intake)

    async def call(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            return await client.get(path)

    def get(path: str) -> tuple[int, dict[str, Any]]:
        response = asyncio.run(call(path))
        return response.status_code, response.json()

    return get


def django_get(intake: WebhookIntake) -> Get:
    module = _load("django_app")
    import django  # type: ignore[import-untyped]
    from django.test import Client  # type: ignore[import-untyped]
    from django.urls import clear_url_caches  # type: ignore[import-untyped]

    django.setup()
    clear_url_caches()  # the URLconf of this load, not of an earlier one
    module.set_intake(intake)
    client = Client()

    def get(path: str) -> tuple[int, dict[str, Any]]:
        response = client.get(path)
        return response.status_code, response.json()

    return get


APPS = {"flask": flask_get, "fastapi": fastapi_get, "django": django_get}


@pytest.fixture(autouse=True)
def _forget_django_urls() -> Iterator[None]:
    """Leave no cached URLconf of this module's loads to the tests that follow."""
    yield
    if "django.urls" in sys.modules:
        from django.urls import clear_url_caches

        clear_url_caches()


@pytest.mark.parametrize("app", sorted(APPS))
def test_the_return_page_reads_the_charge_now(
    app: str, intake: WebhookIntake, fake: FakeOmise
) -> None:
    get = APPS[app](intake)
    tracker = intake.tracker
    assert intake.client is not None
    made = tracker.create_charge(
        intake.client, order_ref="order-42", amount=35_000, return_uri=RETURN_URI.format(42)
    )
    assert made.payment is not None
    assert made.payment.charge_id is not None

    assert get("/orders/order-42/return") == (
        200,
        {"order_ref": "order-42", "payment_id": "order-42.1", "status": "pending", "paid": False},
    )
    fake.drop_next()  # the completion webhook never comes: the page does not need it
    fake.mark_as_paid(made.payment.charge_id)
    assert get("/orders/order-42/return") == (
        200,
        {"order_ref": "order-42", "payment_id": "order-42.1", "status": "successful", "paid": True},
    )
    assert tracker.get("order-42.1").status is Status.SUCCESSFUL
    polls = [e for e in tracker.timeline("order-42.1") if e.origin == "poll"]
    assert [p.outcome for p in polls] == ["duplicate", "applied"]

    reads = len(polls)
    assert get("/orders/order-42/return")[1]["paid"] is True  # settled: no more reads
    assert len([e for e in tracker.timeline("order-42.1") if e.origin == "poll"]) == reads

    status, answer = get("/orders/no-such-order/return")
    assert (status, answer["status"], answer["paid"]) == (404, None, False)


@pytest.mark.parametrize("app", sorted(APPS))
def test_omise_down_shows_what_the_log_knows(
    app: str, intake: WebhookIntake, fake: FakeOmise
) -> None:
    get = APPS[app](intake)
    assert intake.client is not None
    intake.tracker.create_charge(
        intake.client, order_ref="order-43", amount=35_000, return_uri=RETURN_URI.format(43)
    )
    fake.inject_fault("GET /charges/:id", "error", status=503, times=5)
    assert get("/orders/order-43/return") == (
        200,
        {"order_ref": "order-43", "payment_id": "order-43.1", "status": "pending", "paid": False},
    )
