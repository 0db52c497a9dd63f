"""
``kplus-fsm migrate-log``: a SQLite log moved to PostgreSQL (and back) row for
row, verified end to end. Needs a server (tests/pg.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner, Result
from store_contract import request, snapshot
from test_cli_postgres import PASSWORD, with_password
from test_incident import build_world

from kplus_fsm import PostgresStore, SQLiteStore, Tracker
from kplus_fsm._store import migrate as _migrate
from kplus_fsm.cli import cli
from kplus_fsm.testing import FakeClock

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """A SQLite log with every story, and two consumers part-way through it."""
    path = tmp_path / "kplus.db"
    build_world(path)
    with Tracker(path, clock=FakeClock()) as tracker:
        tracker.consumer("mailer", start="beginning").process(lambda _e: None, limit=7)
        tracker.consumer("shipper", start="beginning").process(lambda _e: None)
    return path


def payment_ids(path: Path) -> list[str]:
    with SQLiteStore(path, read_only=True) as store:
        return [r[0] for r in store.query("SELECT payment_id FROM payments ORDER BY payment_id")]


class TestMigrateLog:
    """The move, its proof, and its refusals."""

    def test_sqlite_to_postgres(self, world: Path, pg_url: str) -> None:
        target = with_password(pg_url)
        res = invoke("migrate-log", "--from", f"sqlite:///{world}", "--to", target, "--json")
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        assert PASSWORD not in res.output
        with SQLiteStore(world, read_only=True) as src:
            source_report = src.verify()
            source_counts = src.counts()
        assert out["ok"] is True
        assert out["heads_equal"] is True
        assert (out["source_inbox_head"], out["source_events_head"]) == (
            source_report.inbox_head,
            source_report.events_head,
        )
        assert (out["inbox_rows"], out["events"], out["payments"], out["consumers"]) == (
            source_counts["inbox"],
            source_counts["events"],
            source_counts["payments"],
            2,
        )
        assert out["differences"] == 0
        assert out["target"].startswith("postgresql://postgres:***@")
        with PostgresStore(target, read_only=True) as dst:
            assert dst.verify() == source_report
            assert dst.replay().ok
            assert dst.consumer_position("mailer") == 7
            assert dst.counts() == source_counts
        for pid in payment_ids(world):
            for extra in ((), ("--json",)):
                a = invoke("show", pid, "--db", str(world), *extra)
                b = invoke("show", pid, "--db", target, *extra)
                assert (b.exit_code, b.stdout) == (a.exit_code, a.stdout)
        exported = [invoke("export", "--db", db).stdout for db in (str(world), target)]
        assert exported[0] == exported[1]
        # The moved log keeps working: the next input extends the same chains.
        with Tracker(target, clock=FakeClock()) as tracker:
            request(tracker, "after-the-move")
            snapshot(tracker, "after-the-move", "chrg_after", "pending")
            assert tracker.verify().ok

    def test_people_output(self, world: Path, pg_url: str) -> None:
        res = invoke("migrate-log", "--from", str(world), "--to", with_password(pg_url))
        assert res.exit_code == 0, res.output
        assert "(= source)" in res.stdout
        assert res.stdout.rstrip().splitlines()[-1].startswith("ok: point KPLUS_FSM_DB")
        assert PASSWORD not in res.output

    def test_non_empty_target_is_refused(self, world: Path, pg_url: str) -> None:
        with Tracker(pg_url, clock=FakeClock()) as tracker:
            request(tracker, "already-here")
        res = invoke("migrate-log", "--from", str(world), "--to", pg_url)
        assert res.exit_code == 1
        assert "is not empty" in res.stderr
        with PostgresStore(pg_url, read_only=True) as dst:
            assert dst.counts() == {"inbox": 1, "events": 1, "payments": 1}

    def test_source_that_does_not_verify_is_not_moved(self, world: Path, pg_url: str) -> None:
        from test_incident import edit

        edit(world, "UPDATE inbox SET reason = 'edited' WHERE id = 3")
        res = invoke("migrate-log", "--from", str(world), "--to", pg_url)
        assert res.exit_code == 1
        assert "inbox row 3 does not match the hash chain" in res.stderr
        with psycopg.connect(pg_url) as conn:  # the target was not even touched
            assert conn.execute("SELECT to_regclass('inbox')").fetchone() == (None,)

    def test_and_back_to_sqlite(self, world: Path, pg_url: str, tmp_path: Path) -> None:
        assert invoke("migrate-log", "--from", str(world), "--to", pg_url).exit_code == 0
        back = tmp_path / "back.db"
        res = invoke("migrate-log", "--from", pg_url, "--to", f"sqlite:///{back}", "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["heads_equal"] is True
        with SQLiteStore(back, read_only=True) as a, SQLiteStore(world, read_only=True) as b:
            assert a.verify() == b.verify()
            assert list(a.iter_inbox()) == list(b.iter_inbox())

    def test_usage_and_missing_source(self, world: Path, tmp_path: Path, pg_url: str) -> None:
        same = invoke("migrate-log", "--from", str(world), "--to", f"sqlite:///{world}")
        assert same.exit_code == 2
        missing = invoke("migrate-log", "--from", str(tmp_path / "nope.db"), "--to", pg_url)
        assert missing.exit_code == 4
        bad = invoke("migrate-log", "--from", "sqlite://host/x.db", "--to", pg_url)
        assert bad.exit_code == 2

    def test_streams_in_batches(
        self, tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The source is read in keyset batches: no query returns more than --batch rows."""
        path = tmp_path / "big.db"
        with Tracker(path, clock=FakeClock()) as tracker:
            for i in range(150):
                request(tracker, f"pay-{i:03d}")
                snapshot(tracker, f"pay-{i:03d}", f"chrg_{i:03d}", "pending")
        sizes: list[int] = []
        original = SQLiteStore.query

        def spy(self: SQLiteStore, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
            rows = original(self, sql, params)
            sizes.append(len(rows))
            return rows

        monkeypatch.setattr(SQLiteStore, "query", spy)
        report = _migrate.migrate_log(path, pg_url, batch=40)
        assert report.ok, report.problem
        assert (report.inbox_rows, report.events, report.payments) == (300, 300, 150)
        assert max(sizes) == 40
        assert len(sizes) >= (300 + 300 + 150) // 40
