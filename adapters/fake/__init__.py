"""
A fake Opn Payments (Omise) API for integration tests of K PLUS
(``mobile_banking_kbank``) payments.

:class:`FakeOmise` holds the state and is "just a function from request to
response": :meth:`FakeOmise.handle` takes an ``httpx.Request`` and returns an
``httpx.Response``. Use it in process through :meth:`FakeOmise.transport`
(no sockets), on loopback with :func:`start_server`, or from the command line
through :func:`run_server` (``kplus-fsm fake-omise``)::

    fake = FakeOmise(secret_key="skey_test_x", public_key="pkey_test_x",
                     webhook_receiver=my_handler, webhook_secrets=[SECRET_B64])
    client = httpx.Client(transport=fake.transport(), base_url="https://api.omise.co",
                          auth=("skey_test_x", ""))
    charge = client.post("/charges", data={...}).json()
    fake.mark_as_paid(charge["id"])
    fake.flush()

The API surface (same paths, bodies and error objects as the real API):
``POST /sources``, ``GET /sources/:id``, ``POST /charges``, ``GET /charges``,
``GET /charges/:id``, ``GET /charges/:id/events``, ``GET /events``,
``GET /events/:id``, ``GET /search?scope=charge``, the test-mode
``POST /charges/:id/mark_as_paid``, ``…/mark_as_failed``, ``…/expire``, the
``authorize_uri`` page ``GET|POST /test/authorize/:id``, ``GET /`` (ready), and
test controls under ``/_fake/`` (secret key required):

- ``GET /_fake/clock``; ``POST /_fake/clock/advance`` (``seconds``)
- ``POST /_fake/webhooks/duplicate`` (``times``, ``events``),
  ``…/drop`` (``events``), ``…/delay`` (``seconds``, ``events``), ``…/hold``,
  ``…/release`` (``order``: ``fifo``, ``reversed`` or a list of event ids),
  ``…/flush`` (``timeout``); ``GET /_fake/webhooks/deliveries`` (``event_id``)
- ``POST /_fake/faults`` (``route``, ``kind``, ``times``, ``status``, ``code``,
  ``delay``, ``retry_after``); ``DELETE /_fake/faults``

Bodies may be JSON or form data with bracket keys (``source[type]=…``,
``metadata[payment_id]=…``), parameters may also come in the query string, and
JSON bodies on GET are read (omise-python sends them).

What the fake models, with each behaviour's label (CONFIRMED, LIKELY,
UNVERIFIABLE) and public source, its switches and what it does not model, is
listed in ``docs/fake-omise.md``. In short:

- search answers newest first, 30 per page; ``query`` is a word search over
  the id, currency, description and metadata values; ``filters[amount]`` is in
  THB; boolean filters take ``yes``/``on``/``true`` (:mod:`._search`);
- error objects link to ``…/api-errors#not-found`` (hyphens); a fault with
  ``code="backend_error"`` answers HTTP 400, before or after the charge is made;
- an abandoned charge fails ``payment_expired`` when the bank times out (10
  minutes), ``expires_at`` is 7 days after creation; the old 10-minute
  ``expired`` lifetime is ``expiry_model="lifetime"``; expiries may be silent;
- ``POST /charges/:id/expire`` is refused ``failed_expire`` (K PLUS is not
  Alipay barcode); the test control ``POST /_fake/charges/:id/expire`` ends a
  charge as the expiry model would;
- webhook bodies are pretty-printed as Omise's recorded deliveries;
  ``PATCH /charges/:id`` emits ``charge.update``;
- switches (constructor arguments, ``POST /_fake/options``, ``kplus-fsm
  fake-omise`` options): see :class:`FakeOptions`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs
import httpx

from ..signatures import decode_secret
from ._objects import (
    Clock,
    FakeOmiseError,
    Fault,
    FaultKind,
    IdMaker,
    ShiftedClock,
    check_failure_code,
    error_object,
    json_response,
    parse_params,
)
from ._options import (
    DEFAULT_API_VERSION,
    DEFAULT_BANK_TIMEOUT,
    DEFAULT_CHARGE_LIFETIME,
    LIFETIME_MODEL_LIFETIME,
    ExpiryModel,
    FakeOptions,
    RateLimiter,
)
from ._routes import ROUTES
from ._server import FakeOmiseServer
from ._state import Ledger
from ._webhooks import DeliveryWorker, ReleaseOrder, RetryPolicy, WebhookDelivery

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_BANK_TIMEOUT",
    "DEFAULT_CHARGE_LIFETIME",
    "LIFETIME_MODEL_LIFETIME",
    "ExpiryModel",
    "FakeOmise",
    "FakeOmiseError",
    "FakeOmiseServer",
    "FakeOptions",
    "Fault",
    "FaultKind",
    "RetryPolicy",
    "WebhookDelivery",
    "run_server",
    "start_server",
]

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
#: Paths outside the API: never throttled, never faulted.
_UNMETERED: Final = ("/_fake/", "/test/authorize/")
_STATUS_TEXT: Final[Mapping[int, str]] = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@attrs.frozen
class _Reply:
    """What to do with a request: answer after ``delay`` seconds, or drop (``response`` None)."""

    response: httpx.Response | None
    delay: float = 0.0
    timeout: bool = False
    hang: float = 0.0


class FakeOmise:
    """
    A fake Omise account in test mode: sources, charges, events, webhooks.
    Thread-safe; ``repr`` and errors never show the keys or secrets.

    Args:
        secret_key: the account's secret key (may do everything).
        public_key: the public key (may only create and read sources).
        webhook_url: where events are POSTed (a real HTTP request); with a
            ``webhook_receiver`` too, the URL the receiver's requests carry.
        webhook_receiver: an in-process receiver instead of a socket (a function
            from ``httpx.Request`` to ``httpx.Response``, as for
            ``httpx.MockTransport``); exceptions it raises count as failed attempts.
        webhook_secrets: base64 webhook secrets; each delivery is signed with all
            of them (several during a rotation). Empty: deliveries are unsigned.
        clock: returns the current aware time. Default: the system's UTC time,
            which :meth:`advance_clock` moves forward. An injected clock with an
            ``advance(timedelta)`` method (``kplus_fsm.testing.FakeClock``) can be
            advanced through the fake too.
        retry: the retry policy of failed deliveries (make it short in tests).
        seed: makes the generated ids reproducible.
        base_url: the origin of ``authorize_uri`` (default: the request's own).
        webhook_timeout: seconds a receiver may take to answer.
        sweep_interval: seconds between background expiry checks.
        signature_time: Unix seconds used to sign deliveries (default: the clock's).
        expiry_model: ``"bank_timeout"`` (default) or ``"lifetime"``.
        charge_lifetime: ``expires_at - created_at`` (default: 7 days, or 10
            minutes under ``lifetime``).
        bank_timeout: when the bank gives up on an unpaid charge (10 minutes).
        expiry_webhook: whether an expiry is announced (``charge.complete``).
        expire_endpoint: whether ``POST /charges/:id/expire`` works for K PLUS.
        search_metadata: whether the search ``query`` finds metadata values.
        search_lag: seconds a new charge stays invisible to ``/search``.
        kplus_enabled: whether K PLUS is enabled for the account.
        api_version: the account's default ``Omise-Version``.
        rate_limit: requests per second before HTTP 429 (``None``: no limit).
        rate_burst: how many requests may come at once under ``rate_limit``.
        retry_after_header: whether a 429 carries ``Retry-After``.

    Every switch is described, with the evidence for its default, by
    :class:`FakeOptions`; :meth:`set_options` and ``POST /_fake/options``
    change them later.

    Raises:
        ValueError: an empty or shared key, a webhook secret that is not base64
            (the message never shows it), a switch out of range (a lifetime or
            timeout that is not positive, an unknown expiry model, …).
    """

    def __init__(
        self,
        *,
        secret_key: str,
        public_key: str,
        webhook_url: str | None = None,
        webhook_receiver: Callable[[httpx.Request], httpx.Response] | None = None,
        webhook_secrets: Sequence[str] = (),
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        seed: int | None = None,
        base_url: str | None = None,
        webhook_timeout: float = 10.0,
        sweep_interval: float = 0.5,
        signature_time: Callable[[], float] | None = None,
        expiry_model: ExpiryModel = "bank_timeout",
        charge_lifetime: dt.timedelta | None = None,
        bank_timeout: dt.timedelta = DEFAULT_BANK_TIMEOUT,
        expiry_webhook: bool = True,
        expire_endpoint: bool = False,
        search_metadata: bool = True,
        search_lag: float = 0.0,
        kplus_enabled: bool = True,
        api_version: str = DEFAULT_API_VERSION,
        rate_limit: float | None = None,
        rate_burst: int = 10,
        retry_after_header: bool = True,
    ) -> None:
        if not secret_key or not public_key or secret_key == public_key:
            raise ValueError("the secret and public keys must be distinct and not empty")
        if isinstance(webhook_secrets, str):
            raise TypeError("webhook_secrets is a sequence of base64 secrets, not one string")
        for secret in webhook_secrets:
            decode_secret(secret)
        self._options = FakeOptions(
            expiry_model=expiry_model,
            charge_lifetime=charge_lifetime,
            bank_timeout=bank_timeout,
            expiry_webhook=expiry_webhook,
            expire_endpoint=expire_endpoint,
            search_metadata=search_metadata,
            search_lag=search_lag,
            kplus_enabled=kplus_enabled,
            api_version=api_version,
            rate_limit=rate_limit,
            rate_burst=rate_burst,
            retry_after_header=retry_after_header,
        )
        self._options_lock = threading.Lock()
        self._limiter = RateLimiter()
        self._secret_key = secret_key.encode()
        self._public_key = public_key.encode()
        self._clock: Clock = clock if clock is not None else ShiftedClock()
        self._base_url = base_url.rstrip("/") if base_url else None
        self._faults: list[list[Any]] = []
        self._faults_lock = threading.Lock()
        self._stop = threading.Event()
        ids = IdMaker(seed)
        self._worker = DeliveryWorker(
            url=webhook_url,
            receiver=webhook_receiver,
            secrets=list(webhook_secrets),
            retry=retry if retry is not None else RetryPolicy(),
            timeout=webhook_timeout,
            now=self.now,
            signature_time=signature_time or (lambda: self.now().timestamp()),
            # Deliveries draw ids from their own generator: the worker thread's
            # timing must not shift the seeded ids of charges and events.
            new_id=IdMaker(None if seed is None else seed + 1),
            sweep=self.tick,
            sweep_interval=sweep_interval,
        )
        self._ledger = Ledger(
            now=self.now,
            options=lambda: self.options,
            ids=ids,
            publish=self._worker.enqueue,
            delivers=lambda: self._worker.enabled,
            deliveries=self._worker.records,
        )

    # --- switches ------------------------------------------------------------------

    @property
    def options(self) -> FakeOptions:
        """The switches in force."""
        with self._options_lock:
            return self._options

    def set_options(self, **changes: Any) -> FakeOptions:
        """
        Change switches (the names of :class:`FakeOptions`); return the new set.
        A new ``charge_lifetime`` applies to charges created afterwards; a new
        expiry model or bank timeout to every charge still pending.

        Raises:
            ValueError: an unknown switch, or a value out of range (nothing changes).
        """
        with self._options_lock:
            try:
                self._options = attrs.evolve(self._options, **changes)
            except TypeError as exc:
                raise ValueError(str(exc)) from None
            return self._options

    def __repr__(self) -> str:
        charges, events = self._ledger.counts()
        return f"<FakeOmise charges={charges} events={events}>"

    def __enter__(self) -> FakeOmise:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the background thread; deliveries not yet made are abandoned."""
        self._stop.set()
        self._worker.close()

    # --- the wire ------------------------------------------------------------------

    def transport(self) -> httpx.BaseTransport:
        """An httpx transport answering from this fake, in process (no sockets)."""
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        """
        Answer one request, as the real API would (plus the injected faults).

        Raises:
            httpx.ReadTimeout: a ``slow`` fault longer than the request's read
                timeout, or a ``commit_then_timeout`` fault.
            httpx.RemoteProtocolError: a ``commit_then_drop`` fault.
        """
        reply = self._reply(request)
        if reply.delay:
            read = (request.extensions.get("timeout") or {}).get("read")
            if read is not None and reply.delay > read:
                self._stop.wait(read)
                raise httpx.ReadTimeout("fake Omise: the answer came too late", request=request)
            self._stop.wait(reply.delay)
        if reply.response is None:
            if reply.timeout:
                raise httpx.ReadTimeout("fake Omise: no answer", request=request)
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        return reply.response

    def _reply(self, request: httpx.Request) -> _Reply:
        """The reply to a request, for the transport and the server alike."""
        request.read()
        method = request.method.upper()
        path = "/" + request.url.path.strip("/")
        self.tick()
        metered = path != "/" and not path.startswith(_UNMETERED)
        if metered:
            throttled = self._throttle()
            if throttled is not None:
                return _Reply(throttled)
        fault = self._take_fault(method, path) if metered else None
        if fault is not None and fault.kind in ("error", "html"):
            return _Reply(self._fault_response(fault))
        response = self._dispatch(request, method, path)
        if fault is None:
            return _Reply(response)
        if fault.kind == "truncated":
            body = response.content
            return _Reply(
                httpx.Response(
                    response.status_code,
                    content=body[: len(body) // 2],
                    headers={"Content-Type": "application/json"},
                )
            )
        if fault.kind == "slow":
            return _Reply(response, delay=1.0 if fault.delay is None else fault.delay)
        if fault.kind == "commit_then_error":
            return _Reply(self._fault_response(fault))
        if fault.kind == "commit_then_drop":
            return _Reply(None)
        return _Reply(None, timeout=True, hang=30.0 if fault.delay is None else fault.delay)

    def _throttle(self) -> httpx.Response | None:
        """A 429 when the request is over the ``rate_limit`` switch, else None."""
        options = self.options
        wait = self._limiter.take(options.rate_limit, options.rate_burst)
        if wait <= 0:
            return None
        response = json_response(
            error_object("too_many_requests", "too many requests, slow down"), 429
        )
        if options.retry_after_header:
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response

    def _dispatch(self, request: httpx.Request, method: str, path: str) -> httpx.Response:
        try:
            for route_method, regex, handler, auth in ROUTES:
                match = regex.match(path)
                if match is None or route_method != method:
                    continue
                if auth != "none":
                    self._authenticate(request, auth)
                return handler(self, request, parse_params(request), match.groups())
            raise FakeOmiseError(404, "not_found", "the requested resource was not found")
        except FakeOmiseError as exc:
            return json_response(error_object(exc.code, exc.message), exc.status)

    def _authenticate(self, request: httpx.Request, needed: str) -> None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        key = b""
        if scheme.lower() == "basic":
            try:
                key = base64.b64decode(value.strip(), validate=True).split(b":", 1)[0]
            except (binascii.Error, ValueError):
                key = b""
        if key and hmac.compare_digest(key, self._secret_key):
            return
        if needed == "public" and key and hmac.compare_digest(key, self._public_key):
            return
        raise FakeOmiseError(401, "authentication_failure", "authentication failed")

    # --- faults --------------------------------------------------------------------

    def inject_fault(
        self,
        route: str,
        kind: FaultKind,
        *,
        times: int = 1,
        status: int | None = None,
        code: str | None = None,
        delay: float | None = None,
        retry_after: int | None = None,
    ) -> Fault:
        """
        Make the next ``times`` requests matching ``route`` misbehave (see
        :class:`Fault`). Faults are used in the order they were injected; the
        ``/_fake/`` controls are never affected.

        Raises:
            ValueError: an unknown kind, a malformed route, a bad status or delay.
        """
        fault = Fault(
            route=route,
            kind=kind,
            times=times,
            status=status,
            code=code,
            delay=delay,
            retry_after=retry_after,
        )
        with self._faults_lock:
            self._faults.append([fault, times])
        return fault

    def clear_faults(self) -> int:
        """Forget every pending fault; return how many there were."""
        with self._faults_lock:
            count = len(self._faults)
            self._faults.clear()
            return count

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._faults_lock:
            for entry in self._faults:
                fault: Fault = entry[0]
                if fault.matches(method, path):
                    entry[1] -= 1
                    if entry[1] <= 0:
                        self._faults.remove(entry)
                    return fault
        return None

    def _fault_response(self, fault: Fault) -> httpx.Response:
        if fault.kind == "html":
            status = fault.status or 502
            text = _STATUS_TEXT.get(status, "Error")
            page = (
                f"<html><head><title>{status} {text}</title></head><body>"
                f"<center><h1>{status} {text}</h1></center><hr><center>nginx</center>"
                "</body></html>"
            )
            return httpx.Response(
                status, content=page.encode(), headers={"Content-Type": "text/html"}
            )
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

    # --- time ----------------------------------------------------------------------

    def now(self) -> dt.datetime:
        """
        The fake's current time (aware, UTC).

        Raises:
            ValueError: the injected clock returned a naive datetime.
        """
        when = self._clock()
        if when.tzinfo is None:
            raise ValueError("the clock returned a naive datetime")
        return when.astimezone(dt.UTC)

    def advance_clock(self, delta: dt.timedelta | float) -> list[str]:
        """
        Move the clock forward (a ``timedelta`` or seconds), then end the pending
        charges whose time is up, as the expiry model says (the bank timeout:
        ``failed``/``payment_expired``; ``expires_at``: ``expired``), with a
        ``charge.complete`` webhook unless expiries are silent. Returns the ids of
        the charges that ended.

        Raises:
            TypeError: an injected clock without an ``advance`` method.
            ValueError: a negative ``delta``.
        """
        step = delta if isinstance(delta, dt.timedelta) else dt.timedelta(seconds=delta)
        if step < dt.timedelta(0):
            raise ValueError("the clock does not go backwards")
        advance = getattr(self._clock, "advance", None)
        if advance is None:
            raise TypeError("the injected clock cannot be advanced; advance it and call tick()")
        # Hold the ledger while the clock moves, so the background sweeper cannot
        # end the charges between the two steps (and the ids are reported here).
        with self._ledger.lock:
            advance(step)
            return self.tick()

    def tick(self) -> list[str]:
        """End the pending charges whose time is up (see :meth:`advance_clock`); their ids."""
        return self._ledger.sweep()

    # --- state ---------------------------------------------------------------------

    def charge(self, charge_id: str) -> dict[str, Any]:
        """
        A charge's JSON, as ``GET /charges/:id`` answers it.

        Raises:
            FakeOmiseError: no such charge (404 ``not_found``).
        """
        return self._ledger.charge(charge_id)

    def charges(self) -> list[dict[str, Any]]:
        """Every charge's JSON, oldest first."""
        return self._ledger.charges()

    def events(self, charge_id: str | None = None) -> list[dict[str, Any]]:
        """Every event (of one charge, or all), oldest first, with its deliveries."""
        return self._ledger.events(charge_id)

    def deliveries(self, event_id: str | None = None) -> list[WebhookDelivery]:
        """Every webhook delivery attempt so far (of one event, or all), oldest first."""
        return self._worker.records(event_id)

    def mark_as_paid(self, charge_id: str, *, force: bool = False) -> dict[str, Any]:
        """
        Complete a pending charge as ``successful`` (emits ``charge.complete``)
        and return it. With ``force``, a charge that is no longer pending
        changes too (to test late, contradicting outcomes).

        Raises:
            FakeOmiseError: no such charge (404); not pending (400 ``invalid_charge``).
        """
        return self._ledger.finish(charge_id, "successful", None, force=force)

    def mark_as_failed(
        self, charge_id: str, failure_code: str = "payment_rejected", *, force: bool = False
    ) -> dict[str, Any]:
        """
        Complete a pending charge as ``failed`` with ``failure_code`` (emits
        ``charge.complete``) and return it; ``force`` as in :meth:`mark_as_paid`.

        Raises:
            FakeOmiseError: no such charge (404); not pending (400 ``invalid_charge``);
                a malformed failure code (400 ``bad_request``).
        """
        code = check_failure_code(failure_code)
        return self._ledger.finish(charge_id, "failed", code, force=force)

    def expire(self, charge_id: str, *, force: bool = False) -> dict[str, Any]:
        """
        End a pending charge now, the way the expiry model ends an abandoned
        one, and return it: the bank times out (``failed``, ``payment_expired``)
        under ``bank_timeout``; ``expired`` (``expires_at`` moved to now) under
        ``lifetime``. A webhook follows unless ``expiry_webhook`` is off.
        ``force`` as in :meth:`mark_as_paid`. (The public ``POST
        /charges/:id/expire`` is refused for K PLUS unless ``expire_endpoint``
        is on; this control, also ``POST /_fake/charges/:id/expire``, always works.)

        Raises:
            FakeOmiseError: no such charge (404); not pending (400 ``failed_expire``).
        """
        return self._ledger.expire_now(charge_id, force=force)

    # --- webhook controls ------------------------------------------------------------

    def duplicate_next(self, times: int = 2, *, events: int = 1) -> None:
        """Deliver each of the next ``events`` events ``times`` times (independent chains)."""
        self._worker.duplicate_next(times, events)

    def drop_next(self, events: int = 1) -> None:
        """Never deliver the next ``events`` events (they stay readable through the API)."""
        self._worker.drop_next(events)

    def delay_next(self, seconds: float, *, events: int = 1) -> None:
        """Send the next ``events`` events ``seconds`` late (later ones may overtake them)."""
        self._worker.delay_next(seconds, events)

    def hold_webhooks(self) -> None:
        """Park the deliveries of new events until :meth:`release_webhooks`."""
        self._worker.hold()

    def release_webhooks(self, order: ReleaseOrder = "fifo") -> list[str]:
        """
        Stop holding and send the parked deliveries now, in ``order``
        (``"fifo"``, ``"reversed"``, or event ids, unnamed ones last). Returns the
        event ids in the order they are sent.
        """
        return self._worker.release(order)

    def held_webhooks(self) -> list[str]:
        """The event ids of the parked deliveries."""
        return self._worker.held()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """
        Wait until no delivery is scheduled (retries and delayed ones included)
        or in flight; parked deliveries do not count. False on timeout.
        """
        return self._worker.wait_idle(timeout)

    def flush(self, timeout: float = 5.0) -> None:
        """
        :meth:`wait_idle`, raising on timeout.

        Raises:
            TimeoutError: deliveries were still going after ``timeout`` seconds.
        """
        if not self._worker.wait_idle(timeout):
            raise TimeoutError(f"webhook deliveries still running after {timeout} s")


# --- serving ---------------------------------------------------------------------------


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
