"""
The on-call and audit commands (`show`, `list`, `anomalies`, `stats`, `export`,
`checkpoint`, `verify`, `replay`) and the SQL views, against logs built by the
tracker and the webhook intake (never hand-written rows).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner, Result
from hostile_support import UNDO_INDEX_ACCOUNTING

from kplus_fsm import Origin, SQLiteStore, Tracker, _codec
from kplus_fsm._store import _rows
from kplus_fsm._store import _schema_sqlite as _schema
from kplus_fsm._store._schema_sqlite import ANOMALY_CATEGORY_V3, LEGACY_REASON_CODE
from kplus_fsm.adapters.signatures import signature_headers
from kplus_fsm.adapters.webhooks import WebhookIntake
from kplus_fsm.cli import _output, _queries, cli
from kplus_fsm.exceptions import MalformedInputError
from kplus_fsm.testing import FakeClock, charge_json, error_json, webhook_json

ROOT = Path(__file__).resolve().parents[2]
SECRET = "c2NhbGUtdGVzdC13ZWJob29rLXNlY3JldC0zMmJ5dGVz"
WRONG = "Zm9yZ2VkLXNlY3JldC1ub3QtdGhlLXJlYWwtb25lISE="
#: Two days ago, to the second: every charge in the log has expired by now.
T0 = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """The CLI configures structlog as the host; undo it for the other tests."""
    yield
    structlog.reset_defaults()


def at(**delta: float) -> str:
    """T0 + delta, as an ISO-8601 time for --as-of / --since."""
    return (T0 + dt.timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*args: str) -> Result:
    """Invoke the CLI in process (stderr kept apart)."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def run_json(*args: str) -> Any:
    res = run(*args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def build_world(path: Path) -> None:
    """
    A log with every story the runbook tells, written by the tracker and the
    webhook intake (signed deliveries, refusals) under a fake clock from T0.
    """
    clock = FakeClock(T0)
    with Tracker(path, clock=clock) as t:
        intake = WebhookIntake(t, secrets=[SECRET], now=lambda: clock().timestamp())

        def deliver(body: dict[str, Any] | bytes, *, secret: str = SECRET, age: int = 0) -> None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            ts = int(clock().timestamp()) - age
            intake.handle(raw, signature_headers(raw, [secret], ts))

        def charge(pid: str, status: str, **kw: Any) -> dict[str, Any]:
            return charge_json(
                payment_id=pid,
                charge_id=f"chrg_test_{pid.replace('-', '')}",
                status=status,
                created_at=kw.pop("created_at", T0),
                **kw,
            )

        def new(pid: str) -> None:
            t.request_payment(payment_id=pid, amount=10_000, return_uri="https://s.example/r")
            clock.advance(seconds=5)
            t.record_charge(charge(pid, "pending"), origin=Origin.CREATE_RESPONSE)

        # Paid: the completion webhook 60 s after the charge, then delivered again.
        new("order-paid")  # T0 .. T0+5s
        clock.advance(seconds=60)  # T0+65s
        paid = webhook_json(charge("order-paid", "successful"), event_id="evnt_test_paid")
        deliver(paid)
        clock.advance(seconds=30)
        deliver(paid)  # duplicate delivery
        # Declined 30 s after the charge.
        new("order-declined")  # charge at T0+100s
        clock.advance(seconds=30)
        failed = charge("order-declined", "failed", failure_code="insufficient_fund")
        deliver(webhook_json(failed, event_id="evnt_test_declined"))
        # Forged, stale and malformed deliveries for a payment still pending.
        new("order-pending")  # charge at T0+135s
        cheap = charge("order-pending", "successful", amount=100)
        deliver(webhook_json(cheap, event_id="evnt_test_forged"), secret=WRONG)
        deliver(webhook_json(cheap, event_id="evnt_test_stale"), age=3600)
        deliver(b'{"object": "event", "id": "evnt_test_broken", "key": ')
        # A payload whose amount does not match: a mismatch.
        deliver(webhook_json(cheap, event_id="evnt_test_cheap"))
        # An event key nobody knows.
        deliver(
            {
                "object": "event",
                "id": "evnt_test_other",
                "key": "customer.update",
                "data": {"object": "customer", "id": "cust_test_1"},
            }
        )
        # Expired by a poll at T0+15m, then corrected to successful at T0+25m.
        clock.set(T0 + dt.timedelta(minutes=3))
        new("order-late")  # charge at T0+3m05s
        clock.set(T0 + dt.timedelta(minutes=15))
        t.record_charge(charge("order-late", "expired"), origin=Origin.POLL)
        clock.set(T0 + dt.timedelta(minutes=25))
        t.record_charge(charge("order-late", "successful"), origin=Origin.REFETCH)
        # Expired, then a webhook payload claims success: a conflict.
        new("order-conflict")
        clock.advance(minutes=11)
        t.record_charge(charge("order-conflict", "expired"), origin=Origin.POLL)
        deliver(webhook_json(charge("order-conflict", "successful"), event_id="evnt_test_cf"))
        # The create timed out: outcome unknown.
        clock.set(T0 + dt.timedelta(hours=1))
        t.request_payment(payment_id="order-timeout", amount=20_000, return_uri="https://s.ex/r")
        clock.advance(seconds=60)
        t.record_create_unknown("order-timeout", reason="read timeout after 60 s")
        # Omise refused the create.
        t.request_payment(payment_id="order-refused", amount=20_000, return_uri="https://s.ex/r")
        t.record_create_error(
            "order-refused", error_json("invalid_charge", "amount is out of range"), http_status=400
        )
        with contextlib.suppress(MalformedInputError):
            t.record_charge(b"<html>502 Bad Gateway</html>", origin=Origin.POLL)
        intake.close()


@pytest.fixture(scope="module")
def world_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("world") / "kplus.db"
    build_world(path)
    return path


@pytest.fixture
def world(world_master: Path, tmp_path: Path) -> Path:
    """A fresh copy of the world log for each test."""
    path = tmp_path / "kplus.db"
    shutil.copyfile(world_master, path)
    return path


def rewrite_chain(path: Path, table: str, key: str, hashed: tuple[str, ...]) -> None:
    """An attacker who knows the scheme: recompute every hash of ``table``."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"DROP TRIGGER {table}_no_update")
        prev = _codec.GENESIS
        rows = conn.execute(f"SELECT {', '.join(hashed)} FROM {table} ORDER BY {key}").fetchall()
        for row in rows:
            values = dict(zip(hashed, row, strict=True))
            prev = _codec.chain_hash(prev, values, hashed)
            conn.execute(f"UPDATE {table} SET hash = ? WHERE {key} = ?", (prev, values[key]))
        conn.execute(
            f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: UPDATE refused'); END"
        )
    finally:
        conn.close()


def edit(path: Path, *statements: str) -> None:
    """Edit a copy of the log behind the triggers' back (and put them back)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        triggers = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
        ).fetchall()
        for name, _ in triggers:
            conn.execute(f"DROP TRIGGER {name}")
        for statement in statements:
            conn.execute(statement)
        for _, sql in triggers:
            conn.execute(sql)
    finally:
        conn.close()


