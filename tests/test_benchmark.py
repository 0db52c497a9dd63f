"""The performance benchmark (tests/benchmarks/run.py) runs and reports every figure."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "tests" / "benchmarks" / "run.py"

REQUIRED = (
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


@pytest.mark.slow
def test_smoke_run_reports_every_figure(tmp_path: Path) -> None:
    """The smallest sizes (hidden ``--smoke``): the last stdout line is the JSON report."""
    proc = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--json", "--no-cache", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    for key in (
        *REQUIRED,
        "append_full_per_s",
        "concurrent_per_s",
        "import_per_s",
        "webhook_intake_per_s",
        "serve_deliveries_per_s",
        "serve_p99_ms",
        "replay_per_s",
        "show_median_ms",
        "show_p99_ms",
        "show_cli_process_median_ms",
        "python_process_median_ms",
    ):
        value = report.get(key)
        assert isinstance(value, int | float), (key, value)
        assert math.isfinite(value), (key, value)
        assert value > 0, (key, value)
    assert report["smoke"] is True
    assert report["quick"] is False
    # The table came first, with one line per figure.
    text = "\n".join(lines[:-1])
    figures = ("1 append", "2 8 producers", "3 import", "4 webhook", "4b serve", "5 replay")
    for figure in (*figures, "6 show"):
        assert figure in text
