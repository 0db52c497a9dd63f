"""
Framework-neutral intake of Omise webhooks: raw bytes and headers in, an HTTP
status and a small JSON answer out. ASGI and WSGI wrappers, a threaded
loopback-or-LAN receiver (:func:`serve`, wsgiref: tests and the demo) and
:func:`intake_from_env` on top. ``kplus-fsm serve`` runs :func:`asgi_app` on
uvicorn, with request deadlines, workers, ``/ready`` and ``/metrics``
(``kplus_fsm._serve``; docs/design.md, "The production server").

The order of :meth:`WebhookIntake.handle` (docs/concepts.md, "Why webhooks are hints"):

1. verify the signature on the raw bytes, when webhook secrets are configured
   (:func:`kplus_fsm.adapters.signatures.verify_signature`: timestamps more than
   ``tolerance`` seconds old or ahead are refused; several comma-separated
   signatures are accepted during a secret roll);
2. record the delivery: a refused one with ``Tracker.refuse_webhook`` (its reason
   kept), an accepted one with ``Tracker.record_webhook`` (which parses it,
   refuses malformed bodies after recording them, and dedupes on the event id);
3. if an API client is configured and the event carries a charge: **re-fetch the
   charge** with the secret key and record it (``origin="refetch"``). The state
   follows the re-fetch, not the payload: with a client, the payload is recorded
   as a hint only (``apply_payload=False``), so a validly signed payload that
   claims ``successful`` for a charge the API still shows ``pending`` leaves it
   ``pending``. Without a client the payload is applied as an *unverified*
   snapshot (it never overrides a terminal state).

Every accepted delivery is followed through. A hint whose re-fetch failed (or
never ran: the process died in between) stays an *unresolved hint* in the log
(:meth:`kplus_fsm.Tracker.unresolved_hints`) until a read of its charge is
recorded: a redelivery of it is still recorded as ``duplicate`` but re-fetches
the charge again, and the follow-up (:class:`kplus_fsm.FollowUp`, run by
``kplus-fsm serve``) re-fetches it on its own. With a client, a delivery whose
signature matches the secret but whose timestamp is outside the tolerance
(Omise may keep an event's first timestamp on its retries) is recorded as a hint
with verification ``verified_stale`` and re-fetched: a replayed genuine event
can only cause a read of the truth. Without a client it is refused as stale.

HTTP statuses (Omise retries any non-2xx delivery, so 2xx means "recorded, stop"):

======  =====================================================================
 200    recorded: applied, duplicate (re-fetched again only while its hint is
        unresolved), stale, conflict, unknown, and rejected-but-recorded (no
        such payment, amount mismatch …); also when the re-fetch failed: the
        hint stays unresolved and the follow-up re-fetches it
 400    recorded and refused: malformed body (not JSON, not an event), missing
        signature headers, a timestamp that is not Unix seconds or is outside
        the tolerance (stale or in the future)
 401    recorded and refused: no signature matches (forged, tampered body,
        wrong or rolled-away secret)
 408    (ASGI) the server cut the body off past its body timeout
        (``kplus-fsm serve``): what arrived is recorded and refused, its
        signature not checked (a partial body is never taken for a forgery);
        a client that closed mid-body gets no answer, and is recorded alike
 411    (WSGI) a chunked body on a server that does not decode it (wsgiref):
        recorded with an empty body and refused; send ``Content-Length``
 413    (wrappers) the body exceeds ``max_body``: not read and not stored; the
        refusal itself is recorded with an empty body and the declared size
 500    nothing could be recorded (:class:`kplus_fsm.exceptions.StoreError`),
        or an unexpected error in the wrappers: Omise should retry
======  =====================================================================

Errors: :meth:`WebhookIntake.handle` raises nothing for any request; store
failures become status 500 and re-fetch failures become status 200 with a
reason. The constructor and :func:`intake_from_env` raise::

    ValueError                      a webhook secret is not base64, or
                                    require_signature=True with no secret
    KplusFSMError
    └── StoreError                  (intake_from_env) the event log cannot be
        └── SchemaVersionError      opened, or was written by a newer kplus_fsm

Thread safety: one intake may serve many threads (the threaded WSGI server,
ASGI worker threads); its calls into the tracker are serialised by a lock,
while re-fetches run concurrently.
"""

from __future__ import annotations

import asyncio
import http
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from socketserver import ThreadingMixIn
from typing import Any, Final, Protocol, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import attrs
import httpx
import structlog

