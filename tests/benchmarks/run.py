"""
The performance benchmark of issue 6: kplus_fsm side by side with its limit
(raw ``sqlite3`` writing the same rows) and its peer (the ``eventsourcing``
library's SQLite persistence), in the same run, with the ratios.

    python tests/benchmarks/run.py [--quick] [--json]

Prints a table; with ``--json`` the last line of stdout is one JSON object with
every figure and ratio. ``--quick`` (smaller sizes) finishes within a minute;
the full run within ~15 minutes (the first time: building the 1M-event log
takes ~6 of them, then it is cached, see ``--cache-dir``).

    python tests/benchmarks/run.py --profile append   # our side under pyinstrument

What each figure measures and how each side is set up: docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(HERE) not in sys.path:  # run as a script, or imported by a test
    sys.path.insert(0, str(HERE))

import _ours  # noqa: E402
import _peer  # noqa: E402
import _raw  # noqa: E402
import _serve_bench  # noqa: E402
import _workload  # noqa: E402
from _common import median, percentile, run_threads  # noqa: E402
from _workload import Step  # noqa: E402

import kplus_fsm  # noqa: E402
from kplus_fsm import Tracker, _codec  # noqa: E402

FIGURES = ("append", "concurrent", "import", "webhook", "serve", "replay", "show")

REQUIRED_KEYS = (
    "ratio_append_vs_raw",
    "ratio_append_vs_eventsourcing",
    "ratio_concurrent_vs_eventsourcing",
    "ratio_import_vs_raw",
    "ratio_replay_vs_raw",
    "ratio_replay_vs_eventsourcing",
    "replay_peak_mb",
    "show_median_ratio_vs_raw",
    "cli_show_vs_python_ratio",
)


@dataclass(frozen=True)
class Sizes:
    """How much each figure does (inputs are multiples of 4: one payment = 4 inputs)."""

    append_inputs: int  # per side, per repetition
    append_reps: int
    threads: int
    concurrent_inputs: int  # per thread
    concurrent_reps: int
    import_events: int
    import_batch: int
    import_reps: int
    webhook_deliveries: int
    webhook_reps: int
    replay_events: int
    replay_small_events: int  # the second size, for peak memory
    show_calls: int
    cli_calls: int  # whole `kplus-fsm show` processes, and as many bare interpreters


FULL = Sizes(
    append_inputs=2000,
    append_reps=5,
    threads=8,
    concurrent_inputs=200,
    concurrent_reps=3,
    import_events=20_000,
    import_batch=500,
    import_reps=3,
    webhook_deliveries=400,
    webhook_reps=3,
    replay_events=1_000_000,
    replay_small_events=100_000,
    show_calls=1000,
    cli_calls=21,
)
QUICK = Sizes(
    append_inputs=400,
    append_reps=3,
    threads=8,
    concurrent_inputs=40,
    concurrent_reps=2,
    import_events=3000,
    import_batch=500,
    import_reps=2,
    webhook_deliveries=80,
    webhook_reps=2,
    replay_events=40_000,
    replay_small_events=5_000,
    show_calls=300,
    cli_calls=9,
)
SMOKE = Sizes(
    append_inputs=40,
    append_reps=1,
    threads=8,
    concurrent_inputs=8,
    concurrent_reps=1,
    import_events=200,
    import_batch=100,
    import_reps=1,
    webhook_deliveries=8,
    webhook_reps=1,
    replay_events=2000,
    replay_small_events=800,
    show_calls=20,
    cli_calls=3,
)

#: (figure, JSON key of the ratio, comparison, bound) — the targets of issue 16
#: (issue 6's, raised: append 0.7x raw, replay 0.5x raw and 3x eventsourcing,
#: show under 2x).
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("append FULL", "ratio_append_vs_raw", ">=", 0.8),
    ("append NORMAL", "ratio_append_normal_vs_raw", ">=", 0.8),
    ("append FULL", "ratio_append_vs_eventsourcing", ">=", 1.0),
    ("append NORMAL", "ratio_append_normal_vs_eventsourcing", ">=", 1.0),
    ("8 producers FULL", "ratio_concurrent_vs_eventsourcing", ">=", 2.0),
    ("import", "ratio_import_vs_raw", ">=", 0.5),
    ("replay", "ratio_replay_vs_raw", ">=", 0.7),
    ("replay", "ratio_replay_vs_eventsourcing", ">=", 2.0),
    ("replay", "replay_peak_mb", "<=", 150.0),
    ("show", "show_median_ratio_vs_raw", "<=", 1.5),
    ("show, whole process", "cli_show_vs_python_ratio", "<=", 4.0),
)


def say(text: str) -> None:
    """Progress, on stderr (stdout is the table and the JSON line)."""
    print(text, file=sys.stderr, flush=True)


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else math.nan


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


@contextlib.contextmanager
def fresh_dir(parent: Path, name: str) -> Iterator[Path]:
    """A new directory for one measurement, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def rotations(sides: Sequence[str], reps: int) -> Iterator[tuple[int, list[str]]]:
    """Each repetition runs every side, starting with a different one (noise cancels)."""
    for rep in range(reps):
        k = rep % len(sides)
        yield rep, [*sides[k:], *sides[:k]]


# ---------------------------------------------------------------------- figure 1


