"""
FastAPI: receive Omise webhooks into a kplus_fsm event log.

Run it (configuration comes from the environment, see README.md here)::

    KPLUS_FSM_DB=shop.db OMISE_SECRET_KEY=skey_test_... OMISE_WEBHOOK_SECRET=... \\
        uvicorn --factory fastapi_app:create_app --port 8000

The route hands the *raw* body bytes (the signature covers them, so never parse
and re-serialise first) and the headers to :class:`WebhookIntake`, and answers
with the status it chose: 2xx for anything recorded, so Omise stops retrying.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from kplus_fsm.adapters.webhooks import MAX_BODY, WebhookIntake, intake_from_env


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

    @app.get("/")
    def ready() -> dict[str, Any]:
        return {"ready": True}

    return app
