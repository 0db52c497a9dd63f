"""
Every ``kplus-fsm`` command against a PostgreSQL log, unchanged: the on-call and
audit commands give the same answers as on the same log in SQLite, the views
agree, and ``pay``, ``reconcile`` and ``serve`` work with a ``postgresql://``
``--db`` (with a password that never shows up anywhere). Needs a server
(tests/pg.py).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from click.testing import CliRunner, Result
from pg import with_database
from test_incident import T0, at, build_world
from test_operate import (
    PK,
    SK,
    WEBHOOK_SECRET,
    Process,
    api_env,
    assert_clean,
    free_port,
    run,
    start,
    start_fake,
)

from kplus_fsm import PostgresStore, SQLiteStore, Status, Tracker
from kplus_fsm.cli import cli
from kplus_fsm.testing import FakeClock

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")

PASSWORD = "Sup3r-Secret-pw"


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def with_password(url: str) -> str:
    return re.sub(r"^postgresql://([^:@/]+)@", rf"postgresql://\1:{PASSWORD}@", url)


@pytest.fixture(scope="module")
def worlds(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The world of tests/cli/test_incident.py, built once in SQLite and once in PostgreSQL."""
    lite = tmp_path_factory.mktemp("world") / "kplus.db"
    build_world(lite)
    name = f"kplus_world_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(pg_server, name)
    try:
        build_world(url)  # type: ignore[arg-type]
        yield lite, url
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_world(worlds: tuple[Path, str], pg_server: str) -> Iterator[str]:
    """A fresh copy of the PostgreSQL world for one test (with a password in its URL)."""
    template = worlds[1].rsplit("/", 1)[1]
    name = f"kplus_copy_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield with_password(with_database(pg_server, name))
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


READ_COMMANDS = [
    ("show", "order-paid"),
    ("show", "order-late", "--json"),
    ("show", "chrg_test_orderlate", "--as-of", at(minutes=20)),
    ("show", "order-pending"),
    ("list",),
    ("list", "--stuck", "--json"),
    ("list", "--status", "pending", "--since", at(seconds=-1), "--until", at(hours=2)),
    ("anomalies",),
    ("anomalies", "--json"),
    ("anomalies", "--since", at(minutes=10), "--limit", "3"),
    ("stats",),
    ("stats", "--json"),
    ("stats", "--since", at(minutes=2), "--json"),
    ("export",),
    ("export", "--format", "csv", "--since", at(minutes=10)),
    ("verify",),
    ("verify", "--json"),
    ("replay", "--check", "--json"),
]