from kplus_fsm import ChargeAPI, Outcome, ReasonCode, Result, Tracker, WebhookEvent, parse_json
from kplus_fsm.exceptions import (
    GatewayError,
    InvalidInputError,
    KplusFSMError,
    StoreError,
)
from kplus_fsm.failpoints import failpoint

from .omise import DEFAULT_BASE_URL, OmiseClient
from .signatures import DEFAULT_TOLERANCE, decode_secret, verify_signature

__all__ = [
    "CHUNKED_REFUSED",
    "DEFAULT_PATH",
    "MAX_BODY",
    "STALE_VERIFICATION",
    "TIMEOUT_EXTENSION",
    "ASGIApp",
    "IntakeObserver",
    "IntakeResult",
    "WebhookIntake",
    "WebhookServer",
    "asgi_app",
    "intake_from_env",
    "serve",
    "wsgi_app",
]

log = structlog.get_logger("kplus_fsm.adapters.webhooks")

#: ``inbox.verification`` of a delivery signed with the secret but outside the
#: clock tolerance, taken as a hint because the charge is re-fetched.
STALE_VERIFICATION: Final = "verified_stale"
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

_T = TypeVar("_T")


class IntakeObserver(Protocol):
    """
    What an intake tells a monitor (``kplus-fsm serve``'s Prometheus metrics):
    each delivery's answer and how long it took, and each re-fetch.
    """

    def delivered(self, result: IntakeResult, *, seconds: float) -> None: ...

    def refetched(self, *, seconds: float, error: str | None) -> None: ...


@attrs.frozen(kw_only=True)
class IntakeResult:
    """
    The answer to one delivery.

    ``status`` is the HTTP status to return; ``outcome`` the recorded outcome
    (``applied``, ``duplicate``, ``rejected`` …; ``None`` if nothing could be
    recorded); ``inbox_id`` the inbox row that recorded the delivery;
    ``refetch`` the :class:`kplus_fsm.Result` of recording the re-fetched
    charge, when there was one.
    """

    status: int
    outcome: str | None
    reason: str
    inbox_id: int | None = None
    refetch: Result | None = None

    @property
    def recorded(self) -> bool:
        """Whether the delivery is in ``inbox``."""
        return self.inbox_id is not None

    def to_json(self) -> dict[str, Any]:
        """The response body: ``{"outcome", "reason", "inbox_id"}``."""
        return {"outcome": self.outcome, "reason": self.reason, "inbox_id": self.inbox_id}


def _plain_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(k): str(v) for k, v in headers.items()}


