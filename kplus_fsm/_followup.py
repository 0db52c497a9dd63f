"""
The jobs that make the log right by itself, with no command run by hand and no
cron: following up every accepted webhook, and reconciling on a timer.

- :class:`FollowUp` re-fetches every *unresolved hint* (an accepted webhook
  whose charge has had no authoritative read recorded after it; derived from
  the log, see :meth:`kplus_fsm.Tracker.unresolved_hints`): all of them at
  start-up, oldest first, and every new one as it appears. Bounded concurrency,
  per-charge exponential backoff with jitter, and a pause for the whole job when
  Omise answers 429 (for its ``Retry-After`` when it sends one).
- :class:`PeriodicReconciler` runs :meth:`kplus_fsm.Tracker.reconcile` every
  ``every`` (60 s by default): pending charges past their expiry or quiet for
  too long, and creates whose outcome is unknown.
- :class:`Worker` runs both, and any named consumers, in background threads:
  ``kplus-fsm serve`` runs one inside the receiver, ``kplus-fsm worker`` runs one
  on its own (for hosts that receive webhooks in their own web app).

With several processes or hosts on one log, each job runs in one place at a
time: it works only while it holds its lease (``leases``: ``followup``,
``reconciler``); a process killed while holding one is replaced within the
lease time. Crashes between any two steps are safe: a hint stays unresolved
until a read of its charge is *recorded*, so a follow-up killed after the read
and before the record simply reads it again.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._logging import get_logger
from ._model import Origin, StoredEvent
from ._store._log import Lease, UnresolvedHint, holder_id
from ._time import format_time, parse_time
from .exceptions import GatewayError, GatewayUnavailableError, KplusFSMError, StoreError
from .failpoints import failpoint

if TYPE_CHECKING:
    from ._flow import ReconcileReport
    from ._tracker import Tracker
    from .typing import ChargeAPI, TransactionHandle

log = get_logger("kplus_fsm")

#: Lease names in ``leases``.
FOLLOWUP_LEASE: Final = "followup"
RECONCILER_LEASE: Final = "reconciler"
DEFAULT_RECONCILE_EVERY: Final = dt.timedelta(seconds=60)


class _Leased:
    """A job that works only while it holds a named lease."""

    def __init__(self, tracker: Tracker, name: str, ttl: dt.timedelta, holder: str) -> None:
        self.tracker = tracker
        self.lease_name = name
        self.lease_ttl = ttl
        self.holder = holder
        self.lease: Lease | None = None

    @property
    def leader(self) -> bool:
        """Whether this process holds the job's lease (as of its last try)."""
        return self.lease is not None

    def _hold(self) -> bool:
        """Take or renew the lease; whether it is held."""
        now = self.tracker.clock()
        stamp, expiry = format_time(now), format_time(now + self.lease_ttl)
        store = self.tracker.store
        try:
            if self.lease is not None:
                if parse_time(self.lease.expires_at) - now > self.lease_ttl / 2:
                    return True
                renewed = store.renew_lease(self.lease, now=stamp, expires_at=expiry)
                if renewed is not None:
                    self.lease = renewed
                    return True
                log.warning("lease_lost", lease=self.lease_name, token=self.lease.token)
                self.lease = None
            lease = store.acquire_lease(self.lease_name, self.holder, now=stamp, expires_at=expiry)
        except StoreError as exc:
            log.warning("lease_unavailable", lease=self.lease_name, error=type(exc).__name__)
            return False
        if lease is not None and self.lease is None:
            log.info("lease_acquired", lease=self.lease_name, token=lease.token)
        self.lease = lease
        return lease is not None

    def _let_go(self) -> None:
        lease, self.lease = self.lease, None
        if lease is not None:
            try:
                self.tracker.store.release_lease(lease, now=format_time(self.tracker.clock()))
            except StoreError as exc:  # it expires on its own
                log.warning("lease_release_failed", lease=self.lease_name, error=type(exc).__name__)


# ------------------------------------------------------------------ follow-up


@attrs.define
class _Pending:
    hint: UnresolvedHint
    failures: int = 0
    next_try: float = 0.0


@attrs.define
class FollowUpStats:
    """What the follow-up has done (for metrics and ``GET /ready``)."""

    refetched: int = 0
    failed: int = 0
    rate_limited: int = 0
    backlog: int = 0
    oldest_unresolved_at: str | None = None
    paused_until: float = 0.0
    """``time.monotonic()`` until which a 429 pauses the job (0: not paused)."""