def _append_once(side: str, path: Path, inputs: list[Step], level: str) -> float:
    if side == "ours":
        with Tracker(path, synchronous=level) as tracker:
            started = time.perf_counter()
            for step in inputs:
                _ours.apply_step(tracker, step)
            elapsed = time.perf_counter() - started
        _ours.check_applied(path, len(inputs))
        return elapsed
    if side == "raw":
        _raw.prepare(path)
        writer = _raw.RawWriter(path, level)
        try:
            started = time.perf_counter()
            for step in inputs:
                writer.write(step)
            return time.perf_counter() - started
        finally:
            writer.close()
    app = _peer.open_app(path, level)
    try:
        peer = _peer.PeerWriter(app)
        started = time.perf_counter()
        for step in inputs:
            peer.write(step)
        return time.perf_counter() - started
    finally:
        app.close()


def figure_append(work: Path, sizes: Sizes, out: dict[str, Any]) -> None:
    """(1) Durable inputs/s from one producer, one input per transaction."""
    inputs = _workload.steps(sizes.append_inputs // 4)
    out["append_inputs"] = len(inputs)
    out["input_mean_bytes"] = round(sum(_workload.input_bytes(s) for s in inputs) / len(inputs))
    for level in ("FULL", "NORMAL"):
        runs: dict[str, list[float]] = {"ours": [], "raw": [], "eventsourcing": []}
        for rep, order in rotations(list(runs), sizes.append_reps):
            for side in order:
                with fresh_dir(work, f"append-{side}") as d:
                    seconds = _append_once(
                        side if side != "eventsourcing" else "peer", d / "log.db", inputs, level
                    )
                runs[side].append(rate(len(inputs), seconds))
            say(
                f"  append {level} rep {rep + 1}: "
                + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in runs.items())
            )
        suffix = level.lower()
        out[f"append_{suffix}_per_s"] = median(runs["ours"])
        out[f"raw_append_{suffix}_per_s"] = median(runs["raw"])
        out[f"eventsourcing_append_{suffix}_per_s"] = median(runs["eventsourcing"])
        out[f"append_{suffix}_runs"] = {k: [round(x) for x in v] for k, v in runs.items()}
    out["ratio_append_vs_raw"] = ratio(out["append_full_per_s"], out["raw_append_full_per_s"])
    out["ratio_append_normal_vs_raw"] = ratio(
        out["append_normal_per_s"], out["raw_append_normal_per_s"]
    )
    out["ratio_append_vs_eventsourcing"] = ratio(
        out["append_full_per_s"], out["eventsourcing_append_full_per_s"]
    )
    out["ratio_append_normal_vs_eventsourcing"] = ratio(
        out["append_normal_per_s"], out["eventsourcing_append_normal_per_s"]
    )
    figure_wal_frames(work, out)


def figure_wal_frames(work: Path, out: dict[str, Any]) -> None:
    """
    WAL frames one durable (``FULL``) input appends, ours and the peer's
    (tests/scale/wal_frames.py: 200 payments of warm-up, 100 inputs read back
    from the WAL; a frame is one page, written as two ``pwrite`` calls).
    """
    scale = str(ROOT / "tests" / "scale")
    if scale not in sys.path:
        sys.path.insert(0, scale)
    import wal_frames

    measured = list(_workload.iter_steps(25, start=200, prefix="walframes"))
    with fresh_dir(work, "wal-frames-ours") as d:
        warmup = _workload.iter_steps(200, prefix="walframes")
        ours = wal_frames.run_ours(d / "log.db", warmup, measured, existing=False)
    with fresh_dir(work, "wal-frames-peer") as d:
        warmup = _workload.iter_steps(200, prefix="walframes")
        peer = wal_frames.run_peer(d / "log.db", warmup, measured)
    out["append_wal_frames_per_input"] = ours["frames_per_input"]
    out["eventsourcing_append_wal_frames_per_input"] = peer["frames_per_input"]
    out["append_wal_frames_by_btree"] = ours["by_btree_per_input"]
    say(
        f"  WAL frames per durable input: ours {ours['frames_per_input']},"
        f" eventsourcing {peer['frames_per_input']}"
    )


# ---------------------------------------------------------------------- figure 2


def _concurrent_once(side: str, path: Path, per_thread: list[list[Step]]) -> tuple[float, Any]:
    """Run every thread's inputs; return the wall time and (ours) the commits made."""
    n_inputs = sum(len(p) for p in per_thread)
    if side == "ours":
        with Tracker(path) as tracker:
            store = tracker.store

            def producer(mine: list[Step]) -> Callable[[], None]:
                def go() -> None:
                    for s in mine:
                        _ours.apply_step(tracker, s)

                return go

            before = getattr(store, "commits", None)
            elapsed = run_threads([producer(p) for p in per_thread])
            after = getattr(store, "commits", None)
        _ours.check_applied(path, n_inputs)
        commits = None if before is None or after is None else after - before
        return elapsed, commits
    if side == "ours_separate":
        Tracker(path).close()  # migrate once, before the threads open it
        trackers = [Tracker(path) for _ in per_thread]
        try:

            def own(t: Tracker, mine: list[Step]) -> Callable[[], None]:
                def go() -> None:
                    for s in mine:
                        _ours.apply_step(t, s)

                return go

            elapsed = run_threads([own(t, p) for t, p in zip(trackers, per_thread, strict=True)])
        finally:
            for t in trackers:
                t.close()
        _ours.check_applied(path, n_inputs)
        return elapsed, None
    if side == "raw":
        _raw.prepare(path)
        writers = [_raw.RawWriter(path, "FULL") for _ in per_thread]
        try:

            def raw_producer(w: _raw.RawWriter, mine: list[Step]) -> Callable[[], None]:
                def go() -> None:
                    for s in mine:
                        w.write(s)

                return go

            return run_threads(
                [raw_producer(w, p) for w, p in zip(writers, per_thread, strict=True)]
            ), None
        finally:
            for w in writers:
                w.close()
    app = _peer.open_app(path, "FULL")
    try:

        def peer_producer(mine: list[Step]) -> Callable[[], None]:
            writer = _peer.PeerWriter(app)

            def go() -> None:
                for s in mine:
                    writer.write(s)

            return go

        return run_threads([peer_producer(p) for p in per_thread]), None
    finally:
        app.close()