class WebhookIntake:
    """
    Receives Omise webhook deliveries for a :class:`kplus_fsm.Tracker`.

    Args:
        tracker: where every delivery is recorded.
        client: a :class:`kplus_fsm.ChargeAPI` (e.g.
            :class:`~kplus_fsm.adapters.omise.OmiseClient`) to re-fetch the
            charge of each event with the secret key. Without one, the payload
            is applied as an unverified snapshot.
        secrets: the dashboard's webhook secret(s), base64; several during a
            secret roll. Empty: signatures are not checked.
        tolerance: how many seconds a signature timestamp may be away from
            ``now()`` in either direction.
        now: the clock, in Unix seconds.
        require_signature: refuse deliveries whose signature fails (default:
            ``True`` when secrets are given). ``False`` with secrets: check and
            record the verdict, but process the delivery anyway (a rollout mode).
        observer: told of every delivery and re-fetch (metrics).
        on_unresolved: called with the charge id when a delivery leaves its
            hint unresolved (the re-fetch failed), e.g. to wake a follow-up.

    Raises:
        ValueError: a secret is not base64, or ``require_signature=True`` without
            any secret.
    """

    def __init__(
        self,
        tracker: Tracker,
        *,
        client: ChargeAPI | None = None,
        secrets: Sequence[str] = (),
        tolerance: float = DEFAULT_TOLERANCE,
        now: Callable[[], float] = time.time,
        require_signature: bool | None = None,
        observer: IntakeObserver | None = None,
        on_unresolved: Callable[[str], None] | None = None,
    ) -> None:
        kept = (secrets,) if isinstance(secrets, str) else tuple(secrets)
        for secret in kept:
            decode_secret(secret)  # fail at start-up, not on the first delivery
        if require_signature is None:
            require_signature = bool(kept)
        if require_signature and not kept:
            raise ValueError("require_signature=True needs at least one webhook secret")
        if tolerance < 0:
            raise ValueError("tolerance must be 0 or more seconds")
        self.tracker = tracker
        self.client = client
        self._secrets = kept
        self.tolerance = float(tolerance)
        self.now = now
        self.require_signature = require_signature
        self.observer = observer
        self.on_unresolved = on_unresolved
        self._lock = threading.RLock()
        self._closers: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return (
            f"WebhookIntake(secrets={len(self._secrets)}, "
            f"require_signature={self.require_signature}, "
            f"refetch={'yes' if self.client is not None else 'no'})"
        )

    @property
    def verifies_signatures(self) -> bool:
        """Whether webhook secrets are configured."""
        return bool(self._secrets)

    def close(self) -> None:
        """Close what :func:`intake_from_env` opened for this intake (tracker, client)."""
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            close()

    def __enter__(self) -> WebhookIntake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ intake

    def handle(self, body: bytes | str, headers: Mapping[str, str]) -> IntakeResult:
        """
        Verify, record, dedupe, re-fetch: one delivery (``body``: the raw bytes
        as received; text is encoded as UTF-8). Raises nothing for any request,
        whatever its content: store failures are status 500, re-fetch failures
        status 200 (see the module docstring for every status).
        """
        started = time.perf_counter()
        result = self._handle(body, headers)
        if self.observer is not None:
            self.observer.delivered(result, seconds=time.perf_counter() - started)
        return result

    def _handle(self, body: bytes | str, headers: Mapping[str, str]) -> IntakeResult:
        if isinstance(body, str):
            # surrogatepass: a str holding lone surrogates still becomes bytes (and
            # then a malformed body, recorded and refused) rather than an exception.
            body = body.encode("utf-8", "surrogatepass")
        hdrs = _plain_headers(headers)
        verification = "unverified"
        if self._secrets:
            now = self.now()
            check = verify_signature(body, hdrs, self._secrets, now=now, tolerance=self.tolerance)
            verification = check.verification
            if check.stale and self.client is not None:
                # Genuine but outside the tolerance (a retry keeping its first timestamp,
                # or a replay): only ever a hint, and the charge is read from the API.
                verification = STALE_VERIFICATION
                log.info("webhook_stale_signature_taken_as_hint", reason=check.reason)
            elif not check.ok and self.require_signature:
                forged = check.timestamp is not None and abs(now - check.timestamp) <= (
                    self.tolerance
                )
                return self._refuse(
                    body,
                    hdrs,
                    verification=verification,
                    reason=f"signature refused: {check.reason}",
                    reason_code=(
                        ReasonCode.SIGNATURE_STALE
                        if check.out_of_tolerance
                        else ReasonCode.SIGNATURE_INVALID
                    ),
                    status=401 if forged else 400,
                )
            elif not check.ok:
                log.warning("webhook_signature_failed_but_accepted", reason=check.reason)
        try:
            result = self._locked(
                lambda: self.tracker.record_webhook(
                    body,
                    headers=hdrs,
                    verification=verification,
                    apply_payload=self.client is None,
                )
            )
        except InvalidInputError as exc:
            return IntakeResult(
                status=400,
                outcome=Outcome.REJECTED.value if exc.inbox_id is not None else None,
                reason=exc.reason,
                inbox_id=exc.inbox_id,
            )
        except StoreError as exc:
            return self._unrecorded(exc)
        failpoint("intake.after_record")
        if self.client is None:
            return self._answer(result)
        return self._refetch(result, body, only_unresolved=result.outcome is Outcome.DUPLICATE)

    def refuse_oversized(
        self, headers: Mapping[str, str], *, size: int | None, limit: int
    ) -> IntakeResult:
        """
        Record (with an empty body) a delivery whose body was too large to read,
        and answer 413. Never raises; if even that cannot be recorded the
        answer is still 413, with ``inbox_id`` ``None``.
        """
        told = f"{size} bytes, over" if size is not None else "over"
        reason = f"body too large ({told} the {limit}-byte limit): not read, not stored"
        return self.refuse_unread(
            b"", headers, reason=reason, status=413, reason_code=ReasonCode.BODY_TOO_LARGE
        )

    def refuse_unread(
        self,
        body: bytes,
        headers: Mapping[str, str],
        *,
        reason: str,
        status: int,
        reason_code: ReasonCode = ReasonCode.MALFORMED,
    ) -> IntakeResult:
        """
        Record a delivery whose body could not be read whole (too large, cut off
        by the client, past the server's body timeout, or chunked where the
        server cannot decode it), with what did arrive and ``reason``, outcome
        ``rejected``; answer ``status``. Its signature is not checked: a partial
        body is never taken for a forgery. Never raises; if even this cannot be
        recorded the answer is still ``status``, with ``inbox_id`` ``None``.
        """
        refused = self._refuse(
            bytes(body),
            _plain_headers(headers),
            verification="not checked",
            reason=reason,
            reason_code=reason_code,
            status=status,
        )
        return attrs.evolve(refused, status=status)

    # ---------------------------------------------------------------- helpers

    def _locked(self, work: Callable[[], _T]) -> _T:
        with self._lock:
            return work()

    def _refuse(
        self,
        body: bytes,
        headers: dict[str, str],
        *,
        verification: str,
        reason: str,
        reason_code: ReasonCode,
        status: int,
    ) -> IntakeResult:
        log.warning("webhook_refused", reason=reason, reason_code=reason_code.value, status=status)
        try:
            recorded = self._locked(
                lambda: self.tracker.refuse_webhook(
                    body,
                    headers=headers,
                    verification=verification,
                    reason=reason,
                    reason_code=reason_code,
                )
            )
        except StoreError as exc:
            return self._unrecorded(exc)
        return IntakeResult(
            status=status,
            outcome=recorded.outcome.value,
            reason=reason,
            inbox_id=recorded.inbox_id,
        )

    @staticmethod
    def _unrecorded(exc: StoreError) -> IntakeResult:
        log.error("webhook_not_recorded", error=type(exc).__name__)
        return IntakeResult(
            status=500,
            outcome=None,
            reason=f"the delivery could not be recorded ({type(exc).__name__}); retry later",
        )

    @staticmethod
    def _answer(
        result: Result, *, refetch: Result | None = None, note: str | None = None
    ) -> IntakeResult:
        reason = result.reason
        if refetch is not None:
            reason += f"; re-fetched charge: {refetch.outcome.value}: {refetch.reason}"
        if note is not None:
            reason += f"; {note}"
        return IntakeResult(
            status=200,
            outcome=result.outcome.value,
            reason=reason,
            inbox_id=result.inbox_id,
            refetch=refetch,
        )

    def _refetch(self, result: Result, body: bytes, *, only_unresolved: bool) -> IntakeResult:
        client = self.client
        assert client is not None
        try:
            event = WebhookEvent.from_json(parse_json(body))
        except (ValueError, KplusFSMError):  # pragma: no cover - the tracker parsed it
            return self._answer(result)
        if event.charge is None:
            return self._answer(result)
        if result.payment is None:
            return self._answer(result, note="no tracked payment, so not re-fetched")
        charge_id = event.charge.charge_id
        if only_unresolved:
            try:
                unresolved = bool(self.tracker.unresolved_hints(charge_id=charge_id, limit=1))
            except StoreError as exc:
                log.warning("webhook_hint_check_failed", error=type(exc).__name__)
                unresolved = True  # a read of the truth is never wrong
            if not unresolved:
                return self._answer(result)
        started = time.perf_counter()
        error: str | None = None
        try:
            charge = client.retrieve_charge(charge_id)
        except GatewayError as exc:
            error = type(exc).__name__
            log.warning(
                "webhook_refetch_failed",
                charge_id=charge_id,
                inbox_id=result.inbox_id,
                error=error,
                http_status=getattr(exc, "http_status", None),
            )
            return self._unresolved(result, charge_id, f"re-fetch of {charge_id} failed ({exc})")
        except Exception as exc:  # a broken client must not turn a recorded delivery into 5xx
            error = type(exc).__name__
            log.exception("webhook_refetch_crashed", charge_id=charge_id, error=error)
            return self._unresolved(result, charge_id, f"re-fetch of {charge_id} failed ({error})")
        finally:
            if self.observer is not None:
                self.observer.refetched(seconds=time.perf_counter() - started, error=error)
        failpoint("intake.before_refetch_record")
        try:
            refetched = self._locked(lambda: self.tracker.record_charge(charge, origin="refetch"))
        except (InvalidInputError, StoreError) as exc:
            log.warning(
                "webhook_refetch_not_recorded", charge_id=charge_id, error=type(exc).__name__
            )
            return self._unresolved(
                result,
                charge_id,
                f"the re-fetched charge {charge_id} was not applied ({type(exc).__name__})",
            )
        failpoint("intake.after_refetch_record")
        return self._answer(result, refetch=refetched)

    def _unresolved(self, result: Result, charge_id: str, what: str) -> IntakeResult:
        if self.on_unresolved is not None:
            try:
                self.on_unresolved(charge_id)
            except Exception as exc:  # a monitor's bug must not cost the answer
                log.exception("webhook_on_unresolved_failed", error=type(exc).__name__)
        return self._answer(
            result, note=f"{what}; the hint stays unresolved and the follow-up re-fetches it"
        )


