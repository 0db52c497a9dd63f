"""
A deterministic simulation of receivers recording inputs into one hash chain
or into several partitioned chains (docs/scaling.md, "Past one chain"), from
the per-input costs measured by tests/benchmarks/pg_scaling.py.

    python tests/benchmarks/chain_simulation.py [--from-json pg_scaling.json]
        [--cores 2,16] [--partitions 1,4,16] [--processes 1,2,4,8,16] [--json]
        [--svg docs/img/chain-simulation.svg]

The model (a discrete-event simulation; no randomness, so the same parameters
always give the same figures). Each of N receivers records inputs one after
the other; input k of receiver i belongs to partition ``(i + k * N) % P`` (the
payments of the workload spread evenly). One input is:

1. client CPU outside the lock (decode, the machine's decision, the codec):
   ``cpu_outside_ms`` on a core;
2. wait for the partition's chain lock (FIFO);
3. under the lock: ``locked_round_trips`` round trips (``rtt_ms`` each; the
   reads, then the writes and the commit), ``cpu_locked_ms`` of CPU on a core
   (planning and hashing on the client, inserts on the server), and with
   ``shared_flush=False`` the WAL flush (``flush_ms``);
4. release; with ``shared_flush`` the flush after the lock (one more round
   trip and the flush);
5. the next input.

Cores are a FIFO pool of ``cores`` servers shared by every CPU step (client and
server on one machine, as on the benchmark machine); a lock holder that waits
for a core keeps the lock meanwhile, which is how a saturated machine stretches
the lock hold time. The WAL is one device: a flush requested while another is
in progress waits for it and is then served, with every other waiting request,
by the next ``flush_ms`` (the server's group flush). A signed head over all the
partitions every ``head_every_ms`` takes every partition's lock in turn for one
round trip (a conservative model: reading the heads in one snapshot needs no
lock at all).

Its output is inputs per second for each number of processes, partitions and
cores, and where the time went (lock busy fraction, core busy fraction).
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script
    sys.path.insert(0, str(HERE))

import _svgplot  # noqa: E402

SIM_SECONDS: Final = 5.0


@dataclass(frozen=True)
class Params:
    """Per-input costs (milliseconds) and the shape of the system."""

    rtt_ms: float = 0.2
    flush_ms: float = 1.5
    cpu_outside_ms: float = 2.0
    cpu_locked_ms: float = 1.5
    locked_round_trips: int = 2
    shared_flush: bool = True
    cores: int = 2
    partitions: int = 1
    head_every_ms: float = 1000.0
    #: inputs per commit (group commit of a receiver's threads); the per-input CPU
    #: is spent ``batch`` times, the round trips and the flush once
    batch: int = 1


@dataclass
class _Pool:
    """``size`` identical servers taking work in FIFO order."""

    size: int
    busy: int = 0
    queue: deque[Callable[[], None]] | None = None
    busy_ms: float = 0.0

    def __post_init__(self) -> None:
        self.queue = deque()


class Simulation:
    """N receivers, P chains, C cores and one WAL, for ``seconds`` of simulated time."""

    def __init__(self, params: Params, processes: int, seconds: float = SIM_SECONDS) -> None:
        self.p = params
        self.processes = processes
        self.end_ms = seconds * 1000.0
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.cores = _Pool(params.cores)
        self.locks = [_Pool(1) for _ in range(params.partitions)]
        self.done = 0
        self._flushing = False
        self._flush_waiters: list[Callable[[], None]] = []
        self._next_flush: list[Callable[[], None]] = []
        self.flushes = 0

    # ---------------------------------------------------------------- machinery

    def _at(self, delay: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (self.now + delay, self._seq, action))

    def _acquire(self, pool: _Pool, then: Callable[[], None]) -> None:
        assert pool.queue is not None
        if pool.busy < pool.size:
            pool.busy += 1
            then()
        else:
            pool.queue.append(then)

    def _release(self, pool: _Pool) -> None:
        assert pool.queue is not None
        if pool.queue:
            self._at(0.0, pool.queue.popleft())
        else:
            pool.busy -= 1

    def _hold(self, pool: _Pool, ms: float, then: Callable[[], None]) -> None:
        """Take one server of ``pool`` for ``ms``, then ``then``."""

        def start() -> None:
            pool.busy_ms += min(ms, max(self.end_ms - self.now, 0.0))

            def finish() -> None:
                self._release(pool)
                then()

            self._at(ms, finish)

        self._acquire(pool, start)

    def _cpu(self, ms: float, then: Callable[[], None]) -> None:
        if ms <= 0:
            then()
        else:
            self._hold(self.cores, ms, then)

    def _flush(self, then: Callable[[], None]) -> None:
        """Wait for a WAL flush that starts after this request (group flush)."""
        self._next_flush.append(then)
        if not self._flushing:
            self._start_flush()

    def _start_flush(self) -> None:
        self._flushing = True
        self.flushes += 1
        served, self._next_flush = self._next_flush, []

        def finish() -> None:
            self._flushing = False
            for then in served:
                then()
            if self._next_flush:
                self._start_flush()

        self._at(self.p.flush_ms, finish)

    # ------------------------------------------------------------------ inputs

    def _partition(self, receiver: int, k: int) -> int:
        return (receiver + k * self.processes) % self.p.partitions

    def _input(self, receiver: int, k: int) -> None:
        if self.now >= self.end_ms:
            return
        p = self.p
        lock = self.locks[self._partition(receiver, k)]

        b = p.batch

        def finished() -> None:
            if self.now <= self.end_ms:
                self.done += b
            self._input(receiver, k + 1)

        def released() -> None:
            if p.shared_flush:
                self._at(p.rtt_ms, lambda: self._flush(finished))
            else:
                finished()

        def locked() -> None:
            start = self.now

            def after_flush() -> None:
                lock.busy_ms += min(self.now, self.end_ms) - min(start, self.end_ms)
                self._release(lock)
                released()

            def after_writes() -> None:
                if p.shared_flush:
                    after_flush()
                else:
                    self._flush(after_flush)

            def after_cpu() -> None:
                rest = max(p.locked_round_trips - 1, 0) * p.rtt_ms
                self._at(rest, after_writes)

            self._at(p.rtt_ms, lambda: self._cpu(p.cpu_locked_ms * b, after_cpu))

        self._cpu(p.cpu_outside_ms * b, lambda: self._acquire(lock, locked))

    def _head(self) -> None:
        """The periodic signed head: each partition's lock for one round trip."""
        if self.now >= self.end_ms:
            return
        for lock in self.locks:
            self._hold(lock, self.p.rtt_ms, lambda: None)
        self._at(self.p.head_every_ms, self._head)

    def run(self) -> dict[str, Any]:
        """Simulate; the figures."""
        for receiver in range(self.processes):
            self._at(receiver * 1e-6, lambda r=receiver: self._input(r, 0))  # type: ignore[misc]
        if self.p.partitions > 1 and self.p.head_every_ms > 0:
            self._at(self.p.head_every_ms, self._head)
        while self._events:
            when, _, action = heapq.heappop(self._events)
            if when > self.end_ms + 1000.0:
                break
            self.now = when
            action()
        seconds = self.end_ms / 1000.0
        lock_busy = max(lock.busy_ms for lock in self.locks) / self.end_ms
        return {
            "processes": self.processes,
            "partitions": self.p.partitions,
            "cores": self.p.cores,
            "shared_flush": self.p.shared_flush,
            "inputs_per_s": round(self.done / seconds, 1),
            "busiest_lock_held_fraction": round(min(lock_busy, 1.0), 3),
            "cores_busy_fraction": round(
                min(self.cores.busy_ms / (self.end_ms * self.p.cores), 1.0), 3
            ),
            "batch": self.p.batch,
            "wal_flushes_per_input": round(self.flushes / self.done, 3) if self.done else None,
        }


