"""Statistics, threads and memory readings shared by the benchmark's sides."""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[rank - 1])


def run_threads(work: Sequence[Callable[[], None]]) -> float:
    """
    Run every callable in its own thread, all released at once by a barrier;
    return the wall time from the release until the last one finished.
    """
    barrier = threading.Barrier(len(work) + 1)
    errors: list[BaseException] = []

    def runner(fn: Callable[[], None]) -> None:
        barrier.wait()
        try:
            fn()
        except BaseException as exc:  # re-raised in the caller below
            errors.append(exc)

    threads = [threading.Thread(target=runner, args=(fn,)) for fn in work]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


def _status_kib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return math.nan


def peak_rss_mb() -> float:
    """This process's peak resident memory (``VmHWM``), MB (10^6 bytes)."""
    return _status_kib("VmHWM") * 1024 / 1e6


def rss_mb() -> float:
    """This process's resident memory now (``VmRSS``), MB."""
    return _status_kib("VmRSS") * 1024 / 1e6