# ---------------------------------------------------------------- HTTP wrappers


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


def asgi_app(
    intake: WebhookIntake, *, path: str = DEFAULT_PATH, max_body: int = MAX_BODY
) -> ASGIApp:
    """
    An ASGI 3 application: ``POST <path>`` takes deliveries, ``GET /`` answers
    ``{"ready": true}``, anything else 404/405. Bodies are read fully, up to
    ``max_body`` bytes (413 beyond); chunked bodies arrive decoded from the
    server. A body the client stopped sending (or the server cut off, see
    :data:`TIMEOUT_EXTENSION`) is recorded as refused, never checked as a
    signature. Every call into the intake runs in a worker thread (SQLite and
    HTTP I/O): the loop's default executor bounds them. Lifespan events are
    accepted.
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
    intake: WebhookIntake, *, path: str = DEFAULT_PATH, max_body: int = MAX_BODY
) -> WSGIApplication:
    """
    A WSGI application: ``POST <path>`` takes deliveries, ``GET /`` answers
    ``{"ready": true}``, anything else 404/405. The body is read fully, up to
    ``max_body`` bytes (413 beyond, judged on ``Content-Length`` before reading).
    A chunked body is read when the server decodes it (``wsgi.input_terminated``:
    gunicorn, waitress …) and refused with 411 otherwise (wsgiref, so
    :func:`serve`), never read as empty.
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
    intake: WebhookIntake,
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