# ------------------------------------------------------------------- read-only


READ_ONLY = [
    ("show", "order-late"),
    ("show", "order-late", "--json"),
    ("show", "chrg_test_orderlate", "--as-of", at(minutes=20)),
    ("list",),
    ("list", "--stuck", "--json"),
    ("list", "--status", "pending", "--since", "-30d", "--until", "now"),
    ("anomalies",),
    ("anomalies", "--since", "-30d", "--json"),
    ("stats",),
    ("stats", "--since", "-30d", "--json"),
    ("export",),
    ("export", "--format", "csv", "--since", at(minutes=10)),
    ("verify",),
    ("verify", "--json"),
    ("replay", "--check"),
    ("checkpoint",),
    ("checkpoint", "--json"),
]


class TestReadOnly:
    """The read-only commands leave the database file byte for byte as it was."""

    @pytest.mark.parametrize("args", READ_ONLY, ids=[" ".join(a) for a in READ_ONLY])
    def test_file_unchanged(self, world: Path, args: tuple[str, ...]) -> None:
        """sha256 of the file before and after; exit 0."""
        before = _digest(world)
        res = run(*args, "--db", str(world))
        assert res.exit_code == 0, res.output
        assert _digest(world) == before

    def test_verify_with_checkpoint_unchanged(self, world: Path) -> None:
        """verify --checkpoint reads only."""
        cp = run("checkpoint", "--db", str(world), "--json").stdout
        before = _digest(world)
        assert run("verify", "--db", str(world), "--checkpoint", cp).exit_code == 0
        assert _digest(world) == before

    def test_old_schema_is_not_migrated(self, world: Path) -> None:
        """A log from before 0002_views is read as it is (no views, no migration)."""
        edit(
            world,
            *UNDO_INDEX_ACCOUNTING,
            "DROP VIEW anomalies",
            "ALTER TABLE inbox DROP COLUMN reason_code",
            "DELETE FROM _sqlite_migrations WHERE name = '0004_reason_code'",
            "DROP VIEW unresolved_hints",
            "DROP VIEW orders_paid_twice",
            "DROP VIEW timeline",
            "DROP VIEW stuck_payments",
            "DROP VIEW webhook_lag",
            "DROP VIEW payment_stats",
            "DROP INDEX payments_order",
            "ALTER TABLE payments DROP COLUMN order_ref",
            "DROP TABLE leases",
            "DROP TABLE reconcile_checks",
            "DELETE FROM _sqlite_migrations WHERE name = '0003_followup'",
            "DROP INDEX payments_created",
            "DROP INDEX inbox_kind",
            "DROP INDEX events_kind",
            "DELETE FROM _sqlite_migrations WHERE name = '0002_views'",
        )
        before = _digest(world)
        assert run_json("verify", "--db", str(world))["schema_version"] == "0001_initial"
        stuck = run_json("list", "--stuck", "--db", str(world))
        assert {p["payment_id"] for p in stuck["payments"]} == {"order-pending", "order-timeout"}
        assert run_json("anomalies", "--db", str(world))["count"] > 0
        assert _digest(world) == before