def simulate(params: Params, processes: int, seconds: float = SIM_SECONDS) -> dict[str, Any]:
    """Inputs per second (and where the time went) for ``processes`` receivers."""
    return Simulation(params, processes, seconds).run()


# --------------------------------------------------------------- calibration


def params_from_scaling(out: dict[str, Any], *, batched: bool = False) -> Params:
    """
    The per-input costs measured by pg_scaling.py (``--json``): the probe's round
    trip and WAL flush; from the lock probe (one receiver alone; ``batched``: the
    one with four threads, whose commits hold several inputs) the client's CPU
    per input and the time one commit holds the chain lock. Under the lock, per
    input: that hold less its round trip, spread over the inputs of the commit,
    plus the server's CPU per input of the one-process run (all of it, reads and
    the confirming transaction included: an overestimate of what the inserts
    take while the lock is held).
    """
    probe = out["probe"]
    lock = out["lock_probe_threads" if batched else "lock_probe"]
    one = next(r for r in out["ours"] if r["processes"] == 1)
    rtt = float(probe["rtt_ms"])
    batch = max(1, round(float(lock.get("inputs_per_commit", 1.0))))
    server = float(one["server_cpu_ms_per_input"] or 0.0)
    client = float(lock["client_cpu_ms"])
    locked_client = float(lock["client_cpu_locked_ms"]) / batch
    return Params(
        rtt_ms=rtt,
        flush_ms=float(probe["flush_ms"]),
        cpu_outside_ms=round(max(client - locked_client, 0.0), 3),
        cpu_locked_ms=round(max(float(lock["lock_hold_ms"]) - rtt, 0.0) / batch + server, 3),
        cores=int(out["machine"]["cpus"] or 2),
        batch=batch,
    )