@attrs.frozen(kw_only=True)
class FollowUpReport:
    """
    One pass of the follow-up: hints found, re-fetched, failed, found resolved
    by someone else meanwhile (a redelivery, the reconciler), and left waiting.
    """

    found: int
    refetched: int
    failed: int
    waiting: int
    already_resolved: int = 0
    rate_limited: bool = False


#: What re-fetching one hint came to, when it did not fail.
_REFETCHED: Final = "refetched"
_ALREADY: Final = "already_resolved"


class FollowUp(_Leased):
    """
    Re-fetches unresolved webhook hints until each has a recorded read.

    Args:
        tracker: whose log to follow up.
        api: reads charges with the secret key (``OmiseClient``).
        concurrency: re-fetches in flight at once.
        base_delay / max_delay: a charge whose re-fetch failed waits
            ``base_delay`` seconds, doubling per failure up to ``max_delay``
            (with jitter) before the next try.
        batch: hints read from the log per pass.
        lease_ttl: how long the ``followup`` lease lasts unrenewed.
        monotonic: the clock of backoffs and pauses (tests inject one).
    """

    def __init__(
        self,
        tracker: Tracker,
        api: ChargeAPI,
        *,
        concurrency: int = 4,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        batch: int = 500,
        lease_ttl: dt.timedelta = dt.timedelta(seconds=30),
        holder: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 1 or batch < 1 or base_delay <= 0 or max_delay < base_delay:
            raise ValueError("concurrency, batch and delays must be positive (max >= base)")
        super().__init__(tracker, FOLLOWUP_LEASE, lease_ttl, holder or holder_id())
        self.api = api
        self.concurrency = concurrency
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.batch = batch
        self.monotonic = monotonic
        self.stats = FollowUpStats()
        self._pending: dict[str, _Pending] = {}
        self._scanned_to = 0  # inbox ids up to here have been looked at for new hints
        self._pool: ThreadPoolExecutor | None = None
        self._wake = threading.Event()

    def wake(self, charge_id: str | None = None) -> None:
        """Ask for a pass soon (the intake calls it when a re-fetch failed)."""
        self._wake.set()

    def _scan(self) -> int:
        """Add the hints recorded since the last scan; return how many."""
        store = self.tracker.store
        found = 0
        while True:
            head = int(store.head()["inbox_id"])
            hints = store.unresolved_hints(after=self._scanned_to, limit=self.batch)
            for hint in hints:
                if hint.charge_id not in self._pending:
                    self._pending[hint.charge_id] = _Pending(hint=hint)
                    found += 1
            if len(hints) < self.batch:
                self._scanned_to = max(self._scanned_to, head)
                return found
            self._scanned_to = hints[-1].inbox_id

    def run_once(self) -> FollowUpReport:
        """
        One pass: pick up new hints, then re-fetch those due (oldest first, at
        most ``concurrency`` at once). Works only while holding the lease.
        """
        if not self._hold():
            self._pending.clear()
            self._scanned_to = 0  # a later leader starts from the beginning again
            return FollowUpReport(found=0, refetched=0, failed=0, waiting=0)
        found = self._scan()
        now = self.monotonic()
        if now < self.stats.paused_until:
            self._update_stats()
            return FollowUpReport(
                found=found, refetched=0, failed=0, waiting=len(self._pending), rate_limited=True
            )
        due = sorted(
            (p for p in self._pending.values() if p.next_try <= now),
            key=lambda p: p.hint.inbox_id,
        )
        refetched = failed = already = 0
        limited = False
        for start in range(0, len(due), self.concurrency):
            chunk = due[start : start + self.concurrency]
            for item, error in zip(chunk, self._refetch_all(chunk), strict=True):
                if isinstance(error, str):
                    if error == _REFETCHED:
                        refetched += 1
                    else:
                        already += 1
                    self._pending.pop(item.hint.charge_id, None)
                    continue
                failed += 1
                item.failures += 1
                delay = min(self.max_delay, self.base_delay * 2 ** min(item.failures - 1, 20))
                item.next_try = self.monotonic() + delay * (0.5 + random.random())  # noqa: S311
                if isinstance(error, GatewayUnavailableError) and error.http_status == 429:
                    limited = True
                    pause = error.retry_after if error.retry_after is not None else delay
                    self.stats.paused_until = self.monotonic() + pause
                    self.stats.rate_limited += 1
            if limited:
                break
        self.stats.refetched += refetched
        self.stats.failed += failed
        self._update_stats()
        return FollowUpReport(
            found=found,
            refetched=refetched,
            failed=failed,
            waiting=len(self._pending),
            already_resolved=already,
            rate_limited=limited,
        )

    def _update_stats(self) -> None:
        self.stats.backlog = len(self._pending)
        oldest = min(
            (p.hint for p in self._pending.values()), key=lambda h: h.inbox_id, default=None
        )
        self.stats.oldest_unresolved_at = oldest.received_at if oldest is not None else None

    def _refetch_all(self, chunk: Sequence[_Pending]) -> list[BaseException | str]:
        if len(chunk) == 1 or self.concurrency == 1:
            return [self._refetch(item) for item in chunk]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="kplus-followup")
        return list(self._pool.map(self._refetch, chunk))

    def _refetch(self, item: _Pending) -> BaseException | str:
        """Re-fetch one hint's charge and record it; the error, or what was done."""
        hint = item.hint
        try:
            if not self.tracker.unresolved_hints(charge_id=hint.charge_id, limit=1):
                return _ALREADY  # resolved meanwhile (a redelivery, the reconciler)
            charge = self.api.retrieve_charge(hint.charge_id)
            failpoint("followup.before_record")
            self.tracker.record_charge(charge, origin=Origin.REFETCH, payment_id=hint.payment_id)
        except (GatewayError, KplusFSMError) as exc:
            log.warning(
                "followup_refetch_failed",
                charge_id=hint.charge_id,
                inbox_id=hint.inbox_id,
                error=type(exc).__name__,
                failures=item.failures + 1,
            )
            return exc
        except Exception as exc:  # a broken client must not stop the job
            log.exception("followup_refetch_crashed", charge_id=hint.charge_id)
            return exc
        log.info("followup_refetched", charge_id=hint.charge_id, inbox_id=hint.inbox_id)
        return _REFETCHED

    def run(self, stop: threading.Event, *, poll_interval: float = 2.0) -> None:
        """Run passes until ``stop`` is set (the intake's :meth:`wake` speeds the next one)."""
        try:
            while not stop.is_set():
                try:
                    self.run_once()
                except StoreError as exc:
                    log.warning("followup_pass_failed", error=type(exc).__name__)
                self._wake.wait(poll_interval)
                self._wake.clear()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the thread pool and give the lease up."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._let_go()


