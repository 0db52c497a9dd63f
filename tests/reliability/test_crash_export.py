"""
Crash safety of the files the CLI writes: ``kplus-fsm export --output`` and
``kplus-fsm checkpoint --output`` run as real processes and are killed with
SIGKILL at random moments, again and again.

After every kill, the file under the final name is either the previous file,
byte for byte, or a complete new one: for the export, exactly the bytes a run
that was not killed writes (ending with its trailer); for the checkpoint, a
checkpoint of the log that ``verify --checkpoint`` accepts. A kill may leave a
temporary file (``.NAME.XXXXXXXX.tmp``) beside it, never anything under the
final name.

The export kills are aimed at the writing itself: the test waits until the
temporary file appears, then kills after a random share of a full write's
duration (some before the rename, some after). The checkpoint kills land at a
random moment of the whole run (most while it verifies, some around the
write).
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_support import figure, quiet_structlog, seed_for

from kplus_fsm import Origin, Tracker
from kplus_fsm.testing import FakeClock, charge_json

pytestmark = pytest.mark.slow

EXPORT_KILLS = 6
CHECKPOINT_KILLS = 5
PAYMENTS = 1500
CLI = [sys.executable, "-m", "kplus_fsm"]


def _build(path: Path) -> None:
    clock = FakeClock("2026-03-01T10:00:00+00:00")
    with quiet_structlog(), Tracker(path, clock=clock, synchronous="OFF") as tracker:
        for i in range(PAYMENTS):
            pid = f"order-{i}"
            tracker.request_payment(payment_id=pid, amount=5000, return_uri="https://s.ex/r")
            clock.advance(seconds=1)
            charge = charge_json(payment_id=pid, charge_id=f"chrg_test_{i}", amount=5000)
            tracker.record_charge(charge, origin=Origin.CREATE_RESPONSE)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crash-export") / "kplus.db"
    _build(path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _temps(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f".{name}.*.tmp"))


def _run(args: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, check=False)
    return time.monotonic() - started, done


def _start_export(log: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, "export", "--db", str(log), "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for_temp(proc: subprocess.Popen[bytes], directory: Path, name: str) -> float:
    """When the export's temporary file appeared (it starts writing)."""
    deadline = time.monotonic() + 60
    while not _temps(directory, name):
        assert proc.poll() is None, "the export ended before its temporary file was seen"
        assert time.monotonic() < deadline, "the export never started writing"
        time.sleep(0.0005)
    return time.monotonic()


def test_export_killed_while_writing(log: Path, tmp_path: Path) -> None:
    """Killed at random points of the write: the previous export or the complete new one."""
    rng = random.Random(seed_for("test_export_killed_while_writing"))
    out = tmp_path / "audit.jsonl"
    previous = b'{"table":"inbox","id":1}\n{"table":"trailer","complete":true}\n'
    # The bytes a run that is not killed writes, and how long its write takes.
    proc = _start_export(log, out)
    started = _wait_for_temp(proc, tmp_path, out.name)
    assert proc.wait() == 0
    writing = time.monotonic() - started
    expected = _sha(out)
    lines = out.read_text(encoding="utf-8").splitlines()
    trailer = json.loads(lines[-1])
    assert trailer["complete"] is True
    assert trailer["inbox_rows"] + trailer["events"] == len(lines) - 1
    outcomes = {"previous": 0, "new": 0}
    for _ in range(EXPORT_KILLS):
        out.write_bytes(previous)
        for stale in _temps(tmp_path, out.name):
            stale.unlink()
        proc = _start_export(log, out)
        _wait_for_temp(proc, tmp_path, out.name)
        time.sleep(rng.uniform(0, 1.2 * writing))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = _sha(out)
        assert now in (hashlib.sha256(previous).hexdigest(), expected)
        outcomes["previous" if out.read_bytes() == previous else "new"] += 1
        if now != expected:
            assert out.read_bytes() == previous  # the previous file, byte for byte
    figure("test_export_killed_while_writing", "kills", EXPORT_KILLS)
    figure("test_export_killed_while_writing", "write seconds", round(writing, 3))
    figure("test_export_killed_while_writing", "outcomes", outcomes)
    assert outcomes["previous"] > 0  # some kills did land while writing


def test_checkpoint_killed_at_random(log: Path, tmp_path: Path) -> None:
    """Killed anywhere in its run: the previous checkpoint or a complete new one."""
    rng = random.Random(seed_for("test_checkpoint_killed_at_random"))
    out = tmp_path / "checkpoint.json"
    elapsed, done = _run(["checkpoint", "--db", str(log), "--output", str(out), "--json"])
    assert done.returncode == 0, done.stderr
    reference = json.loads(out.read_text(encoding="utf-8"))
    previous = b'{"previous": "checkpoint"}\n'
    outcomes = {"previous": 0, "new": 0}
    for _ in range(CHECKPOINT_KILLS):
        out.write_bytes(previous)
        for stale in _temps(tmp_path, out.name):
            stale.unlink()
        proc = subprocess.Popen(
            [*CLI, "checkpoint", "--db", str(log), "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.3 * elapsed, 1.5 * elapsed))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.read_bytes() == previous:
            outcomes["previous"] += 1
            continue
        outcomes["new"] += 1
        written = json.loads(out.read_text(encoding="utf-8"))  # complete: it parses
        assert {k: v for k, v in written.items() if k != "created_at"} == {
            k: v for k, v in reference.items() if k != "created_at"
        }
        _, check = _run(["verify", "--db", str(log), "--checkpoint", str(out)])
        assert check.returncode == 0, check.stdout + check.stderr
    figure("test_checkpoint_killed_at_random", "kills", CHECKPOINT_KILLS)
    figure("test_checkpoint_killed_at_random", "outcomes", outcomes)
