"""
Webhook deliveries of the fake Omise: a background worker with retries and
test controls (duplicate, hold/release, delay, drop).

Private to :mod:`kplus_fsm.adapters.fake`, which re-exports the public classes.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import attrs
import httpx

from ..signatures import signature_headers
from ._objects import Clock, IdMaker, delivery_time

#: Where deliveries go when only an in-process receiver is configured.
CALLABLE_URI: Final = "http://webhook-receiver.invalid/"
USER_AGENT: Final = "kplus-fsm-fake-omise"

ReleaseOrder = Literal["fifo", "reversed"] | Sequence[str]


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """
    How failed webhook deliveries are retried: up to ``max_attempts`` attempts in
    all, waiting ``backoff * factor ** (n - 1)`` seconds (at most ``max_backoff``)
    after the n-th failed attempt. Omise's real schedule is UNCONFIRMED
    (omise-facts §3.3); the defaults are only plausible.
    """

    max_attempts: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    backoff: float = attrs.field(default=1.0, validator=_positive)
    factor: float = attrs.field(default=2.0, validator=attrs.validators.ge(1.0))
    max_backoff: float = attrs.field(default=60.0, validator=_positive)

    def delay(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt number ``failed_attempt`` (1-based) failed."""
        return float(min(self.backoff * self.factor ** (failed_attempt - 1), self.max_backoff))


@attrs.frozen(kw_only=True)
class WebhookDelivery:
    """
    One attempt to deliver an event, as Omise records it in
    ``event.webhook_deliveries`` (omise-facts §3.1).

    ``status`` is the receiver's HTTP status (``None`` when no answer came);
    ``error`` says why the attempt failed (``None`` on a 2xx); ``payload`` is the
    exact JSON text that was POSTed; ``attempt`` counts from 1 within one
    delivery chain and ``copy`` numbers the chains of a duplicated event.
    ``created_at`` is formatted as in Omise's recorded deliveries,
    ``2023-03-02 10:27:09 UTC`` (not ISO 8601).
    """

    id: str
    event_id: str
    key: str
    uri: str
    attempt: int
    copy: int
    status: int | None
    error: str | None
    payload: str
    created_at: str

    @property
    def ok(self) -> bool:
        """Whether the receiver answered with a 2xx status."""
        return self.status is not None and 200 <= self.status < 300

    def to_json(self) -> dict[str, Any]:
        """The ``webhook_delivery`` object."""
        return {
            "object": "webhook_delivery",
            "id": self.id,
            "uri": self.uri,
            "status": self.status,
            "key": self.key,
            "error": self.error,
            "payload": self.payload,
            "created_at": self.created_at,
        }


@attrs.frozen
class _Job:
    event_id: str
    key: str
    payload: bytes
    attempt: int
    copy: int


