"""
Start fast (issue 16): the reading commands import only what reading a log
needs. Each command runs in a fresh interpreter, as the ``kplus-fsm`` script
runs it, and then the names in ``sys.modules`` are read: no timing here (the
benchmark measures the time, ``cli_show_vs_python_ratio`` in
tests/benchmarks/run.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kplus_fsm import Origin, Tracker
from kplus_fsm.testing import FakeClock, charge_json, webhook_json

#: What a reading command has no use for: the HTTP client and the adapters, the
#: server (uvicorn, h11, prometheus_client), the PostgreSQL driver, the
#: background jobs, structlog (nothing is logged: it is imported on the first
#: line, kplus_fsm._logging) and asyncio, the package metadata (--version),
#: sqlite-utils (migrations only: a log being read is not migrated) and the
#: PostgreSQL store.
HEAVY = (
    "httpx",
    "httpcore",
    "anyio",
    "h11",
    "uvicorn",
    "prometheus_client",
    "psycopg",
    "psycopg_binary",
    "psycopg_pool",
    "structlog",
    "asyncio",
    "importlib.metadata",
    "kplus_fsm.adapters",
    "kplus_fsm._server.app",
    "kplus_fsm._server.run",
    "kplus_fsm._server.http",
    "kplus_fsm._server.metrics",
    "kplus_fsm._followup",
    "sqlite_utils",
    "kplus_fsm._store.postgres",
)

#: Runs ``kplus-fsm ARGS`` (argv[1], JSON) as the console script does, then
#: writes the exit code and the imported module names to argv[2].
_RUNNER = """
import json, sys
args, out = json.loads(sys.argv[1]), sys.argv[2]
from kplus_fsm.cli import main
sys.argv = ["kplus-fsm", *args]
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
with open(out, "w", encoding="utf-8") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def imported_by(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> set[str]:
    """The modules a ``kplus-fsm`` process running ``args`` has imported when it ends."""
    out = tmp_path / "modules.json"
    subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps(args), str(out)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    found = json.loads(out.read_text(encoding="utf-8"))
    assert found["code"] in (0, None), (args, found["code"])
    return set(found["modules"])


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A paid payment (webhook and all) and a pending one."""
    path = tmp_path_factory.mktemp("startup") / "kplus.db"
    clock = FakeClock("2026-03-01T10:00:00+00:00")
    with Tracker(path, clock=clock) as t:
        t.request_payment(payment_id="order-1", amount=10_000, return_uri="https://s.example/r")
        t.record_charge(
            charge_json(payment_id="order-1", charge_id="chrg_test_one"),
            origin=Origin.CREATE_RESPONSE,
        )
        hook = webhook_json(
            charge_json(payment_id="order-1", charge_id="chrg_test_one", status="successful"),
            event_id="evnt_test_one",
        )
        t.record_webhook(hook)
        t.request_payment(payment_id="order-2", amount=5_000, return_uri="https://s.example/r")
    return path


READING = [
    ["show", "order-1"],
    ["show", "chrg_test_one", "--json"],
    ["show", "order-1", "--as-of", "2026-03-01T10:00:00Z"],
    ["list"],
    ["list", "--stuck", "--json"],
    ["anomalies", "--json"],
    ["stats"],
    ["export"],
    ["export", "--format", "csv", "--output", "audit.csv"],
    ["checkpoint", "--json"],
    ["verify"],
    ["verify", "--json"],
    ["replay", "--check"],
    ["--help"],
    ["show", "--help"],
]


@pytest.mark.parametrize("args", READING, ids=[" ".join(a) for a in READING])
def test_a_reading_command_imports_nothing_heavy(
    args: list[str], log: Path, tmp_path: Path
) -> None:
    """show, list, verify and the other reading commands load none of HEAVY."""
    modules = imported_by([*args, "--db", str(log)] if args[-1] != "--help" else args, tmp_path)
    assert "kplus_fsm.cli.incident" in modules  # the command did run through the CLI
    assert heavy(modules) == []


def test_the_check_sees_what_a_command_imports(log: Path, tmp_path: Path) -> None:
    """
    The other side (the check can fail): a command that needs the HTTP client,
    the adapters and structlog imports them when it runs: pay with a key, against
    an API that refuses the connection (its outcome is then unknown: exit 5).
    """
    out = tmp_path / "modules.json"
    env = {
        **os.environ,
        "OMISE_SECRET_KEY": "skey_test_startup0000000000000",
        "OMISE_API_URL": "http://127.0.0.1:9",
    }
    args = ["pay", "--order-ref", "o-1", "--amount", "35000", "--return-uri", "https://s/r"]
    subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps([*args, "--db", "pay.db"]), str(out)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    found = json.loads(out.read_text(encoding="utf-8"))
    assert found["code"] not in (0, None)  # the API is down
    modules = set(found["modules"])
    assert {"httpx", "kplus_fsm.adapters.omise", "structlog"} <= modules
    assert heavy(modules)


def test_import_kplus_fsm_is_light(tmp_path: Path) -> None:
    """The package itself imports none of HEAVY; its lazy names still resolve."""
    code = (
        "import json, sys, kplus_fsm; before = sorted(sys.modules);"
        "names = [getattr(kplus_fsm, n) for n in kplus_fsm.__all__];"
        "print(json.dumps([before, kplus_fsm.__version__, kplus_fsm.Worker.__module__]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    before, version, worker = json.loads(done.stdout)
    assert heavy(set(before)) == []
    assert version.count(".") >= 2
    assert worker == "kplus_fsm._followup"
