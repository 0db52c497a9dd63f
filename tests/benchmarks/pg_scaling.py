"""
How far one PostgreSQL log scales with the number of receivers: 1, 2, 4, 8,
16 OS processes (each a host's receiver: its own :class:`~kplus_fsm.PostgresStore`
and :class:`~kplus_fsm.Tracker`, its own connection) recording the benchmark's
realistic inputs (tests/benchmarks/_workload.py: four inputs per payment) for
disjoint payments, all released together by a barrier, for a fixed time; the
same with ``shared_flush=False`` (side ``ours_own_flush``: each chain commit
waits for its own WAL flush under the lock) and for the peer (eventsourcing's
PostgreSQL persistence, one ``save()`` per input, as
tests/benchmarks/postgres.py measures it), the sides alternated at each N; and
where the time goes at the ceiling. docs/scaling.md shows and explains a run.

    python tests/benchmarks/pg_scaling.py --postgres auto [--quick] [--threads T]
        [--json] [--svg docs/img/pg-scaling.svg] [--no-peer] [--no-own-flush]
        [--no-diagnosis] [--processes 1,2,4,8,16] [--target 1000]
    python tests/benchmarks/pg_scaling.py --url postgresql://USER@HOST:PORT/DB ...

It measures whatever :class:`~kplus_fsm.PostgresStore` is installed: run it
before and after a change to the store and compare. The role must be allowed to
``CREATE DATABASE``: every run gets a fresh database, dropped at the end.
``--postgres auto`` starts a throwaway cluster from the installed server
binaries (tests/pg.py), default settings.

Per side and number of processes N (each with ``--threads`` T threads sharing
the process's one store):

- ``inputs_per_s``: every input recorded by all processes, over the wall time
  from the first release to the last finish; ``ratio_to_1`` the same over the
  one-process figure (N would be perfect scaling);
- ``per_process_per_s``: each process's own rate (a fair lock shares evenly);
- ``p50_ms``, ``p99_ms``: the latency of one tracker call (``record()`` with
  the machine's decision and the codec around it), over every input of the run;
- ``client_cpu_ms_per_input``: CPU of the receiver processes per input;
  ``server_cpu_ms_per_input``: CPU of their server backends (read from
  ``/proc`` when the server runs on this machine, else absent);
  ``machine_busy``: the fraction of this machine's CPU time that was busy
  during the run (everything on it, other tenants included);
- ``transactions_per_input`` (every transaction, read-only ones included: an
  autocommit ``SELECT`` is one), ``wal_syncs_per_input`` (below 1: inputs share
  a WAL flush), ``wal_kb_per_input``, ``wal_sync_ms`` (the mean flush, when the
  role may turn ``track_wal_io_timing`` on for its database): from
  ``pg_stat_database`` and ``pg_stat_wal`` before and after the run.

Where the time goes (``diagnoses``, one per side: its 8-process run repeated
with a sampler so that the headline figures are not disturbed by it): every
20 ms the sampler reads ``pg_stat_activity`` and ``pg_locks`` from another
database and records who holds the write lock (our advisory lock, the peer's
``EXCLUSIVE`` table lock), what the holder is doing (flushing WAL, computing
on the server, waiting for its client: a round trip or client-side work), and
how many writers queue behind it. ``probe`` times the server's round trip
(``SELECT 1``), a one-row commit at the server's ``synchronous_commit`` and the
same with ``synchronous_commit = off``: their difference is the WAL flush.
``lock_probe`` (one thread) and ``lock_probe_threads`` (four) run one receiver
alone and time how long each commit holds the chain lock, how much of it is
the client's CPU, and how many inputs a commit holds.

``measure_scaling(url, ...)`` returns the same figures as a dict; ``--json``
prints it as one JSON object (last line of stdout).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script
    sys.path.insert(0, str(HERE))

import _ours  # noqa: E402
import _peer  # noqa: E402
import _svgplot  # noqa: E402
import _workload  # noqa: E402
import postgres as pgbench  # noqa: E402
from _common import percentile  # noqa: E402
from _workload import Step  # noqa: E402

PROCESSES: Final = (1, 2, 4, 8, 16)
#: ``ours``: PostgresStore as shipped (shared WAL flush); ``ours_own_flush``: the
#: same with ``shared_flush=False`` (each chain commit waits for its own flush
#: under the lock); ``peer``: eventsourcing on PostgreSQL.
SIDES: Final = ("ours", "ours_own_flush", "peer")
OURS: Final = ("ours", "ours_own_flush")
BARRIER_TIMEOUT: Final = 300.0
#: The cap on the rate a run is sized for (inputs/s, all processes): inputs are
#: generated before the release; a thread that runs out generates more, counted
#: in ``refills`` (time that then counts against the figure).
RATE_CAP: Final = 6000.0
SAMPLE_EVERY: Final = 0.02
#: Imported once by the fork server the receiver processes are forked from.
PRELOAD: Final = ["psycopg", "kplus_fsm", "_workload", "_ours", "_peer", "postgres", "_svgplot"]
#: PostgreSQL (15+) backends flush their statistics at most once a second.
STATS_FLUSH: Final = 1.1
#: A granted lock that serialises writers: our advisory chain lock, or the
#: peer's ``LOCK TABLE ... IN EXCLUSIVE MODE`` (row inserts take weaker modes).
_HOLDER_SQL: Final = """
SELECT a.pid, a.state, a.wait_event_type, a.wait_event,
       EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted
               AND (l.locktype = 'advisory'
                    OR (l.locktype = 'relation' AND l.mode = 'ExclusiveLock')))
