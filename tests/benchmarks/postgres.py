"""
The PostgreSQL figures of the performance benchmark: kplus_fsm's
:class:`~kplus_fsm.PostgresStore` beside its peer, the ``eventsourcing``
library's PostgreSQL persistence (``PERSISTENCE_MODULE=eventsourcing.postgres``),
on the same server, with the same inputs (tests/benchmarks/_workload.py).

    python tests/benchmarks/postgres.py --url postgresql://USER@HOST:PORT/DB
        [--quick] [--json] [--with-sqlite]
    python tests/benchmarks/postgres.py --postgres auto [--quick] [--json]

The role must be allowed to ``CREATE DATABASE``: each side gets fresh databases
of its own, dropped at the end. ``--postgres auto`` starts a throwaway cluster
from the installed server binaries (tests/pg.py, default settings) and stops it
at the end. What is measured:

- ``pg_append_per_s``: one producer, one input per transaction through the
  tracker (the machine decides; inbox row, events, projection and both hash
  chains in one transaction under the chain lock), durable commits (the
  server's ``synchronous_commit``, ``on`` by default);
- ``pg_concurrent_per_s``: 8 OS processes (8 hosts), each with its own
  connection, writing disjoint payments into one log;
- ``pg_replay_per_s``: ``store.replay()`` of a built log (events folded per
  second, compared with the projection);
- ``pg_show_median_ms``: ``kplus-fsm show ID`` in process (open read-only,
  query, format, close) over random payments;
- ``eventsourcing_pg_*``: the peer doing the same work its way: one aggregate
  per payment, one event per input, one ``save()`` (one transaction) per input;
  its replay reads the whole notification log, decoding every event;
- ``ratio_pg_*_vs_eventsourcing``: ours / the peer's (above 1: we are faster).

``measure_postgres(url, quick=...)`` returns the same figures as a dict.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script, or imported by run.py
    sys.path.insert(0, str(HERE))

import _ours  # noqa: E402
import _peer  # noqa: E402
import _workload  # noqa: E402
from _workload import Step  # noqa: E402

CONCURRENCY = 8


def _with_db(url: str, dbname: str, *, options: str | None = None) -> str:
    parts = urlsplit(url)
    query = parts.query
    if options:
        query = f"{query}&options={options}" if query else f"options={options}"
    return urlunsplit((parts.scheme, parts.netloc, f"/{dbname}", query, parts.fragment))


def _peer_env(url: str, dbname: str) -> dict[str, str]:
    """eventsourcing's PostgreSQL settings for ``dbname`` on the server of ``url``."""
    parts = urlsplit(url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": unquote(parts.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_POOL_SIZE": "2",
    }


@contextmanager
def server(spec: str) -> Iterator[str]:
    """The URL to measure on: ``spec`` itself, or a throwaway cluster for ``auto``."""
    if spec != "auto":
        yield spec
        return
    tests = str(HERE.parent)  # tests/pg.py
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import pg

    bin_dir = pg._bin_dir()
    if bin_dir is None:
        raise SystemExit("--postgres auto: no PostgreSQL server binaries (initdb, pg_ctl)")
    cluster = pg.Cluster(bin_dir)
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()


@contextmanager
def _database(url: str, label: str) -> Iterator[str]:
    """A fresh database named after ``label``, dropped afterwards."""
    import psycopg

    name = f"kplus_bench_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


# ----------------------------------------------------------------- one producer


def ours_append(db_url: str, inputs: Sequence[Step]) -> float:
    """Inputs per second through the tracker (a PostgreSQL URL or a SQLite file), one per commit."""
    from kplus_fsm import Tracker

    with Tracker(db_url) as tracker:
        started = time.perf_counter()
        for step in inputs:
            _ours.apply_step(tracker, step)
        elapsed = time.perf_counter() - started
        events = tracker.store.counts()["events"]
    if events != len(inputs):
        raise AssertionError(f"{events} events for {len(inputs)} inputs")
    return _rate(len(inputs), elapsed)


