"""
The HTTP layer of ``kplus-fsm serve``: uvicorn's h11 protocol with the deadlines
uvicorn lacks, and the config and server that carry them.

uvicorn (as of 0.55) closes a connection only when it stays idle for
``timeout_keep_alive`` *after a response*: a connection that never sends a
byte, one that sends its request head a byte at a time, or one that stops in
the middle of its body stays open for ever (measured: docs/design.md, "The
production server"). :class:`DeadlineH11Protocol` adds two absolute deadlines,
kept by one timer per connection on the event loop (no thread):

- **head**: a request head (request line and headers) must arrive whole within
  ``header_timeout`` seconds of the connection opening, or of its first byte on
  a kept-alive connection. Trickling bytes does not extend it (that is the
  slow-loris attack). Past it the connection is closed, with a ``408`` if any
  byte of the head had arrived.
- **body**: the body must arrive whole within ``body_timeout`` seconds of the
  end of the head. Past it, the connection is answered ``408`` (if the
  application has not answered yet) and closed; the application sees the
  client go away with ``scope["extensions"][TIMEOUT_EXTENSION]`` set, so the
  intake records the cut delivery as timed out (never as a forgery).

Between requests on a kept-alive connection, uvicorn's own keep-alive timer
applies. Invariants: a connection has at most one deadline armed at a time;
every deadline is cancelled when its connection is lost; a deadline never
fires on a connection whose request has arrived whole.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, Final, cast

import h11
import structlog
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..adapters.webhooks import TIMEOUT_EXTENSION

log = structlog.get_logger("kplus_fsm.serve")

#: Phases a deadline can cut: the request head, or the request body.
HEAD: Final = "head"
BODY: Final = "body"


def _timeout_answer() -> bytes:
    body = json.dumps(
        {"outcome": None, "reason": "Request Timeout", "inbox_id": None}, separators=(",", ":")
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode("ascii")
    return head + body


_TIMEOUT_ANSWER: Final = _timeout_answer()


class ServeConfig(uvicorn.Config):
    """
    A :class:`uvicorn.Config` that also carries the deadlines of
    :class:`DeadlineH11Protocol` and a hook told of each deadline that fired
    (``on_timeout(phase)``, for metrics).
    """

    def __init__(
        self,
        app: Any,
        *,
        header_timeout: float,
        body_timeout: float,
        on_timeout: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        if header_timeout <= 0 or body_timeout <= 0:
            raise ValueError("header_timeout and body_timeout must be positive")
        super().__init__(app, http=DeadlineH11Protocol, **kwargs)
        self.header_timeout = float(header_timeout)
        self.body_timeout = float(body_timeout)
        self.on_timeout = on_timeout


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the head and body deadlines of the module docstring."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._header_timeout = float(getattr(config, "header_timeout", 10.0))
        self._body_timeout = float(getattr(config, "body_timeout", 30.0))
        self._on_timeout: Callable[[str], None] | None = getattr(config, "on_timeout", None)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        self._armed_at = 0.0

    # ----------------------------------------------------- protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm(HEAD)  # a new connection owes its first request head

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # ------------------------------------------------------------- deadlines

    def _follow(self) -> None:
        """Arm, keep or cancel the deadline for where the request now stands."""
        if self.transport is None or self.transport.is_closing():
            self._disarm()
            return
        theirs = self.conn.their_state
        if theirs is h11.IDLE:
            if self.conn.trailing_data[0]:
                if self._phase != HEAD:
                    self._arm(HEAD)  # the first bytes of the next head
            elif self._phase == HEAD and self.timeout_keep_alive_task is not None:
                self._disarm()  # between requests: uvicorn's keep-alive timer
        elif theirs is h11.SEND_BODY:
            if self._phase != BODY:
                self._arm(BODY)
        else:
            self._disarm()  # the request arrived whole (or the connection is done)

    def _arm(self, phase: str) -> None:
        self._disarm()
        seconds = self._header_timeout if phase == HEAD else self._body_timeout
        self._phase = phase
        self._armed_at = time.monotonic()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._phase = None

    def _expired(self) -> None:
        phase = self._phase
        self._deadline = None
        self._phase = None
        if phase is None or self.transport.is_closing():
            return
        seconds = self._header_timeout if phase == HEAD else self._body_timeout
        log.warning(
            "http_request_timeout",
            phase=phase,
            timeout=seconds,
            client=f"{self.client[0]}:{self.client[1]}" if self.client else None,
        )
        if self._on_timeout is not None:
            try:
                self._on_timeout(phase)
            except Exception as exc:  # a monitor's bug must not keep the connection
                log.warning("http_timeout_hook_failed", error=type(exc).__name__)
        cycle = self.cycle
        if phase == BODY and cycle is not None and not cycle.response_complete:
            extensions = cast(dict[str, Any], cycle.scope.setdefault("extensions", {}))
            extensions[TIMEOUT_EXTENSION] = seconds
            if not cycle.response_started:
                self.transport.write(_TIMEOUT_ANSWER)
        elif phase == HEAD and self.conn.trailing_data[0]:
            self.transport.write(_TIMEOUT_ANSWER)
        # Closing makes the application's receive() return http.disconnect.
        self.transport.close()


class GracefulServer(uvicorn.Server):
    """
    A :class:`uvicorn.Server` that tells ``on_shutdown`` when its graceful
    shutdown begins (the moment it stops accepting), so the application can fit
    its own shutdown into what is left of the grace period; and that stops
    gracefully at once if ``stop_requested()`` says a signal came before
    uvicorn listened for signals (while the process was still starting).
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        on_shutdown: Callable[[], None],
        stop_requested: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown
        self._stop_requested = stop_requested

    async def main_loop(self) -> None:
        if self._stop_requested():
            self.should_exit = True
        await super().main_loop()

    async def shutdown(self, sockets: Any = None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets)


__all__ = ["BODY", "HEAD", "DeadlineH11Protocol", "GracefulServer", "ServeConfig"]
