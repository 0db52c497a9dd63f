"""
:class:`FakeOmise`, the fake Omise account: the facade over its parts (the
:class:`~._state.Ledger` of sources, charges and events; the
:class:`~._webhooks.DeliveryWorker`; the pending :class:`~._faults.Faults`; the
switches, :class:`~._options.FakeOptions`; the clock) and the wire: one
``httpx.Request`` in, one reply out, through the routes of :mod:`._routes`.

Invariants: the keys are compared in constant time and never shown (``repr``,
errors); a request is answered by the first route matching its method and path,
after the rate limit and the injected faults (never for ``/``, ``/_fake/`` and
the authorize page); the routes drive the fake only through the
:class:`~._routes.Fake` protocol, so this module imports them and they never
import it back.

Private to :mod:`kplus_fsm.adapters.fake`, which re-exports :class:`FakeOmise`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
import httpx

from ..signatures import decode_secret
from ._faults import Fault, FaultKind, Faults, Reply, fault_response
from ._objects import (
    Clock,
    FakeOmiseError,
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
    ExpiryModel,
    FakeOptions,
    RateLimiter,
)
from ._routes import ROUTES
from ._state import Ledger
from ._webhooks import DeliveryWorker, ReleaseOrder, RetryPolicy, WebhookDelivery

#: Paths outside the API: never throttled, never faulted.
_UNMETERED: Final = ("/_fake/", "/test/authorize/")


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
        self._faults = Faults()
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

    def _reply(self, request: httpx.Request) -> Reply:
        """The reply to a request, for the transport and the server alike."""
        request.read()
        method = request.method.upper()
        path = "/" + request.url.path.strip("/")
        self.tick()
        metered = path != "/" and not path.startswith(_UNMETERED)
        if metered:
            throttled = self._throttle()
            if throttled is not None:
                return Reply(throttled)
        fault = self._faults.take(method, path) if metered else None
        if fault is not None and fault.kind in ("error", "html"):
            return Reply(fault_response(fault))
        response = self._dispatch(request, method, path)
        if fault is None:
            return Reply(response)
        if fault.kind == "truncated":
            body = response.content
            return Reply(
                httpx.Response(
                    response.status_code,
                    content=body[: len(body) // 2],
                    headers={"Content-Type": "application/json"},
                )
            )
        if fault.kind == "slow":
            return Reply(response, delay=1.0 if fault.delay is None else fault.delay)
        if fault.kind == "commit_then_error":
            return Reply(fault_response(fault))
        if fault.kind == "commit_then_drop":
            return Reply(None)
        return Reply(None, timeout=True, hang=30.0 if fault.delay is None else fault.delay)

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
        self._faults.add(fault)
        return fault

    def clear_faults(self) -> int:
        """Forget every pending fault; return how many there were."""
        return self._faults.clear()

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