class DeliveryWorker:
    """
    One background thread that sends due deliveries one at a time (so the
    order of due deliveries is kept), retries failures, and also calls
    ``sweep`` every ``sweep_interval`` seconds (the fake's expiry check).
    """

    def __init__(
        self,
        *,
        url: str | None,
        receiver: Callable[[httpx.Request], httpx.Response] | None,
        secrets: Sequence[str],
        retry: RetryPolicy,
        timeout: float,
        now: Clock,
        signature_time: Callable[[], float],
        new_id: IdMaker,
        sweep: Callable[[], object],
        sweep_interval: float,
    ) -> None:
        self._uri = url if url is not None else (CALLABLE_URI if receiver is not None else None)
        self._receiver = receiver
        self._secrets = tuple(secrets)
        self._retry = retry
        self._timeout = timeout
        self._now = now
        self._signature_time = signature_time
        self._new_id = new_id
        self._sweep = sweep
        self._sweep_interval = sweep_interval
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self._in_flight = 0
        self._held: list[_Job] = []
        self._holding = False
        self._drop = 0
        self._duplicate_events = 0
        self._duplicate_times = 1
        self._delay_events = 0
        self._delay_seconds = 0.0
        self._records: list[WebhookDelivery] = []
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def enabled(self) -> bool:
        """Whether a webhook URL or receiver is configured."""
        return self._uri is not None

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread (idempotent; not after ``close``)."""
        with self._cond:
            if self._thread is not None or self._stopping:
                return
            self._thread = threading.Thread(
                target=self._run, name="fake-omise-webhooks", daemon=True
            )
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread; undelivered deliveries are abandoned."""
        with self._cond:
            self._stopping = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # --- controls ----------------------------------------------------------------

    def enqueue(self, event_id: str, key: str, payload: bytes) -> None:
        """Schedule the delivery of an event, applying the pending controls."""
        if not self.enabled:
            return
        with self._cond:
            if self._drop > 0:
                self._drop -= 1
                return
            copies = 1
            if self._duplicate_events > 0:
                self._duplicate_events -= 1
                copies = self._duplicate_times
            delay = 0.0
            if self._delay_events > 0:
                self._delay_events -= 1
                delay = self._delay_seconds
            jobs = [_Job(event_id, key, payload, 1, n) for n in range(1, copies + 1)]
            if self._holding:
                self._held.extend(jobs)
            else:
                for job in jobs:
                    self._push(job, time.monotonic() + delay)
            self._cond.notify_all()
        self.start()

    def duplicate_next(self, times: int, events: int) -> None:
        """Deliver each of the next ``events`` events ``times`` times."""
        if times < 1 or events < 0:
            raise ValueError("times must be at least 1 and events not negative")
        with self._cond:
            self._duplicate_times = times
            self._duplicate_events = events

    def drop_next(self, events: int) -> None:
        """Never deliver the next ``events`` events (no attempt, no record)."""
        if events < 0:
            raise ValueError("events must not be negative")
        with self._cond:
            self._drop = events

    def delay_next(self, seconds: float, events: int) -> None:
        """Hold back the first attempt of the next ``events`` events by ``seconds``."""
        if seconds < 0 or events < 0:
            raise ValueError("seconds and events must not be negative")
        with self._cond:
            self._delay_seconds = seconds
            self._delay_events = events

    def hold(self) -> None:
        """Park the deliveries of new events until :meth:`release`."""
        with self._cond:
            self._holding = True

    def release(self, order: ReleaseOrder = "fifo") -> list[str]:
        """
        Stop holding and send the parked deliveries now, in ``order``: ``"fifo"``,
        ``"reversed"``, or a sequence of event ids (parked events it does not
        name follow in FIFO order). Returns the event ids in release order.
        """
        with self._cond:
            held, self._held, self._holding = self._held, [], False
            if order == "fifo":
                ordered = held
            elif order == "reversed":
                ordered = held[::-1]
            elif isinstance(order, str):
                raise ValueError('order must be "fifo", "reversed" or a list of event ids')
            else:
                rank = {event_id: i for i, event_id in enumerate(order)}
                ordered = sorted(held, key=lambda job: rank.get(job.event_id, len(rank)))
            now = time.monotonic()
            for job in ordered:
                self._push(job, now)
            self._cond.notify_all()
        if ordered:
            self.start()
        return [job.event_id for job in ordered]

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is scheduled or being sent (parked ones excepted)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._heap and self._in_flight == 0, timeout=timeout
            )

    def records(self, event_id: str | None = None) -> list[WebhookDelivery]:
        """Every attempt so far (of one event, or all), oldest first."""
        with self._cond:
            return [r for r in self._records if event_id is None or r.event_id == event_id]

    def held(self) -> list[str]:
        """The event ids of the parked deliveries."""
        with self._cond:
            return [job.event_id for job in self._held]

    # --- the thread --------------------------------------------------------------

    def _push(self, job: _Job, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), job))

    def _run(self) -> None:
        transport = httpx.MockTransport(self._receiver) if self._receiver is not None else None
        with httpx.Client(
            transport=transport, timeout=self._timeout, trust_env=False, follow_redirects=False
        ) as client:
            next_sweep = time.monotonic()
            while True:
                if time.monotonic() >= next_sweep:
                    self._sweep()
                    next_sweep = time.monotonic() + self._sweep_interval
                job: _Job | None = None
                with self._cond:
                    if self._stopping:
                        return
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        job = heapq.heappop(self._heap)[2]
                        self._in_flight += 1
                    else:
                        wait = next_sweep - now
                        if self._heap:
                            wait = min(wait, self._heap[0][0] - now)
                        self._cond.wait(max(wait, 0.0))
                if job is not None:
                    self._deliver(client, job)

    def _deliver(self, client: httpx.Client, job: _Job) -> None:
        assert self._uri is not None
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self._secrets:
            headers.update(
                signature_headers(job.payload, self._secrets, int(self._signature_time()))
            )
        status: int | None = None
        error: str | None = None
        try:
            response = client.post(self._uri, content=job.payload, headers=headers)
            status = response.status_code
            if not 200 <= status < 300:
                error = f"the endpoint answered HTTP {status}"
        except Exception as exc:  # anything the receiver raises is a failed attempt
            error = f"{type(exc).__name__}: {exc}"[:300]
        record = WebhookDelivery(
            id=self._new_id("whdl_test_"),
            event_id=job.event_id,
            key=job.key,
            uri=self._uri,
            attempt=job.attempt,
            copy=job.copy,
            status=status,
            error=error,
            payload=job.payload.decode("utf-8"),
            created_at=delivery_time(self._now()),
        )
        with self._cond:
            self._records.append(record)
            self._in_flight -= 1
            if not record.ok and job.attempt < self._retry.max_attempts:
                retry = attrs.evolve(job, attempt=job.attempt + 1)
                self._push(retry, time.monotonic() + self._retry.delay(job.attempt))
            self._cond.notify_all()