FROM pg_stat_activity a
WHERE a.datname = %s AND a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
"""
_WAL_SQL: Final = (
    "SELECT wal_records, wal_bytes, wal_write, wal_sync, wal_write_time, wal_sync_time "
    "FROM pg_stat_wal"
)
_WAL_KEYS: Final = ("records", "bytes", "writes", "syncs", "write_ms", "sync_ms")


# ---------------------------------------------------------------------- workers


@dataclass(frozen=True)
class WorkerSpec:
    """What one receiver process does (pickled to a spawned process)."""

    side: str
    #: our side: the database URL; the peer: eventsourcing's environment
    target: str | dict[str, str]
    index: int
    threads: int
    #: payments generated per thread before the release
    payments: int
    #: run for this long; ``None``: record the generated payments, then stop
    seconds: float | None


def _prefix(spec: WorkerSpec, thread: int) -> str:
    return f"{spec.side[0]}{spec.index:02d}t{thread:02d}"  # disjoint payments per thread


def _writers(spec: WorkerSpec, closers: list[Callable[[], None]]) -> list[Callable[[Step], Any]]:
    """One write function per thread: ours share one tracker, the peer's one application."""
    if spec.side in OURS:
        from kplus_fsm import PostgresStore, Tracker

        assert isinstance(spec.target, str)
        tracker = Tracker(PostgresStore(spec.target, shared_flush=spec.side == "ours"))
        closers.append(tracker.close)
        return [lambda step: _ours.apply_step(tracker, step)] * spec.threads
    assert isinstance(spec.target, dict)
    # The tables exist (_fresh_log): processes creating them at once would collide
    # in the catalogue ("tuple concurrently updated").
    env = {**spec.target, "POSTGRES_POOL_SIZE": str(spec.threads + 1), "CREATE_TABLE": "no"}
    app = _peer.PeerApp(env=env)
    closers.append(app.close)
    return [_peer.PeerWriter(app).write for _ in range(spec.threads)]


@dataclass
class _Lane:
    """One thread's inputs and what it measured."""

    steps: list[Step]
    prefix: str
    next_payment: int
    latencies: list[float]
    count: int = 0
    refills: int = 0
    error: str | None = None


