"""The ``kplus-fsm`` command line, against logs built by the tracker."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner

from kplus_fsm import Origin, Tracker
from kplus_fsm.cli import cli
from kplus_fsm.testing import FakeClock, charge_json, webhook_json


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """The CLI configures structlog as the host; undo it for the other tests."""
    yield
    structlog.reset_defaults()


def _pid(output: str, name: str) -> str:
    """The payment id of a demo scenario, read from the demo's output."""
    for line in output.splitlines():
        if line.startswith("== demo-") and f"-{name}:" in line:
            return line[3:].split(":")[0]
    raise AssertionError(f"no {name} scenario in the output")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """A small log: one paid payment (with a duplicate webhook), one still pending."""
    path = tmp_path / "kplus.db"
    clock = FakeClock("2026-03-01T10:00:00+00:00")
    with Tracker(path, clock=clock) as t:
        t.request_payment(payment_id="order-1", amount=10_000, return_uri="https://s.example/r")
        clock.advance(seconds=5)
        t.record_charge(
            charge_json(payment_id="order-1", charge_id="chrg_test_one"),
            origin=Origin.CREATE_RESPONSE,
        )
        clock.advance(minutes=1)
        hook = webhook_json(
            charge_json(payment_id="order-1", charge_id="chrg_test_one", status="successful"),
            event_id="evnt_test_one",
        )
        t.record_webhook(hook)
        t.record_webhook(hook)
        t.request_payment(payment_id="order-2", amount=5_000, return_uri="https://s.example/r")
    return path


