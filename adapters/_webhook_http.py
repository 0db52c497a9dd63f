"""
The HTTP wrappers of the webhook intake: an ASGI 3 application
(:func:`asgi_app`), a WSGI application (:func:`wsgi_app`) and a threaded
wsgiref receiver (:class:`WebhookServer`, :func:`serve`): routing (``POST
<path>`` takes deliveries, ``GET /`` is ready, anything else 404/405), reading
the body, and writing the intake's answer as JSON.

Invariants: every request gets an answer (a bug in the intake is a 500, never a
dropped connection), except an ASGI client that went away mid-body; a body
over ``max_body`` is never read, nor stored; a body an ASGI server cut off
(the client went away, or the body timeout passed) and a chunked body wsgiref
cannot decode are recorded as refused, never checked as a signature (a partial
body is never taken for a forgery).

The wrappers know the intake only through the :class:`Intake` protocol, which
:class:`~kplus_fsm.adapters.webhooks.WebhookIntake` satisfies: ``webhooks``
imports this module (and re-exports its public names), never the other way.
Private to :mod:`kplus_fsm.adapters`; import these names from
:mod:`kplus_fsm.adapters.webhooks`.
"""

from __future__ import annotations

import asyncio
import http
import json
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from socketserver import ThreadingMixIn
from typing import Any, Final, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import structlog

# The intake's logger: where these lines were logged before the wrappers had
# their own module.
log = structlog.get_logger("kplus_fsm.adapters.webhooks")

#: Where the wrappers accept deliveries.
DEFAULT_PATH: Final = "/webhooks/omise"
#: The largest body the wrappers read (1 MiB; an Omise event is a few KiB).
MAX_BODY: Final = 1 << 20

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application."""


class Answer(Protocol):
    """The intake's answer to one delivery, as the wrappers write it."""

    @property
    def status(self) -> int: ...

    def to_json(self) -> dict[str, Any]: ...


class Intake(Protocol):
    """What the wrappers call (``WebhookIntake``'s methods of the same names)."""

    def handle(self, body: bytes | str, headers: Mapping[str, str]) -> Answer: ...

    def refuse_oversized(
        self, headers: Mapping[str, str], *, size: int | None, limit: int
    ) -> Answer: ...

    def refuse_unread(
        self, body: bytes, headers: Mapping[str, str], *, reason: str, status: int
    ) -> Answer: ...


