"""
FastAPI: receive Omise webhooks into a kplus_fsm event log.

Run it (configuration comes from the environment, see README.md here)::

    KPLUS_FSM_DB=shop.db OMISE_SECRET_KEY=skey_test_... OMISE_WEBHOOK_SECRET=... \\
        uvicorn --factory fastapi_app:create_app --port 8000

The route hands the *raw* body bytes (the signature covers them, so never parse
and re-serialise first) and the headers to :class:`WebhookIntake`, and answers
with the status it chose: 2xx for anything recorded, so Omise stops retrying.
``GET /orders/{order_ref}/return`` is the page K PLUS sends the buyer back to
(the ``return_uri`` of the order's charges): it reads the charge now.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from kplus_fsm import Status
from kplus_fsm.adapters.webhooks import MAX_BODY, WebhookIntake, intake_from_env
from kplus_fsm.exceptions import GatewayError


def create_app(intake: WebhookIntake | None = None) -> FastAPI:
    """The application; ``intake`` defaults to one built from the environment."""
    webhooks = intake if intake is not None else intake_from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        webhooks.close()  # closes what intake_from_env opened (event log, API client)

    app = FastAPI(title="shop", lifespan=lifespan)

    @app.post("/webhooks/omise")
    async def omise_webhook(request: Request) -> JSONResponse:
        headers = dict(request.headers)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            result = webhooks.refuse_oversized(headers, size=int(declared), limit=MAX_BODY)
        else:
            body = await request.body()
            # handle() does SQLite and HTTP I/O: keep it off the event loop.
            result = await run_in_threadpool(webhooks.handle, body, headers)
        return JSONResponse(result.to_json(), status_code=result.status)

    @app.get("/orders/{order_ref}/return")
    async def returned(order_ref: str) -> JSONResponse:
        # refresh() calls Omise and writes the log: keep it off the event loop too.
        status, answer = await run_in_threadpool(order_status, webhooks, order_ref)
        return JSONResponse(answer, status_code=status)

    @app.get("/")
    def ready() -> dict[str, Any]:
        return {"ready": True}

    return app


def order_status(intake: WebhookIntake, order_ref: str) -> tuple[int, dict[str, Any]]:
    """
    What the return page says when K PLUS sends the buyer back: the order's
    latest attempt, read from Omise now (``Tracker.refresh``) while it is still
    open, rather than waiting for the webhook. If Omise does not answer, the
    page shows what the log knows; the webhook or reconciliation settles it.
    """
    tracker = intake.tracker
    attempts = tracker.attempts(order_ref)
    if not attempts:
        return 404, {"order_ref": order_ref, "status": None, "paid": False}
    latest = attempts[-1]
    if not latest.is_terminal and intake.client is not None:
        with contextlib.suppress(GatewayError):
            latest = tracker.refresh(intake.client, latest.payment_id).payment or latest
    paid = latest.status is Status.SUCCESSFUL or any(
        a.status is Status.SUCCESSFUL for a in attempts[:-1]
    )
    return 200, {
        "order_ref": order_ref,
        "payment_id": latest.payment_id,
        "status": latest.status.value,
        "paid": paid,
    }