def figure_concurrent(work: Path, sizes: Sizes, out: dict[str, Any]) -> None:
    """(2) Durable inputs/s with N producer threads at FULL, each acknowledged after its commit."""
    per_thread = [
        _workload.steps(sizes.concurrent_inputs // 4, prefix=f"t{i}") for i in range(sizes.threads)
    ]
    n = sum(len(p) for p in per_thread)
    out["concurrent_threads"] = sizes.threads
    out["concurrent_inputs"] = n
    runs: dict[str, list[float]] = {"ours": [], "ours_separate": [], "raw": [], "eventsourcing": []}
    commits: list[int] = []
    for rep, order in rotations(list(runs), sizes.concurrent_reps):
        for side in order:
            with fresh_dir(work, f"concurrent-{side}") as d:
                seconds, made = _concurrent_once(
                    side if side != "eventsourcing" else "peer", d / "log.db", per_thread
                )
            runs[side].append(rate(n, seconds))
            if made is not None:
                commits.append(int(made))
        say(
            f"  {sizes.threads} producers rep {rep + 1}: "
            + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in runs.items())
        )
    out["concurrent_per_s"] = median(runs["ours"])
    out["concurrent_separate_trackers_per_s"] = median(runs["ours_separate"])
    out["raw_concurrent_per_s"] = median(runs["raw"])
    out["eventsourcing_concurrent_per_s"] = median(runs["eventsourcing"])
    out["concurrent_runs"] = {k: [round(x) for x in v] for k, v in runs.items()}
    if commits:
        out["concurrent_inputs_per_commit"] = n / median(commits)
    out["ratio_concurrent_vs_eventsourcing"] = ratio(
        out["concurrent_per_s"], out["eventsourcing_concurrent_per_s"]
    )
    out["ratio_concurrent_vs_raw"] = ratio(out["concurrent_per_s"], out["raw_concurrent_per_s"])
    # Against the peer's one-producer rate of figure 1 too, when it ran (the stricter one
    # whenever the peer's 8 threads are slower than its single producer).
    out["ratio_concurrent_vs_eventsourcing_single"] = ratio(
        out["concurrent_per_s"], out.get("eventsourcing_append_full_per_s")
    )


# ---------------------------------------------------------------------- figure 3


def _import_setup(path: Path, payments: int) -> list[Step]:
    """
    The log before the import: ``payments`` payments requested and pending
    (two inputs each, through the tracker). Returns those inputs.
    """
    opened = [s for n in range(payments) for s in _workload.payment_steps(n, "imp")[:2]]
    _ours.build_log(path, opened)
    return opened


def _import_rows(payments: int) -> tuple[list[dict[str, Any]], list[Step]]:
    """The ``charge.complete`` events to import, and the same inputs for the raw writer."""
    envelopes: list[dict[str, Any]] = []
    steps: list[Step] = []
    for n in range(payments):
        pid = _workload.payment_id(n, "imp")
        env = _workload.completion_event(pid)
        envelopes.append(env)
        charge = env["data"]
        steps.append(
            Step(
                "webhook",
                pid,
                charge["id"],
                "backfill",
                env,
                None,
                "charge.successful",
                {
                    "charge_id": charge["id"],
                    "status": "successful",
                    "paid_at": charge["paid_at"],
                    "authorize_uri": charge["authorize_uri"],
                    "expires_at": charge["expires_at"],
                    "livemode": charge["livemode"],
                    "from": "pending",
                    "origin": "backfill",
                },
                "successful",
            )
        )
    return envelopes, steps


def figure_import(work: Path, sizes: Sizes, out: dict[str, Any]) -> None:
    """(3) Batched import of historical events (a backfill from ``GET /events``), events/s."""
    payments = sizes.import_events
    out["import_events"] = payments
    out["import_batch_size"] = sizes.import_batch
    with fresh_dir(work, "import-base") as base_dir:
        base = base_dir / "base.db"
        opened = _import_setup(base, payments)
        envelopes, steps = _import_rows(payments)
        runs: dict[str, list[float]] = {"ours": [], "raw": []}
        events_per_input = 2  # webhook.accepted + charge.successful, until ours tells
        for rep, order in rotations(list(runs), sizes.import_reps):
            for side in order:
                with fresh_dir(work, f"import-{side}") as d:
                    path = d / "log.db"
                    shutil.copyfile(base, path)
                    if side == "ours":
                        with Tracker(path) as tracker:
                            before = tracker.store.counts()["events"]
                            started = time.perf_counter()
                            report = _ours.import_events(tracker, envelopes, sizes.import_batch)
                            seconds = time.perf_counter() - started
                            appended = tracker.store.counts()["events"] - before
                        if report.total != payments or report.outcomes.get("applied") != payments:
                            raise AssertionError(f"import did not apply every event: {report}")
                        out["import_commits"] = report.commits
                        events_per_input = max(1, round(appended / payments))
                        out["import_events_appended_per_input"] = appended / payments
                    else:
                        writer = _raw.RawWriter(path, "FULL")
                        writer.preload(opened)
                        try:
                            started = time.perf_counter()
                            for i in range(0, len(steps), sizes.import_batch):
                                writer.write_batch(
                                    steps[i : i + sizes.import_batch],
                                    events_per_input=events_per_input,
                                )
                            seconds = time.perf_counter() - started
                        finally:
                            writer.close()
                runs[side].append(rate(payments, seconds))
            say(
                f"  import rep {rep + 1}: "
                + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in runs.items() if v)
            )
    out["import_per_s"] = median(runs["ours"])
    out["raw_import_per_s"] = median(runs["raw"])
    out["ratio_import_vs_raw"] = ratio(out["import_per_s"], out["raw_import_per_s"])


