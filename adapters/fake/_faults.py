"""
Scripted misbehaviour of the fake Omise API: a :class:`Fault` says what to do to
the next requests matching a route; :class:`Faults` holds the pending ones, used
in the order they were injected and each for its ``times`` requests;
:func:`fault_response` is the answer a fault gives instead of the API's (an error
object with the code's documented status, or an nginx-like HTML page); a
:class:`Reply` is what the transport or the socket server does with a request
(answer, answer late, drop, hang).

Invariants: a fault never changes the fake's state by itself (the ``commit_then_*``
kinds let the request do its work first, then lose the answer); the test controls
under ``/_fake/`` and the authorize page are never faulted (the caller decides
what is metered). Thread-safe.

Private to :mod:`kplus_fsm.adapters.fake`, which re-exports :class:`Fault` and
:data:`FaultKind`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Final, Literal, get_args

import attrs
import httpx

from ._objects import error_object, json_response

FaultKind = Literal[
    "error",
    "html",
    "truncated",
    "slow",
    "commit_then_error",
    "commit_then_drop",
    "commit_then_timeout",
]
FAULT_KINDS: Final = frozenset(get_args(FaultKind))


@attrs.frozen(kw_only=True)
class Fault:
    """
    A scripted misbehaviour of the API for requests matching ``route``.

    ``route`` is ``"METHOD /path"``; ``*`` or ``:name`` match one path segment
    and the method may be ``*`` (``"POST /charges"``, ``"GET /charges/:id"``).
    The fault applies to the next ``times`` matching requests. Kinds:

    - ``error``: answer ``status`` (default 500) with an error object, no effect;
    - ``html``: answer ``status`` (default 502) with an HTML page, no effect;
    - ``truncated``: do the request, answer its JSON cut in half;
    - ``slow``: do the request, then wait ``delay`` seconds (default 1) before
      answering (in process: beyond the client's read timeout, wait that long
      and raise ``httpx.ReadTimeout``);
    - ``commit_then_error``: do the request, then answer ``status`` (500);
    - ``commit_then_drop``: do the request, then close the connection without an
      answer (in process: ``httpx.RemoteProtocolError``);
    - ``commit_then_timeout``: do the request, then hang ``delay`` seconds
      (default 30) and close without an answer (in process: ``httpx.ReadTimeout``
      at once).

    ``code`` overrides the error object's code; without a ``status``, the
    answer takes the code's documented status (``backend_error``: 400, so
    ``kind="error", code="backend_error"`` refuses a create without making the
    charge and ``kind="commit_then_error", code="backend_error"`` makes it and
    loses the answer). ``retry_after`` adds a ``Retry-After`` header (seconds)
    to ``error`` answers.
    """

    route: str
    kind: FaultKind
    times: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    status: int | None = None
    code: str | None = None
    delay: float | None = None
    retry_after: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        parts = self.route.split()
        if len(parts) != 2 or not parts[1].startswith("/"):
            raise ValueError('a route reads "METHOD /path", e.g. "POST /charges"')
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError("a fault status is 400..599")
        if self.delay is not None and self.delay < 0:
            raise ValueError("delay must not be negative")

    def matches(self, method: str, path: str) -> bool:
        """Whether a request ``method`` on ``path`` is affected."""
        want_method, want_path = self.route.split()
        if want_method not in ("*", method.upper()):
            return False
        want = want_path.strip("/").split("/")
        have = path.strip("/").split("/")
        if len(want) != len(have):
            return False
        return all(w in ("*", h) or w.startswith(":") for w, h in zip(want, have, strict=True))


_FAULT_CODES: Final[Mapping[int, str]] = {
    429: "too_many_requests",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
}
#: The HTTP status a fault answers when it names a ``code`` but no ``status``:
#: ``backend_error`` is listed under "400 Bad Request" (Opn docs, *API errors*).
_CODE_STATUS: Final[Mapping[str, int]] = {
    "authentication_failure": 401,
    "backend_error": 400,
    "bad_request": 400,
    "failed_expire": 400,
    "invalid_amount": 400,
    "invalid_charge": 400,
    "invalid_source": 400,
    "not_found": 404,
    "service_not_found": 404,
    "too_many_requests": 429,
    "internal_error": 500,
    "bad_gateway": 502,
    "service_unavailable": 503,
}
_STATUS_TEXT: Final[Mapping[int, str]] = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class Faults:
    """The pending faults, oldest first; each is used for its ``times`` requests."""

    def __init__(self) -> None:
        self._pending: list[list[Any]] = []  # [fault, requests left]
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        """Queue ``fault`` behind the pending ones."""
        with self._lock:
            self._pending.append([fault, fault.times])

    def clear(self) -> int:
        """Forget every pending fault; return how many there were."""
        with self._lock:
            count = len(self._pending)
            self._pending.clear()
            return count

    def take(self, method: str, path: str) -> Fault | None:
        """The oldest fault matching the request (one of its ``times`` used up), or None."""
        with self._lock:
            for entry in self._pending:
                fault: Fault = entry[0]
                if fault.matches(method, path):
                    entry[1] -= 1
                    if entry[1] <= 0:
                        self._pending.remove(entry)
                    return fault
        return None


def fault_response(fault: Fault) -> httpx.Response:
    """The answer of an ``error``, ``html`` or ``commit_then_error`` fault."""
    if fault.kind == "html":
        status = fault.status or 502
        text = _STATUS_TEXT.get(status, "Error")
        page = (
            f"<html><head><title>{status} {text}</title></head><body>"
            f"<center><h1>{status} {text}</h1></center><hr><center>nginx</center>"
            "</body></html>"
        )
        return httpx.Response(status, content=page.encode(), headers={"Content-Type": "text/html"})
    if fault.status is not None:
        status = fault.status
    elif fault.code is not None:
        status = _CODE_STATUS.get(fault.code, 500)
    else:
        status = 500
    code = fault.code or _FAULT_CODES.get(status, "internal_error")
    response = json_response(error_object(code, f"fake fault: HTTP {status}"), status)
    if fault.retry_after is not None:
        response.headers["Retry-After"] = str(fault.retry_after)
    return response


@attrs.frozen
class Reply:
    """What to do with a request: answer after ``delay`` seconds, or drop (``response`` None)."""

    response: httpx.Response | None
    delay: float = 0.0
    timeout: bool = False
    hang: float = 0.0