def peer_append(env: dict[str, str], inputs: Sequence[Step]) -> float:
    """Inputs per second through eventsourcing's PostgreSQL persistence, one save each."""
    app = _peer.PeerApp(env=env)
    try:
        writer = _peer.PeerWriter(app)
        started = time.perf_counter()
        for step in inputs:
            writer.write(step)
        elapsed = time.perf_counter() - started
    finally:
        app.close()
    return _rate(len(inputs), elapsed)


# ------------------------------------------------------------------ concurrency


def _ours_worker(db_url: str, inputs: list[Step], barrier: Any, out: Any) -> None:
    from kplus_fsm import Tracker

    _workload.quiet_logging()
    with Tracker(db_url) as tracker:
        barrier.wait(timeout=120)
        started = time.time()
        for step in inputs:
            _ours.apply_step(tracker, step)
        out.put((started, time.time()))


def _peer_worker(env: dict[str, str], inputs: list[Step], barrier: Any, out: Any) -> None:
    app = _peer.PeerApp(env=env)
    try:
        writer = _peer.PeerWriter(app)
        barrier.wait(timeout=120)
        started = time.time()
        for step in inputs:
            writer.write(step)
        out.put((started, time.time()))
    finally:
        app.close()


def _concurrent(target: Callable[..., None], first: Any, per_process: list[list[Step]]) -> float:
    """Inputs per second of all processes together (first start to last finish)."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(per_process))
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(first, part, barrier, out)) for part in per_process]
    for p in procs:
        p.start()
    spans = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"a benchmark process exited with {p.exitcode}")
    total = sum(len(part) for part in per_process)
    return _rate(total, max(e for _, e in spans) - min(s for s, _ in spans))


def _split(inputs: list[Step], parts: int) -> list[list[Step]]:
    """Whole payments (four inputs each) dealt round-robin to ``parts`` producers."""
    out: list[list[Step]] = [[] for _ in range(parts)]
    for i in range(0, len(inputs), 4):
        out[(i // 4) % parts].extend(inputs[i : i + 4])
    return out


# ------------------------------------------------------------------------ reads


def ours_replay(db_url: str) -> tuple[float, int]:
    from kplus_fsm import open_store

    with open_store(db_url, read_only=True) as store:
        started = time.perf_counter()
        report = store.replay()
        elapsed = time.perf_counter() - started
    if not report.ok:
        raise AssertionError("replay found differences")
    return _rate(report.events, elapsed), report.events


def peer_replay(env: dict[str, str]) -> float:
    app = _peer.PeerApp(env=env)
    try:
        started = time.perf_counter()
        n = _peer.read_all(app)
        elapsed = time.perf_counter() - started
    finally:
        app.close()
    return _rate(n, elapsed)


def ours_show_ms(db_url: str, payments: list[str], repeat: int) -> float:
    from click.testing import CliRunner

    from kplus_fsm.cli import cli

    runner = CliRunner()
    times = []
    for pid in random.Random(7).choices(payments, k=repeat):
        started = time.perf_counter()
        res = runner.invoke(cli, ["show", pid, "--db", db_url], catch_exceptions=False)
        times.append((time.perf_counter() - started) * 1000)
        if res.exit_code != 0:
            raise AssertionError(res.output)
    return round(statistics.median(times), 2)


# ------------------------------------------------------------------------- all


def measure_postgres(url: str, *, quick: bool, smoke: bool = False) -> dict[str, float]:
    """Every PostgreSQL figure (see the module's description), as a flat dict."""
    _workload.quiet_logging()
    sizes = (
        {"append": 5, "concurrent": 2, "replay": 10, "show": 3}
        if smoke  # the test that the script runs and reports every key
        else {"append": 100, "concurrent": 100, "replay": 1000, "show": 30}
        if quick
        else {"append": 1000, "concurrent": 1000, "replay": 10_000, "show": 200}
    )  # payments (four inputs each); "concurrent" is per process
    out: dict[str, float] = {}
    append_inputs = _workload.steps(sizes["append"])
    ours: list[float] = []
    peer: list[float] = []
    for _ in range(1 if quick or smoke else 3):  # alternated, median: a shared disk is noisy
        with _database(url, "ours") as db:
            ours.append(ours_append(_with_db(url, db), append_inputs))
        with _database(url, "peer") as db:
            peer.append(peer_append(_peer_env(url, db), append_inputs))
    out["pg_append_per_s"] = statistics.median(ours)
    out["eventsourcing_pg_append_per_s"] = statistics.median(peer)

    many = _split(_workload.steps(sizes["concurrent"] * CONCURRENCY), CONCURRENCY)
    with _database(url, "ours") as db:
        out["pg_concurrent_per_s"] = _concurrent(_ours_worker, _with_db(url, db), many)
    with _database(url, "peer") as db:
        env = _peer_env(url, db)
        _peer.PeerApp(env=env).close()  # the tables, once: 8 processes creating them collide
        out["eventsourcing_pg_concurrent_per_s"] = _concurrent(
            _peer_worker, {**env, "CREATE_TABLE": "no"}, many
        )

    with _database(url, "ours") as db:
        # Built at synchronous_commit=off (changes no stored byte), read as stored.
        fast = _with_db(url, db, options="-c%20synchronous_commit%3Doff")
        from kplus_fsm import PostgresStore, Tracker

        with Tracker(PostgresStore(fast)) as tracker:
            for step in _workload.iter_steps(sizes["replay"]):
                _ours.apply_step(tracker, step)
        out["pg_replay_per_s"], out["pg_replay_events"] = ours_replay(_with_db(url, db))
        pids = [_workload.payment_id(n) for n in range(sizes["replay"])]
        out["pg_show_median_ms"] = ours_show_ms(_with_db(url, db), pids, sizes["show"])
    with _database(url, "peer") as db:
        env = _peer_env(url, db)
        app = _peer.PeerApp(env=env)
        try:
            _peer.build_log(
                app,
                (
                    (s.payment_id, s.event_kind, _peer.payload_of(s))
                    for s in _workload.iter_steps(sizes["replay"])
                ),
            )
        finally:
            app.close()
        out["eventsourcing_pg_replay_per_s"] = peer_replay(env)

    for name in ("append", "concurrent", "replay"):
        out[f"ratio_pg_{name}_vs_eventsourcing"] = _ratio(  # type: ignore[assignment]
            out[f"pg_{name}_per_s"], out[f"eventsourcing_pg_{name}_per_s"]
        )
    return out


def measure_sqlite(work: Path, *, quick: bool) -> dict[str, float]:
    """The same three figures on a SQLite file (synchronous=FULL), for the side-by-side."""
    _workload.quiet_logging()
    sizes = (
        {"append": 100, "concurrent": 100, "replay": 1000}
        if quick
        else {"append": 1000, "concurrent": 1000, "replay": 10_000}
    )
    out: dict[str, float] = {}
    out["sqlite_append_per_s"] = ours_append(
        str(work / "append.db"), _workload.steps(sizes["append"])
    )
    many = _split(_workload.steps(sizes["concurrent"] * CONCURRENCY), CONCURRENCY)
    out["sqlite_concurrent_per_s"] = _concurrent(_ours_worker, str(work / "concurrent.db"), many)
    replay_db = work / "replay.db"
    _ours.build_log(replay_db, _workload.iter_steps(sizes["replay"]))
    out["sqlite_replay_per_s"], _ = ours_replay(str(replay_db))
    return out


def main(argv: list[str] | None = None) -> None:
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
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--with-sqlite",
        action="store_true",
        help="also measure the SQLite store on the same workload (a local temporary file)",
    )
    args = parser.parse_args(argv)
    spec = "auto" if args.postgres else args.url
    if not spec:
        parser.error("--url URL or --postgres auto (or $KPLUS_FSM_BENCH_PG) is required")
    with server(spec) as url:
        figures = measure_postgres(url, quick=args.quick, smoke=args.smoke)
    if args.with_sqlite:
        with tempfile.TemporaryDirectory(prefix="kplus-bench-") as work:
            figures.update(measure_sqlite(Path(work), quick=args.quick))
    if args.json:
        print(json.dumps(figures, sort_keys=True))
        return
    for key, value in figures.items():
        print(f"{key:<40} {value}")


if __name__ == "__main__":
    main()