class TestShow:
    """`show` prints a payment and its timeline, read-only."""

    def test_json_has_the_contract_keys(self, log: Path) -> None:
        """--json prints payment_id, charge_id, status, amount, currency, failure_code, timeline."""
        res = CliRunner().invoke(cli, ["show", "order-1", "--db", str(log), "--json"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        assert out["payment_id"] == "order-1"
        assert out["charge_id"] == "chrg_test_one"
        assert out["status"] == "successful"
        assert (out["amount"], out["currency"], out["failure_code"]) == (10_000, "THB", None)
        inputs = [e for e in out["timeline"] if e["type"] == "input"]
        assert [e["outcome"] for e in inputs] == ["applied", "applied", "applied", "duplicate"]
        events = [e["kind"] for e in out["timeline"] if e["type"] == "event"]
        assert events == [
            "payment.requested",
            "charge.pending",
            "webhook.accepted",
            "charge.successful",
        ]

    def test_by_charge_id(self, log: Path) -> None:
        """A charge id finds its payment."""
        res = CliRunner().invoke(cli, ["show", "chrg_test_one", "--db", str(log), "--json"])
        assert json.loads(res.output)["payment_id"] == "order-1"

    def test_as_of_before_the_transition(self, log: Path) -> None:
        """--as-of shows the state as it stood then."""
        res = CliRunner().invoke(
            cli, ["show", "order-1", "--db", str(log), "--json", "--as-of", "2026-03-01T10:00:30Z"]
        )
        out = json.loads(res.output)
        assert out["status"] == "pending"
        assert len([e for e in out["timeline"] if e["type"] == "input"]) == 2

    def test_people_output_and_read_only(self, log: Path) -> None:
        """The table output names the state and outcomes; the file is unchanged."""
        before = _digest(log)
        res = CliRunner().invoke(cli, ["show", "order-1", "--db", str(log)])
        assert res.exit_code == 0
        assert "order-1: SUCCESSFUL" in res.output
        assert "duplicate" in res.output
        assert _digest(log) == before

    def test_missing_payment_exits_3(self, log: Path) -> None:
        """An unknown id exits 3 with a message, no traceback."""
        res = CliRunner().invoke(cli, ["show", "nope", "--db", str(log)])
        assert res.exit_code == 3
        assert "no payment" in res.output
        assert "Traceback" not in res.output

    def test_missing_database_exits_4(self, tmp_path: Path) -> None:
        """A missing database exits 4 and is not created."""
        res = CliRunner().invoke(cli, ["show", "x", "--db", str(tmp_path / "none.db")])
        assert res.exit_code == 4
        assert not (tmp_path / "none.db").exists()

    def test_db_from_environment(self, log: Path) -> None:
        """--db defaults to $KPLUS_FSM_DB."""
        res = CliRunner().invoke(cli, ["show", "order-2", "--json"], env={"KPLUS_FSM_DB": str(log)})
        assert json.loads(res.output)["status"] == "created"


class TestVerifyAndReplay:
    """`verify` and `replay` check the log and report problems with exit 1."""

    def test_verify_ok(self, log: Path) -> None:
        """A tracker-built log verifies."""
        before = _digest(log)
        res = CliRunner().invoke(cli, ["verify", "--db", str(log), "--json"])
        assert res.exit_code == 0
        out = json.loads(res.output)
        assert out["ok"] is True
        assert (out["inbox_rows"], out["events"]) == (5, 5)
        assert _digest(log) == before

    def test_verify_names_the_tampered_row(self, log: Path, tmp_path: Path) -> None:
        """An edited copy fails verify, naming the table and row."""
        bad = tmp_path / "tampered.db"
        shutil.copy(log, bad)
        conn = sqlite3.connect(bad)
        conn.execute("DROP TRIGGER events_no_update")
        conn.execute(
            "UPDATE events SET data = replace(data, 'successful', 'failed') WHERE position = 4"
        )
        conn.execute(
            "CREATE TRIGGER events_no_update BEFORE UPDATE ON events "
            "BEGIN SELECT RAISE(ABORT, 'events is append-only: UPDATE refused'); END"
        )
        conn.commit()
        conn.close()
        res = CliRunner().invoke(cli, ["verify", "--db", str(bad)])
        assert res.exit_code == 1
        assert "events row 4 does not match the hash chain" in res.output

    def test_replay_check_lists_differences(self, log: Path, tmp_path: Path) -> None:
        """replay --check exits 1 listing each difference; replay repairs it."""
        bad = tmp_path / "drift.db"
        shutil.copy(log, bad)
        conn = sqlite3.connect(bad)
        conn.execute("UPDATE payments SET status = 'failed' WHERE payment_id = 'order-1'")
        conn.commit()
        conn.close()
        before = _digest(bad)
        res = CliRunner().invoke(cli, ["replay", "--check", "--db", str(bad), "--json"])
        assert res.exit_code == 1
        diffs = json.loads(res.output)["differences"]
        assert diffs == [
            {
                "payment_id": "order-1",
                "field": "status",
                "stored": "failed",
                "replayed": "successful",
            }
        ]
        assert _digest(bad) == before
        assert CliRunner().invoke(cli, ["replay", "--db", str(bad)]).exit_code == 0
        assert CliRunner().invoke(cli, ["replay", "--check", "--db", str(bad)]).exit_code == 0


class TestDemo:
    """`demo` runs every scenario into a real SQLite log."""

    def test_demo_over_loopback_http(self, tmp_path: Path) -> None:
        """The fake Omise and the receiver on 127.0.0.1: every scenario ends where it should."""
        db = tmp_path / "demo.db"
        res = CliRunner().invoke(cli, ["demo", "--db", str(db)])
        assert res.exit_code == 0, res.output
        for line in [
            "fake Omise on http://127.0.0.1:",
            "-paid: SUCCESSFUL",
            "-declined: FAILED",
            "failure insufficient_fund",
            "-reordered: SUCCESSFUL",
            "-timeout: SUCCESSFUL",
            "-lost: SUCCESSFUL",
            "-forged: FAILED",
            "-expired: FAILED",
            "failure payment_expired",
            "-refused: FAILED",
            "signature refused: no signature matches the webhook secret",
            "create outcome unknown",
            "Log verified: ok",
            "replay: no differences",
            f"Database: {db.resolve()}",
        ]:
            assert line in res.output, line
        out = json.loads(
            CliRunner()
            .invoke(cli, ["show", _pid(res.output, "paid"), "--db", str(db), "--json"])
            .output
        )
        outcomes = [e["outcome"] for e in out["timeline"] if e["kind"] == "webhook"]
        assert outcomes.count("duplicate") == 1

    def test_offline_demo(self, tmp_path: Path) -> None:
        """--offline feeds the same story straight into the tracker, with a late correction."""
        db = tmp_path / "demo.db"
        res = CliRunner().invoke(cli, ["demo", "--offline", "--db", str(db)])
        assert res.exit_code == 0, res.output
        for line in [
            "-paid: SUCCESSFUL",
            "-declined: FAILED",
            "-expired: EXPIRED",
            "-reordered: SUCCESSFUL",
            "-forged: EXPIRED",
            "-timeout: SUCCESSFUL",
            "-refused: FAILED",
            "-late: SUCCESSFUL",
            "flags corrected",
            "amount mismatch",
            "body is not valid JSON",
            "Log verified: ok",
        ]:
            assert line in res.output, line
        # A second run appends to the same log, which still verifies.
        assert CliRunner().invoke(cli, ["demo", "--db", str(db)]).exit_code == 0
        assert CliRunner().invoke(cli, ["verify", "--db", str(db)]).exit_code == 0

    @pytest.mark.slow
    def test_console_script(self, tmp_path: Path) -> None:
        """The installed `kplus-fsm` script runs the demo in a fresh directory."""
        exe = shutil.which("kplus-fsm", path=os.path.dirname(sys.executable))
        assert exe is not None
        proc = subprocess.run(
            [exe, "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "kplus-demo.db").exists()
        assert "Traceback" not in proc.stderr