def _drive(write: Callable[[Step], Any], lane: _Lane, deadline: float | None) -> None:
    """Record the lane's inputs in order until the deadline (or until they run out)."""
    try:
        while deadline is None or time.perf_counter() < deadline:
            if lane.count >= len(lane.steps):
                if deadline is None:
                    return
                more = max(4, lane.next_payment // 4)
                lane.steps.extend(
                    _workload.steps(more, start=lane.next_payment, prefix=lane.prefix)
                )
                lane.next_payment += more
                lane.refills += 1
            started = time.perf_counter()
            write(lane.steps[lane.count])
            lane.latencies.append((time.perf_counter() - started) * 1000)
            lane.count += 1
    except Exception as exc:  # reported to the parent, which fails the run
        lane.error = f"{type(exc).__name__}: {exc}"


def _worker(spec: WorkerSpec, start: Any, done: Any, out: Any) -> None:
    """A receiver process: warm up, wait for the release, record, report, wait to be let go."""
    _workload.quiet_logging()
    closers: list[Callable[[], None]] = []
    try:
        writers = _writers(spec, closers)
        lanes = [
            _Lane(
                _workload.steps(spec.payments, prefix=_prefix(spec, t)),
                _prefix(spec, t),
                spec.payments,
                [],
            )
            for t in range(spec.threads)
        ]
        for step in _workload.payment_steps(0, prefix=f"w{spec.side[0]}{spec.index:02d}"):
            writers[0](step)  # connection, caches and first statements out of the figure
        # An idle backend flushes its statistics within a second: let the warm-up's
        # transactions reach pg_stat_database before the parent's first reading.
        time.sleep(STATS_FLUSH)
        start.wait(timeout=BARRIER_TIMEOUT)
        cpu0 = time.process_time()
        t0 = time.time()
        deadline = None if spec.seconds is None else time.perf_counter() + spec.seconds
        if spec.threads == 1:
            _drive(writers[0], lanes[0], deadline)
        else:
            threads = [
                threading.Thread(target=_drive, args=(w, lane, deadline))
                for w, lane in zip(writers, lanes, strict=True)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        t1 = time.time()
        cpu = time.process_time() - cpu0
        errors = [lane.error for lane in lanes if lane.error]
        out.put(
            {
                "index": spec.index,
                "error": errors[0] if errors else None,
                "count": sum(lane.count for lane in lanes),
                "started": t0,
                "finished": t1,
                "cpu_s": cpu,
                "refills": sum(lane.refills for lane in lanes),
                "latencies": [x for lane in lanes for x in lane.latencies],
            }
        )
        done.wait(timeout=BARRIER_TIMEOUT)
    except BaseException as exc:
        start.abort()
        done.abort()
        out.put({"index": spec.index, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        for close in closers:
            with suppress(Exception):
                close()


# --------------------------------------------------------------- server figures


def _connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


def _wal(conn: Any) -> dict[str, float]:
    row = conn.execute(_WAL_SQL).fetchone()
    return {k: float(v or 0) for k, v in zip(_WAL_KEYS, row, strict=True)}


def _commits(conn: Any, db: str) -> float:
    row = conn.execute(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (db,)
    ).fetchone()
    return float(row[0]) if row else math.nan


def _backend_pids(conn: Any, db: str) -> list[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend' "
        "AND pid <> pg_backend_pid()",
        (db,),
    ).fetchall()
    return [int(r[0]) for r in rows]


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds of a local PostgreSQL backend (``None`` if it is not one here)."""
    try:
        if b"postgres" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of this machine since boot (``/proc/stat``)."""
    try:
        values = [float(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return math.nan, math.nan
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    return sum(values) - idle, sum(values)


def _wait_backends_gone(conn: Any, db: str, timeout: float = 10.0) -> None:
    """Backends flush their statistics when they exit: wait for them to."""
    end = time.monotonic() + timeout
    while _backend_pids(conn, db) and time.monotonic() < end:
        time.sleep(0.05)


def _phase(state: str | None, wait_type: str | None, wait_event: str | None) -> str:
    """What a lock holder is doing, from its ``pg_stat_activity`` row."""
    if wait_event in ("WALSync", "WALWrite", "WALInitSync") or (
        wait_type == "LWLock" and wait_event in ("WALWrite", "WALInsert")
    ):
        return "wal_flush"
    if wait_type == "Client" or (state or "").startswith("idle in transaction"):
        return "client"
    if wait_type is None and state == "active":
        return "server_cpu"
    return f"{wait_type}:{wait_event}"


class Sampler(threading.Thread):
    """Reads who holds the write lock and what everyone waits for, every 20 ms."""

    def __init__(self, admin_url: str, db: str) -> None:
        super().__init__(daemon=True)
        self.admin_url = admin_url
        self.db = db
        self.stop = threading.Event()
        self.samples = 0
        self.held = 0
        self.waiting = 0
        self.busy = 0
        self.phases: Counter[str] = Counter()
        self.states: Counter[str] = Counter()
        self.error: str | None = None

    def run(self) -> None:
        try:
            with _connect(self.admin_url) as conn:
                while not self.stop.wait(SAMPLE_EVERY):
                    self._sample(conn.execute(_HOLDER_SQL, (self.db,)).fetchall())
        except Exception as exc:  # a diagnosis that failed says so
            self.error = f"{type(exc).__name__}: {exc}"

    def _sample(self, rows: list[tuple[Any, ...]]) -> None:
        self.samples += 1
        holders = [r for r in rows if r[4]]
        if holders:
            self.held += 1
            self.phases[_phase(holders[0][1], holders[0][2], holders[0][3])] += 1
        for _, state, wait_type, wait_event, _holds in rows:
            if wait_type == "Lock":
                self.waiting += 1
            if state != "idle":
                self.busy += 1
            key = f"{state}/{wait_type}:{wait_event}" if wait_type else f"{state}/running"
            self.states[key] += 1

    def report(self, backends: int) -> dict[str, Any]:
        n = self.samples or 1
        held = self.held or 1
        return {
            "samples": self.samples,
            "sample_every_ms": SAMPLE_EVERY * 1000,
            "lock_held_fraction": round(self.held / n, 3),
            "holder_phase_fraction": {k: round(v / held, 3) for k, v in self.phases.most_common()},
            "waiting_for_lock_mean": round(self.waiting / n, 2),
            "in_server_mean": round(self.busy / n, 2),
            "backends": backends,
            "backend_states_fraction": {
                k: round(v / (n * max(backends, 1)), 3) for k, v in self.states.most_common(12)
            },
            "error": self.error,
        }


# ------------------------------------------------------------------------- runs


def _fresh_log(url: str, side: str, db: str) -> str | dict[str, str]:
    """Create the side's tables once, before the processes start; return the target."""
    if side in OURS:
        from kplus_fsm import PostgresStore

        target = pgbench._with_db(url, db)
        PostgresStore(target).close()
        return target
    env = pgbench._peer_env(url, db)
    _peer.PeerApp(env=env).close()
    return env


def _check_log(url: str, side: str, db: str, expected: int) -> None:
    """After a run: every input appended one event, and (ours) both hash chains verify."""
    if side in OURS:
        from kplus_fsm import PostgresStore

        with PostgresStore(pgbench._with_db(url, db), read_only=True) as store:
            events = store.counts()["events"]
            report = store.verify()
        if not report.ok:
            raise AssertionError(f"the log does not verify after the run: {report.problem}")
    else:
        with _connect(pgbench._with_db(url, db)) as conn:
            events = int(conn.execute("SELECT count(*) FROM peerapp_events").fetchone()[0])
    if events != expected:
        raise AssertionError(f"{side}: {events} events for {expected} inputs")


def _track_wal_timing(url: str, db: str) -> bool:
    """Turn WAL I/O timing on for the run's database (a superuser may); say whether it is."""
    try:
        with _connect(url) as conn:
            conn.execute(f'ALTER DATABASE "{db}" SET track_wal_io_timing = on')
    except Exception:
        return False
    return True


def _context() -> Any:
    """
    New processes forked from a fork server that imported the heavy modules once
    (a spawned interpreter spends about a second importing them, which on two
    cores would stretch the start of a 16-process run by several seconds). Each
    receiver is still a process of its own with its own connection.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _spawn(specs: list[WorkerSpec]) -> tuple[list[Any], Any, Any, Any]:
    ctx = _context()
    start = ctx.Barrier(len(specs) + 1)
    done = ctx.Barrier(len(specs) + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(s, start, done, out)) for s in specs]
    for p in procs:
        p.start()
    return procs, start, done, out


def _drain(out: Any) -> list[str]:
    """The errors the processes reported (after one of them broke the barrier)."""
    errors: list[str] = []
    with suppress(Exception):
        while True:
            item = out.get(timeout=5)
            if item.get("error"):
                errors.append(item["error"])
    return errors


def run_once(
    url: str,
    side: str,
    processes: int,
    *,
    threads: int,
    payments: int,
    seconds: float | None,
    diagnose: bool = False,
) -> dict[str, Any]:
    """One run: ``processes`` receivers on a fresh log; its figures (see the module)."""
    with pgbench._database(url, side) as db:
        target = _fresh_log(url, side, db)
        timing = _track_wal_timing(url, db)
        specs = [WorkerSpec(side, target, i, threads, payments, seconds) for i in range(processes)]
        procs, start, done, out = _spawn(specs)
        results: list[dict[str, Any]] = []
        sampler = Sampler(url, db) if diagnose else None
        try:
            with _connect(url) as admin:
                try:
                    start.wait(timeout=BARRIER_TIMEOUT)
                except threading.BrokenBarrierError:
                    raise RuntimeError(f"a receiver process failed: {_drain(out)}") from None
                wal0, commits0, busy0 = _wal(admin), _commits(admin, db), _machine_cpu()
                pids = _backend_pids(admin, db)
                cpu0 = {pid: _proc_cpu(pid) for pid in pids}
                if sampler is not None:
                    sampler.start()
                results = [out.get(timeout=BARRIER_TIMEOUT + (seconds or 0)) for _ in procs]
                if sampler is not None:
                    sampler.stop.set()
                    sampler.join()
                busy1 = _machine_cpu()
                cpu1 = {pid: _proc_cpu(pid) for pid in pids}
                done.wait(timeout=BARRIER_TIMEOUT)
                for p in procs:
                    p.join(timeout=60)
                _wait_backends_gone(admin, db)
                wal1, commits1 = _wal(admin), _commits(admin, db)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
        errors = [r["error"] for r in results if r.get("error")]
        if errors or any(p.exitcode != 0 for p in procs):
            codes = [p.exitcode for p in procs]
            raise RuntimeError(f"a receiver process failed: {errors or codes}")
        total = sum(r["count"] for r in results)
        _check_log(url, side, db, total + 4 * processes)
    wall = max(r["finished"] for r in results) - min(r["started"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    server_cpu = [
        b - a for pid in pids if (a := cpu0[pid]) is not None and (b := cpu1[pid]) is not None
    ]
    commits = commits1 - commits0
    wal = {k: wal1[k] - wal0[k] for k in _WAL_KEYS}
    figures: dict[str, Any] = {
        "processes": processes,
        "threads": threads,
        "inputs": total,
        "wall_s": round(wall, 3),
        "inputs_per_s": round(total / wall, 1) if wall > 0 else 0.0,
        "per_process_per_s": sorted(
            round(r["count"] / (r["finished"] - r["started"]), 1) for r in results
        ),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "client_cpu_ms_per_input": round(sum(r["cpu_s"] for r in results) * 1000 / total, 3)
        if total
        else None,
        "server_cpu_ms_per_input": round(sum(server_cpu) * 1000 / total, 3)
        if server_cpu and total
        else None,
        "machine_busy": round((busy1[0] - busy0[0]) / (busy1[1] - busy0[1]), 3)
        if busy1[1] > busy0[1]
        else None,
        "transactions_per_input": round(commits / total, 3) if total else None,
        "wal_syncs_per_input": round(wal["syncs"] / total, 3) if total else None,
        "wal_kb_per_input": round(wal["bytes"] / total / 1024, 2) if total else None,
        "wal_sync_ms": round(wal["sync_ms"] / wal["syncs"], 3) if timing and wal["syncs"] else None,
        "refills": sum(r["refills"] for r in results),
    }
    if sampler is not None:
        figures["diagnosis"] = sampler.report(len(pids))
    return figures


# ------------------------------------------------------------------------ probe


def lock_probe(url: str, payments: int = 50, threads: int = 1) -> dict[str, float]:
    """
    One receiver alone, our side (shared flush), with ``threads`` threads: what a
    group commit holds the chain lock for, seen from the client. The chain
    transaction's body (``_write_fast``: the lock and the reads, planning and
    hashing the rows, queueing the writes; its ``COMMIT`` follows in the same
    round trip as the writes) is timed in wall time and in the committing
    thread's CPU time, with the inputs it held. With one receiver nothing waits
    for the lock, so ``lock_hold_ms`` is about what one commit holds it for, less
    the last round trip, and ``client_cpu_locked_ms`` the client's CPU meanwhile.
    The whole tracker call is timed too (``input_wall_ms``, ``client_cpu_ms``: the
    process's CPU per input).
    """
    from kplus_fsm import PostgresStore, Tracker

    with pgbench._database(url, "lockprobe") as db:
        store = PostgresStore(pgbench._with_db(url, db))
        held: list[float] = []
        held_cpu: list[float] = []
        sizes: list[int] = []
        real = store._write_fast

        def timed(batch: list[Any]) -> None:
            wall, cpu = time.perf_counter(), time.thread_time()
            real(batch)
            held.append((time.perf_counter() - wall) * 1000)
            held_cpu.append((time.thread_time() - cpu) * 1000)
            sizes.append(len(batch))

        store._write_fast = timed  # type: ignore[method-assign]
        walls: list[float] = []
        with Tracker(store) as tracker:
            lanes = [
                _workload.steps(max(payments // threads, 2), prefix=f"lp{t}")
                for t in range(threads)
            ]

            def lane(steps: list[Step]) -> None:
                for step in steps:
                    wall = time.perf_counter()
                    _ours.apply_step(tracker, step)
                    walls.append((time.perf_counter() - wall) * 1000)

            cpu0 = time.process_time()
            workers = [threading.Thread(target=lane, args=(steps,)) for steps in lanes]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            cpu = (time.process_time() - cpu0) * 1000
    skip = min(8, len(held) // 4)  # connection and first statements
    return {
        "threads": threads,
        "inputs": len(walls),
        "inputs_per_commit": round(sum(sizes[skip:]) / len(sizes[skip:]), 2),
        "input_wall_ms": round(statistics.median(walls), 3),
        "client_cpu_ms": round(cpu / len(walls), 3),
        "lock_hold_ms": round(statistics.median(held[skip:]), 3),
        "client_cpu_locked_ms": round(statistics.mean(held_cpu[skip:]), 3),
    }


def probe(url: str, repeat: int = 300) -> dict[str, float]:
    """Round trip, a synchronous one-row commit, and the same without the flush (ms, medians)."""

    def timed(conn: Any, sql: str, params: Sequence[Any] = ()) -> float:
        times = []
        for i in range(repeat):
            started = time.perf_counter()
            conn.execute(sql, (*params, i) if params else ())
            times.append((time.perf_counter() - started) * 1000)
        return round(statistics.median(times), 3)

    with pgbench._database(url, "probe") as db, _connect(pgbench._with_db(url, db)) as conn:
        conn.execute("CREATE TABLE probe (k text, n bigint)")
        settings = {
            name: str(conn.execute(f"SHOW {name}").fetchone()[0])
            for name in (
                "server_version",
                "synchronous_commit",
                "wal_sync_method",
                "fsync",
                "shared_buffers",
                "commit_delay",
            )
        }
        insert = "INSERT INTO probe VALUES (%s, %s)"
        rtt = timed(conn, "SELECT 1")
        sync = timed(conn, insert, ("sync",))
        conn.execute("SET synchronous_commit = off")
        nosync = timed(conn, insert, ("async",))
    return {
        "rtt_ms": rtt,
        "commit_sync_ms": sync,
        "commit_nosync_ms": nosync,
        "flush_ms": round(max(sync - nosync, 0.0), 3),
        **settings,  # type: ignore[dict-item]
    }


# -------------------------------------------------------------------------- all


def _payments_for(expected_total: float, seconds: float, processes: int, threads: int) -> int:
    """Payments per thread for a run expected to take ``expected_total`` inputs/s at most."""
    rate = min(max(expected_total, 100.0), RATE_CAP)
    return math.ceil(1.25 * rate * seconds / (processes * threads) / 4) + 2


def measure_scaling(
    url: str,
    processes: Sequence[int] = PROCESSES,
    threads: int = 1,
    seconds: float | None = None,
    quick: bool = False,
    *,
    sides: Sequence[str] = SIDES,
    diagnose: bool = True,
    smoke: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every figure of the module's description, as a dict (JSON-ready)."""
    _workload.quiet_logging()
    say = progress or (lambda _msg: None)
    if seconds is None:
        seconds = 3.0 if quick else 10.0
    run_seconds: float | None = None if smoke else seconds
    out: dict[str, Any] = {
        "kind": "pg_scaling",
        "mode": "smoke" if smoke else "quick" if quick else "full",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "kplus_fsm_version": _version("kplus-fsm"),
        "eventsourcing_version": _version("eventsourcing"),
        "psycopg_version": _version("psycopg"),
        "processes": list(processes),
        "threads": threads,
        "seconds": run_seconds,
    }
    say("probe: round trip and commit times")
    out["probe"] = probe(url, repeat=20 if smoke else 300)
    out["lock_probe"] = lock_probe(url, payments=4 if smoke else 50)
    out["lock_probe_threads"] = lock_probe(url, payments=8 if smoke else 100, threads=4)
    unknown = [side for side in sides if side not in SIDES]
    if unknown:
        raise ValueError(f"unknown sides {unknown}: choose among {list(SIDES)}")
    rows: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    best: dict[str, tuple[float, int]] = dict.fromkeys(sides, (0.0, 1))
    # Sides alternate at each N, so that a ratio at one N compares runs minutes
    # apart at most on a machine whose other tenants come and go.
    for n in processes:
        for side in sides:
            top, at = best[side]
            expected = top * max(1.0, n / at) if top else RATE_CAP / 3
            payments = 2 if smoke else _payments_for(expected, seconds, n, threads)
            say(f"{side}: {n} process(es) x {threads} thread(s)")
            row = run_once(url, side, n, threads=threads, payments=payments, seconds=run_seconds)
            rows[side].append(row)
            if row["inputs_per_s"] >= top:
                best[side] = (row["inputs_per_s"], n)
    for side, side_rows in rows.items():
        one = side_rows[0]["inputs_per_s"] if side_rows[0]["processes"] == 1 else None
        for row in side_rows:
            row["ratio_to_1"] = round(row["inputs_per_s"] / one, 2) if one else None
        out[side] = side_rows
    if diagnose:
        n = max((p for p in processes if p <= 8), default=max(processes))
        out["diagnoses"] = {}
        for side in sides:
            say(f"diagnosis: {side}, {n} processes, sampled")
            expected = max(r["inputs_per_s"] for r in out[side])
            out["diagnoses"][side] = run_once(
                url,
                side,
                n,
                threads=threads,
                payments=2 if smoke else _payments_for(expected, seconds, n, threads),
                seconds=run_seconds,
                diagnose=True,
            )
    out["summary"] = summary(out)
    return out


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "absent"


def summary(out: dict[str, Any]) -> dict[str, Any]:
    """The ceiling of each side, where it is reached, and ours over the peer per N."""
    s: dict[str, Any] = {}
    for side in SIDES:
        rows = out.get(side) or []
        if rows:
            top = max(rows, key=lambda r: r["inputs_per_s"])
            s[f"{side}_ceiling_per_s"] = top["inputs_per_s"]
            s[f"{side}_ceiling_processes"] = top["processes"]
    peer = {r["processes"]: r["inputs_per_s"] for r in out.get("peer") or []}
    own = {r["processes"]: r["inputs_per_s"] for r in out.get("ours_own_flush") or []}
    for row in out.get("ours") or []:
        n = row["processes"]
        if peer.get(n):
            s[f"ours_vs_peer_{n}"] = round(row["inputs_per_s"] / peer[n], 2)
        if own.get(n):
            s[f"shared_vs_own_flush_{n}"] = round(row["inputs_per_s"] / own[n], 2)
    return s


# ---------------------------------------------------------------------- output


def _row_line(side: str, r: dict[str, Any], peer: dict[int, dict[str, Any]]) -> str:
    cpu = (r["client_cpu_ms_per_input"] or 0) + (r["server_cpu_ms_per_input"] or 0)
    per = statistics.mean(r["per_process_per_s"]) if r["per_process_per_s"] else 0
    theirs = peer.get(r["processes"], {}).get("inputs_per_s")
    ratio = r["inputs_per_s"] / theirs if theirs else math.nan
    return (
        f"{side:<15} {r['processes']:>3} {r['inputs_per_s']:>8.0f} {r['ratio_to_1'] or 0:>5.2f} "
        f"{per:>9.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {cpu:>8.3f} "
        f"{r['machine_busy'] or 0:>5.2f} {r['transactions_per_input'] or 0:>6.2f} "
        f"{r['wal_syncs_per_input'] or 0:>6.2f} {ratio:>9.2f}"
    )


def _diagnosis_line(side: str, d: dict[str, Any]) -> str:
    g = d["diagnosis"]
    return (
        f"diagnosis {side} ({d['processes']} processes, {d['inputs_per_s']:.0f} inputs/s while "
        f"sampled): write lock held {g['lock_held_fraction']:.0%} of {g['samples']} samples; "
        f"the holder: {g['holder_phase_fraction']}; writers queued for the lock "
        f"{g['waiting_for_lock_mean']} on average; WAL syncs per input "
        f"{d['wal_syncs_per_input']}; CPU per input {d['client_cpu_ms_per_input']} ms "
        f"client + {d['server_cpu_ms_per_input']} ms server; machine busy {d['machine_busy']}"
    )


def table(out: dict[str, Any]) -> str:
    """The figures as a plain-text table (one row per side and N), then the diagnoses."""
    peer = {r["processes"]: r for r in out.get("peer") or []}
    lines = [
        f"{'side':<15} {'N':>3} {'input/s':>8} {'x1':>5} {'per proc':>9} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'cpu ms':>8} {'busy':>5} {'xact/i':>6} {'sync/i':>6} {'vs peer':>9}"
    ]
    for side in SIDES:
        lines.extend(_row_line(side, r, peer) for r in out.get(side) or [])
    pr = out.get("probe") or {}
    if pr:
        lines.append(
            f"probe: round trip {pr['rtt_ms']} ms, one-row commit {pr['commit_sync_ms']} ms "
            f"(synchronous_commit={pr['synchronous_commit']}), without the flush "
            f"{pr['commit_nosync_ms']} ms: flush {pr['flush_ms']} ms"
        )
    for key in ("lock_probe", "lock_probe_threads"):
        lp = out.get(key) or {}
        if lp:
            lines.append(
                f"one receiver alone, {lp['threads']} thread(s): {lp['input_wall_ms']} ms per "
                f"input, {lp['client_cpu_ms']} ms client CPU per input; "
                f"{lp['inputs_per_commit']} inputs per commit, the chain lock held "
                f"{lp['lock_hold_ms']} ms per commit, of which {lp['client_cpu_locked_ms']} ms "
                "client CPU"
            )
    for side, d in (out.get("diagnoses") or {}).items():
        lines.append(_diagnosis_line(side, d))
    return "\n".join(lines)


def chart(out: dict[str, Any], *, target: float | None, target_label: str) -> str:
    """The SVG plot: each side, ideal linear scaling from ours at 1, the target."""
    ours = [(r["processes"], r["inputs_per_s"]) for r in out.get("ours") or []]
    series = [
        _svgplot.Series("kplus_fsm (PostgresStore)", ours, color="#1f77b4"),
    ]
    if out.get("ours_own_flush"):
        own = [(r["processes"], r["inputs_per_s"]) for r in out["ours_own_flush"]]
        series.append(_svgplot.Series("kplus_fsm, shared_flush=False", own, "#2ca02c", "dashdot"))
    if out.get("peer"):
        peer = [(r["processes"], r["inputs_per_s"]) for r in out["peer"]]
        series.append(_svgplot.Series("eventsourcing (PostgreSQL)", peer, "#ff7f0e", "dashed"))
    if ours and ours[0][0] == 1:
        series.append(
            _svgplot.Series(
                "ideal: linear from 1 process",
                [(n, ours[0][1] * n) for n, _ in ours],
                "#7f7f7f",
                "dotted",
                markers=False,
            )
        )
    threads = out.get("threads", 1)
    note = (
        f"{out.get('date', '')}, {out['machine']['cpus']} CPUs,\n"
        f"PostgreSQL {out.get('probe', {}).get('server_version', '?').split()[0]}, "
        f"{threads} thread(s)/process,\n{out.get('mode')} run, "
        f"{out.get('seconds')} s per point"
    )
    return _svgplot.render(
        _svgplot.Chart(
            title="Receivers on one PostgreSQL log: inputs recorded per second",
            x_label="receiver processes (each its own connection)",
            y_label="inputs per second (all processes)",
            x_ticks=[r for r, _ in ours] or list(PROCESSES),
            series=series,
            target=target,
            target_label=target_label,
            note=note,
        )
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--url",
        default=os.environ.get("KPLUS_FSM_BENCH_PG"),
        help="a postgresql:// URL of a role that may CREATE DATABASE ($KPLUS_FSM_BENCH_PG)",
    )
    where.add_argument(
        "--postgres",
        metavar="auto",
        choices=["auto"],
        help="start a throwaway cluster from the installed server binaries",
    )
    parser.add_argument("--quick", action="store_true", help="3 s per point (about 2 minutes)")
    parser.add_argument("--seconds", type=float, help="seconds per point (default 10, quick 3)")
    parser.add_argument("--threads", type=int, default=1, help="threads per process (default 1)")
    parser.add_argument(
        "--processes",
        default=",".join(map(str, PROCESSES)),
        help="comma-separated numbers of processes (default 1,2,4,8,16)",
    )
    parser.add_argument("--no-peer", action="store_true", help="leave the peer out")
    parser.add_argument(
        "--no-own-flush",
        action="store_true",
        help="leave out our store with shared_flush=False (the comparison)",
    )
    parser.add_argument("--no-diagnosis", action="store_true", help="skip the sampled run")
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    parser.add_argument("--svg", type=Path, help="write the plot to this SVG file")
    parser.add_argument(
        "--target",
        type=float,
        default=1000.0,
        help="the target line of the plot, inputs/s (default 1000: docs/scaling.md)",
    )
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    spec = "auto" if args.postgres else args.url
    if not spec:
        parser.error("--url URL or --postgres auto (or $KPLUS_FSM_BENCH_PG) is required")
    try:
        processes = tuple(int(p) for p in args.processes.split(",") if p.strip())
    except ValueError:
        parser.error(f"--processes: not a list of numbers: {args.processes!r}")
    if not processes or min(processes) < 1 or args.threads < 1:
        parser.error("--processes and --threads take positive numbers")

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    with pgbench.server(spec) as url:
        out = measure_scaling(
            url,
            processes,
            args.threads,
            args.seconds,
            args.quick,
            sides=[
                side
                for side in SIDES
                if not (side == "peer" and args.no_peer)
                and not (side == "ours_own_flush" and args.no_own_flush)
            ],
            diagnose=not args.no_diagnosis,
            smoke=args.smoke,
            progress=say,
        )
    print(table(out))
    if args.svg:
        args.svg.parent.mkdir(parents=True, exist_ok=True)
        args.svg.write_text(
            chart(out, target=args.target, target_label=f"target {args.target:,.0f}/s")
        )
        print(f"plot written to {args.svg}")
    if args.json:
        print(json.dumps(out, sort_keys=True))
    return out


if __name__ == "__main__":
    main()
