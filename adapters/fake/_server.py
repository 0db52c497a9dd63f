"""
The fake Omise on a real socket: a standard-library ``ThreadingHTTPServer``
whose handler converts each request to an ``httpx.Request``, asks the fake for
its reply, and writes it back (or drops the connection, for the faults that
say so); :func:`start_server` (a background thread) and :func:`run_server`
(the body of ``kplus-fsm fake-omise``) on top.

Invariants: nothing about a request is printed or logged (no key can leak);
closing a server never closes its fake; a request the fake fails on is answered
500 with an error object, never with a traceback.

Private to :mod:`kplus_fsm.adapters.fake`, which re-exports
:class:`FakeOmiseServer`, :func:`start_server` and :func:`run_server`.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs
import httpx

from ._account import FakeOmise
from ._objects import error_object, json_response
from ._options import FakeOptions

_HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


def _read_chunked(handler: BaseHTTPRequestHandler) -> bytes:
    body = bytearray()
    while True:
        line = handler.rfile.readline(65537)
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while handler.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass
            return bytes(body)
        body += handler.rfile.read(size)
        handler.rfile.readline(65537)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeOmise/1"
    sys_version = ""
    #: Seconds an idle keep-alive connection may wait for its next request.
    timeout = 60
    #: TCP_NODELAY: the head and body go out in two writes, and with Nagle the
    #: second waits for the client's delayed ACK (~40 ms per request on loopback).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: nothing about requests is printed (no secrets can leak there)."""

    def _serve(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = _read_chunked(self)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        host = self.headers.get("Host") or self.server.authority
        try:
            request = httpx.Request(
                self.command,
                f"http://{host}{self.path}",
                headers=[(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS],
                content=body,
            )
        except (httpx.InvalidURL, ValueError):
            self._answer(json_response(error_object("bad_request", "malformed request"), 400))
            return
        try:
            reply = self.server.fake._reply(request)
        except Exception:
            message = "the fake Omise failed to handle the request"
            response: httpx.Response | None = json_response(
                error_object("internal_error", message), 500
            )
        else:
            stop = self.server.stopping
            if reply.delay:
                stop.wait(reply.delay)
            response = reply.response
            if response is None and reply.timeout:
                stop.wait(reply.hang)
        if response is None:
            # Drop the connection without an answer.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._answer(response)

    def _answer(self, response: httpx.Response) -> None:
        content = response.read()
        self.send_response(response.status_code)
        for key, value in response.headers.multi_items():
            if key.lower() not in _HOP_HEADERS:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeOmise, *, ipv6: bool) -> None:
        self.address_family = socket.AF_INET6 if ipv6 else socket.AF_INET
        self.fake = fake
        self.stopping = threading.Event()
        super().__init__(address, _Handler)
        host, port = str(self.server_address[0]), int(self.server_address[1])
        self.authority = f"[{host}]:{port}" if ipv6 else f"{host}:{port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet when a client went away (a timed-out test client); loud otherwise."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class FakeOmiseServer:
    """
    A :class:`FakeOmise` served on a socket by a background thread.

    ``url`` is the base URL to give clients (``http://127.0.0.1:PORT``, no
    trailing slash). Use as a context manager, or call :meth:`close`.
    Closing the server does not close the fake.
    """

    def __init__(self, fake: FakeOmise, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port), fake, ipv6=":" in host)
        self.url = f"http://{self._server.authority}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-omise-server",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, wake sleeping fault handlers, and close the socket."""
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)

    def __enter__(self) -> FakeOmiseServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FakeOmiseServer {self.url}>"


def start_server(fake: FakeOmise, *, host: str = "127.0.0.1", port: int = 0) -> FakeOmiseServer:
    """
    Serve ``fake`` on ``host:port`` (port 0: a free port) from a background
    thread and return at once; the server's ``url`` is ready to use. Close the
    server (or use it as a context manager) when done; that leaves the fake open.

    Raises:
        OSError: the address cannot be bound.
    """
    return FakeOmiseServer(fake, host, port)


def _announce(url: str) -> None:
    print(f"fake Omise listening on {url} (Ctrl-C to stop)", flush=True)


def run_server(
    host: str,
    port: int,
    *,
    secret_key: str,
    public_key: str,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    options: FakeOptions | None = None,
    seed: int | None = None,
    announce: Callable[[str], None] = _announce,
    stop: threading.Event | None = None,
) -> None:
    """
    Serve a new fake Omise on ``host:port`` until Ctrl-C (or until ``stop`` is
    set); the body of ``kplus-fsm fake-omise``.

    When ready, calls ``announce`` with the base URL; by default it prints one
    line, ``fake Omise listening on http://HOST:PORT (Ctrl-C to stop)``. The
    keys and the webhook secret (base64) are never printed. ``options`` are the
    switches (default: :class:`FakeOptions`'s defaults).

    Raises:
        ValueError: invalid keys or webhook secret (the message never shows them).
        OSError: the address cannot be bound.
    """
    switches = attrs.asdict(options if options is not None else FakeOptions(), recurse=False)
    fake = FakeOmise(
        secret_key=secret_key,
        public_key=public_key,
        webhook_url=webhook_url,
        webhook_secrets=[webhook_secret] if webhook_secret else [],
        seed=seed,
        **switches,
        # A receiver in another process reads the wall clock: sign with it, so that
        # moving the fake's clock forward (/_fake/clock/advance) does not make every
        # later delivery look "from the future".
        signature_time=time.time,
    )
    waiter = stop if stop is not None else threading.Event()
    try:
        with FakeOmiseServer(fake, host, port) as server:
            announce(server.url)
            while not waiter.wait(0.2):
                pass
    except KeyboardInterrupt:
        pass
    finally:
        fake.close()