def _json_bytes(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def _route_error(status: int) -> dict[str, Any]:
    return {"outcome": None, "reason": http.HTTPStatus(status).phrase, "inbox_id": None}


def _route(method: str, route: str, path: str) -> tuple[int, dict[str, Any], str | None] | None:
    """The answer for anything but a delivery: (status, body, Allow), or None."""
    if route == path:
        if method == "POST":
            return None
        return 405, _route_error(405), "POST"
    if route == "/":
        if method in ("GET", "HEAD"):
            return 200, {"ready": True}, None
        return 405, _route_error(405), "GET, HEAD"
    return 404, _route_error(404), None


def asgi_app(intake: Intake, *, path: str = DEFAULT_PATH, max_body: int = MAX_BODY) -> ASGIApp:
    """
    An ASGI 3 application: ``POST <path>`` takes deliveries, ``GET /`` answers
    ``{"ready": true}``, anything else 404/405. Bodies are read fully, up to
    ``max_body`` bytes (413 beyond); chunked bodies arrive decoded from the
    server. A body the client stopped sending (or the server cut off, see
    :data:`TIMEOUT_EXTENSION`) is recorded as refused, never checked as a
    signature. Every call into the intake runs in a worker thread (SQLite and
    HTTP I/O): the loop's default executor bounds them. Lifespan events are
    accepted.

    ``intake`` is a :class:`~kplus_fsm.adapters.webhooks.WebhookIntake` (any
    object with its ``handle``, ``refuse_oversized`` and ``refuse_unread``).
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method = str(scope.get("method", "GET")).upper()
        route = str(scope.get("path", "/"))
        root = str(scope.get("root_path", ""))
        if root and route.startswith(root):
            route = route[len(root) :] or "/"
        routed = _route(method, route, path)
        if routed is not None:
            status, payload, allow = routed
            await _asgi_respond(send, status, payload, allow=allow, head=method == "HEAD")
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", []):
            name = bytes(raw_name).decode("latin-1")
            value = bytes(raw_value).decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        declared = _content_length(headers)
        complete = True
        try:
            if declared is not None and declared > max_body:
                result = await asyncio.to_thread(
                    intake.refuse_oversized, headers, size=declared, limit=max_body
                )
            else:
                body, complete = await _asgi_body(receive, max_body)
                if body is None:
                    result = await asyncio.to_thread(
                        intake.refuse_oversized, headers, size=None, limit=max_body
                    )
                elif not complete:
                    timed_out = scope.get("extensions", {}).get(TIMEOUT_EXTENSION)
                    result = await asyncio.to_thread(
                        intake.refuse_unread,
                        body,
                        headers,
                        reason=_cut_reason(len(body), declared, timed_out),
                        status=408 if timed_out is not None else 400,
                    )
                else:
                    result = await asyncio.to_thread(intake.handle, body, headers)
        except Exception as exc:  # a bug must still get an answer
            log.exception("webhook_intake_crashed", error=type(exc).__name__)
            await _asgi_respond(send, 500, _route_error(500))
            return
        if complete:  # a client that went away gets no answer
            await _asgi_respond(send, result.status, result.to_json())

    return app


#: The ASGI ``scope["extensions"]`` key a server sets (to the timeout, in
#: seconds) when it cut a request's body off because it was too slow to arrive
#: (``kplus-fsm serve`` does): the cut delivery is then recorded as timed out.
TIMEOUT_EXTENSION: Final = "kplus_fsm.body_timeout"


def _cut_reason(received: int, declared: int | None, timed_out: object) -> str:
    of = f" of {declared}" if declared is not None else ""
    how = (
        f"timed out after {float(timed_out):g} s"
        if isinstance(timed_out, int | float)
        else ("was closed")
    )
    return (
        f"body incomplete: {received}{of} bytes arrived before the connection {how}: "
        "not processed, signature not checked"
    )


async def _asgi_body(receive: Receive, max_body: int) -> tuple[bytes | None, bool]:
    """
    ``(body, complete)``: the whole body and ``True``; what arrived and
    ``False`` when the client went away (or the server cut it off) first;
    ``(None, True)`` once it grows past ``max_body``.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > max_body:
            return None, True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


async def _asgi_respond(
    send: Send,
    status: int,
    payload: Mapping[str, Any],
    *,
    allow: str | None = None,
    head: bool = False,
) -> None:
    body = _json_bytes(payload)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    if allow is not None:
        headers.append((b"allow", allow.encode("ascii")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _content_length(headers: Mapping[str, str]) -> int | None:
    for name, value in headers.items():
        if name.lower() == "content-length":
            try:
                return max(int(value.strip()), 0)
            except ValueError:
                return None
    return None


def wsgi_app(
    intake: Intake, *, path: str = DEFAULT_PATH, max_body: int = MAX_BODY
) -> WSGIApplication:
    """
    A WSGI application: ``POST <path>`` takes deliveries, ``GET /`` answers
    ``{"ready": true}``, anything else 404/405. The body is read fully, up to
    ``max_body`` bytes (413 beyond, judged on ``Content-Length`` before reading).
    A chunked body is read when the server decodes it (``wsgi.input_terminated``:
    gunicorn, waitress …) and refused with 411 otherwise (wsgiref, so
    :func:`serve`), never read as empty.

    ``intake`` is a :class:`~kplus_fsm.adapters.webhooks.WebhookIntake` (any
    object with its ``handle``, ``refuse_oversized`` and ``refuse_unread``).
    """

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        route = str(environ.get("PATH_INFO") or "/")
        routed = _route(method, route, path)
        if routed is not None:
            status, payload, allow = routed
            return _wsgi_respond(
                start_response, status, payload, allow=allow, head=method == "HEAD"
            )
        headers = _wsgi_headers(environ)
        try:
            declared = _content_length(headers)
            if declared is None and _unterminated_chunked(environ, headers):
                result = intake.refuse_unread(b"", headers, reason=CHUNKED_REFUSED, status=411)
            elif declared is not None and declared > max_body:
                result = intake.refuse_oversized(headers, size=declared, limit=max_body)
            else:
                body = _wsgi_body(environ, declared, max_body)
                if body is None:
                    result = intake.refuse_oversized(headers, size=None, limit=max_body)
                else:
                    result = intake.handle(body, headers)
        except Exception as exc:  # a bug must still get an answer
            log.exception("webhook_intake_crashed", error=type(exc).__name__)
            return _wsgi_respond(start_response, 500, _route_error(500))
        return _wsgi_respond(start_response, result.status, result.to_json())

    return app


def _wsgi_headers(environ: WSGIEnvironment) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").title()
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key.replace("_", "-").title()
        else:
            continue
        if value:
            headers[name] = str(value)
    return headers


#: Why a chunked delivery is refused (411) by a WSGI server that does not decode
#: chunked bodies (wsgiref): without it, the body would read as empty and its
#: signature would fail, recording a genuine delivery as a forgery.
CHUNKED_REFUSED: Final = (
    "length required: a chunked body that this WSGI server does not decode "
    "(wsgi.input_terminated unset): not read, not stored; send Content-Length"
)


def _unterminated_chunked(environ: WSGIEnvironment, headers: Mapping[str, str]) -> bool:
    coding = next((v for k, v in headers.items() if k.lower() == "transfer-encoding"), "")
    return "chunked" in coding.lower() and not environ.get("wsgi.input_terminated")


def _wsgi_body(environ: WSGIEnvironment, declared: int | None, max_body: int) -> bytes | None:
    stream = environ["wsgi.input"]
    if declared is None:
        if not environ.get("wsgi.input_terminated"):
            return b""  # PEP 3333: no Content-Length, nothing to read
        data = stream.read(max_body + 1)
        return None if len(data) > max_body else bytes(data)
    chunks: list[bytes] = []
    remaining = declared
    while remaining > 0:
        chunk = stream.read(min(remaining, 65536))
        if not chunk:
            break  # the client went away: what arrived is recorded (and refused)
        chunks.append(bytes(chunk))
        remaining -= len(chunk)
    return b"".join(chunks)


def _wsgi_respond(
    start_response: StartResponse,
    status: int,
    payload: Mapping[str, Any],
    *,
    allow: str | None = None,
    head: bool = False,
) -> list[bytes]:
    body = _json_bytes(payload)
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if allow is not None:
        headers.append(("Allow", allow))
    start_response(f"{status} {http.HTTPStatus(status).phrase}", headers)
    return [] if head else [body]


# --------------------------------------------------------------- the receiver


class _QuietHandler(WSGIRequestHandler):
    """wsgiref's handler without the per-request line on stderr."""

    #: TCP_NODELAY: wsgiref writes the head and the body separately, and with
    #: Nagle the body waits for the client's delayed ACK (~40 ms a request).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class WebhookServer(ThreadingMixIn, WSGIServer):
    """
    A threaded wsgiref server (one thread per request, daemon threads).
    ``serve_forever()``, ``shutdown()`` (from another thread),
    ``server_close()``, ``server_address`` and :attr:`url`; or :meth:`start` it
    in a background thread and :meth:`close` it (also a context manager), as in
    tests and the demo.
    """

    daemon_threads = True
    allow_reuse_address = True
    _thread: threading.Thread | None = None

    def start(self, *, poll_interval: float = 0.05) -> WebhookServer:
        """Serve from a background thread and return at once; :meth:`close` stops it."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.serve_forever,
                kwargs={"poll_interval": poll_interval},
                name="kplus-fsm-webhooks",
                daemon=True,
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the background thread (if :meth:`start` ran) and close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5.0)
            self._thread = None
        self.server_close()

    def __enter__(self) -> WebhookServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """``http://host:port`` of the listening socket."""
        host, port = self.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        if ":" in host_text:
            host_text = f"[{host_text}]"
        return f"http://{host_text}:{port}"


def serve(
    intake: Intake,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    path: str = DEFAULT_PATH,
    max_body: int = MAX_BODY,
) -> WebhookServer:
    """
    A bound (not yet serving) threaded receiver of :func:`wsgi_app`; port 0
    picks a free port (read it from ``server_address``). Call
    ``serve_forever()``; stop it with ``shutdown()`` from another thread, then
    ``server_close()``.

    ``intake`` is a :class:`~kplus_fsm.adapters.webhooks.WebhookIntake` (any
    object with its ``handle``, ``refuse_oversized`` and ``refuse_unread``).

    Raises:
        OSError: the address cannot be bound.
    """
    server = make_server(
        host,
        port,
        wsgi_app(intake, path=path, max_body=max_body),
        server_class=WebhookServer,
        handler_class=_QuietHandler,
    )
    assert isinstance(server, WebhookServer)
    return server
