"""
The docs' shipping handlers, taken from the pages themselves (the quickstart's
``ship``, the same function in README.md, and going-live's ``shop_fulfil.py``),
driven by a consumer through every route by which a payment becomes
``successful``: a webhook (and a redelivery of it), the return page's refresh,
reconciliation, a create whose answer was lost and that the buyer paid, and two
corrections (expired, then Omise says paid: by a re-read, and by a webhook).
Each paid order ships exactly once; declined and expired ones never do.
"""

from __future__ import annotations

import ast
import base64
import datetime as dt
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from docs_blocks import ROOT, blocks_of

from kplus_fsm import Status, StoredEvent, Tracker
from kplus_fsm.adapters.fake import FakeOmise
from kplus_fsm.adapters.omise import OmiseClient, RetryPolicy
from kplus_fsm.adapters.webhooks import WebhookIntake

SK, PK = "skey_test_5shipping00000000000001", "pkey_test_5shipping00000000000001"
WEBHOOK_SECRET = base64.b64encode(b"the shipping test's webhook key!").decode()


def function_from_page(page: str, name: str) -> ast.Module:
    """The imports and the function ``name`` of the page's python block defining it."""
    for block in blocks_of(ROOT / page):
        if block.lang != "python" or f"def {name}(" not in block.code:
            continue
        tree = ast.parse(block.code)
        kept: list[ast.stmt] = [
            node
            for node in tree.body
            if isinstance(node, ast.Import | ast.ImportFrom)
            or (isinstance(node, ast.FunctionDef) and node.name == name)
        ]
        assert any(isinstance(n, ast.FunctionDef) for n in kept)
        return ast.Module(body=kept, type_ignores=[])
    raise AssertionError(f"{page} defines no {name}()")


def the_function(module: ast.Module) -> str:
    return next(ast.dump(n) for n in module.body if isinstance(n, ast.FunctionDef))


def titled_block(page: str, title: str) -> str:
    for block in blocks_of(ROOT / page):
        if block.title == title:
            return block.code
    raise AssertionError(f"{page} has no block {title}")


class Shop:
    """The fake Omise delivering signed webhooks to the intake, the tracker, the API."""

    def __init__(self, db: Path) -> None:
        self.tracker = Tracker(db)
        self.fake = FakeOmise(
            secret_key=SK,
            public_key=PK,
            webhook_receiver=self._receive,
            webhook_secrets=[WEBHOOK_SECRET],
            # The routes below end abandoned charges `expired` (the charge's own
            # expiry), not the default model's bank timeout (`failed`).
            expiry_model="lifetime",
        )
        self.api = OmiseClient(
            secret_key=SK, transport=self.fake.transport(), retry=RetryPolicy(base_delay=0.001)
        )
        self.intake = WebhookIntake(self.tracker, client=self.api, secrets=[WEBHOOK_SECRET])

    def _receive(self, request: httpx.Request) -> httpx.Response:
        result = self.intake.handle(request.content, request.headers)
        return httpx.Response(result.status, json=result.to_json())

    def order(self, order_ref: str) -> str:
        """A pending attempt for ``order_ref``; its charge id."""
        made = self.tracker.create_charge(
            self.api,
            order_ref=order_ref,
            amount=35_000,
            return_uri=f"https://shop.example/orders/{order_ref}/return",
        )
        self.fake.flush()
        assert made.status is Status.PENDING, made.reason
        assert made.payment is not None
        assert made.payment.charge_id is not None
        return made.payment.charge_id

    def close(self) -> None:
        self.fake.close()
        self.api.close()
        self.tracker.close()


