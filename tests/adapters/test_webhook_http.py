"""
The webhook intake's HTTP wrappers (``kplus_fsm.adapters._webhook_http``,
exported by ``kplus_fsm.adapters.webhooks``): ``asgi_app`` through
httpx.ASGITransport; ``wsgi_app`` behind the real threaded loopback receiver
(``serve``) and called directly.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator, Mapping
from typing import Any
from wsgiref.util import setup_testing_defaults

import httpx
import pytest
from webhook_support import (
    CID,
    OTHER_SECRET,
    StubAPI,
    WithTracker,
    asgi_call,
    event,
    inbox_rows,
    intake_for,
    last_inbox,
    open_payment,
    signed,
)

from kplus_fsm import Tracker
from kplus_fsm.adapters.webhooks import WebhookServer, asgi_app, serve, wsgi_app


class TestASGI(WithTracker):
    """asgi_app driven through httpx.ASGITransport."""

    def test_delivery(self, tracker: Tracker, api: StubAPI) -> None:
        open_payment(tracker, api)
        app = asgi_app(intake_for(tracker, api))
        body = event("pending")
        response = asgi_call(app, "POST", "/webhooks/omise", content=body, headers=signed(body))
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        payload = response.json()
        assert set(payload) == {"outcome", "reason", "inbox_id"}
        assert payload["outcome"] == "applied"
        assert api.calls == [CID]

    def test_forged_delivery(self, tracker: Tracker) -> None:
        app = asgi_app(intake_for(tracker))
        body = event("successful")
        response = asgi_call(
            app, "POST", "/webhooks/omise", content=body, headers=signed(body, (OTHER_SECRET,))
        )
        assert response.status_code == 401
        assert response.json()["inbox_id"] == last_inbox(tracker).id

    def test_routes(self, tracker: Tracker) -> None:
        app = asgi_app(intake_for(tracker), path="/hooks")
        ready = asgi_call(app, "GET", "/")
        assert (ready.status_code, ready.json()) == (200, {"ready": True})
        assert asgi_call(app, "GET", "/hooks").status_code == 405
        assert asgi_call(app, "GET", "/hooks").headers["allow"] == "POST"
        assert asgi_call(app, "POST", "/").status_code == 405
        assert asgi_call(app, "POST", "/webhooks/omise").status_code == 404
        assert asgi_call(app, "GET", "/nope").status_code == 404
        assert inbox_rows(tracker) == []

    def test_too_large_by_content_length(self, tracker: Tracker) -> None:
        app = asgi_app(intake_for(tracker), max_body=100)
        response = asgi_call(app, "POST", "/webhooks/omise", content=b"x" * 101)
        assert response.status_code == 413
        assert "not read, not stored" in response.json()["reason"]
        row = last_inbox(tracker)
        assert (row.outcome, row.raw()) == ("rejected", "")
        assert "101 bytes" in row.reason

    def test_too_large_while_streaming(self, tracker: Tracker) -> None:
        app = asgi_app(intake_for(tracker), max_body=100)

        async def chunks() -> Any:
            for _ in range(5):
                yield b"y" * 30

        response = asgi_call(app, "POST", "/webhooks/omise", content=chunks())
        assert response.status_code == 413
        assert last_inbox(tracker).outcome == "rejected"

    def test_lifespan(self, tracker: Tracker) -> None:
        app = asgi_app(intake_for(tracker))
        incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[Mapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return incoming.pop(0)

        async def send(message: Mapping[str, Any]) -> None:
            sent.append(message)

        asyncio.run(app({"type": "lifespan"}, receive, send))  # type: ignore[arg-type]
        assert [m["type"] for m in sent] == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]


@pytest.fixture
def server(tracker: Tracker, api: StubAPI) -> Iterator[WebhookServer]:
    with serve(intake_for(tracker, api), "127.0.0.1", 0, max_body=4096).start() as srv:
        yield srv


class TestWSGI(WithTracker):
    """wsgi_app behind the real threaded loopback receiver, and called directly."""

    def test_serve_over_loopback(
        self, server: WebhookServer, tracker: Tracker, api: StubAPI
    ) -> None:
        open_payment(tracker, api)
        host, port = server.server_address[:2]
        assert server.url == f"http://127.0.0.1:{port}"
        assert host == "127.0.0.1"
        with httpx.Client(base_url=server.url, timeout=5) as http:
            assert http.get("/").json() == {"ready": True}
            body = event("pending")
            delivered = http.post("/webhooks/omise", content=body, headers=signed(body))
            assert delivered.status_code == 200
            assert delivered.json()["outcome"] == "applied"
            again = http.post("/webhooks/omise", content=body, headers=signed(body))
            assert again.json()["outcome"] == "duplicate"
            forged = http.post(
                "/webhooks/omise", content=body, headers=signed(body, (OTHER_SECRET,))
            )
            assert forged.status_code == 401
            assert http.get("/webhooks/omise").status_code == 405
            assert http.get("/elsewhere").status_code == 404
            big = http.post("/webhooks/omise", content=b"z" * 5000)
            assert big.status_code == 413
            broken = http.post("/webhooks/omise", content=b"{oops", headers=signed(b"{oops"))
            assert broken.status_code == 400
        assert api.calls == [CID]

    def _call(
        self, app: Any, body: bytes, headers: Mapping[str, str], **environ: Any
    ) -> tuple[str, dict[str, Any]]:
        env: dict[str, Any] = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/webhooks/omise",
            "wsgi.input": io.BytesIO(body),
        }
        setup_testing_defaults(env)
        for name, value in headers.items():
            key = name.upper().replace("-", "_")
            env[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value
        env.update(environ)
        status: list[str] = []
        chunks = app(env, lambda s, h, exc_info=None: status.append(s))
        return status[0], json.loads(b"".join(chunks))

    def test_direct_call(self, tracker: Tracker, api: StubAPI) -> None:
        open_payment(tracker, api)
        app = wsgi_app(intake_for(tracker, api))
        body = event("pending")
        headers = {**signed(body), "Content-Length": str(len(body))}
        status, payload = self._call(app, body, headers)
        assert status == "200 OK"
        assert payload["outcome"] == "applied"

    def test_chunked_input_without_length(self, tracker: Tracker, api: StubAPI) -> None:
        open_payment(tracker, api)
        app = wsgi_app(intake_for(tracker, api), max_body=2048)
        body = event("pending")
        status, _ = self._call(app, body, signed(body), **{"wsgi.input_terminated": True})
        assert status == "200 OK"
        status, payload = self._call(app, b"q" * 4096, {}, **{"wsgi.input_terminated": True})
        assert status.startswith("413")
        assert payload["inbox_id"] == last_inbox(tracker).id