# ------------------------------------------------------------------ reconciler


@attrs.define
class ReconcilerStats:
    """What the periodic reconciler has done (for metrics)."""

    runs: int = 0
    changes: int = 0
    errors: int = 0
    failed_runs: int = 0
    last_run_at: str | None = None
    paused_until: float = 0.0


class PeriodicReconciler(_Leased):
    """
    :meth:`kplus_fsm.Tracker.reconcile` every ``every``, in one process at a
    time (the ``reconciler`` lease, which lasts ``every`` plus 30 s unrenewed).
    """

    def __init__(
        self,
        tracker: Tracker,
        api: ChargeAPI,
        *,
        every: dt.timedelta = DEFAULT_RECONCILE_EVERY,
        limit: int = 100,
        pending_threshold: dt.timedelta | None = None,
        holder: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if every <= dt.timedelta(0) or limit < 1:
            raise ValueError("every must be positive and limit at least 1")
        super().__init__(
            tracker, RECONCILER_LEASE, every + dt.timedelta(seconds=30), holder or holder_id()
        )
        self.api = api
        self.every = every
        self.limit = limit
        self.pending_threshold = pending_threshold
        self.monotonic = monotonic
        self.stats = ReconcilerStats()

    def run_once(self) -> ReconcileReport | None:
        """One run if this process holds the lease (``None`` otherwise, or while paused)."""
        if not self._hold() or self.monotonic() < self.stats.paused_until:
            return None
        kwargs: dict[str, Any] = {"limit": self.limit}
        if self.pending_threshold is not None:
            kwargs["pending_threshold"] = self.pending_threshold
        try:
            report = self.tracker.reconcile(self.api, **kwargs)
        except StoreError as exc:
            self.stats.failed_runs += 1
            log.warning("reconcile_run_failed", error=type(exc).__name__)
            return None
        self.stats.runs += 1
        self.stats.changes += report.changed
        self.stats.errors += report.errors
        self.stats.last_run_at = format_time(self.tracker.clock())
        if report.rate_limited:
            self.stats.paused_until = self.monotonic() + (report.retry_after or 60.0)
        if report.checked:
            log.info(
                "reconciled",
                checked=report.checked,
                changed=report.changed,
                errors=report.errors,
                rate_limited=report.rate_limited,
            )
        return report

    def run(self, stop: threading.Event) -> None:
        """Run every ``every`` until ``stop`` is set."""
        try:
            while not stop.is_set():
                self.run_once()
                stop.wait(self.every.total_seconds())
        finally:
            self._let_go()


# ---------------------------------------------------------------------- worker

Handler = Callable[[StoredEvent], object]
TransactionalHandler = Callable[[StoredEvent, "TransactionHandle"], object]


@attrs.frozen(kw_only=True)
class ConsumerSpec:
    """A named consumer for a :class:`Worker` to run, and where a new one starts."""

    name: str
    handler: Handler | TransactionalHandler
    transactional: bool = False
    start: Any = None


class Worker:
    """
    The background jobs of a receiver, in threads: the follow-up of unresolved
    hints, the periodic reconciler, and named consumers. :meth:`start` them,
    :meth:`stop` them (each finishes what it has in hand, within ``grace``).

    Args:
        tracker: the log.
        api: the Omise client (``None``: no follow-up, no reconciler: nothing
            can be read back without the secret key).
        followup: run the follow-up.
        reconcile_every: the reconciler's period (``None``: no reconciler).
        consumers: consumers to run (:meth:`kplus_fsm.Consumer.run`).
    """

    def __init__(
        self,
        tracker: Tracker,
        api: ChargeAPI | None,
        *,
        followup: bool = True,
        reconcile_every: dt.timedelta | None = DEFAULT_RECONCILE_EVERY,
        consumers: Sequence[ConsumerSpec] = (),
        poll_interval: float = 2.0,
    ) -> None:
        self.tracker = tracker
        holder = holder_id()
        self.followup = FollowUp(tracker, api, holder=holder) if api and followup else None
        self.reconciler = (
            PeriodicReconciler(tracker, api, every=reconcile_every, holder=holder)
            if api is not None and reconcile_every is not None
            else None
        )
        self.consumers = [
            (spec, tracker.consumer(spec.name, start=spec.start)) for spec in consumers
        ]
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def wake(self, charge_id: str | None = None) -> None:
        """Wake the follow-up (an intake's ``on_unresolved``)."""
        if self.followup is not None:
            self.followup.wake(charge_id)

    def start(self) -> Worker:
        """Start every job in a daemon thread; return at once."""
        if self._threads:
            return self
        self._stop.clear()
        jobs: list[tuple[str, Callable[[], None]]] = []
        if self.followup is not None:
            followup = self.followup
            jobs.append(
                ("followup", lambda: followup.run(self._stop, poll_interval=self.poll_interval))
            )
        if self.reconciler is not None:
            reconciler = self.reconciler
            jobs.append(("reconciler", lambda: reconciler.run(self._stop)))
        for spec, consumer in self.consumers:
            jobs.append((f"consumer-{spec.name}", self._consumer_job(spec, consumer)))
        for name, job in jobs:
            thread = threading.Thread(target=self._guarded(name, job), name=f"kplus-{name}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)
        return self

    def _consumer_job(self, spec: ConsumerSpec, consumer: Any) -> Callable[[], None]:
        def job() -> None:
            if spec.transactional:
                consumer.run_in_transaction(spec.handler, stop=self._stop)
            else:
                consumer.run(spec.handler, stop=self._stop)

        return job

    @staticmethod
    def _guarded(name: str, job: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                job()
            except Exception:  # a job must never die silently
                log.exception("background_job_crashed", job=name)

        return run

    def stop(self, grace: float = 10.0) -> bool:
        """Ask every job to stop and wait up to ``grace`` seconds; whether all stopped."""
        self._stop.set()
        self.wake()
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("background_jobs_still_running", jobs=alive)
        self._threads = [t for t in self._threads if t.is_alive()]
        return not alive

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Start the jobs and block until ``stop`` is set (or Ctrl-C), then stop them."""
        self.start()
        waiter = stop if stop is not None else threading.Event()
        try:
            while not waiter.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def health(self) -> dict[str, Any]:
        """What the jobs report (for ``GET /ready`` and metrics)."""
        out: dict[str, Any] = {}
        if self.followup is not None:
            out["followup"] = {"leader": self.followup.leader, **attrs.asdict(self.followup.stats)}
        if self.reconciler is not None:
            out["reconciler"] = {
                "leader": self.reconciler.leader,
                **attrs.asdict(self.reconciler.stats),
            }
        out["consumers"] = [spec.name for spec, _ in self.consumers]
        return out


__all__ = [
    "DEFAULT_RECONCILE_EVERY",
    "ConsumerSpec",
    "FollowUp",
    "FollowUpReport",
    "FollowUpStats",
    "PeriodicReconciler",
    "ReconcilerStats",
    "Worker",
]
