"""
The PostgreSQL benchmark scripts run and report every figure: the scaling
harness (tests/benchmarks/pg_scaling.py, docs/scaling.md) and the PostgreSQL
figures of the benchmark (tests/benchmarks/postgres.py), on a throwaway cluster
(``--postgres auto``), at their smallest sizes (hidden ``--smoke``). Speed is
not asserted: the figures are only checked to be there and to make sense.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pg import _bin_dir

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "tests" / "benchmarks"

pytest.importorskip("psycopg", reason="psycopg is not installed")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_bin_dir() is None, reason="no PostgreSQL server binaries"),
]


def _run(script: str, *args: str) -> tuple[list[str], dict[str, Any]]:
    """Run a benchmark script; its output lines before the JSON, and the JSON."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--postgres", "auto", "--smoke", "--json", *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return lines[:-1], json.loads(lines[-1])


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_scaling_harness_reports_every_figure(tmp_path: Path) -> None:
    """1 and 2 processes of our side, sampled once: figures, diagnosis, table, plot."""
    svg = tmp_path / "plot.svg"
    text, out = _run(
        "pg_scaling.py", "--processes", "1,2", "--no-peer", "--no-own-flush", "--svg", str(svg)
    )
    assert out["kind"] == "pg_scaling"
    assert out["mode"] == "smoke"
    assert "peer" not in out
    assert "ours_own_flush" not in out
    rows = out["ours"]
    assert [r["processes"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("inputs_per_s", "p50_ms", "p99_ms", "client_cpu_ms_per_input"):
            assert _positive(row[key]), (key, row)
        assert row["inputs"] == 8 * row["processes"]  # two payments of four inputs each
        assert len(row["per_process_per_s"]) == row["processes"]
        assert row["transactions_per_input"] > 0
    assert rows[0]["ratio_to_1"] == 1.0
    probe = out["probe"]
    assert _positive(probe["rtt_ms"])
    assert _positive(probe["commit_sync_ms"])
    sampled = out["diagnoses"]["ours"]
    assert sampled["processes"] == 2
    assert 0.0 <= sampled["diagnosis"]["lock_held_fraction"] <= 1.0
    assert sampled["diagnosis"]["error"] is None
    assert out["summary"]["ours_ceiling_per_s"] == max(r["inputs_per_s"] for r in rows)
    assert any(line.startswith("ours ") for line in text)
    assert any(line.startswith("diagnosis ours") for line in text)
    body = svg.read_text()
    assert body.startswith("<svg")
    assert "kplus_fsm (PostgresStore)" in body
    assert "target 1,000/s" in body


def test_postgres_figures_name_both_ratio_keys() -> None:
    """The issue's two keys: one producer, and 8 processes on one log, against the peer."""
    _text, out = _run("postgres.py")
    for key in (
        "ratio_pg_append_vs_eventsourcing",
        "ratio_pg_concurrent_vs_eventsourcing",
        "pg_append_per_s",
        "pg_concurrent_per_s",
        "eventsourcing_pg_append_per_s",
        "eventsourcing_pg_concurrent_per_s",
    ):
        assert _positive(out[key]), (key, out.get(key))
    assert out["ratio_pg_concurrent_vs_eventsourcing"] == round(
        out["pg_concurrent_per_s"] / out["eventsourcing_pg_concurrent_per_s"], 2
    )
