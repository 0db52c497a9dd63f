"""
What one durable commit writes: WAL frames (and ``pwrite`` calls) per input, on
our store and on the peer (``eventsourcing`` on SQLite), each frame attributed
to the table or index whose page it carries. Not a test; the test suite runs
it on a few inputs to keep it working. The figures are in
docs/million-events.md ("Index accounting").

    python tests/scale/wal_frames.py [--warmup 2000] [--payments 250] [--json]
    python tests/scale/wal_frames.py --db COPY_OF_A_BIG_LOG   # on a big log
    python tests/scale/wal_frames.py --strace                 # also count pwrite64

How: the benchmark's workload (tests/benchmarks/_workload.py: four inputs per
payment, each a ``synchronous=FULL`` transaction of its own). A warm-up is
recorded first (so that every b-tree has real pages), the WAL is checkpointed
and truncated and automatic checkpoints are switched off; then every measured
input is recorded and the WAL file is read back frame by frame (a frame is a
24-byte header, whose first field is the page number and whose second is
non-zero on the frame that commits, followed by one page). Pages are named
with the ``dbstat`` virtual table (page 1 is ``sqlite_schema``, where the
header's change counter and file size live). With ``--strace`` the run is
repeated under ``strace -e trace=pwrite64`` and the calls made after the
warm-up are counted (SQLite writes a frame as two ``pwrite`` calls, header
and page).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sqlite3
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _workload import Step, iter_steps, quiet_logging

WAL_HEADER = 32
FRAME_HEADER = 24
#: Written to /dev/null between the warm-up and the measured inputs, so that a
#: ``strace`` log can be cut there.
MARK = b"kplus-fsm-wal-frames-measure\n"


def read_commits(wal: Path, page_size: int) -> list[list[int]]:
    """The page numbers each transaction in ``wal`` wrote, commit by commit."""
    data = wal.read_bytes()
    commits: list[list[int]] = []
    pages: list[int] = []
    offset = WAL_HEADER
    step = FRAME_HEADER + page_size
    while offset + step <= len(data):
        pgno, commit_size = struct.unpack_from(">II", data, offset)
        pages.append(pgno)
        if commit_size:
            commits.append(pages)
            pages = []
        offset += step
    return commits


def page_names(db: Path) -> dict[int, str]:
    """The b-tree (table or index name) every page of ``db`` belongs to."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {int(p): str(n) for n, p in conn.execute("SELECT name, pageno FROM dbstat")}
    finally:
        conn.close()


def attribute(commits: list[list[int]], names: dict[int, str], inputs: int) -> dict[str, Any]:
    """Frames per input, in total and by b-tree."""
    by_name: collections.Counter[str] = collections.Counter()
    for pages in commits:
        for pgno in pages:
            by_name[names.get(pgno, "(freelist or new)")] += 1
    frames = sum(len(p) for p in commits)
    return {
        "inputs": inputs,
        "commits": len(commits),
        "frames": frames,
        "frames_per_input": round(frames / inputs, 2),
        "by_btree_per_input": {
            name: round(count / inputs, 2) for name, count in by_name.most_common()
        },
    }


def _mark() -> None:
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        os.write(fd, MARK)
    finally:
        os.close(fd)


def run_ours(
    path: Path, warmup: Iterable[Step], measured: list[Step], *, existing: bool
) -> dict[str, Any]:
    """Our store: every input through :class:`kplus_fsm.Tracker` at ``FULL``."""
    from _ours import apply_step

    from kplus_fsm import SQLiteStore, Tracker

    if not existing:
        with Tracker(path, synchronous="OFF") as tracker:
            for step in warmup:
                apply_step(tracker, step)
    with Tracker(path, synchronous="FULL") as tracker:
        store = tracker.store
        assert isinstance(store, SQLiteStore)
        conn = store.conn
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        _mark()
        for step in measured:
            apply_step(tracker, step)
        commits = read_commits(Path(f"{path}-wal"), page_size)
        names = page_names(path)
    return attribute(commits, names, len(measured))