# ------------------------------------------------------------------------ show


class TestShow:
    """`show` prints everything about one payment, now or as it stood then."""

    def test_json_keys(self, world: Path) -> None:
        """The contract keys, the Payment fields, stuck, and a timeline with sources."""
        out = run_json("show", "order-declined", "--db", str(world))
        for key in ("payment_id", "charge_id", "status", "amount", "currency", "failure_code"):
            assert key in out
        assert out["status"] == "failed"
        assert out["failure_code"] == "insufficient_fund"
        assert out["failure_message"] == "payment failed: insufficient_fund"
        assert out["authorize_uri"].startswith("https://pay.omise.test/")
        assert out["expires_at"].endswith("Z")
        assert out["stuck"] is None
        hook = next(e for e in out["timeline"] if e["kind"] == "webhook")
        assert (hook["origin"], hook["verification"], hook["outcome"]) == (
            "webhook",
            "verified",
            "applied",
        )

    def test_people_output(self, world: Path) -> None:
        """Aligned fields, then the timeline with time, source, outcome, reason."""
        res = run("show", "order-pending", "--db", str(world))
        assert res.exit_code == 0
        text = res.output
        assert text.startswith("== order-pending: PENDING")
        assert re.search(r"^   authorize_uri\s+https://pay\.omise\.test/", text, re.MULTILINE)
        assert re.search(r"^   stuck\s+pending past expires_at", text, re.MULTILINE)
        assert "webhook (failed: no signature ...)" in text
        assert "signature refused: no signature matches the webhook secret" in text
        assert "signature refused: the signature timestamp is 3600 s old" in text
        assert "amount mismatch" in text

    def test_flags_and_failure(self, world: Path) -> None:
        """A corrected payment shows its flag; a refused create its failure."""
        assert "corrected" in run_json("show", "order-late", "--db", str(world))["flags"]
        text = run("show", "order-refused", "--db", str(world)).output
        assert re.search(r"failure\s+invalid_charge: amount is out of range", text)
        text = run("show", "order-timeout", "--db", str(world)).output
        assert re.search(r"flags\s+create_unknown", text)
        assert re.search(r"stuck\s+create outcome unknown", text)

    def test_as_of_across_the_transitions(self, world: Path) -> None:
        """pending before the poll, expired after it, successful after the correction."""
        seen = {}
        for label, when in (
            ("before", at(minutes=10)),
            ("expired", at(minutes=20)),
            ("corrected", at(minutes=30)),
        ):
            out = run_json("show", "order-late", "--db", str(world), "--as-of", when)
            seen[label] = (out["status"], len(out["timeline"]), out["flags"])
        assert seen["before"] == ("pending", 4, [])
        assert seen["expired"] == ("expired", 6, [])
        assert seen["corrected"] == ("successful", 8, ["corrected"])

    def test_as_of_people_output(self, world: Path) -> None:
        """The heading names the time; the timeline stops there."""
        text = run("show", "order-late", "--db", str(world), "--as-of", at(minutes=20)).output
        assert text.startswith(f"== order-late: EXPIRED as of {at(minutes=20)[:19]}")
        assert "charge.expired" in text
        assert "charge.corrected" not in text

    def test_as_of_relative(self, world: Path) -> None:
        """-30d is before the log began; -1m is now."""
        out = run_json("show", "order-late", "--db", str(world), "--as-of", "-30d")
        assert out["exists"] is False
        assert out["timeline"] == []
        res = run("show", "order-late", "--db", str(world), "--as-of", "-30d")
        assert "did not exist yet" in res.output
        assert run_json("show", "order-late", "--db", str(world), "--as-of", "-1m")["status"] == (
            "successful"
        )

    def test_bad_time_exits_2(self, world: Path) -> None:
        """A time that is neither ISO-8601 nor relative is a usage error."""
        res = run("show", "order-late", "--db", str(world), "--as-of", "yesterday-ish")
        assert res.exit_code == 2
        assert "not a time" in res.output

    def test_not_found_exits_3(self, world: Path) -> None:
        res = run("show", "order-nope", "--db", str(world))
        assert res.exit_code == 3
        assert "no payment" in res.output