def drive_every_route(shop: Shop, consume: Callable[[], object]) -> dict[str, str]:
    """Pay orders by every route, consuming in between; the expected end of each."""
    fake, tracker, api = shop.fake, shop.tracker, shop.api
    expected: dict[str, str] = {}

    # 1. The completion webhook, delivered three times.
    charge = shop.order("by-webhook")
    fake.duplicate_next(3)
    fake.mark_as_paid(charge)
    fake.flush()
    expected["by-webhook"] = "successful"
    consume()

    # 2. The webhook is lost; the return page reads the charge now.
    charge = shop.order("by-return-page")
    fake.drop_next()
    fake.mark_as_paid(charge)
    fake.flush()
    tracker.refresh(api, "by-return-page.1")
    expected["by-return-page"] = "successful"

    # 3. The webhook is lost; reconciliation re-reads the quiet charge.
    charge = shop.order("by-reconcile")
    fake.drop_next()
    fake.mark_as_paid(charge)
    fake.flush()
    report = tracker.reconcile(api, pending_threshold=dt.timedelta(0))
    assert report.errors == 0
    expected["by-reconcile"] = "successful"
    consume()

    # 4. The create's answer is lost and nothing finds the charge; the buyer pays it;
    #    reconciliation finds it paid: created -> successful, no pending in between.
    fake.drop_next()  # its charge.create webhook too
    fake.inject_fault("POST /charges", "commit_then_drop")
    fake.inject_fault("GET /search", "error", status=400, code="bad_request")
    fake.inject_fault("GET /charges", "error", status=400, code="bad_request")
    lost = tracker.create_charge(
        api, order_ref="by-lost-create", amount=35_000, return_uri="https://shop.example/r"
    )
    assert lost.status is Status.CREATED
    fake.flush()
    [made] = [c for c in fake.charges() if c["metadata"]["order_ref"] == "by-lost-create"]
    fake.drop_next()
    fake.mark_as_paid(made["id"])
    fake.flush()
    tracker.reconcile(api)
    assert tracker.get("by-lost-create.1").status is Status.SUCCESSFUL
    expected["by-lost-create"] = "successful"

    # 5. Expired by our reading, then Omise says paid: a correction, by a re-read...
    charge = shop.order("by-correction-read")
    fake.expire(charge)
    fake.flush()
    assert tracker.get("by-correction-read.1").status is Status.EXPIRED
    consume()  # the consumer sees the expiry first: nothing to ship yet
    fake.drop_next()
    fake.mark_as_paid(charge, force=True)
    fake.flush()
    tracker.refresh(api, charge)
    expected["by-correction-read"] = "successful"

    # 6. ...and by the late webhook's re-fetch.
    charge = shop.order("by-correction-webhook")
    fake.expire(charge)
    fake.flush()
    fake.mark_as_paid(charge, force=True)
    fake.flush()
    expected["by-correction-webhook"] = "successful"

    # Never paid: declined, expired.
    fake.mark_as_failed(shop.order("declined"), failure_code="insufficient_fund")
    fake.expire(shop.order("abandoned"))
    fake.flush()
    expected["declined"] = "failed"
    expected["abandoned"] = "expired"
    consume()
    for order, status in expected.items():
        assert tracker.get(f"{order}.1").status.value == status, order
    corrected = [o for o in expected if "corrected" in tracker.get(f"{o}.1").flags]
    assert corrected == ["by-correction-read", "by-correction-webhook"]
    return expected


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    shop = Shop(tmp_path / "kplus.db")
    try:
        yield shop
    finally:
        shop.close()


def paid_orders(expected: dict[str, str]) -> list[str]:
    return sorted(o for o, status in expected.items() if status == "successful")


class TestQuickstartHandler:
    """The quickstart's ``ship`` (and README's, the same function)."""

    def test_readme_shows_the_same_handler(self) -> None:
        quickstart = function_from_page("docs/quickstart.md", "ship")
        readme = function_from_page("README.md", "ship")
        assert the_function(readme) == the_function(quickstart)

    def test_ships_every_route_once(self, shop: Shop) -> None:
        namespace: dict[str, Any] = {"tracker": shop.tracker, "shipped": []}
        code = compile(function_from_page("docs/quickstart.md", "ship"), "quickstart", "exec")
        exec(code, namespace)
        signals: Counter[str] = Counter()

        def handler(event: StoredEvent) -> None:
            if event.to_status is Status.SUCCESSFUL:
                signals[event.stream] += 1
            namespace["ship"](event)

        consumer = shop.tracker.consumer("shipping", start="beginning")
        expected = drive_every_route(shop, lambda: consumer.process(handler))
        consumer.process(handler)
        assert consumer.process(handler) == 0  # nothing new: nothing shipped twice
        paid = paid_orders(expected)
        assert sorted(namespace["shipped"]) == paid
        assert len(namespace["shipped"]) == len(paid)
        # The signal itself fired once per paid payment, whatever the route.
        assert signals == Counter({f"{o}.1": 1 for o in paid})


class TestGoingLiveHandler:
    """going-live's ``shop_fulfil.py``, as ``kplus-fsm consume`` would import it."""

    def test_ships_every_route_once(
        self, shop: Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        module = ModuleType("shop_fulfil")
        exec(
            compile(titled_block("docs/going-live.md", "shop_fulfil.py"), "shop_fulfil", "exec"),
            module.__dict__,
        )
        consumer = shop.tracker.consumer("shipping", start="beginning")
        expected = drive_every_route(shop, lambda: consumer.process(module.ship))
        consumer.process(module.ship)
        with sqlite3.connect(tmp_path / module.ORDERS_DB) as db:
            rows = db.execute("SELECT order_ref, payment_id FROM shipments").fetchall()
        assert sorted(rows) == [(o, f"{o}.1") for o in paid_orders(expected)]
