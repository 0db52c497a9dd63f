"""
Measure the on-call commands on a log built by build_log.py. Not a test; the
test suite runs it on a tiny log to keep it working.

    python tests/scale/measure.py --db /tmp/kplus-1m.db [--repeat 200] [--json]

- ``show`` and ``list --stuck`` latency: the click command run in process (the
  same code path as the console script, minus interpreter start-up), repeated
  over random payments; median and p99. Also the wall time of the whole
  ``python -m kplus_fsm show`` process, start-up included.
- ``verify``, ``replay --check``, ``export`` (JSON lines and CSV) and
  ``checkpoint``: each in a fresh child process, its throughput and its peak
  resident memory (``ru_maxrss``), next to the peak of a child that only
  imports kplus_fsm and opens the log (the baseline).

Every command opens the log read-only; the file is not changed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

HEAVY = {
    "verify": ["verify"],
    "replay_check": ["replay", "--check"],
    "export": ["export"],
    "export_csv": ["export", "--format", "csv"],
    "checkpoint": ["checkpoint", "--json"],
}


class Sink:
    """A text stream that counts what is written to it and keeps nothing."""

    def __init__(self) -> None:
        self.chars = 0

    def write(self, text: str) -> int:
        self.chars += len(text)
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError("no file descriptor")


def _peak_mib() -> float:
    """
    This process's peak resident set size, in MiB: ``VmHWM`` on Linux (reset by
    :func:`_reset_peak`), else ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    hwm = _status_mib("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _status_mib(key: str) -> float | None:
    """A ``VmXxx`` line of /proc/self/status, in MiB (``None`` off Linux)."""
    try:
        text = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return None


def _reset_peak() -> None:
    """Forget the peak so far (the imports'), so that the peak measured is the command's."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")


def child(name: str, db: str) -> None:
    """Run one command in this (fresh) process and print its figures as JSON on stderr."""
    import logging

    import structlog

    from kplus_fsm import SQLiteStore
    from kplus_fsm.cli import cli

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    sink = Sink()
    _reset_peak()
    before = _status_mib("VmRSS")
    start = time.perf_counter()
    code: int | str | None = 0
    if name == "baseline":
        with SQLiteStore(db, read_only=True) as store:
            store.head()
    else:
        real = sys.stdout
        sys.stdout = sink
        try:
            cli([*HEAVY[name], "--db", db], prog_name="kplus-fsm", standalone_mode=False)
        except SystemExit as exc:
            code = exc.code
        finally:
            sys.stdout = real
    elapsed = time.perf_counter() - start
    out = {
        "seconds": elapsed,
        "peak_rss_mib": _peak_mib(),
        "start_rss_mib": before,
        "exit": code,
        "chars": sink.chars,
    }
    print(json.dumps(out), file=sys.stderr)


def _run_child(name: str, db: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", name, "--db", str(db)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed: {proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stderr.strip().splitlines()[-1])
    if result["exit"] not in (0, None):
        raise SystemExit(f"{name} exited {result['exit']}")
    return result


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _latency(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[max(0, min(len(ordered) - 1, round(0.99 * len(ordered)) - 1))]
    return {
        "calls": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def measure(db: Path, *, repeat: int, seed: int = 7) -> dict[str, Any]:
    """Every figure, as a JSON-ready dict."""
    import logging

    import structlog

    from kplus_fsm import SQLiteStore
    from kplus_fsm.cli import cli

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    before = _sha256(db)
    with SQLiteStore(db, read_only=True) as store:
        counts = store.counts()
        ids = [
            (str(r[0]), r[1])
            for r in store.query(
                "SELECT payment_id, charge_id FROM payments ORDER BY random() LIMIT ?", [repeat]
            )
        ]
    rng = random.Random(seed)
    runner = CliRunner()

    def timed(args: list[str]) -> float:
        start = time.perf_counter()
        res = runner.invoke(cli, args)
        elapsed = time.perf_counter() - start
        if res.exit_code != 0:
            raise SystemExit(f"{args} exited {res.exit_code}: {res.output}")
        return elapsed

    figures: dict[str, Any] = {
        "db": str(db),
        "db_mib": round(db.stat().st_size / 2**20, 1),
        **counts,
    }
    timed(["show", ids[0][0], "--db", str(db)])  # warm the page cache once
    show: list[float] = []
    show_json: list[float] = []
    by_charge: list[float] = []
    for i in range(repeat):
        pid, cid = ids[i % len(ids)]
        show.append(timed(["show", pid, "--db", str(db)]))
        show_json.append(timed(["show", pid, "--db", str(db), "--json"]))
        if cid:
            by_charge.append(timed(["show", cid, "--db", str(db)]))
    figures["show"] = _latency(show)
    figures["show_json"] = _latency(show_json)
    figures["show_by_charge_id"] = _latency(by_charge or show)
    stuck = [timed(["list", "--stuck", "--db", str(db)]) for _ in range(max(3, repeat // 4))]
    figures["list_stuck"] = _latency(stuck)
    stuck_json = [
        timed(["list", "--stuck", "--json", "--db", str(db)]) for _ in range(max(3, repeat // 4))
    ]
    figures["list_stuck_json"] = _latency(stuck_json)
    figures["anomalies"] = _latency(
        [timed(["anomalies", "--since", "-3650d", "--db", str(db)]) for _ in range(5)]
    )
    figures["stats"] = _latency([timed(["stats", "--db", str(db)]) for _ in range(3)])
    processes = []
    for _ in range(5):
        pid = rng.choice(ids)[0]
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "kplus_fsm", "show", pid, "--db", str(db)],
            capture_output=True,
            check=True,
        )
        processes.append(time.perf_counter() - start)
    figures["show_process"] = _latency(processes)
    base = _run_child("baseline", db)
    figures["baseline_peak_rss_mib"] = round(base["peak_rss_mib"], 1)
    if base["start_rss_mib"] is not None:
        figures["baseline_start_rss_mib"] = round(base["start_rss_mib"], 1)
    rows = counts["inbox"] + counts["events"]
    for name in HEAVY:
        r = _run_child(name, db)
        unit = counts["events"] if name == "replay_check" else rows
        entry = {
            "seconds": round(r["seconds"], 2),
            "rows_per_s": round(unit / r["seconds"]) if r["seconds"] else None,
            "peak_rss_mib": round(r["peak_rss_mib"], 1),
        }
        if r["start_rss_mib"] is not None:
            entry["growth_mib"] = round(r["peak_rss_mib"] - r["start_rss_mib"], 1)
        if name.startswith("export"):
            entry["mib_per_s"] = round(r["chars"] / 2**20 / r["seconds"], 1)
        figures[name] = entry
    figures["file_unchanged"] = _sha256(db) == before
    return figures


def _report(f: dict[str, Any]) -> str:
    lines = [
        f"log: {f['db']} ({f['db_mib']:,} MiB): {f['events']:,} events, "
        f"{f['inbox']:,} inputs, {f['payments']:,} payments",
        "",
        "| command | calls | median | p99 | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in (
        ("show", "`show ID`"),
        ("show_json", "`show ID --json`"),
        ("show_by_charge_id", "`show CHARGE_ID`"),
        ("list_stuck", "`list --stuck`"),
        ("list_stuck_json", "`list --stuck --json`"),
        ("anomalies", "`anomalies` (whole log)"),
        ("stats", "`stats` (whole log)"),
        ("show_process", "`python -m kplus_fsm show ID` (whole process)"),
    ):
        v = f[key]
        lines.append(
            f"| {label} | {v['calls']} | {v['median_ms']} ms | {v['p99_ms']} ms "
            f"| {v['max_ms']} ms |"
        )
    lines += [
        "",
        "| command | time | throughput | peak RSS | growth while running |",
        "|---|---:|---:|---:|---:|",
        f"| (baseline: import, open the log) | | | {f['baseline_peak_rss_mib']} MiB | |",
    ]
    for key, label, unit in (
        ("verify", "`verify`", "rows/s"),
        ("replay_check", "`replay --check`", "events/s"),
        ("export", "`export` (JSON lines)", "rows/s"),
        ("export_csv", "`export --format csv`", "rows/s"),
        ("checkpoint", "`checkpoint` (verifies first)", "rows/s"),
    ):
        v = f[key]
        extra = f", {v['mib_per_s']} MiB/s" if "mib_per_s" in v else ""
        growth = f"{v['growth_mib']} MiB" if "growth_mib" in v else "-"
        lines.append(
            f"| {label} | {v['seconds']} s | {v['rows_per_s']:,} {unit}{extra} | "
            f"{v['peak_rss_mib']} MiB | {growth} |"
        )
    lines.append("")
    lines.append(f"database file unchanged: {f['file_unchanged']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """The command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--db", type=Path, help="the log to measure")
    parser.add_argument(
        "--report", type=Path, default=None, help="print the tables of a saved --json run"
    )
    parser.add_argument("--repeat", type=int, default=200, help="show calls to time")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.report is not None:
        print(_report(json.loads(args.report.read_text(encoding="utf-8"))))
        return
    if args.db is None:
        parser.error("--db is required")
    if args.child is not None:
        child(args.child, str(args.db))
        return
    if not args.db.exists():
        parser.error(f"no database at {args.db}")
    os.environ.pop("KPLUS_FSM_DB", None)
    figures = measure(args.db, repeat=args.repeat)
    print(json.dumps(figures, indent=2) if args.json else _report(figures))
    if not figures["file_unchanged"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