# ------------------------------------------------------------------------ list


class TestList:
    """`list` filters payments; `--stuck` finds the ones someone must look at."""

    def test_stuck(self, world: Path) -> None:
        """Pending past expires_at, and a create whose outcome is unknown."""
        out = run_json("list", "--stuck", "--db", str(world))
        assert {p["payment_id"]: p["stuck"] for p in out["payments"]} == {
            "order-pending": "pending past expires_at",
            "order-timeout": "create outcome unknown",
        }
        text = run("list", "--stuck", "--db", str(world)).output
        assert "STUCK: create outcome unknown" in text
        assert text.splitlines()[0].split()[:3] == ["PAYMENT", "STATUS", "AMOUNT"]

    def test_status_since_until_limit(self, world: Path) -> None:
        """Newest first; --since/--until on created_at; --limit says it truncated."""
        out = run_json("list", "--db", str(world))
        ids = [p["payment_id"] for p in out["payments"]]
        assert ids[0] == "order-refused"
        assert len(ids) == 7
        assert not out["truncated"]
        assert [
            p["payment_id"]
            for p in run_json("list", "--status", "expired", "--db", str(world))["payments"]
        ] == ["order-conflict"]
        window = run_json(
            "list", "--since", at(minutes=3), "--until", at(minutes=30), "--db", str(world)
        )
        assert [p["payment_id"] for p in window["payments"]] == ["order-conflict", "order-late"]
        limited = run_json("list", "--limit", "2", "--db", str(world))
        assert limited["count"] == 2
        assert limited["truncated"] is True
        assert "more with --limit" in run("list", "--limit", "2", "--db", str(world)).output

    def test_bad_status_exits_2(self, world: Path) -> None:
        assert run("list", "--status", "paid", "--db", str(world)).exit_code == 2


# ------------------------------------------------------------------- anomalies


class TestAnomalies:
    """`anomalies` lists everything that went wrong, each with payment, time and reason."""

    def test_every_category(self, world: Path) -> None:
        """Conflicts, corrections, refusals by kind, unknowns, duplicates."""
        out = run_json("anomalies", "--db", str(world))
        by = {(a["category"], a["payment_id"]) for a in out["anomalies"]}
        assert by >= {
            ("duplicate_delivery", "order-paid"),
            ("bad_signature", "order-pending"),
            ("stale_timestamp", "order-pending"),
            ("mismatch", "order-pending"),
            ("correction", "order-late"),
            ("conflict", "order-conflict"),
            ("create_unknown", "order-timeout"),
            ("unknown", None),
            ("malformed", None),
            # Payloads applied with no read of the charge after them (no API key here).
            ("unresolved_hint", "order-paid"),
            ("unresolved_hint", "order-declined"),
            ("unresolved_hint", "order-conflict"),
        }
        assert out["by_category"]["malformed"] == 2
        assert out["by_category"]["unresolved_hint"] == 3
        assert out["count"] == len(out["anomalies"]) == sum(out["by_category"].values())
        for a in out["anomalies"]:
            assert a["at"]
            assert a["reason"]
            assert a["inbox_id"]
        assert [a["inbox_id"] for a in out["anomalies"]] == sorted(
            (a["inbox_id"] for a in out["anomalies"]), reverse=True
        )

    def test_since_and_limit(self, world: Path) -> None:
        """--since keeps the later ones; --limit shows the newest, counts them all."""
        late = run_json("anomalies", "--since", at(minutes=20), "--db", str(world))
        assert {a["category"] for a in late["anomalies"]} == {
            "correction",
            "conflict",
            "create_unknown",
            "malformed",
            "unresolved_hint",  # the conflicting payload: no read of its charge since
        }
        res = run("anomalies", "--limit", "2", "--db", str(world))
        assert res.exit_code == 0
        assert "2 of 13 anomalies" in res.output
        assert "no anomalies since" in run("anomalies", "--since", "now", "--db", str(world)).output


# ----------------------------------------------------------------------- stats