def run_peer(path: Path, warmup: Iterable[Step], measured: list[Step]) -> dict[str, Any]:
    """The peer: one ``save()`` per input at ``FULL`` (tests/benchmarks/_peer.py)."""
    from _peer import PeerWriter, _pool_connections, open_app

    def each_connection(app: Any, sql: str) -> None:
        pool, idle = _pool_connections(app)
        for conn in idle:
            conn._sqlite_conn.execute(sql)
        create = pool._create_connection

        def create_with(create: Callable[[], Any] = create) -> Any:
            conn = create()
            conn._sqlite_conn.execute(sql)
            return conn

        pool._create_connection = create_with

    app = open_app(path, "OFF")
    writer = PeerWriter(app)
    for step in warmup:
        writer.write(step)
    app.close()
    app = open_app(path, "FULL")
    writer = PeerWriter(app)
    writer.aggregates = {}
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = int(raw.execute("PRAGMA page_size").fetchone()[0])
    raw.close()
    each_connection(app, "PRAGMA wal_autocheckpoint = 0")
    _mark()
    for step in measured:
        writer.write(step)
    commits = read_commits(Path(f"{path}-wal"), page_size)
    names = page_names(path)
    app.close()
    return attribute(commits, names, len(measured))


def count_pwrites(argv: list[str]) -> int:
    """Re-run this script under strace; the ``pwrite64`` calls after the mark."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "strace.log"
        subprocess.run(
            [
                *("strace", "-f", "-e", "trace=pwrite64,write", "-o", str(log)),
                *(sys.executable, __file__, *argv),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        after = log.read_text(errors="replace").split("kplus-fsm-wal-frames-measure", 1)
        if len(after) != 2:
            raise RuntimeError("the strace log has no mark")
        return sum(1 for line in after[1].splitlines() if "pwrite64(" in line)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=("ours", "peer", "both"), default="both")
    parser.add_argument("--warmup", type=int, default=2000, help="payments before measuring")
    parser.add_argument("--payments", type=int, default=250, help="measured payments")
    parser.add_argument("--db", type=Path, help="measure on this (copied!) log of ours")
    parser.add_argument("--strace", action="store_true", help="also count pwrite64 calls")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    quiet_logging()
    warmup_payments = 0 if args.db else args.warmup
    # Fresh payment numbers for the measured inputs (a big log uses its own ids).
    measured = list(iter_steps(args.payments, start=warmup_payments, prefix="walframes"))
    out: dict[str, Any] = {"warmup_payments": warmup_payments, "measured_inputs": len(measured)}
    sides = ("ours", "peer") if args.side == "both" else (args.side,)
    for side in sides:
        with tempfile.TemporaryDirectory() as tmp:
            warmup = iter_steps(warmup_payments, prefix="walframes")
            if side == "ours":
                path = args.db if args.db else Path(tmp) / "ours.db"
                out[side] = run_ours(path, warmup, measured, existing=args.db is not None)
            else:
                out[side] = run_peer(Path(tmp) / "peer.db", warmup, measured)
        if args.strace and not args.db:
            child = [
                "--side",
                side,
                "--warmup",
                str(args.warmup),
                "--payments",
                str(args.payments),
            ]
            pwrites = count_pwrites(child)
            out[side]["pwrite"] = pwrites
            out[side]["pwrite_per_input"] = round(pwrites / len(measured), 2)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for side in sides:
            res = cast(dict[str, Any], out[side])
            print(f"{side}: {res['frames_per_input']} frames per input", end="")
            if "pwrite_per_input" in res:
                print(f", {res['pwrite_per_input']} pwrite64 per input", end="")
            print(f" ({res['commits']} commits for {res['inputs']} inputs)")
            for name, per in res["by_btree_per_input"].items():
                print(f"    {per:6.2f}  {name}")
    return out


if __name__ == "__main__":
    main()