# ---------------------------------------------------------------------- figure 4


def figure_webhook(work: Path, sizes: Sizes, out: dict[str, Any]) -> None:
    """(4) Webhook intake end to end (verify, record, dedupe, re-fetch, record), deliveries/s."""
    runs: list[float] = []
    for rep in range(sizes.webhook_reps):
        with fresh_dir(work, "webhook") as d:
            bench = _ours.IntakeBench(d / "log.db", sizes.webhook_deliveries)
            try:
                seconds = bench.run()
            finally:
                bench.close()
        runs.append(rate(sizes.webhook_deliveries, seconds))
        say(f"  webhook intake rep {rep + 1}: {runs[-1]:,.0f} deliveries/s")
    out["webhook_deliveries"] = sizes.webhook_deliveries
    out["webhook_intake_per_s"] = median(runs)
    out["webhook_intake_runs"] = [round(x) for x in runs]


def figure_serve(work: Path, sizes: Sizes, out: dict[str, Any]) -> None:
    """(4b) Deliveries through the real ``kplus-fsm serve`` over loopback: per second, p99."""
    runs: list[float] = []
    p99s: list[float] = []
    deliveries = sizes.webhook_deliveries
    for rep in range(sizes.webhook_reps):
        with fresh_dir(work, "serve") as d:
            bench = _serve_bench.ServeBench(d / "log.db", deliveries)
            try:
                seconds, latencies = bench.run()
            finally:
                bench.close()
        runs.append(rate(deliveries, seconds))
        p99s.append(_serve_bench.p99_ms(latencies))
        say(f"  serve rep {rep + 1}: {runs[-1]:,.0f} deliveries/s, p99 {p99s[-1]:.1f} ms")
    out["serve_deliveries"] = deliveries
    out["serve_concurrency"] = bench.concurrency
    out["serve_deliveries_per_s"] = median(runs)
    out["serve_p99_ms"] = median(p99s)
    out["serve_runs"] = [round(x) for x in runs]


# ------------------------------------------------------------ figures 5 and 6