class TestStats:
    """`stats` summarises the log."""

    def test_figures(self, world: Path) -> None:
        """Statuses, failure codes, conversion, lag percentiles, rates."""
        out = run_json("stats", "--db", str(world))
        assert out["payments"] == 7
        assert {k: v["payments"] for k, v in out["by_status"].items()} == {
            "created": 1,
            "pending": 1,
            "successful": 2,
            "failed": 2,
            "expired": 1,
        }
        assert out["by_failure_code"] == {"insufficient_fund": 1, "invalid_charge": 1}
        assert out["conversion"]["of_ended"] == 0.4
        lag = out["webhook_lag_seconds"]
        assert (lag["completions"], lag["p50"], lag["max"]) == (2, 30.0, 60.0)
        assert out["webhooks"]["duplicates"] == 1
        assert out["webhooks"]["deliveries"] == 9
        assert out["inputs"]["rejected"] == out["inputs"]["by_kind"]["webhook"]["rejected"] + 1

    def test_since(self, world: Path) -> None:
        """--since counts payments created and inputs received from then on."""
        out = run_json("stats", "--since", at(minutes=30), "--db", str(world))
        assert out["payments"] == 2
        assert out["webhook_lag_seconds"]["completions"] == 0

    def test_people_output(self, world: Path) -> None:
        text = run("stats", "--db", str(world)).output
        assert "conversion    40.0% of ended payments successful (2 of 5)" in text
        assert "p50 30.0 s" in text
        assert "duplicates 1 (11.1%)" in text


# ---------------------------------------------------------------------- export