def intake_from_env(
    environ: Mapping[str, str] = os.environ,
    *,
    db: str | os.PathLike[str] | None = None,
    transport: httpx.BaseTransport | None = None,
    observer: IntakeObserver | None = None,
    on_unresolved: Callable[[str], None] | None = None,
) -> WebhookIntake:
    """
    A :class:`WebhookIntake` configured from the environment:

    - ``KPLUS_FSM_DB``: the event log (``db`` wins; default ``kplus.db``): a
      SQLite file, ``sqlite:///path``, or a ``postgresql://`` URL (several
      receivers on several hosts then share one log; see ``docs/postgresql.md``);
    - ``OMISE_SECRET_KEY``: enables the re-fetch (an :class:`OmiseClient`);
      without it the payload is applied as an unverified snapshot;
    - ``OMISE_PUBLIC_KEY``: passed to the client (source creation only);
    - ``OMISE_API_URL``: the API root (default ``https://api.omise.co``; the
      fake Omise's URL in tests);
    - ``OMISE_WEBHOOK_SECRET``: the webhook secret(s), comma-separated during a
      roll; without it signatures are not checked.

    ``transport`` is handed to the client (tests, the in-process fake);
    ``observer`` and ``on_unresolved`` to the intake. The intake owns the
    tracker and client it opened: :meth:`WebhookIntake.close` closes them.

    Raises:
        ValueError: a webhook secret is not base64.
        StoreError: the event log cannot be opened (SchemaVersionError: newer).
    """
    path = db if db is not None else (environ.get("KPLUS_FSM_DB") or "kplus.db")
    secrets = [s.strip() for s in environ.get("OMISE_WEBHOOK_SECRET", "").split(",") if s.strip()]
    for secret in secrets:
        decode_secret(secret)
    tracker = Tracker(path)
    client: OmiseClient | None = None
    try:
        secret_key = environ.get("OMISE_SECRET_KEY") or None
        if secret_key is not None:
            client = OmiseClient(
                secret_key=secret_key,
                public_key=environ.get("OMISE_PUBLIC_KEY") or None,
                base_url=environ.get("OMISE_API_URL") or DEFAULT_BASE_URL,
                transport=transport,
            )
        intake = WebhookIntake(
            tracker,
            client=client,
            secrets=secrets,
            observer=observer,
            on_unresolved=on_unresolved,
        )
    except BaseException:
        if client is not None:
            client.close()
        tracker.close()
        raise
    intake._closers.append(tracker.close)
    if client is not None:
        intake._closers.append(client.close)
    if not secrets:
        log.warning("webhook_signatures_not_checked", hint="set OMISE_WEBHOOK_SECRET")
    if client is None:
        log.warning(
            "webhook_refetch_disabled",
            hint="set OMISE_SECRET_KEY: payloads are applied as unverified snapshots",
        )
    return intake