def grid(
    base: Params,
    processes: Iterable[int],
    partitions: Iterable[int],
    cores: Iterable[int],
    seconds: float = SIM_SECONDS,
) -> list[dict[str, Any]]:
    """Every combination, each its own simulation."""
    rows = []
    for c in cores:
        for p in partitions:
            for n in processes:
                rows.append(simulate(replace(base, cores=c, partitions=p), n, seconds))
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{'cores':>5} {'chains':>6} {'N':>3} {'inputs/s':>9} {'lock busy':>9} {'cpu busy':>8}"
    ]
    lines.extend(
        f"{r['cores']:>5} {r['partitions']:>6} {r['processes']:>3} {r['inputs_per_s']:>9.0f} "
        f"{r['busiest_lock_held_fraction']:>9.2f} {r['cores_busy_fraction']:>8.2f}"
        for r in rows
    )
    return "\n".join(lines)


_COLORS: Final = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
_DASHES: Final = ("solid", "dashed", "dashdot", "dotted")


def chart(rows: Sequence[dict[str, Any]], *, target: float, measured: Sequence[Any] = ()) -> str:
    """One line per (cores, chains), inputs/s against receivers; the measured points."""
    keys = sorted({(r["cores"], r["partitions"]) for r in rows})
    series = []
    for i, (c, p) in enumerate(keys):
        points = [
            (r["processes"], r["inputs_per_s"])
            for r in rows
            if (r["cores"], r["partitions"]) == (c, p)
        ]
        series.append(
            _svgplot.Series(
                f"model: {c} cores, {p} chain{'s' if p > 1 else ''}",
                points,
                _COLORS[i % len(_COLORS)],
                _DASHES[(i // len(_COLORS) + i) % len(_DASHES)],
            )
        )
    if measured:
        series.append(
            _svgplot.Series("measured, 2 cores, 1 chain", list(measured), "#000000", "dotted")
        )
    xs = sorted({r["processes"] for r in rows})
    return _svgplot.render(
        _svgplot.Chart(
            title="Simulated: receivers on one chain or on partitioned chains",
            x_label="receiver processes",
            y_label="inputs per second",
            x_ticks=xs,
            series=series,
            target=target,
            target_label=f"target {target:,.0f}/s",
            note="deterministic model (tests/benchmarks/chain_simulation.py)",
        )
    )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--from-json", type=Path, help="the output of pg_scaling.py --json, to calibrate from"
    )
    parser.add_argument("--processes", default="1,2,4,8,16,32,64")
    parser.add_argument("--partitions", default="1,4,16")
    parser.add_argument("--cores", default="2,16")
    parser.add_argument("--seconds", type=float, default=SIM_SECONDS, help="simulated seconds")
    parser.add_argument("--own-flush", action="store_true", help="shared_flush=False")
    parser.add_argument(
        "--batched",
        action="store_true",
        help="calibrate from the lock probe with four threads (several inputs per commit)",
    )
    parser.add_argument("--rtt-ms", type=float, help="override the round trip (another network)")
    parser.add_argument("--flush-ms", type=float, help="override the WAL flush (another disk)")
    parser.add_argument(
        "--cpu-locked-ms",
        type=float,
        help="override the CPU per input under the lock (a store that plans outside it)",
    )
    parser.add_argument("--target", type=float, default=1000.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--svg", type=Path)
    args = parser.parse_args(argv)
    measured: list[tuple[float, float]] = []
    if args.from_json:
        lines = args.from_json.read_text().strip().splitlines()
        scaling = json.loads(lines[-1])
        base = params_from_scaling(scaling, batched=args.batched)
        measured = [(r["processes"], r["inputs_per_s"]) for r in scaling["ours"]]
    else:
        base = Params()
    base = replace(base, shared_flush=not args.own_flush)
    for name in ("rtt_ms", "flush_ms", "cpu_locked_ms"):
        value = getattr(args, name)
        if value is not None:
            base = replace(base, **{name: value})
    rows = grid(
        base, _ints(args.processes), _ints(args.partitions), _ints(args.cores), args.seconds
    )
    out = {"params": asdict(base), "rows": rows}
    print(table(rows))
    if args.svg:
        args.svg.parent.mkdir(parents=True, exist_ok=True)
        args.svg.write_text(chart(rows, target=args.target, measured=measured))
        print(f"plot written to {args.svg}")
    if args.json:
        print(json.dumps(out, sort_keys=True))
    return out


if __name__ == "__main__":
    main()
