"""
Durable, leased consumers of the event log: how a host acts once on each
transition (ship the order when a payment becomes successful), across restarts,
processes and hosts.

Invariants (each one is a test):

1. One active runner per consumer name at a time, across processes and hosts:
   a runner works only while it holds the consumer's *lease* (a row in
   ``leases``, with an expiry and a fencing token that grows each time the lease
   changes hands). Others wait, or return at once, as their caller asks.
2. A runner that lost its lease (it expired while the runner was paused, or
   another runner took it) can neither advance the position nor commit
   ``process_in_transaction`` work: both check the lease inside the very write
   transaction that would commit them, under the database's write lock.
3. Each event is handled once in normal operation. It is handled again only if
   the runner stops between handling it and advancing the position (a crash, a
   lost lease): at-least-once, with the window of one event. Handlers that write
   to the same database can make it exactly-once with
   :meth:`Consumer.process_in_transaction`.
4. A consumer that does not exist yet starts where its creator says: the
   beginning, now, an event position or a time. There is no default: a new
   consumer never replays all of history by accident. Once it exists, its
   stored position is the only truth; ``start`` is ignored.
5. A runner killed while holding the lease is replaced within the lease time
   (``lease_ttl``, 30 s by default).
6. A graceful stop (:meth:`Consumer.run`'s ``stop`` event) finishes the event
   in hand (the batch in hand, for the transactional loop), advances past it,
   and releases the lease, so another runner takes over at once.

A handler call must finish well within ``lease_ttl / 2`` (the lease is renewed
between events): a runner whose call outlives its lease cannot advance past
that event, and the next holder handles it again.

Lease expiry is judged by the tracker's clock; hosts sharing a PostgreSQL log
must keep their clocks synchronised (NTP) to well within ``lease_ttl``.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, Literal

from ._logging import get_logger
from ._model import StoredEvent
from ._store._log import Lease, holder_id
from ._time import format_time, parse_time
from .exceptions import ConsumerStartError, LeaseLostError
from .failpoints import failpoint

if TYPE_CHECKING:
    from ._tracker import Tracker
    from .typing import TransactionHandle

log = get_logger("kplus_fsm")

#: Where a new consumer starts: ``"beginning"`` (every event ever recorded:
#: a consumer that must see the whole history, e.g. a reporting table built
#: from scratch), ``"now"`` (only events recorded after the consumer is
#: created, by its first run or :meth:`Consumer.create`: what a new side effect
#: such as e-mailing receipts wants, so past buyers are not contacted), an
#: event position (the consumer handles the events after it: resume where
#: another system stopped), or a time (events recorded at or
#: after it; an aware ``datetime`` or ISO-8601 text). There is no default.
Start = Literal["beginning", "now"] | int | dt.datetime | str

#: How long a runner's lease lasts without renewal.
DEFAULT_LEASE_TTL: Final = dt.timedelta(seconds=30)
_LEASE_PREFIX: Final = "consumer:"


class Consumer:
    """
    A named, durable, leased reader of the event log: it remembers (in the
    database) the last position it processed, and only one runner per name
    works at a time (see the module's invariants).

    Args:
        tracker: whose log to read.
        name: the consumer's name, stored in ``consumers``.
        start: where the consumer starts if it does not exist yet (required
            then; ignored once it exists). See :data:`Start`.
        lease_ttl: how long a runner's lease lasts without renewal; a runner
            killed while holding it is replaced after at most this long.
        holder: this runner's identity in ``leases`` (default: host, process
            id and a random tag).

    - :meth:`process`: at-least-once. The handler runs outside any transaction;
      the position advances after each event it handled.
    - :meth:`process_in_transaction`: exactly-once for writes to the same
      database: the handler gets the store's transaction handle (a
      ``sqlite_utils.Database`` for SQLite, a ``psycopg.Connection`` for
      PostgreSQL), and its writes commit with the position, or neither does.
    - :meth:`run` / :meth:`run_in_transaction`: the production loop (poll,
      back off when the handler fails, stop gracefully).

    Raises (from the methods that run handlers):
        ConsumerStartError: the consumer does not exist and ``start`` was not given.
        LeaseLostError: the lease was lost while handling; nothing after the
            last advance is lost (the next holder handles it again).
    """

    def __init__(
        self,
        tracker: Tracker,
        name: str,
        *,
        start: Start | None = None,
        lease_ttl: dt.timedelta = DEFAULT_LEASE_TTL,
        holder: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ValueError("a consumer needs a name of 1 to 200 characters")
        if lease_ttl <= dt.timedelta(0):
            raise ValueError("lease_ttl must be positive")
        _check_start(start)
        self.tracker = tracker
        self.name = name
        self.start = start
        self.lease_ttl = lease_ttl
        self.holder = holder or holder_id()
        self.lease: Lease | None = None
        #: The event the handler last raised on (``None`` once one is handled).
        self.failed_event: StoredEvent | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Consumer({self.name!r}, holder={self.holder!r})"

    # ------------------------------------------------------------------ state

    @property
    def position(self) -> int:
        """The last event position processed (0: none, or the consumer does not exist)."""
        return self.tracker.store.consumer_position(self.name)

    @property
    def exists(self) -> bool:
        """Whether the consumer is stored (it was created, or has processed events)."""
        return self.tracker.store.consumer_exists(self.name)

    @property
    def fencing_token(self) -> int | None:
        """The token of the lease this runner holds (pass it to systems that fence)."""
        return self.lease.token if self.lease is not None else None

    def create(self) -> bool:
        """
        Create the consumer at its ``start`` unless it exists; whether it was created.

        Raises:
            ConsumerStartError: it does not exist and no ``start`` was given.
        """
        store = self.tracker.store
        if store.consumer_exists(self.name):
            return False
        if self.start is None:
            raise ConsumerStartError(
                f"consumer {self.name!r} does not exist yet: say where it starts, e.g. "
                f"tracker.consumer({self.name!r}, start='now') for events from now on, "
                "start='beginning' for every event ever recorded, or an event position "
                "or a time"
            )
        position = self._start_position(self.start)
        created = store.create_consumer(self.name, position, now=self._now())
        if created:
            log.info("consumer_created", consumer=self.name, position=position)
        return created

    def _start_position(self, start: Start) -> int:
        store = self.tracker.store
        if start == "beginning":
            return 0
        if start == "now":
            return store.last_position()
        if isinstance(start, int):
            return start
        when = parse_time(start) if isinstance(start, str) else start
        return store.position_before(format_time(when))

    def pending(self, *, limit: int | None = None) -> list[StoredEvent]:
        """The events not yet processed (at most ``limit``)."""
        self.create()
        out: list[StoredEvent] = []
        for event in self.tracker.store.iter_events(self.position):
            if limit is not None and len(out) >= limit:
                break
            out.append(event)
        return out

    # ------------------------------------------------------------------ lease

    def _now(self) -> str:
        return format_time(self.tracker.clock())

    def _expiry(self) -> str:
        return format_time(self.tracker.clock() + self.lease_ttl)

    def acquire(self, *, wait: bool | float = False) -> bool:
        """
        Take the consumer's lease (creating the consumer first if needed).
        ``wait=False`` returns at once, ``True`` waits as long as it takes, a
        number waits at most that many seconds. Whether the lease is held.
        """
        self.create()
        deadline = None if wait is True else time.monotonic() + float(wait or 0)
        pause = min(1.0, self.lease_ttl.total_seconds() / 4)
        while True:
            lease = self.tracker.store.acquire_lease(
                _LEASE_PREFIX + self.name, self.holder, now=self._now(), expires_at=self._expiry()
            )
            if lease is not None:
                if self.lease is None or self.lease.token != lease.token:
                    log.info("consumer_lease_acquired", consumer=self.name, token=lease.token)
                self.lease = lease
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(pause * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto

    def release(self) -> None:
        """Give the lease up at once (if held), so another runner can take over."""
        lease, self.lease = self.lease, None
        if lease is not None:
            self.tracker.store.release_lease(lease, now=self._now())

    def _keep_lease(self) -> Lease:
        """The lease, renewed when half its time is gone; raise if it was lost."""
        lease = self.lease
        if lease is None:
            raise LeaseLostError(f"consumer {self.name!r}: this runner holds no lease")
        now = self.tracker.clock()
        if parse_time(lease.expires_at) - now > self.lease_ttl / 2:
            return lease
        renewed = self.tracker.store.renew_lease(
            lease, now=format_time(now), expires_at=format_time(now + self.lease_ttl)
        )
        if renewed is None:
            self.lease = None
            log.warning("consumer_lease_lost", consumer=self.name, token=lease.token)
            raise LeaseLostError(
                f"consumer {self.name!r} lost its lease (token {lease.token}) before handling "
                "the next event"
            )
        self.lease = renewed
        return renewed

    # -------------------------------------------------------------- handling

    def process(
        self,
        handler: Callable[[StoredEvent], object],
        *,
        limit: int | None = None,
        wait: bool | float = False,
    ) -> int:
        """
        Hand each unprocessed event to ``handler`` in order, advancing the
        position after each; return how many were handled (0 also when another
        runner holds the lease and ``wait`` ran out: see :meth:`acquire`). The
        lease is released at the end. If the handler raises, the position stays
        before that event and the exception propagates.

        Raises:
            ConsumerStartError: a new consumer without ``start``.
            LeaseLostError: the lease was lost; the position did not move past
                the last event handled under it.
        """
        with self._lock:
            if not self.acquire(wait=wait):
                log.info("consumer_busy", consumer=self.name, reason="another runner holds it")
                return 0
            try:
                return self._drain(handler, limit)
            finally:
                self.release()

    def _drain(
        self,
        handler: Callable[[StoredEvent], object],
        limit: int | None,
        stop: threading.Event | None = None,
    ) -> int:
        done = 0
        store = self.tracker.store
        for event in self._unprocessed():
            if (limit is not None and done >= limit) or (stop is not None and stop.is_set()):
                break
            lease = self._keep_lease()
            self._handle(handler, event)
            failpoint("consumer.after_handle")
            store.advance_consumer(self.name, event.position, now=self._now(), lease=lease)
            done += 1
        return done

    def _handle(self, handler: Callable[[StoredEvent], object], event: StoredEvent) -> None:
        try:
            handler(event)
        except Exception:
            self.failed_event = event
            raise
        self.failed_event = None

    def _unprocessed(self, batch: int = 1000) -> Iterator[StoredEvent]:
        return self.tracker.store.iter_events(self.position, batch=batch)

    def process_in_transaction(
        self,
        handler: Callable[[StoredEvent, TransactionHandle], object],
        *,
        batch: int = 100,
        wait: bool | float = False,
    ) -> int:
        """
        Hand up to ``batch`` unprocessed events to ``handler(event, handle)``
        inside one write transaction that also advances the position, and
        commit it only if this runner still holds the lease. Return how many
        (0 also when another runner holds the lease). If the handler raises,
        the handler's writes and the position roll back.

        Raises:
            ConsumerStartError: a new consumer without ``start``.
            LeaseLostError: the lease was lost: nothing was committed.
        """
        with self._lock:
            if not self.acquire(wait=wait):
                log.info("consumer_busy", consumer=self.name, reason="another runner holds it")
                return 0
            try:
                return self._batch_in_transaction(handler, batch)
            finally:
                self.release()

    def _batch_in_transaction(
        self, handler: Callable[[StoredEvent, TransactionHandle], object], batch: int
    ) -> int:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        store = self.tracker.store
        lease = self._keep_lease()
        failpoint("consumer.before_transaction")

        def work(handle: Any) -> int:
            start = store.consumer_position(self.name)
            n = 0
            last = start
            for event in store.iter_events(start, batch=batch):
                if n >= batch:
                    break
                try:
                    handler(event, handle)
                except Exception:
                    self.failed_event = event
                    raise
                self.failed_event = None
                last = event.position
                n += 1
            failpoint("consumer.before_commit")
            # Checked last, inside the transaction that commits: under the write
            # lock, so no other runner can take the lease between this and COMMIT.
            if not store.lease_valid(lease, now=self._now()):
                raise LeaseLostError(
                    f"consumer {self.name!r} lost its lease (token {lease.token}); "
                    "its transaction was rolled back"
                )
            if n:
                store.set_consumer_position(self.name, last, now=self._now())
            return n

        try:
            return int(store.write_transaction(work))
        except LeaseLostError:
            self.lease = None
            raise

    # --------------------------------------------------------------- running

    def run(
        self,
        handler: Callable[[StoredEvent], object],
        *,
        poll_interval: float = 1.0,
        stop: threading.Event | None = None,
        batch: int = 100,
        max_backoff: float = 60.0,
    ) -> int:
        """
        The production loop (at-least-once, as :meth:`process`): hold the lease
        (waiting while another runner holds it), hand each new event to
        ``handler``, poll every ``poll_interval`` seconds when idle, and when the
        handler raises, log it and retry that event after a growing pause (0.5 s
        doubling, at most ``max_backoff``). Returns the number of events
        handled once ``stop`` is set (a graceful stop: the event in hand is
        finished and advanced first); the lease is released on the way out.
        """
        return self._loop(
            lambda stop: self._drain(handler, batch, stop),
            poll_interval=poll_interval,
            stop=stop,
            max_backoff=max_backoff,
            batch=batch,
        )

    def run_in_transaction(
        self,
        handler: Callable[[StoredEvent, TransactionHandle], object],
        *,
        poll_interval: float = 1.0,
        stop: threading.Event | None = None,
        batch: int = 100,
        max_backoff: float = 60.0,
    ) -> int:
        """:meth:`run` for exactly-once handlers (see :meth:`process_in_transaction`)."""
        return self._loop(
            lambda _stop: self._batch_in_transaction(handler, batch),
            poll_interval=poll_interval,
            stop=stop,
            max_backoff=max_backoff,
            batch=batch,
        )

    def _loop(
        self,
        step: Callable[[threading.Event], int],
        *,
        poll_interval: float,
        stop: threading.Event | None,
        max_backoff: float,
        batch: int,
    ) -> int:
        if poll_interval <= 0 or max_backoff <= 0 or batch < 1:
            raise ValueError("poll_interval and max_backoff must be positive, batch at least 1")
        stop = stop if stop is not None else threading.Event()
        idle_wait = min(poll_interval, self.lease_ttl.total_seconds() / 3)
        total = failures = 0
        self.create()
        with self._lock:
            try:
                while not stop.is_set():
                    if self.lease is None and not self.acquire():
                        stop.wait(idle_wait)
                        continue
                    try:
                        n = step(stop)
                    except LeaseLostError:
                        self.lease = None
                        continue
                    except Exception as exc:  # the host's handler: log, back off, retry
                        failures += 1
                        pause = min(max_backoff, 0.5 * 2 ** min(failures - 1, 16))
                        self._log_failure(exc, failures, pause)
                        stop.wait(pause * (0.5 + random.random() / 2))  # noqa: S311
                        continue
                    failures = 0
                    total += n
                    if n < batch:
                        try:
                            self._keep_lease()
                        except LeaseLostError:
                            continue
                        stop.wait(idle_wait)
            finally:
                self.release()
        return total

    def _log_failure(self, exc: Exception, failures: int, pause: float) -> None:
        """One error line per failure (no traceback); the traceback at info level."""
        event = self.failed_event
        where: dict[str, Any] = (
            {}
            if event is None
            else {"position": event.position, "kind": event.kind, "payment_id": event.stream}
        )
        log.error(
            "consumer_handler_failed",
            consumer=self.name,
            **where,
            error=f"{type(exc).__name__}: {exc}"[:300],
            failures=failures,
            retry_in=round(pause, 3),
        )
        log.info("consumer_handler_traceback", consumer=self.name, exc_info=exc)


def _check_start(start: object) -> None:
    if start is None or start in ("beginning", "now"):
        return
    if isinstance(start, bool):
        raise ConsumerStartError("start must be 'beginning', 'now', a position or a time")
    if isinstance(start, int):
        if start < 0:
            raise ConsumerStartError("a start position must be 0 or more")
        return
    if isinstance(start, dt.datetime):
        if start.tzinfo is None:
            raise ConsumerStartError("a start time must be timezone-aware")
        return
    if isinstance(start, str):
        try:
            parse_time(start)
        except ValueError:
            raise ConsumerStartError(
                f"start must be 'beginning', 'now', a position or an ISO-8601 time, not {start!r}"
            ) from None
        return
    raise ConsumerStartError("start must be 'beginning', 'now', a position or a time")


__all__ = ["DEFAULT_LEASE_TTL", "Consumer", "Start"]
