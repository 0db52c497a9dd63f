"""
The chain simulation (tests/benchmarks/chain_simulation.py, docs/scaling.md):
deterministic, and it agrees with the arithmetic where the arithmetic is
exact (one receiver; a saturated lock; cores as the limit).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))

import chain_simulation as sim

BASE = sim.Params(
    rtt_ms=0.25, flush_ms=1.5, cpu_outside_ms=2.0, cpu_locked_ms=1.0, cores=64, partitions=1
)


def test_the_same_parameters_give_the_same_figures() -> None:
    params = replace(BASE, cores=2, partitions=4)
    assert sim.simulate(params, 8, seconds=1.0) == sim.simulate(params, 8, seconds=1.0)


@pytest.mark.parametrize("shared", [True, False])
def test_one_receiver_takes_the_sum_of_its_steps(shared: bool) -> None:
    p = replace(BASE, shared_flush=shared)
    steps = p.cpu_outside_ms + 2 * p.rtt_ms + p.cpu_locked_ms + p.flush_ms
    if shared:
        steps += p.rtt_ms  # the confirming transaction after the lock
    got = sim.simulate(p, 1, seconds=2.0)["inputs_per_s"]
    assert got == pytest.approx(1000 / steps, rel=0.01)


@pytest.mark.parametrize("shared", [True, False])
def test_one_chain_saturates_at_one_over_the_lock_hold(shared: bool) -> None:
    p = replace(BASE, shared_flush=shared)
    hold = 2 * p.rtt_ms + p.cpu_locked_ms + (0.0 if shared else p.flush_ms)
    out = sim.simulate(p, 64, seconds=2.0)
    assert out["inputs_per_s"] == pytest.approx(1000 / hold, rel=0.02)
    assert out["busiest_lock_held_fraction"] > 0.98


def test_partitions_lift_the_lock_ceiling_until_the_cores_bind() -> None:
    one = sim.simulate(BASE, 64, seconds=1.0)["inputs_per_s"]
    sixteen = sim.simulate(replace(BASE, partitions=16), 64, seconds=1.0)
    assert sixteen["inputs_per_s"] > 5 * one
    # Two cores: CPU per input (3 ms) bounds any number of chains at 2 / 3 ms.
    two_cores = sim.simulate(replace(BASE, partitions=16, cores=2), 64, seconds=1.0)
    cpu = BASE.cpu_outside_ms + BASE.cpu_locked_ms
    assert two_cores["inputs_per_s"] <= 2 * 1000 / cpu * 1.01
    assert two_cores["cores_busy_fraction"] > 0.95


def test_a_batch_spends_its_round_trips_once() -> None:
    p = replace(BASE, batch=4)
    hold = 2 * p.rtt_ms + 4 * p.cpu_locked_ms
    out = sim.simulate(p, 64, seconds=2.0)
    assert out["inputs_per_s"] == pytest.approx(4 * 1000 / hold, rel=0.02)


def test_the_shared_flush_is_shared() -> None:
    out = sim.simulate(replace(BASE, partitions=16), 32, seconds=1.0)
    assert out["wal_flushes_per_input"] < 0.5


def test_calibration_reads_the_harness_output(tmp_path: Path) -> None:
    scaling = {
        "machine": {"cpus": 2},
        "probe": {"rtt_ms": 0.2, "flush_ms": 1.8},
        "lock_probe": {"client_cpu_ms": 3.0, "client_cpu_locked_ms": 0.5, "lock_hold_ms": 0.7},
        "lock_probe_threads": {
            "client_cpu_ms": 2.0,
            "client_cpu_locked_ms": 1.2,
            "lock_hold_ms": 2.6,
            "inputs_per_commit": 3.9,
        },
        "ours": [{"processes": 1, "inputs_per_s": 200.0, "server_cpu_ms_per_input": 1.0}],
    }
    params = sim.params_from_scaling(scaling)
    assert params == sim.Params(
        rtt_ms=0.2, flush_ms=1.8, cpu_outside_ms=2.5, cpu_locked_ms=1.5, cores=2
    )
    batched = sim.params_from_scaling(scaling, batched=True)
    assert batched == sim.Params(
        rtt_ms=0.2, flush_ms=1.8, cpu_outside_ms=1.7, cpu_locked_ms=1.6, cores=2, batch=4
    )
    source = tmp_path / "scaling.json"
    source.write_text("table line\n" + json.dumps(scaling) + "\n")
    svg = tmp_path / "sim.svg"
    out = sim.main(
        [
            "--from-json",
            str(source),
            "--processes",
            "1,4",
            "--partitions",
            "1,2",
            "--cores",
            "2",
            "--seconds",
            "0.5",
            "--svg",
            str(svg),
        ]
    )
    assert len(out["rows"]) == 4
    assert out["params"]["rtt_ms"] == 0.2
    assert "measured, 2 cores, 1 chain" in svg.read_text()
