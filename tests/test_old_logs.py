"""Logs written by earlier versions: read as they are, migrated without a hashed byte changed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from kplus_fsm import SQLiteStore, Tracker
from kplus_fsm.cli import cli

FIXTURE = Path(__file__).parent / "fixtures" / "logs" / "v0002-demo.db"
#: The heads of the fixture as written at commit 26bdeda (its demo's own verify).
INBOX_HEAD = "97c599c510d98ca7e05747acec1f0225b3010c7359bdacf4aa68da6819e23a0b"
EVENTS_HEAD = "7c0a49343a4237a72d54c6ab766aa4c286c7135d8c916996ddbe62275f700b42"


@pytest.fixture
def old_log(tmp_path: Path) -> Path:
    target = tmp_path / "old.db"
    shutil.copyfile(FIXTURE, target)
    return target


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(store: SQLiteStore) -> tuple[object, ...]:
    return (
        store.query("SELECT * FROM inbox ORDER BY id"),
        store.query("SELECT * FROM events ORDER BY position"),
    )


def test_read_only_commands_answer_and_change_nothing(old_log: Path) -> None:
    before = _digest(old_log)
    runner = CliRunner()
    payment = SQLiteStore(old_log, read_only=True).query(
        "SELECT payment_id FROM payments ORDER BY created_at LIMIT 1"
    )[0][0]
    for args in (
        ["verify"],
        ["show", str(payment)],
        ["list"],
        ["list", "--stuck"],
        ["anomalies"],
        ["stats"],
        ["replay", "--check"],
        ["checkpoint"],
    ):
        result = runner.invoke(cli, [*args, "--db", str(old_log), "--json"])
        assert result.exit_code == 0, (args, result.output)
    assert _digest(old_log) == before
    with SQLiteStore(old_log, read_only=True) as store:
        report = store.verify()
        assert (report.ok, report.schema_version) == (True, "0002_views")
        assert (report.inbox_head, report.events_head) == (INBOX_HEAD, EVENTS_HEAD)
        assert store.replay().ok


def _anomalies(log: Path) -> object:
    result = CliRunner().invoke(cli, ["anomalies", "--db", str(log), "--json", "--limit", "1000"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_opening_for_writes_migrates_without_touching_the_record(old_log: Path) -> None:
    with SQLiteStore(old_log, read_only=True) as store:
        rows_before = _rows(store)  # inbox.reason_code: computed by the read-only shim
        refused = store.query("SELECT count(*) FROM inbox WHERE reason_code IS NOT NULL")[0][0]
    anomalies_before = _anomalies(old_log)
    assert refused > 0
    with Tracker(old_log) as tracker:
        report = tracker.verify()
        assert report.ok
        assert report.schema_version == "0005_index_accounting"
        assert (report.inbox_head, report.events_head) == (INBOX_HEAD, EVENTS_HEAD)
        assert tracker.replay().ok
        # The backfill of 0004 classified every old row as the shim did.
        assert _rows(tracker.store) == rows_before  # type: ignore[arg-type]
        tracker.request_payment(
            payment_id="after-upgrade", amount=5_000, return_uri="https://s.example/r"
        )
        assert tracker.verify().ok
        assert tracker.get("after-upgrade").order_ref is None
    assert _anomalies(old_log) == anomalies_before