def fingerprint() -> str:
    """What the built logs depend on: the library's code and this benchmark's workload."""
    h = hashlib.sha256()
    pkg = Path(kplus_fsm.__file__).resolve().parent
    for path in sorted(pkg.rglob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    for name in ("_workload.py", "_ours.py", "_peer.py"):
        h.update((HERE / name).read_bytes())
    h.update(_version("eventsourcing").encode())
    return h.hexdigest()[:16]


class Logs:
    """The large logs of figures 5 and 6: built once per library version, or cached."""

    def __init__(self, cache: Path | None, scratch: Path, *, reuse_any: bool = False) -> None:
        self.cache = cache
        self.scratch = scratch
        self.fp = fingerprint()
        self.reuse_any = reuse_any
        self.built: dict[str, float] = {}
        self.reused: dict[str, str] = {}

    def _cached(self, kind: str, events: int) -> Path | None:
        """The log to reuse: this version's, or (``reuse_any``) the newest of any version."""
        path = self._path(kind, events)
        if path.exists():
            say(f"  reusing {path}")
            self.reused[f"{kind}_{events}"] = path.name
            return path
        if self.reuse_any and self.cache is not None:
            found = sorted(
                self.cache.glob(f"{kind}-{events}-*.db"), key=lambda p: p.stat().st_mtime
            )
            if found:
                say(f"  reusing {found[-1]}, built by another version of the library")
                self.reused[f"{kind}_{events}"] = found[-1].name
                return found[-1]
        return None

    def _path(self, kind: str, events: int) -> Path:
        where = self.cache if self.cache is not None else self.scratch
        where.mkdir(parents=True, exist_ok=True)
        return where / f"{kind}-{events}-{self.fp}.db"

    def _evict(self, kind: str, events: int, keep: Path) -> None:
        if self.cache is None:
            return
        for old in self.cache.glob(f"{kind}-{events}-*.db*"):
            if not old.name.startswith(keep.name):
                old.unlink(missing_ok=True)

    def ours(self, events: int) -> Path:
        """Our log of ``events`` events, built through the tracker (4 inputs per payment)."""
        path = self._path("ours", events)
        cached = self._cached("ours", events)
        if cached is not None:
            return cached
        tmp = path.with_suffix(".building")
        for leftover in tmp.parent.glob(tmp.name + "*"):
            leftover.unlink()
        say(f"  building our log of {events:,} events (through the tracker, synchronous=OFF)")
        started = time.perf_counter()

        def progress(n: int) -> None:
            if n % 100_000 < 4 * 1250:
                say(f"    {n:,} events, {rate(n, time.perf_counter() - started):,.0f}/s")

        built = _ours.build_log(tmp, _workload.iter_steps(events // 4), progress=progress)
        assert built == events // 4 * 4, built
        tmp.rename(path)
        self.built[f"ours_{events}"] = time.perf_counter() - started
        self._evict("ours", events, path)
        return path

    def peer(self, events: int, source: Path) -> Path:
        """The peer's log holding the same events (same streams, kinds, payloads)."""
        path = self._path("peer", events)
        cached = self._cached("peer", events)
        if cached is not None:
            return cached
        tmp = path.with_suffix(".building")
        for leftover in tmp.parent.glob(tmp.name + "*"):
            leftover.unlink()
        say(f"  building the eventsourcing log of {events:,} events")
        started = time.perf_counter()
        app = _peer.open_app(tmp, "OFF")
        try:
            n = _peer.build_log(app, _ours.stream_events(source))
        finally:
            app.close()
        with contextlib.closing(sqlite3.connect(tmp)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert n == events, n
        tmp.rename(path)
        self.built[f"peer_{events}"] = time.perf_counter() - started
        self._evict("peer", events, path)
        return path


def child_read(kind: str, path: Path) -> dict[str, Any]:
    """One full read in a fresh process (peak memory is that process's ``VmHWM``)."""
    proc = subprocess.run(
        [sys.executable, str(HERE / "_child.py"), kind, str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=str(ROOT),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} read failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if not result.get("ok", True):
        raise AssertionError(f"{kind}: replay found differences in {path}")
    return result


def figure_replay(logs: Logs, sizes: Sizes, out: dict[str, Any]) -> tuple[Path, Path]:
    """(5) Replay of the whole log, events/s and peak memory; the same read by raw and the peer."""
    big = logs.ours(sizes.replay_events)
    small = logs.ours(sizes.replay_small_events)
    peer = logs.peer(sizes.replay_events, big)
    out["replay_events"] = sizes.replay_events
    out["replay_small_events"] = sizes.replay_small_events
    out["replay_log_mb"] = round(big.stat().st_size / 1e6, 1)
    reads: dict[str, dict[str, Any]] = {}
    for kind in ("raw", "ours", "peer", "raw_position"):
        r = child_read(kind, peer if kind == "peer" else big)
        if r["events"] != sizes.replay_events:
            raise AssertionError(f"{kind} read {r['events']} events")
        reads[kind] = r
        say(
            f"  read {kind}: {rate(r['events'], r['seconds']):,.0f} events/s, "
            f"peak {r['peak_mb']:.1f} MB"
        )
    small_read = child_read("ours", small)
    out["replay_per_s"] = rate(reads["ours"]["events"], reads["ours"]["seconds"])
    out["raw_replay_per_s"] = rate(reads["raw"]["events"], reads["raw"]["seconds"])
    out["raw_replay_by_position_per_s"] = rate(
        reads["raw_position"]["events"], reads["raw_position"]["seconds"]
    )
    out["eventsourcing_read_per_s"] = rate(reads["peer"]["events"], reads["peer"]["seconds"])
    out["replay_seconds"] = reads["ours"]["seconds"]
    out["replay_peak_mb"] = reads["ours"]["peak_mb"]
    out["replay_base_mb"] = reads["ours"]["base_mb"]
    out["replay_small_peak_mb"] = small_read["peak_mb"]
    out["replay_small_per_s"] = rate(small_read["events"], small_read["seconds"])
    out["raw_replay_peak_mb"] = reads["raw"]["peak_mb"]
    out["eventsourcing_read_peak_mb"] = reads["peer"]["peak_mb"]
    out["ratio_replay_vs_raw"] = ratio(out["replay_per_s"], out["raw_replay_per_s"])
    out["ratio_replay_vs_eventsourcing"] = ratio(
        out["replay_per_s"], out["eventsourcing_read_per_s"]
    )
    return big, small


def figure_show(big: Path, sizes: Sizes, out: dict[str, Any]) -> None:
    """(6) ``show`` of one payment among the replay log's events: median and p99."""
    ids = _ours.payment_ids(big)
    rng = random.Random(6)
    chosen = [rng.choice(ids) for _ in range(sizes.show_calls)]
    ours = _ours.Show(big)
    raw = _raw.RawShow(big)
    ours_ms: list[float] = []
    raw_ms: list[float] = []
    try:
        for pid in chosen[: min(20, len(chosen))]:  # warm the statement caches
            ours.show(pid)
            raw.show(pid)
        for i, pid in enumerate(chosen):
            pair = [(ours.show, ours_ms), (raw.show, raw_ms)]
            if i % 2:
                pair.reverse()
            for fn, into in pair:
                started = time.perf_counter_ns()
                fn(pid)
                into.append((time.perf_counter_ns() - started) / 1e6)
    finally:
        ours.close()
        raw.close()
    cli_ms, python_ms, command = _show_processes(big, chosen, sizes.cli_calls)
    out["show_calls"] = len(chosen)
    out["show_median_ms"] = median(ours_ms)
    out["show_p99_ms"] = percentile(ours_ms, 99)
    out["raw_show_median_ms"] = median(raw_ms)
    out["raw_show_p99_ms"] = percentile(raw_ms, 99)
    out["show_median_ratio_vs_raw"] = ratio(out["show_median_ms"], out["raw_show_median_ms"])
    out["show_p99_ratio_vs_raw"] = ratio(out["show_p99_ms"], out["raw_show_p99_ms"])
    out["show_cli_process_median_ms"] = median(cli_ms)
    out["python_process_median_ms"] = median(python_ms)
    out["cli_show_vs_python_ratio"] = ratio(
        out["show_cli_process_median_ms"], out["python_process_median_ms"]
    )
    out["cli_show_command"] = command
    say(
        f"  show: ours {out['show_median_ms']:.3f} ms (p99 {out['show_p99_ms']:.3f}), "
        f"raw {out['raw_show_median_ms']:.3f} ms; "
        f"CLI process {out['show_cli_process_median_ms']:.0f} ms, "
        f"bare python {out['python_process_median_ms']:.0f} ms "
        f"({out['cli_show_vs_python_ratio']:.2f}x)"
    )


#: The reference process of ``cli_show_vs_python_ratio``: an interpreter that
#: starts, imports what a hand-written script reading the log would, and exits.
BARE_PYTHON: Final = ("-c", "import sqlite3, json")


def _show_processes(
    log: Path, ids: Sequence[str], calls: int
) -> tuple[list[float], list[float], str]:
    """
    ``calls`` whole ``kplus-fsm show ID --db LOG`` processes (the installed console
    script) and as many ``python -c 'import sqlite3, json'``, alternated, each
    timed from spawn to exit (ms); and the command that was timed.

    Both run as installed code runs: with bytecode caches (written once, by a
    warm-up run of each, into a temporary ``PYTHONPYCACHEPREFIX``), whatever
    ``PYTHONDONTWRITEBYTECODE`` says here, so that neither side pays for
    compiling sources a real installation has compiled; both in an empty
    directory.
    """
    script = Path(sys.executable).parent / "kplus-fsm"
    argv0 = [str(script)] if script.exists() else [sys.executable, "-m", "kplus_fsm"]
    command = "kplus-fsm" if script.exists() else "python -m kplus_fsm"
    show = [[*argv0, "show", pid, "--db", str(log)] for pid in ids]
    bare = [sys.executable, *BARE_PYTHON]
    cli_ms: list[float] = []
    python_ms: list[float] = []
    with tempfile.TemporaryDirectory(prefix="cli-") as scratch:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(scratch) / "pycache")

        def timed(argv: list[str]) -> float:
            started = time.perf_counter_ns()
            subprocess.run(argv, capture_output=True, check=True, cwd=scratch, env=env)
            return (time.perf_counter_ns() - started) / 1e6

        timed(show[0])  # warm-up: the bytecode caches, the page cache
        timed(bare)
        for i in range(calls):
            pair = [(show[i % len(show)], cli_ms), (bare, python_ms)]
            if i % 2:
                pair.reverse()
            for argv, into in pair:
                into.append(timed(argv))
    return cli_ms, python_ms, command


# --------------------------------------------------------------------- report


def _fmt(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:,.0f}"


def met(out: dict[str, Any]) -> dict[str, bool | None]:
    verdicts: dict[str, bool | None] = {}
    for _, key, op, bound in TARGETS:
        value = out.get(key)
        if not isinstance(value, int | float) or math.isnan(value):
            verdicts[key] = None
        else:
            verdicts[key] = (
                value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound
            )
    return verdicts


def table(out: dict[str, Any]) -> str:
    verdict = met(out)

    def target(key: str) -> str:
        for _, k, op, bound in TARGETS:
            if k == key:
                ok = verdict[k]
                mark = "yes" if ok else ("-" if ok is None else "NO")
                return f"{op} {bound:g}{'' if 'mb' in k else 'x'}  {mark}"
        return ""

    rows: list[tuple[str, str, str, str, str, str, str]] = []

    def row(
        name: str,
        ours: Any,
        raw: Any,
        peer: Any,
        r_raw: str | None,
        r_peer: str | None,
        unit: str = "",
    ) -> None:
        rows.append(
            (
                name,
                _fmt(ours, unit),
                _fmt(raw, unit),
                _fmt(peer, unit),
                _fmt(out.get(r_raw), "x") if r_raw else "",
                _fmt(out.get(r_peer), "x") if r_peer else "",
                "; ".join(t for t in (target(r_raw or ""), target(r_peer or "")) if t),
            )
        )

    if "append_full_per_s" in out:
        row(
            "1 append, inputs/s, FULL",
            out["append_full_per_s"],
            out["raw_append_full_per_s"],
            out["eventsourcing_append_full_per_s"],
            "ratio_append_vs_raw",
            "ratio_append_vs_eventsourcing",
        )
        row(
            "1 append, inputs/s, NORMAL",
            out["append_normal_per_s"],
            out["raw_append_normal_per_s"],
            out["eventsourcing_append_normal_per_s"],
            "ratio_append_normal_vs_raw",
            "ratio_append_normal_vs_eventsourcing",
        )
    if "webhook_intake_per_s" in out:
        row("4 webhook intake, deliveries/s", out["webhook_intake_per_s"], None, None, None, None)
    if "serve_deliveries_per_s" in out:
        row("4b serve, deliveries/s", out["serve_deliveries_per_s"], None, None, None, None)
        row("   serve, p99 latency", out["serve_p99_ms"], None, None, None, None, "ms")
    if "concurrent_per_s" in out:
        row(
            f"2 {out['concurrent_threads']} producers, inputs/s, FULL",
            out["concurrent_per_s"],
            out["raw_concurrent_per_s"],
            out["eventsourcing_concurrent_per_s"],
            "ratio_concurrent_vs_raw",
            "ratio_concurrent_vs_eventsourcing",
        )
        row(
            "  (8 trackers, one per thread)",
            out["concurrent_separate_trackers_per_s"],
            None,
            None,
            None,
            None,
        )
    if "raw_import_per_s" in out:
        row(
            "3 import, events/s",
            out["import_per_s"],
            out["raw_import_per_s"],
            None,
            "ratio_import_vs_raw",
            None,
        )
    if "replay_per_s" in out:
        row(
            f"5 replay {out['replay_events']:,}, events/s",
            out["replay_per_s"],
            out["raw_replay_per_s"],
            out["eventsourcing_read_per_s"],
            "ratio_replay_vs_raw",
            "ratio_replay_vs_eventsourcing",
        )
        rows.append(
            (
                "5 replay peak memory",
                _fmt(out["replay_peak_mb"], "MB"),
                _fmt(out["raw_replay_peak_mb"], "MB"),
                _fmt(out["eventsourcing_read_peak_mb"], "MB"),
                "",
                "",
                target("replay_peak_mb"),
            )
        )
        rows.append(
            (
                f"  peak at {out['replay_small_events']:,} events",
                _fmt(out["replay_small_peak_mb"], "MB"),
                "",
                "",
                "",
                "",
                "",
            )
        )
    if "show_median_ms" in out:
        row(
            "6 show median",
            out["show_median_ms"],
            out["raw_show_median_ms"],
            None,
            "show_median_ratio_vs_raw",
            None,
            "ms",
        )
        row("6 show p99", out["show_p99_ms"], out["raw_show_p99_ms"], None, None, None, "ms")
        rows.append(
            (
                f"6 `{out['cli_show_command']} show ID`, whole process / bare python",
                _fmt(out["show_cli_process_median_ms"], "ms"),
                _fmt(out["python_process_median_ms"], "ms"),
                "",
                _fmt(out.get("cli_show_vs_python_ratio"), "x"),
                "",
                target("cli_show_vs_python_ratio"),
            )
        )
    if "pg_append_per_s" in out:  # --postgres: the PostgreSQL store beside the SQLite one
        for label, key, unit in (
            ("PG 1 append, inputs/s", "append", ""),
            ("PG 2 8 processes, inputs/s", "concurrent", ""),
            ("PG 5 replay, events/s", "replay", ""),
        ):
            row(
                label,
                out[f"pg_{key}_per_s"],
                None,
                out[f"eventsourcing_pg_{key}_per_s"],
                None,
                f"ratio_pg_{key}_vs_eventsourcing",
                unit,
            )
        row(
            "PG 6 show median (whole command, connect included)",
            out["pg_show_median_ms"],
            None,
            None,
            None,
            None,
            "ms",
        )
    head = ("figure", "ours", "raw", "eventsourcing", "ours/raw", "ours/es", "target  met?")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = []
    for r in [head, *rows]:
        cells = [
            r[i].ljust(widths[i]) if i in (0, 6) else r[i].rjust(widths[i]) for i in range(len(r))
        ]
        lines.append("  ".join(cells).rstrip())
        if r is head:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def environment(sizes: Sizes, quick: bool, smoke: bool) -> dict[str, Any]:
    return {
        "quick": quick,
        "smoke": smoke,
        "sizes": asdict(sizes),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python_version": platform.python_version(),
        "sqlite_version": sqlite3.sqlite_version,
        "eventsourcing_version": _version("eventsourcing"),
        "kplus_fsm_version": kplus_fsm.__version__,
        "codec": "orjson" if hasattr(_codec, "orjson") else "json",
        "cpus": os.cpu_count(),
        "machine": f"{platform.system()} {platform.machine()}",
    }


def finite(value: Any) -> Any:
    """JSON has no NaN: missing figures are null."""
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


# -------------------------------------------------------------------- profile


def profile(figure: str, sizes: Sizes, work: Path, logs: Logs, dest: Path) -> None:
    """Run our side of one figure under pyinstrument; print and save the text profile."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    if figure == "append":
        inputs = _workload.steps(sizes.append_inputs // 4)
        with fresh_dir(work, "profile") as d, Tracker(d / "log.db") as tracker:
            profiler.start()
            for step in inputs:
                _ours.apply_step(tracker, step)
            profiler.stop()
    elif figure == "concurrent":
        # pyinstrument samples the thread that started it: the producers are
        # profiled by running their loop on this thread, one after the other.
        with fresh_dir(work, "profile") as d, Tracker(d / "log.db") as tracker:
            inputs = _workload.steps(sizes.concurrent_inputs * sizes.threads // 4)
            profiler.start()
            for step in inputs:
                _ours.apply_step(tracker, step)
            profiler.stop()
    elif figure == "import":
        with fresh_dir(work, "profile") as d:
            _import_setup(d / "log.db", sizes.import_events)
            envelopes, _ = _import_rows(sizes.import_events)
            with Tracker(d / "log.db") as tracker:
                profiler.start()
                _ours.import_events(tracker, envelopes, sizes.import_batch)
                profiler.stop()
    elif figure == "webhook":
        with fresh_dir(work, "profile") as d:
            bench = _ours.IntakeBench(d / "log.db", sizes.webhook_deliveries)
            try:
                profiler.start()
                bench.run()
                profiler.stop()
            finally:
                bench.close()
    elif figure == "replay":
        from kplus_fsm import SQLiteStore

        big = logs.ours(sizes.replay_events)
        with SQLiteStore(big, read_only=True) as store:
            profiler.start()
            store.replay()
            profiler.stop()
    elif figure == "show":
        big = logs.ours(sizes.replay_events)
        ids = _ours.payment_ids(big)
        show = _ours.Show(big)
        rng = random.Random(6)
        try:
            profiler.start()
            for _ in range(sizes.show_calls):
                show.show(rng.choice(ids))
            profiler.stop()
        finally:
            show.close()
    else:  # pragma: no cover - argparse checks the choices
        raise SystemExit(f"unknown figure {figure}")
    text = profiler.output_text(unicode=True, color=False, show_all=False)
    dest.write_text(text)
    print(text)
    say(f"profile saved to {dest}")


# ----------------------------------------------------------------------- main


def figure_postgres(url: str, *, quick: bool, out: dict[str, Any]) -> None:
    """Figures 1, 2, 5 and 6 on the PostgreSQL store, beside eventsourcing on PostgreSQL."""
    import postgres  # tests/benchmarks/postgres.py (psycopg, the postgres extra)

    if url != "auto":
        out.update(postgres.measure_postgres(url, quick=quick))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/pg.py
    import pg

    bin_dir = pg._bin_dir()
    if bin_dir is None:
        raise SystemExit("--postgres auto: no PostgreSQL server binaries (initdb, pg_ctl)")
    cluster = pg.Cluster(bin_dir)
    try:
        cluster.start()
        out.update(postgres.measure_postgres(cluster.url, quick=quick))
    finally:
        cluster.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="kplus_fsm against raw sqlite3 and eventsourcing, side by side."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: within a minute")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=os.environ.get("KPLUS_FSM_BENCH_PG"),
        help=(
            "also measure the PostgreSQL store (and eventsourcing's PostgreSQL persistence) "
            "on this server (a role that may CREATE DATABASE); 'auto' starts a throwaway "
            "cluster from the installed server binaries (default: $KPLUS_FSM_BENCH_PG)"
        ),
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--only",
        default=",".join(FIGURES),
        help=f"comma-separated figures to run (default: all of {', '.join(FIGURES)})",
    )
    parser.add_argument("--replay-events", type=int, help="size of the replay/show log")
    parser.add_argument("--reps", type=int, help="repetitions of figures 1-4b")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(
            os.environ.get(
                "KPLUS_BENCH_CACHE", Path(tempfile.gettempdir()) / "kplus-fsm-bench-cache"
            )
        ),
        help="where the large logs of figures 5-6 are kept between runs, per library "
        "version (default: $KPLUS_BENCH_CACHE or the temp dir)",
    )
    parser.add_argument("--no-cache", action="store_true", help="build every log afresh")
    parser.add_argument(
        "--reuse-logs",
        action="store_true",
        help="reuse a cached log of the right size even if another version of the library "
        "built it (faster iterations; replay still checks that it reads it identically)",
    )
    parser.add_argument(
        "--profile",
        choices=[f for f in FIGURES if f != "serve"],  # serve runs in its own process
        help="run only our side of one figure under pyinstrument and print the profile",
    )
    parser.add_argument(
        "--profile-out", type=Path, help="where to save the profile (text)", default=None
    )
    parser.add_argument("--workdir", type=Path, help="where the fresh databases go (temp dir)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    _workload.quiet_logging()
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.replay_events:
        sizes = replace(
            sizes,
            replay_events=args.replay_events,
            replay_small_events=min(sizes.replay_small_events, args.replay_events),
        )
    if args.reps:
        sizes = replace(
            sizes,
            append_reps=args.reps,
            concurrent_reps=args.reps,
            import_reps=args.reps,
            webhook_reps=args.reps,
        )
    only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = set(only) - set(FIGURES)
    if unknown:
        raise SystemExit(f"unknown figures: {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="kplus-bench-", dir=args.workdir))
    out: dict[str, Any] = environment(sizes, args.quick, args.smoke)
    logs = Logs(None if args.no_cache else args.cache_dir, work, reuse_any=args.reuse_logs)
    try:
        if args.profile:
            dest = args.profile_out or Path(tempfile.gettempdir()) / (
                f"kplus-bench-profile-{args.profile}.txt"
            )
            profile(args.profile, sizes, work, logs, dest)
            return out
        steps: list[tuple[str, Callable[[], None]]] = [
            ("append", lambda: figure_append(work, sizes, out)),
            ("webhook", lambda: figure_webhook(work, sizes, out)),
            ("serve", lambda: figure_serve(work, sizes, out)),
            ("concurrent", lambda: figure_concurrent(work, sizes, out)),
            ("import", lambda: figure_import(work, sizes, out)),
        ]
        for name, run in steps:
            if name in only:
                say(f"figure {name}")
                run()
        if args.postgres:
            say("figures postgres")
            figure_postgres(args.postgres, quick=args.quick or args.smoke, out=out)
        if "replay" in only or "show" in only:
            say("figures replay/show")
            if "replay" in only:
                big, _ = figure_replay(logs, sizes, out)
            else:
                big = logs.ours(sizes.replay_events)
            if "show" in only:
                figure_show(big, sizes, out)
            out["logs_built_seconds"] = logs.built
            out["logs_reused"] = logs.reused
            out["logs_cached"] = logs.cache is not None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["wall_seconds"] = time.perf_counter() - started
    out["targets_met"] = met(out)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    print(
        f"kplus_fsm {out['kplus_fsm_version']} benchmark ({mode}): "
        f"Python {out['python_version']}, SQLite {out['sqlite_version']}, "
        f"eventsourcing {out['eventsourcing_version']}, codec {out['codec']}, "
        f"{out['cpus']} CPUs, {out['date']}"
    )
    print(table(out))
    print(f"wall time {out['wall_seconds']:.0f} s")
    if args.json:
        print(json.dumps(finite(out), sort_keys=True))
    return out


if __name__ == "__main__":
    main()
