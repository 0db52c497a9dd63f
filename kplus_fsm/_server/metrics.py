"""
The Prometheus metrics of ``kplus-fsm serve`` (``GET /metrics``), with the
``prometheus_client`` library. Every name starts with ``kplus_fsm_``.

Two kinds of figures, kept apart so that ``--workers N`` reports the truth:

- **What a process did** (deliveries answered, re-fetch latencies, timeouts,
  what its follow-up and reconciler did): counters, histograms and gauges held
  per process. With several worker processes they live in
  ``prometheus_client``'s multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a
  directory ``serve`` makes and removes), so a scrape answered by any worker
  sums every worker's counts. ``serve`` sets the directory before any worker
  imports this module: ``prometheus_client`` picks its mode at import.
- **What the log holds** (pending payments, unresolved hints and their ages):
  read from the event log at scrape time by :class:`LogCollector`, the same
  from any worker and right after any restart.

Invariant: one :class:`ServeMetrics` per process; the worker stats it mirrors
only grow, so it turns them into counter increments (:meth:`ServeMetrics.sync`).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import attrs
import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .._hints import unresolved_summary
from .._time import parse_time
from ..adapters.webhooks import IntakeResult
from ..typing import SQLStore

log = structlog.get_logger("kplus_fsm.serve")

#: The media type of ``GET /metrics``.
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

#: Latency buckets (seconds) of a delivery and of a re-fetch.
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@attrs.frozen(kw_only=True)
class LogFigures:
    """What the log says at one moment (``GET /ready`` and ``GET /metrics``)."""

    unresolved_hints: int
    oldest_unresolved_at: str | None
    oldest_unresolved_age_seconds: float | None
    pending_payments: int
    oldest_pending_at: str | None
    oldest_pending_age_seconds: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "unresolved_hints": {
                "count": self.unresolved_hints,
                "oldest_at": self.oldest_unresolved_at,
                "oldest_age_seconds": self.oldest_unresolved_age_seconds,
            },
            "pending_payments": {
                "count": self.pending_payments,
                "oldest_at": self.oldest_pending_at,
                "oldest_age_seconds": self.oldest_pending_age_seconds,
            },
        }


def read_log_figures(store: SQLStore, *, now: dt.datetime) -> LogFigures:
    """Unresolved hints and pending payments, counted in the log."""
    hints = unresolved_summary(store, now=now)
    count, oldest = store.query(
        "SELECT count(*), min(created_at) FROM payments WHERE status = ?", ("pending",)
    )[0]
    age = None
    if oldest is not None:
        age = round((now - parse_time(str(oldest).replace("Z", "+00:00"))).total_seconds(), 3)
    return LogFigures(
        unresolved_hints=int(hints["count"]),
        oldest_unresolved_at=hints["oldest_at"],
        oldest_unresolved_age_seconds=hints["oldest_age_seconds"],
        pending_payments=int(count),
        oldest_pending_at=str(oldest) if oldest is not None else None,
        oldest_pending_age_seconds=age,
    )


class LogCollector:
    """A ``prometheus_client`` collector of :class:`LogFigures`, read at each scrape."""

    def __init__(self, read: Callable[[], LogFigures]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "kplus_fsm_log_up", "1 if the event log could be read for this scrape, else 0."
        )
        try:
            figures = self._read()
        except Exception as exc:  # the scrape still answers, and says the log is down
            log.warning("metrics_log_unreadable", error=type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for name, text, value in (
            (
                "kplus_fsm_unresolved_hints",
                "Accepted webhooks whose charge has no authoritative read recorded after them.",
                figures.unresolved_hints,
            ),
            (
                "kplus_fsm_oldest_unresolved_hint_age_seconds",
                "Age of the oldest unresolved hint (0 when there is none).",
                figures.oldest_unresolved_age_seconds or 0.0,
            ),
            ("kplus_fsm_pending_payments", "Payments in status pending.", figures.pending_payments),
            (
                "kplus_fsm_oldest_pending_payment_age_seconds",
                "Age of the oldest pending payment (0 when there is none).",
                figures.oldest_pending_age_seconds or 0.0,
            ),
        ):
            family = GaugeMetricFamily(name, text)
            family.add_metric([], float(value))
            yield family


class ServeMetrics:
    """
    One process's metrics: the intake's :class:`IntakeObserver`, the deadlines
    of the HTTP layer, and the follow-up and reconciler of its worker.

    Args:
        multiprocess_dir: ``PROMETHEUS_MULTIPROC_DIR`` when several processes
            serve (``None``: this process alone).
    """

    def __init__(self, *, multiprocess_dir: str | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        r = self.registry
        self.deliveries = Counter(
            "kplus_fsm_webhook_deliveries",
            "Webhook deliveries answered, by recorded outcome and HTTP status.",
            ["outcome", "status"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "kplus_fsm_webhook_delivery_seconds",
            "Time to verify, record and re-fetch one delivery.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.refetch_seconds = Histogram(
            "kplus_fsm_refetch_seconds",
            "Latency of the intake's re-fetches of a charge (GET /charges/:id).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.refetch_failures = Counter(
            "kplus_fsm_refetch_failures",
            "The intake's re-fetches that failed, by error type.",
            ["error"],
            registry=r,
        )
        self.http_timeouts = Counter(
            "kplus_fsm_http_timeouts",
            "Connections closed because a request head or body was too slow.",
            ["phase"],
            registry=r,
        )
        self.followup_refetches = Counter(
            "kplus_fsm_followup_refetches",
            "Re-fetches of unresolved hints by the follow-up, by result.",
            ["result"],
            registry=r,
        )
        self.followup_rate_limited = Counter(
            "kplus_fsm_followup_rate_limited",
            "Times the follow-up paused on a 429 from the API.",
            registry=r,
        )
        self.followup_backlog = Gauge(
            "kplus_fsm_followup_backlog",
            "Unresolved hints queued in the follow-up that holds the lease.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.followup_leader = Gauge(
            "kplus_fsm_followup_leader",
            "Processes holding the follow-up lease (1 in a healthy deployment).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.reconciler_runs = Counter(
            "kplus_fsm_reconciler_runs", "Periodic reconciler runs.", registry=r
        )
        self.reconciler_changes = Counter(
            "kplus_fsm_reconciler_changes",
            "Payments whose status the periodic reconciler changed.",
            registry=r,
        )
        self.reconciler_errors = Counter(
            "kplus_fsm_reconciler_errors",
            "Reads that failed during periodic reconciler runs.",
            registry=r,
        )
        self.reconciler_failed_runs = Counter(
            "kplus_fsm_reconciler_failed_runs",
            "Periodic reconciler runs that could not run (the log failed).",
            registry=r,
        )
        self.reconciler_leader = Gauge(
            "kplus_fsm_reconciler_leader",
            "Processes holding the reconciler lease (1 in a healthy deployment).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.reconciler_last_run = Gauge(
            "kplus_fsm_reconciler_last_run_timestamp_seconds",
            "Unix time of the last periodic reconciler run.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self._seen: dict[str, float] = {}

    # -------------------------------------------------------- IntakeObserver

    def delivered(self, result: IntakeResult, *, seconds: float) -> None:
        self.deliveries.labels(result.outcome or "none", str(result.status)).inc()
        self.delivery_seconds.observe(seconds)

    def refetched(self, *, seconds: float, error: str | None) -> None:
        self.refetch_seconds.observe(seconds)
        if error is not None:
            self.refetch_failures.labels(error).inc()

    def timed_out(self, phase: str) -> None:
        """A request head or body deadline fired (the HTTP layer's hook)."""
        self.http_timeouts.labels(phase).inc()

    # ------------------------------------------------------------ the worker

    def sync(self, health: Mapping[str, Any]) -> None:
        """Mirror a :meth:`kplus_fsm.Worker.health` snapshot (its counts only grow)."""
        followup = health.get("followup")
        if followup is not None:
            self._grow("f.ok", followup["refetched"], self.followup_refetches.labels("ok").inc)
            self._grow("f.failed", followup["failed"], self.followup_refetches.labels("failed").inc)
            self._grow("f.429", followup["rate_limited"], self.followup_rate_limited.inc)
            leader = bool(followup["leader"])
            self.followup_leader.set(1 if leader else 0)
            self.followup_backlog.set(followup["backlog"] if leader else 0)
        reconciler = health.get("reconciler")
        if reconciler is not None:
            self._grow("r.runs", reconciler["runs"], self.reconciler_runs.inc)
            self._grow("r.changes", reconciler["changes"], self.reconciler_changes.inc)
            self._grow("r.errors", reconciler["errors"], self.reconciler_errors.inc)
            self._grow("r.failed", reconciler["failed_runs"], self.reconciler_failed_runs.inc)
            self.reconciler_leader.set(1 if reconciler["leader"] else 0)
            if reconciler["last_run_at"]:
                self.reconciler_last_run.set(parse_time(reconciler["last_run_at"]).timestamp())

    def _grow(self, key: str, total: float, inc: Callable[[float], None]) -> None:
        delta = float(total) - self._seen.get(key, 0.0)
        if delta > 0:
            inc(delta)
            self._seen[key] = float(total)

    # ------------------------------------------------------------ exposition

    def exposition(self, log_figures: Callable[[], LogFigures]) -> bytes:
        """The Prometheus text of every process's figures and of the log's."""
        registry = CollectorRegistry()
        if self.multiprocess_dir is not None:
            forget_dead_processes(self.multiprocess_dir)
            MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        else:
            registry.register(_Forward(self.registry))
        registry.register(LogCollector(log_figures))
        return generate_latest(registry)


class _Forward:
    """Collects another registry's metrics into a scrape registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        yield from self._source.collect()


def forget_dead_processes(directory: str) -> None:
    """Drop the live gauges of worker processes that are gone (killed, restarted)."""
    seen: set[int] = set()
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not name.startswith("gauge_live") or not name.endswith(".db"):
            continue
        pid_text = name.rsplit("_", 1)[-1][: -len(".db")]
        if not pid_text.isdigit() or int(pid_text) in seen:
            continue
        pid = int(pid_text)
        seen.add(pid)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, someone else's
            continue


__all__ = [
    "CONTENT_TYPE",
    "LogCollector",
    "LogFigures",
    "ServeMetrics",
    "forget_dead_processes",
    "read_log_figures",
]
