"""
The PostgreSQL event log: the store contract (the same suite as SQLite) plus
what only PostgreSQL has. Needs a server: see tests/pg.py (skips without one).
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from store_contract import StoreContract, request, snapshot

from kplus_fsm import (
    Outcome,
    PostgresStore,
    SQLiteStore,
    Status,
    Store,
    Tracker,
    open_store,
    redact,
)
from kplus_fsm._store._urls import scrub, sqlite_path
from kplus_fsm._store.postgres import CHAIN_LOCK, NUL_REASON, to_pg
from kplus_fsm.cli import cli
from kplus_fsm.exceptions import (
    MalformedInputError,
    PostgresUnavailableError,
    SchemaVersionError,
    StoreError,
)
from kplus_fsm.testing import FakeClock, charge_json, webhook_json

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")


def raw(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement behind the store's back (autocommit) and return its rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


class TestPostgresStore(StoreContract):
    """PostgresStore passes the store contract (tests/store_contract.py)."""

    refused = (psycopg.errors.RestrictViolation,)
    url: str

    @pytest.fixture(autouse=True)
    def _database(self, pg_url: str) -> None:
        self.url = pg_url

    def make_store(self, path: Path) -> Store:
        return PostgresStore(self.url)

    def raw_execute(self, store: Store, sql: str) -> None:
        raw(self.url, sql)

    def test_duplicate_stream_version_is_refused(self, store: Store, tracker: Tracker) -> None:
        request(tracker, "pay-1")
        snapshot(tracker, "pay-1", "chrg_1", "pending")
        with pytest.raises(psycopg.errors.UniqueViolation, match="events_stream_version"):
            self.raw_execute(
                store,
                "INSERT INTO events (position, stream, version, kind, event_version, data,"
                " recorded_at, causation, hash) VALUES (99, 'pay-1', 2, 'charge.pending', 1,"
                " '{}', '2026-01-01', 2, 'x')",
            )
        assert [e.position for e in store.iter_events()] == [1, 2]

    @pytest.mark.parametrize("table", ["inbox", "events"])
    def test_truncate_is_refused(self, store: Store, tracker: Tracker, table: str) -> None:
        request(tracker, "pay-1")
        with pytest.raises(psycopg.errors.RestrictViolation, match="append-only: TRUNCATE"):
            self.raw_execute(store, f"TRUNCATE {table} CASCADE")
        assert store.counts()["inbox"] == 1
        assert store.verify().ok


class TestSchema:
    """Migrations, versions and guards on PostgreSQL."""

    def test_same_schema_version_and_views_as_sqlite(self, pg_url: str, tmp_path: Path) -> None:
        with PostgresStore(pg_url) as pg, SQLiteStore(tmp_path / "x.db") as lite:
            version = lite.verify().schema_version
            assert pg.verify().schema_version == version == "0005_index_accounting"
            views = {
                r[0]
                for r in raw(
                    pg_url,
                    "SELECT table_name FROM information_schema.views WHERE table_schema = 'public'",
                )
            }
            lite_views = {
                r[0] for r in lite.query("SELECT name FROM sqlite_master WHERE type = 'view'")
            }
            assert views == lite_views

    def test_reopening_applies_nothing_twice(self, pg_url: str) -> None:
        PostgresStore(pg_url).close()
        with PostgresStore(pg_url) as store:
            assert store.applied() == [
                "0001_initial",
                "0002_views",
                "0003_followup",
                "0004_reason_code",
                "0005_index_accounting",
            ]

    def test_newer_schema_is_refused(self, pg_url: str) -> None:
        PostgresStore(pg_url).close()
        raw(pg_url, "INSERT INTO kplus_fsm_migrations (name) VALUES ('0099_future')")
        with pytest.raises(SchemaVersionError, match="newer kplus_fsm"):
            PostgresStore(pg_url)
        with pytest.raises(SchemaVersionError, match="0099_future"):
            PostgresStore(pg_url, read_only=True)

    def test_read_only_needs_a_log(self, pg_url: str) -> None:
        with pytest.raises(SchemaVersionError, match="holds no kplus_fsm event log"):
            PostgresStore(pg_url, read_only=True)

    def test_read_only_store_cannot_write(self, pg_url: str) -> None:
        with Tracker(PostgresStore(pg_url), clock=FakeClock()) as tracker:
            request(tracker, "pay-1")
        with PostgresStore(pg_url, read_only=True) as store:
            assert store.get("pay-1") is not None
            with pytest.raises(StoreError, match="read-only transaction"):
                Tracker(store, clock=FakeClock()).request_payment(
                    payment_id="pay-2", amount=10_000, return_uri="https://shop.example/r"
                )
            assert store.counts()["inbox"] == 1

    def test_disabled_trigger_fails_verify(self, pg_url: str) -> None:
        with Tracker(PostgresStore(pg_url), clock=FakeClock()) as tracker:
            request(tracker, "pay-1")
        raw(pg_url, "ALTER TABLE inbox DISABLE TRIGGER inbox_no_update")
        with PostgresStore(pg_url) as store:
            report = store.verify()
        assert not report.ok
        assert report.problem == "append-only triggers disabled: inbox_no_update"

    def test_dropped_trigger_fails_verify(self, pg_url: str) -> None:
        PostgresStore(pg_url).close()
        raw(pg_url, "DROP TRIGGER events_no_truncate ON events")
        with PostgresStore(pg_url) as store:
            assert store.verify().problem == "append-only triggers missing: events_no_truncate"

    def test_edit_behind_disabled_triggers_is_named(self, pg_url: str) -> None:
        with Tracker(PostgresStore(pg_url), clock=FakeClock()) as tracker:
            request(tracker, "pay-1")
            request(tracker, "pay-2")
            request(tracker, "pay-3")
        raw(
            pg_url,
            "BEGIN; ALTER TABLE inbox DISABLE TRIGGER USER;"
            " UPDATE inbox SET reason = 'nothing to see' WHERE id = 2;"
            " ALTER TABLE inbox ENABLE TRIGGER USER; COMMIT",
        )
        with PostgresStore(pg_url) as store:
            report = store.verify()
        assert (report.ok, report.table, report.row_id) == (False, "inbox", 2)
        assert report.problem == "inbox row 2 does not match the hash chain"

    def test_text_sorts_and_compares_bytewise(self, pg_url: str) -> None:
        """Collation "C": stored times and ids compare as in SQLite, whatever the locale."""
        PostgresStore(pg_url).close()
        rows = raw(
            pg_url,
            "SELECT collation_name FROM information_schema.columns"
            " WHERE table_name IN ('inbox', 'events', 'payments', 'consumers')"
            " AND data_type = 'text'",
        )
        assert rows
        assert {r[0] for r in rows} == {"C"}


class TestSameBytesAsSQLite:
    """The same inputs give the same rows and the same hashes on both databases."""

    def test_heads_and_rows_match(self, pg_url: str, tmp_path: Path) -> None:
        stores: list[Store] = [PostgresStore(pg_url), SQLiteStore(tmp_path / "same.db")]
        try:
            for store in stores:
                tracker = Tracker(store, clock=FakeClock())
                request(tracker, "pay-1")
                snapshot(tracker, "pay-1", "chrg_1", "pending", origin="create_response")
                body = webhook_json(
                    charge_json(payment_id="pay-1", charge_id="chrg_1", status="successful"),
                    event_id="evnt_1",
                )
                tracker.record_webhook(body, headers={"Omise-Signature": "x", "Cookie": "c"})
                tracker.record_webhook(body)
                with pytest.raises(MalformedInputError):
                    tracker.record_charge(b"\xff\xfe not utf-8", origin="poll")
            pg, lite = stores
            assert pg.head() == lite.head()
            assert list(pg.iter_inbox()) == list(lite.iter_inbox())
            assert list(pg.iter_events()) == list(lite.iter_events())
            assert pg.get("pay-1") == lite.get("pay-1")
            assert pg.verify() == lite.verify()
        finally:
            for store in stores:
                store.close()


class TestConcurrentThreads:
    """Threads sharing one store, and the same webhook from many of them at once."""

    def test_same_webhook_from_eight_threads_applies_once(self, pg_url: str) -> None:
        setup = Tracker(PostgresStore(pg_url), clock=FakeClock())
        request(setup, "pay-1")
        snapshot(setup, "pay-1", "chrg_1", "pending", origin="create_response")
        setup.close()
        body = webhook_json(
            charge_json(payment_id="pay-1", charge_id="chrg_1", status="successful"),
            event_id="evnt_race",
        )
        barrier = threading.Barrier(8)
        outcomes: list[Outcome] = []
        errors: list[BaseException] = []

        def deliver() -> None:
            try:
                with Tracker(PostgresStore(pg_url), clock=FakeClock()) as tracker:
                    barrier.wait(timeout=30)
                    outcomes.append(tracker.record_webhook(body).outcome)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=deliver) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        assert Counter(outcomes) == {Outcome.APPLIED: 1, Outcome.DUPLICATE: 7}
        with PostgresStore(pg_url, read_only=True) as store:
            payment = store.get("pay-1")
            assert payment is not None
            assert (payment.status, payment.version) == (Status.SUCCESSFUL, 4)
            assert store.verify().ok
            assert store.replay().ok


class TestLocations:
    """URLs pick the store; passwords never leak; psycopg is optional."""

    def test_tracker_takes_a_url(self, pg_url: str) -> None:
        with Tracker(pg_url, clock=FakeClock()) as tracker:
            assert isinstance(tracker.store, PostgresStore)
            request(tracker, "pay-1")
        with open_store(pg_url, read_only=True) as store:
            assert isinstance(store, PostgresStore)
            assert store.counts()["inbox"] == 1

    def test_sqlite_urls_and_paths(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        assert sqlite_path("sqlite:///rel.db") == "rel.db"
        assert sqlite_path("sqlite:////abs/x.db") == "/abs/x.db"
        assert sqlite_path("plain.db") == "plain.db"
        with pytest.raises(ValueError, match="three slashes"):
            sqlite_path("sqlite://host/x.db")
        with open_store("sqlite:///rel.db") as store:
            assert isinstance(store, SQLiteStore)
        assert (tmp_path / "rel.db").exists()

    def test_redact(self) -> None:
        assert redact("postgresql://kplus:s3cret@db.example:5432/log?sslmode=require") == (
            "postgresql://kplus:***@db.example:5432/log?sslmode=require"
        )
        assert redact("postgresql://db.example/log?user=k&password=s3cret") == (
            "postgresql://db.example/log?user=k&password=***"
        )
        assert redact("postgresql://kplus@db.example/log") == "postgresql://kplus@db.example/log"
        assert redact("/var/lib/kplus.db") == "/var/lib/kplus.db"
        assert "s3cret" not in scrub(
            "failed for postgresql://u:s3cret@h/x and s3cret", "postgresql://u:s3cret@h/x"
        )

    def test_password_never_in_errors(self, pg_server: str) -> None:
        url = pg_server.replace("postgresql://postgres@", "postgresql://nobody_here:Pa55word@")
        url = url.rsplit("/", 1)[0] + "/no_such_database"
        with pytest.raises(StoreError) as caught:
            PostgresStore(url, connect_timeout=5)
        text = str(caught.value)
        assert "Pa55word" not in text
        assert "***" in text
        assert caught.value.__cause__ is None or "Pa55word" not in str(caught.value.__cause__)

    def test_missing_psycopg_is_a_typed_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "psycopg", None)
        with pytest.raises(PostgresUnavailableError, match=r"pip install 'kplus-fsm\[postgres\]'"):
            open_store("postgresql://u:pw@127.0.0.1:1/x")
        with pytest.raises(StoreError):
            Tracker("postgres://u:pw@127.0.0.1:1/x")

    @pytest.mark.parametrize(
        ("sql", "expected"),
        [
            ("SELECT a FROM t WHERE b = ?", "SELECT a FROM t WHERE b = %s"),
            (
                "SELECT '?' FROM t WHERE x LIKE 'a%' AND y = ?",
                "SELECT '?' FROM t WHERE x LIKE 'a%%' AND y = %s",
            ),
            ('SELECT "we?ird" FROM t', 'SELECT "we?ird" FROM t'),
            ("SELECT 7 % 2", "SELECT 7 %% 2"),
        ],
    )
    def test_placeholder_translation(self, sql: str, expected: str) -> None:
        assert to_pg(sql) == expected


class TestNulCharacters:
    """PostgreSQL text cannot hold U+0000: such an input is still recorded, refused, exactly."""

    def test_webhook_with_a_nul_in_its_event_id(self, pg_url: str) -> None:
        with Tracker(PostgresStore(pg_url), clock=FakeClock()) as tracker:
            request(tracker, "pay-1")
            snapshot(tracker, "pay-1", "chrg_1", "pending", origin="create_response")
            body = webhook_json(
                charge_json(payment_id="pay-1", charge_id="chrg_1", status="successful"),
                event_id="evnt_\x00sneaky",
            )
            raw_body = json.dumps(body).encode() + b"\x00"
            with pytest.raises(MalformedInputError):  # the trailing NUL: not JSON
                tracker.record_webhook(raw_body)
            result = tracker.record_webhook(body)
            assert result.outcome is Outcome.REJECTED
            assert result.reason == NUL_REASON
            rows = list(tracker.store.iter_inbox())
            assert rows[-2].raw() == raw_body
            assert json.loads(rows[-1].raw()) == body
            assert rows[-1].external_id == "evnt_\\u0000sneaky"
            payment = tracker.get("pay-1")
            assert (payment.status, payment.version) == (Status.PENDING, 2)
            assert tracker.verify().ok
            assert tracker.replay().ok


ROOT = Path(__file__).resolve().parent.parent


def documented_grants() -> str:
    """The GRANT block of docs/postgresql.md, as the operator would paste it."""
    text = (ROOT / "docs" / "postgresql.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```text\n(.*?)```", text, flags=re.DOTALL)
    [grants] = [b for b in blocks if "GRANT SELECT, INSERT ON inbox, events" in b]
    return textwrap.dedent(grants)


class TestPrivileges:
    """The roles of docs/postgresql.md: the application appends, the reader reads."""

    @pytest.fixture
    def roles(self, pg_server: str) -> Iterator[dict[str, str]]:
        suffix = uuid.uuid4().hex[:8]
        names = {r: f"{r}_{suffix}" for r in ("kplus_owner", "kplus_app", "kplus_read")}
        dbname = f"kplus_priv_{suffix}"
        with psycopg.connect(pg_server, autocommit=True) as admin:
            for name in names.values():
                admin.execute(f"CREATE ROLE {name} LOGIN")
            admin.execute(f"CREATE DATABASE {dbname} OWNER {names['kplus_owner']}")
        base = pg_server.rsplit("/", 1)[0].replace("postgres@", "{role}@", 1)
        urls = {r: base.format(role=n) + f"/{dbname}" for r, n in names.items()}
        try:
            yield {**urls, **{f"{r}_name": n for r, n in names.items()}}
        finally:
            with psycopg.connect(pg_server, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
                for name in names.values():
                    admin.execute(f"DROP ROLE IF EXISTS {name}")

    def test_documented_roles(self, roles: dict[str, str]) -> None:
        PostgresStore(roles["kplus_owner"]).close()  # the owner creates the schema
        grants = documented_grants()
        for role in ("kplus_app", "kplus_read"):
            grants = re.sub(rf"\b{role}\b", roles[f"{role}_name"], grants)
        raw(roles["kplus_owner"], grants)

        with Tracker(roles["kplus_app"], clock=FakeClock()) as tracker:
            request(tracker, "pay-1")
            snapshot(tracker, "pay-1", "chrg_1", "pending")
            assert tracker.consumer("mailer", start="beginning").process(lambda _e: None) == 2
            assert tracker.verify().ok
        for sql in (
            "UPDATE inbox SET reason = 'x'",
            "DELETE FROM events",
            "TRUNCATE inbox CASCADE",
            "ALTER TABLE inbox DISABLE TRIGGER USER",
            "DROP TRIGGER events_no_update ON events",
            "CREATE TABLE sneaky (x int)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                raw(roles["kplus_app"], sql)

        for args in (["verify"], ["list"], ["show", "pay-1"], ["stats"], ["replay", "--check"]):
            res = CliRunner().invoke(cli, [*args, "--db", roles["kplus_read"]])
            assert res.exit_code == 0, (args, res.output)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            raw(roles["kplus_read"], "INSERT INTO consumers VALUES ('x', 1, 'now')")
        with PostgresStore(roles["kplus_read"], read_only=True) as store:
            assert store.counts() == {"inbox": 2, "events": 2, "payments": 1}
            assert store.consumer_position("mailer") == 2

    def test_documented_lock_key(self) -> None:
        text = (ROOT / "docs" / "postgresql.md").read_text(encoding="utf-8")
        assert f"pg_advisory_xact_lock({CHAIN_LOCK})" in text


class TestExactlyOnceConsumer:
    """process_in_transaction hands the handler the transaction: portable ``?`` statements."""

    def test_handler_writes_commit_with_the_position(self, pg_url: str) -> None:
        raw(pg_url, "CREATE TABLE shipped (payment_id TEXT PRIMARY KEY)")
        with Tracker(PostgresStore(pg_url), clock=FakeClock()) as tracker:
            request(tracker, "pay-1")
            snapshot(tracker, "pay-1", "chrg_1", "successful")
            consumer = tracker.consumer("shipping", start="beginning")

            def ship(event: Any, conn: Any) -> None:
                if event.kind == "charge.successful":
                    conn.execute("INSERT INTO shipped VALUES (?)", (event.stream,))

            def broken(event: Any, conn: Any) -> None:
                ship(event, conn)
                raise RuntimeError("handler failed")

            with pytest.raises(RuntimeError):
                consumer.process_in_transaction(broken)
            assert consumer.position == 0
            assert raw(pg_url, "SELECT payment_id FROM shipped") == []
            assert consumer.process_in_transaction(ship) == 2
            assert consumer.position == 2
        assert raw(pg_url, "SELECT payment_id FROM shipped") == [("pay-1",)]