class TestSameAnswers:
    """The read commands print the same thing for the same log on both databases."""

    @pytest.mark.parametrize("args", READ_COMMANDS, ids=lambda a: " ".join(a)[:40])
    def test_command(self, worlds: tuple[Path, str], args: tuple[str, ...]) -> None:
        lite, url = worlds
        on_lite = invoke(*args, "--db", str(lite))
        on_pg = invoke(*args, "--db", url)
        assert on_lite.exit_code == 0, on_lite.output
        lite_out, pg_out = on_lite.stdout, on_pg.stdout
        if args == ("verify", "--json"):
            # SQLite's own integrity_check has no PostgreSQL counterpart: null there.
            lite_json, pg_json = json.loads(lite_out), json.loads(pg_out)
            assert lite_json.pop("integrity_check")["ok"] is True
            assert pg_json.pop("integrity_check") is None
            lite_out, pg_out = json.dumps(lite_json), json.dumps(pg_json)
        assert (on_pg.exit_code, pg_out) == (on_lite.exit_code, lite_out)

    def test_not_found_exits_3(self, worlds: tuple[Path, str]) -> None:
        res = invoke("show", "order-nobody", "--db", worlds[1])
        assert res.exit_code == 3

    def test_checkpoint_then_verify_against_it(self, pg_world: str) -> None:
        res = invoke("checkpoint", "--db", pg_world, "--json")
        assert res.exit_code == 0, res.output
        cp = json.loads(res.stdout)
        with Tracker(pg_world, clock=FakeClock(T0)) as tracker:
            tracker.request_payment(
                payment_id="order-after", amount=5_000, return_uri="https://s.example/r"
            )
        again = invoke("verify", "--db", pg_world, "--checkpoint", res.stdout, "--json")
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout)["checkpoint_ok"] is True
        people = invoke("checkpoint", "--db", pg_world)
        assert people.exit_code == 0
        assert PASSWORD not in people.output
        assert ":***@" in people.output
        with PostgresStore(pg_world) as store:
            assert store.head()["inbox_id"] == cp["inbox_id"] + 1

    def test_replay_repairs(self, pg_world: str) -> None:
        with psycopg.connect(pg_world, autocommit=True) as conn:
            conn.execute("UPDATE payments SET status = 'failed' WHERE payment_id = 'order-paid'")
        check = invoke("replay", "--check", "--db", pg_world)
        assert check.exit_code == 1
        assert "order-paid: status: stored 'failed', replayed 'successful'" in check.stdout
        fix = invoke("replay", "--db", pg_world)
        assert fix.exit_code == 0
        assert "repaired 1 differences" in fix.stdout
        assert invoke("replay", "--check", "--db", pg_world).exit_code == 0

    def test_tampered_row_is_named(self, pg_world: str) -> None:
        with psycopg.connect(pg_world, autocommit=True) as conn:
            conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
            conn.execute("UPDATE events SET data = '{}' WHERE position = 3")
            conn.execute("ALTER TABLE events ENABLE TRIGGER USER")
        res = invoke("verify", "--db", pg_world)
        assert res.exit_code == 1
        assert res.stdout.strip() == "FAILED: events row 3 does not match the hash chain"

    def test_unreachable_database_exits_4_without_the_password(self, pg_server: str) -> None:
        url = with_password(with_database(pg_server, "no_such_database_here"))
        res = invoke("list", "--db", url)
        assert res.exit_code == 4
        assert PASSWORD not in res.output
        assert "no_such_database_here" in res.stderr

    def test_db_from_environment(self, worlds: tuple[Path, str]) -> None:
        res = CliRunner(env={"KPLUS_FSM_DB": worlds[1]}).invoke(cli, ["verify", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["ok"] is True


class TestViews:
    """The PostgreSQL views answer as the SQLite ones."""

    @pytest.mark.parametrize(
        "sql",
        [
            "SELECT payment_id, type, inbox_id, position, at, kind, outcome, reason, version"
            " FROM timeline ORDER BY payment_id, inbox_id, position IS NOT NULL, position",
            "SELECT payment_id, status, reason FROM stuck_payments ORDER BY payment_id",
            "SELECT at, category, payment_id, inbox_id, position, reason FROM anomalies"
            " ORDER BY inbox_id, position IS NOT NULL, position, category",
            "SELECT inbox_id, payment_id, charge_id, event_id, verification FROM unresolved_hints"
            " ORDER BY inbox_id",
            "SELECT payment_id, completion, via, lag_seconds FROM webhook_lag ORDER BY payment_id",
            "SELECT status, failure_code, payments, amount FROM payment_stats"
            " ORDER BY status, failure_code",
        ],
    )
    def test_view(self, worlds: tuple[Path, str], sql: str) -> None:
        lite, url = worlds
        with SQLiteStore(lite, read_only=True) as a, PostgresStore(url, read_only=True) as b:
            expected = a.query(sql)
            got = b.query(sql)
        assert expected
        assert [tuple(_plain(v) for v in r) for r in got] == [
            tuple(_plain(v) for v in r) for r in expected
        ]


def _plain(value: Any) -> Any:
    """Numbers as floats (PostgreSQL answers numeric and bigint, SQLite REAL and INTEGER)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


@pytest.mark.slow
class TestAdaptersOnPostgres:
    """pay, reconcile and serve as real processes with a postgresql:// --db."""

    @pytest.fixture
    def fake(self) -> Iterator[Process]:
        running = start_fake()
        try:
            yield running
        finally:
            running.stop()

    def test_pay_then_reconcile(self, fake: Process, pg_url: str) -> None:
        db = with_password(pg_url)
        args = ["pay", "--db", db, "--payment-id", "pg-order", "--amount", "35000"]
        paid = run(*args, "--return-uri", "https://shop.example/r", "--json", env=api_env(fake.url))
        assert paid.returncode == 0, paid.stderr
        charge_id = json.loads(paid.stdout)["charge_id"]
        with httpx.Client(base_url=fake.url, auth=(SK, ""), trust_env=False) as api:
            assert api.post("/_fake/clock/advance", json={"seconds": 601}).status_code == 200
        done = run(
            "reconcile", "--db", db, "--json", "--pending-minutes", "0", env=api_env(fake.url)
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["changed"] == 1
        for text in (paid.stdout, paid.stderr, done.stdout, done.stderr):
            assert PASSWORD not in text
        with Tracker(PostgresStore(db, read_only=True)) as tracker:
            payment = tracker.get("pg-order")
            # The fake's default expiry model: the bank timed out after ten minutes.
            assert (payment.status, payment.charge_id, payment.failure_code) == (
                Status.FAILED,
                charge_id,
                "payment_expired",
            )
            assert tracker.verify().ok

    def test_serve_receives_into_postgres(self, pg_url: str) -> None:
        db = with_password(pg_url)
        serve_port, fake_port = free_port(), free_port()
        fake_url = f"http://127.0.0.1:{fake_port}"
        env = {
            **api_env(fake_url),
            "OMISE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "KPLUS_FSM_DB": db,  # no --db: from the environment
        }
        processes: list[Process] = []
        try:
            receiver = start(
                ["serve", "--host", "127.0.0.1", "--port", str(serve_port)], env, serve_port
            )
            processes.append(receiver)
            fake = start(
                [
                    "fake-omise",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(fake_port),
                    "--secret-key",
                    SK,
                    "--public-key",
                    PK,
                    "--webhook-url",
                    receiver.url + "/webhooks/omise",
                    "--webhook-secret",
                    WEBHOOK_SECRET,
                ],
                api_env(fake_url),
                fake_port,
            )
            processes.append(fake)
            args = ["pay", "--db", db, "--payment-id", "pg-hooked", "--amount", "35000"]
            paid = run(*args, "--return-uri", "https://shop.example/r", "--json", env=env)
            assert paid.returncode == 0, paid.stderr
            out = json.loads(paid.stdout)
            approved = httpx.post(out["authorize_uri"], data={"action": "approve"}, trust_env=False)
            assert approved.status_code == 302
            with httpx.Client(base_url=fake.url, auth=(SK, ""), trust_env=False) as api:
                assert api.post("/_fake/webhooks/flush", json={"timeout": 10}).json()["idle"]
                deliveries = api.get("/_fake/webhooks/deliveries").json()["data"]
            assert [d["status"] for d in deliveries] == [200, 200]
        finally:
            for process in reversed(processes):
                process.stop()
        for process in processes:
            assert_clean(process.stdout, process.stderr)
            assert PASSWORD not in process.stdout + process.stderr
        assert receiver.stdout.startswith(f"kplus-fsm: receiving webhooks on {receiver.url}")
        assert ":***@" in receiver.stdout
        with PostgresStore(db, read_only=True) as store:
            payment = store.get("pg-hooked")
            assert payment is not None
            assert payment.status is Status.SUCCESSFUL
            assert store.verify().ok
            dumped = store.query(
                "SELECT count(*) FROM inbox WHERE body LIKE ? OR coalesce(headers, '') LIKE ?",
                [f"%{PASSWORD}%", f"%{PASSWORD}%"],
            )
            assert dumped == [(0,)]