class TestExport:
    """`export` streams the whole audit trail, exactly as stored."""

    def test_jsonl_is_complete_and_rechains(self, world: Path) -> None:
        """Every row once, in commit order; the chains recompute to verify's heads."""
        res = run("export", "--db", str(world))
        rows = [json.loads(line) for line in res.stdout.splitlines()]
        trailer = rows.pop()  # the export ends with its trailer
        assert trailer["table"] == "trailer"
        assert trailer["complete"] is True
        assert (trailer["inbox_rows"], trailer["events"]) == (
            sum(r["table"] == "inbox" for r in rows),
            sum(r["table"] == "events" for r in rows),
        )
        report = run_json("verify", "--db", str(world))
        assert (trailer["inbox_head"], trailer["events_head"]) == (
            report["inbox_head"],
            report["events_head"],
        )
        assert sum(r["table"] == "inbox" for r in rows) == report["inbox_rows"]
        assert sum(r["table"] == "events" for r in rows) == report["events"]
        heads = {"inbox": _codec.GENESIS, "events": _codec.GENESIS}
        last_inbox = 0
        for r in rows:
            if r["table"] == "inbox":
                heads["inbox"] = _codec.chain_hash(heads["inbox"], r, _rows.INBOX_HASHED)
                assert heads["inbox"] == r["hash"]
                last_inbox = r["id"]
            else:
                heads["events"] = _codec.chain_hash(heads["events"], r, _rows.EVENT_HASHED)
                assert heads["events"] == r["hash"]
                assert r["causation"] == last_inbox  # each input is followed by its events
        assert (heads["inbox"], heads["events"]) == (report["inbox_head"], report["events_head"])

    def test_csv_since_and_output_file(self, world: Path, tmp_path: Path) -> None:
        """CSV with every stored column; --since; --output writes a file."""
        target = tmp_path / "audit.csv"
        res = run("export", "--db", str(world), "--format", "csv", "--since", at(hours=1), "-o")
        assert res.exit_code == 2  # -o needs a value
        res = run(
            "export",
            "--db",
            str(world),
            "--format",
            "csv",
            "--since",
            at(hours=1),
            "-o",
            str(target),
        )
        assert res.exit_code == 0
        assert "exported" in res.stderr
        with target.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        trailer = rows.pop()  # the last row is the trailer, its object in `data`
        assert trailer["table"] == "trailer"
        assert json.loads(trailer["data"])["inbox_rows"] == sum(r["table"] == "inbox" for r in rows)
        assert tuple(rows[0].keys()) == _queries.EXPORT_COLUMNS
        assert {r["payment_id"] or r["stream"] for r in rows} >= {"order-timeout", "order-refused"}
        assert all(
            (r["received_at"] or r["recorded_at"]) >= at(hours=1).replace("Z", "") for r in rows
        )

    def test_streams_in_batches(self, world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Rows are read a batch at a time (the memory bound): a batch of 3 still gets all."""
        full = run("export", "--db", str(world)).stdout
        monkeypatch.setattr(_queries, "_BATCH", 3)
        assert run("export", "--db", str(world)).stdout == full


# ------------------------------------------------------- verify and checkpoints


class TestVerifyAndCheckpoint:
    """`verify` names the first bad row; a checkpoint catches a rewrite of the whole file."""

    def test_tampered_copy_names_the_row(self, world: Path) -> None:
        """An edited event fails verify, naming the table and row."""
        edit(
            world, "UPDATE events SET data = replace(data, 'expired', 'failed') WHERE position = 14"
        )
        res = run("verify", "--db", str(world))
        assert res.exit_code == 1
        assert "FAILED: events row 14 does not match the hash chain" in res.output
        out = json.loads(run("verify", "--db", str(world), "--json").stdout)
        assert (out["ok"], out["table"], out["row_id"]) == (False, "events", 14)

    def test_missing_trigger(self, world: Path) -> None:
        """A dropped append-only trigger fails verify."""
        conn = sqlite3.connect(world)
        conn.execute("DROP TRIGGER inbox_no_delete")
        conn.commit()
        conn.close()
        res = run("verify", "--db", str(world))
        assert res.exit_code == 1
        assert "inbox_no_delete" in res.output

    def test_checkpoint_then_appends_still_verify(self, world: Path, tmp_path: Path) -> None:
        """A checkpoint (file or inline JSON) holds while the log grows."""
        res = run("checkpoint", "--db", str(world), "--json")
        cp = json.loads(res.stdout)
        assert set(cp) == set(_queries.CHECKPOINT_KEYS)
        assert cp["schema_version"] == "0005_index_accounting"
        file = tmp_path / "cp.json"
        file.write_text(res.stdout, encoding="utf-8")
        with Tracker(world, clock=FakeClock(T0 + dt.timedelta(hours=2))) as t:
            t.request_payment(payment_id="order-after", amount=5_000, return_uri="https://s.ex/r")
        for arg in (str(file), res.stdout):
            res2 = run("verify", "--db", str(world), "--checkpoint", arg)
            assert res2.exit_code == 0, res2.output
            assert "1 inputs and 1 events appended since" in res2.output
        out = run_json("verify", "--db", str(world), "--checkpoint", str(file))
        assert out["checkpoint_ok"] is True
        assert out["checkpoint"] == cp

    def test_people_checkpoint(self, world: Path) -> None:
        """The people output ends with the JSON line to keep."""
        lines = run("checkpoint", "--db", str(world)).output.splitlines()
        kept = json.loads(lines[-2])
        assert kept["inbox_id"] > 0
        assert lines[-1].startswith("Later: kplus-fsm verify")

    def test_rewritten_log_fails_the_checkpoint(self, world: Path) -> None:
        """An edit with every hash recomputed passes plain verify, not the checkpoint."""
        cp = run("checkpoint", "--db", str(world), "--json").stdout
        edit(world, "UPDATE inbox SET reason = 'all good' WHERE id = 3")
        rewrite_chain(world, "inbox", "id", _rows.INBOX_HASHED)
        assert run("verify", "--db", str(world)).exit_code == 0  # the chain alone is fooled
        res = run("verify", "--db", str(world), "--checkpoint", cp)
        assert res.exit_code == 1
        n = json.loads(cp)["inbox_id"]
        assert f"FAILED: inbox row {n} hash differs from the checkpoint" in res.output

    def test_truncated_log_fails_the_checkpoint(self, world: Path) -> None:
        """Cutting the tail keeps a valid chain, but is shorter than the checkpoint."""
        cp = json.loads(run("checkpoint", "--db", str(world), "--json").stdout)
        last = cp["event_position"]
        edit(world, f"DELETE FROM events WHERE position > {last - 2}")
        assert run("verify", "--db", str(world)).exit_code == 0
        out = json.loads(
            run("verify", "--db", str(world), "--checkpoint", json.dumps(cp), "--json").stdout
        )
        assert out["ok"] is False
        assert out["checkpoint_ok"] is False
        assert out["problem"].startswith("the log is shorter than the checkpoint: events has")
        assert (out["table"], out["row_id"]) == ("events", last)

    def test_checkpoint_of_a_broken_log_refused(self, world: Path) -> None:
        """No checkpoint for a log that does not verify."""
        edit(world, "UPDATE inbox SET reason = 'x' WHERE id = 2")
        res = run("checkpoint", "--db", str(world))
        assert res.exit_code == 1
        assert "inbox row 2 does not match the hash chain" in res.output

    @pytest.mark.parametrize(
        "bad",
        ["{not json", '{"inbox_id": 1}', "/no/such/checkpoint.json", '{"inbox_id": -1}'],
    )
    def test_bad_checkpoint_exits_2(self, world: Path, bad: str) -> None:
        res = run("verify", "--db", str(world), "--checkpoint", bad)
        assert res.exit_code == 2
        assert "checkpoint" in res.output


# ---------------------------------------------------------------------- replay


class TestReplay:
    """`replay --check` compares; `replay` repairs."""

    def test_check_and_repair(self, world: Path) -> None:
        """A drifted projection: --check exits 1 listing it; replay repairs it."""
        assert run("replay", "--check", "--db", str(world)).exit_code == 0
        conn = sqlite3.connect(world)
        conn.execute("UPDATE payments SET status = 'successful' WHERE payment_id = 'order-pending'")
        conn.commit()
        conn.close()
        res = run("replay", "--check", "--db", str(world))
        assert res.exit_code == 1
        assert "order-pending: status: stored 'successful', replayed 'pending'" in res.output
        assert run("replay", "--db", str(world)).exit_code == 0
        assert run_json("replay", "--check", "--db", str(world))["ok"] is True


# ------------------------------------------------------------ progress and exits


class TestProgressAndExits:
    """Progress bars for people only; documented exit codes."""

    def test_progress_bar_for_people_only(
        self, world: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With a terminal the long commands draw a bar on stderr; --json never does."""
        monkeypatch.setattr(_output, "interactive", lambda as_json=False: not as_json)
        for cmd, label in (
            (("verify",), "verify"),
            (("replay", "--check"), "replay"),
            (("checkpoint",), "verify"),
        ):
            res = run(*cmd, "--db", str(world))
            assert res.exit_code == 0
            assert label in res.stderr
        res = run("verify", "--db", str(world), "--json")
        assert res.stderr == ""
        json.loads(res.stdout)

    @pytest.mark.parametrize(
        "args",
        [
            ("show", "x"),
            ("list",),
            ("anomalies",),
            ("stats",),
            ("export",),
            ("checkpoint",),
            ("verify",),
            ("replay", "--check"),
            ("replay",),
        ],
    )
    def test_missing_or_foreign_database_exits_4(
        self, tmp_path: Path, args: tuple[str, ...]
    ) -> None:
        """No file: exit 4 and nothing created. Not a kplus_fsm log: exit 4."""
        missing = tmp_path / "none.db"
        res = run(*args, "--db", str(missing))
        assert res.exit_code == 4
        assert not missing.exists()
        foreign = tmp_path / "foreign.db"
        conn = sqlite3.connect(foreign)
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.close()
        if args != ("replay",):  # replay (read-write) would migrate any SQLite file
            assert run(*args, "--db", str(foreign)).exit_code == 4

    def test_db_from_environment(self, world: Path) -> None:
        """--db defaults to $KPLUS_FSM_DB."""
        res = CliRunner().invoke(
            cli, ["list", "--stuck", "--json"], env={"KPLUS_FSM_DB": str(world)}
        )
        assert json.loads(res.stdout)["count"] == 2


# ------------------------------------------------------------------- the views


def view_rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


class TestViews:
    """The views give sqlite-utils and Datasette users the CLI's answers."""

    def test_views_exist_and_verify_still_passes(self, world: Path) -> None:
        names = {
            r["name"]
            for r in view_rows(world, "SELECT name FROM sqlite_master WHERE type = 'view'")
        }
        assert names == {
            "timeline",
            "stuck_payments",
            "anomalies",
            "webhook_lag",
            "payment_stats",
            "unresolved_hints",
            "orders_paid_twice",
        }
        assert run_json("verify", "--db", str(world))["ok"] is True

    @pytest.mark.parametrize("pid", ["order-paid", "order-pending", "order-late", "order-timeout"])
    def test_timeline_matches_show(self, world: Path, pid: str) -> None:
        shown = run_json("show", pid, "--db", str(world))["timeline"]
        rows = view_rows(
            world,
            "SELECT type, inbox_id, position, kind, outcome, reason FROM timeline "
            "WHERE payment_id = ? ORDER BY inbox_id, position",
            (pid,),
        )
        assert [tuple(r) for r in rows] == [
            (e["type"], e["inbox_id"], e["position"], e["kind"], e["outcome"], e["reason"])
            for e in shown
        ]

    def test_stuck_payments_matches_list(self, world: Path) -> None:
        listed = run_json("list", "--stuck", "--db", str(world))["payments"]
        rows = view_rows(world, "SELECT payment_id, reason FROM stuck_payments")
        assert sorted((r["payment_id"], r["reason"]) for r in rows) == sorted(
            (p["payment_id"], p["stuck"]) for p in listed
        )

    def test_anomalies_matches_the_command(self, world: Path) -> None:
        out = run_json("anomalies", "--db", str(world), "--limit", "1000")["anomalies"]
        rows = view_rows(world, "SELECT * FROM anomalies")
        assert sorted(tuple(r) for r in rows) == sorted(
            tuple(a[c] for c in _queries.ANOMALY_COLUMNS) for a in out
        )

    def test_every_inbox_row_classified_alike(self, world: Path) -> None:
        """The query's category expression and the view's frozen copy agree on every row."""
        view = {
            r["inbox_id"]: r["category"]
            for r in view_rows(
                world,
                "SELECT inbox_id, category FROM anomalies"
                " WHERE position IS NULL AND category != 'unresolved_hint'",
            )
        }
        conn = sqlite3.connect(f"file:{world}?mode=ro", uri=True)
        try:
            mine = dict(
                conn.execute(
                    f"SELECT i.id, {_queries.ANOMALY_CATEGORY_SQL} FROM inbox i"
                ).fetchall()
            )
        finally:
            conn.close()
        assert view == {k: v for k, v in mine.items() if k in view}
        assert set(mine.values()) <= set(_queries.ANOMALY_CATEGORIES)

    def test_codes_classify_as_the_old_wording_did(self, world: Path) -> None:
        """
        Every row's category from its reason_code (0004 on) equals its category
        from the reason text by the rule of 0003: the codes written now, and the
        legacy backfill of old rows, reclassify nothing.
        """
        legacy = ANOMALY_CATEGORY_V3.format(like="LIKE")
        backfilled = LEGACY_REASON_CODE.format(like="LIKE")
        conn = sqlite3.connect(f"file:{world}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                f"SELECT i.id, {legacy}, {_queries.ANOMALY_CATEGORY_SQL}, i.reason_code,"
                f" {backfilled} FROM inbox i"
            ).fetchall()
        finally:
            conn.close()
        assert [(r[0], r[1]) for r in rows] == [(r[0], r[2]) for r in rows]
        refused = {r[1] for r in rows if r[3] is not None}
        assert {"bad_signature", "stale_timestamp", "mismatch"} <= refused
        # The legacy expression (the backfill, the read-only shim) gives the codes written now.
        assert [(r[0], r[3]) for r in rows] == [(r[0], r[4]) for r in rows]

    def test_webhook_lag_and_payment_stats_match_stats(self, world: Path) -> None:
        out = run_json("stats", "--db", str(world))
        lags = view_rows(
            world,
            "SELECT lag_seconds FROM webhook_lag WHERE via IN ('webhook', 'refetch') "
            "AND completion IN ('charge.successful', 'charge.failed') ORDER BY 1",
        )
        assert [r[0] for r in lags] == [30.0, 60.0]
        assert out["webhook_lag_seconds"]["max"] == 60.0
        by_status = view_rows(world, "SELECT status, sum(payments) FROM payment_stats GROUP BY 1")
        assert {r[0]: r[1] for r in by_status} == {
            k: v["payments"] for k, v in out["by_status"].items() if v["payments"]
        }

    def test_every_view_is_documented(self) -> None:
        """docs/event-log.md has a section for each view."""
        text = (ROOT / "docs" / "event-log.md").read_text(encoding="utf-8")
        for name in ("timeline", "stuck_payments", "anomalies", "webhook_lag", "payment_stats"):
            assert f"### `{name}`" in text, name


def test_store_query_refuses_writes(world: Path) -> None:
    """SQLiteStore.query runs SELECTs only."""
    with SQLiteStore(world, read_only=True) as store:
        with pytest.raises(ValueError, match="SELECT"):
            store.query("DELETE FROM payments")
        assert store.query("SELECT count(*) FROM payments")[0][0] == 7


def test_schema_knows_0002() -> None:
    assert "0002_views" in _schema.KNOWN


# -------------------------------------------------------------- the scale scripts


@pytest.mark.slow
def test_scale_scripts_tiny(tmp_path: Path) -> None:
    """build_log.py and measure.py, on a 2,000-event log, keep working."""
    db = tmp_path / "scale.db"
    build = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "scale" / "build_log.py"),
            "--db",
            str(db),
            "--events",
            "2000",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    summary = json.loads(build.stdout)
    assert summary["events"] >= 2000
    assert summary["verify"] == "ok"
    assert summary["replay_differences"] == 0
    measure = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "scale" / "measure.py"),
            "--db",
            str(db),
            "--repeat",
            "3",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert measure.returncode == 0, measure.stderr
    figures = json.loads(measure.stdout)
    for key in ("show", "list_stuck", "replay_check", "verify", "export"):
        assert key in figures, key
    assert figures["verify"]["rows_per_s"] > 0
    assert figures["export"]["peak_rss_mib"] > 0
