"""kplus_fsm._store._rows: every column list once, rows read and written by name."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kplus_fsm import (
    Decision,
    InboxDraft,
    Outcome,
    Payment,
    PaymentRequest,
    ReasonCode,
    SQLiteStore,
    Status,
    decide,
)
from kplus_fsm._store import _rows
from kplus_fsm._store._rows import Heads

GENESIS = "0" * 64

#: The hashed columns, as every log ever written hashed them: a contract, pinned
#: here by hand rather than read back from the module under test.
INBOX_HASHED = (
    "id",
    "received_at",
    "kind",
    "origin",
    "payment_id",
    "charge_id",
    "external_id",
    "body",
    "body_encoding",
    "headers",
    "verification",
    "outcome",
    "reason",
)
EVENT_HASHED = (
    "position",
    "stream",
    "version",
    "kind",
    "event_version",
    "data",
    "recorded_at",
    "causation",
)


def _table_columns(db: Path, table: str) -> tuple[str, ...]:
    with closing(sqlite3.connect(db)) as conn:
        return tuple(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))


def test_hashed_columns_are_the_contract() -> None:
    assert _rows.INBOX_HASHED == INBOX_HASHED
    assert _rows.EVENT_HASHED == EVENT_HASHED


def test_column_lists_are_the_tables_columns(db_path: Path) -> None:
    SQLiteStore(db_path).close()
    assert _table_columns(db_path, "inbox") == _rows.INBOX_COLUMNS
    assert _table_columns(db_path, "events") == _rows.EVENT_COLUMNS
    assert _table_columns(db_path, "payments") == _rows.PAYMENT_COLUMNS


@pytest.mark.slow
def test_column_lists_are_the_postgres_tables_columns(pg_url: str) -> None:
    import psycopg

    from kplus_fsm import PostgresStore

    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        for table, columns in (
            ("inbox", _rows.INBOX_COLUMNS),
            ("events", _rows.EVENT_COLUMNS),
            ("payments", _rows.PAYMENT_COLUMNS),
        ):
            got = conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = %s"
                " ORDER BY ordinal_position",
                (table,),
            ).fetchall()
            assert tuple(r[0] for r in got) == columns


def _independent_hash(previous: str, values: list[object]) -> str:
    """sha256(previous || compact JSON array), made with the standard library only."""
    payload = json.dumps(values, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(previous.encode("ascii") + payload.encode("utf-8")).hexdigest()


def _payment(**changes: object) -> Payment:
    fields: dict[str, object] = {
        "payment_id": "pay-1",
        "status": Status.PENDING,
        "amount": 35_000,
        "currency": "THB",
        "return_uri": "https://shop.example/r",
        "charge_id": "chrg_test_1",
        "version": 2,
        "created_at": "2026-01-01T00:00:00.000000Z",
        "updated_at": "2026-01-01T00:00:01.000000Z",
    }
    fields.update(changes)
    return Payment(**fields)  # type: ignore[arg-type]


class TestPlan:
    """plan(): the rows one input writes, each value in its column, hashes by name."""

    def test_inbox_row_by_name_and_its_hash(self) -> None:
        draft = InboxDraft(
            kind="webhook",
            body='{"a":1}',
            body_encoding="json",
            origin="webhook",
            external_id="evnt_1",
            headers='{"x":"y"}',
            verification="verified",
        )
        decision = Decision(
            outcome=Outcome.REJECTED,
            reason="no such payment",
            payment_id="pay-9",
            charge_id="chrg_9",
            reason_code=ReasonCode.NO_SUCH_PAYMENT,
        )
        planned = _rows.plan(
            draft,
            decision,
            None,
            Heads(),
            now="2026-01-01T00:00:00.000000Z",
            payment_id=None,
            charge_id=None,
        )
        row = dict(zip(_rows.INBOX_COLUMNS, planned.inbox_row, strict=True))
        assert row["id"] == 1
        assert (row["payment_id"], row["charge_id"]) == ("pay-9", "chrg_9")
        assert (row["outcome"], row["reason"], row["reason_code"]) == (
            "rejected",
            "no such payment",
            "no_such_payment",
        )
        assert row["hash"] == _independent_hash(GENESIS, [row[c] for c in INBOX_HASHED])
        assert planned.recorded.inbox == _rows.inbox_row(planned.inbox_row)
        assert planned.event_rows == ()
        assert planned.payment_row is None

    def test_reason_code_is_outside_the_hash(self) -> None:
        draft = InboxDraft(kind="webhook", body="{}", body_encoding="json")
        base = Decision(outcome=Outcome.REJECTED, reason="x")
        coded = Decision(outcome=Outcome.REJECTED, reason="x", reason_code=ReasonCode.MALFORMED)
        plain = _rows.plan(draft, base, None, Heads(), now="t", payment_id=None, charge_id=None)
        with_code = _rows.plan(
            draft, coded, None, Heads(), now="t", payment_id=None, charge_id=None
        )
        assert plain.heads == with_code.heads

    def test_event_rows_by_name_and_their_hash(self) -> None:
        draft = InboxDraft(kind="payment_request", body="{}", body_encoding="json")
        request = PaymentRequest.create(
            payment_id="pay-1", amount=35_000, return_uri="https://shop.example/r"
        )
        decision = decide(None, request)
        heads = Heads(inbox_id=4, position=7)
        planned = _rows.plan(
            draft,
            decision,
            None,
            heads,
            now="2026-01-01T00:00:00.000000Z",
            payment_id="pay-1",
            charge_id=None,
        )
        [event_row] = planned.event_rows
        event = dict(zip(_rows.EVENT_COLUMNS, event_row, strict=True))
        assert (event["position"], event["version"], event["causation"]) == (8, 1, 5)
        assert (event["stream"], event["kind"]) == ("pay-1", "payment.requested")
        assert event["hash"] == _independent_hash(GENESIS, [event[c] for c in EVENT_HASHED])
        assert _rows.event_from_row(event_row) == planned.recorded.events[0]
        assert _rows.event_from_row(event) == planned.recorded.events[0]
        assert planned.heads == Heads(
            inbox_id=5,
            inbox_hash=planned.inbox_row[_rows.INBOX_COLUMNS.index("hash")],
            position=8,
            events_hash=event["hash"],
        )


class TestPayments:
    """payment_to_row / payment_from_row: inverse of each other, by column name."""

    def test_every_field_in_its_column(self) -> None:
        p = _payment(
            livemode=False,
            metadata={"payment_id": "pay-1"},
            flags=frozenset({"b", "a"}),
            webhook_event_ids=frozenset({"evnt_2", "evnt_1"}),
            create_unknown=True,
            order_ref="order-1",
            failure_code="payment_expired",
        )
        row = dict(zip(_rows.PAYMENT_COLUMNS, _rows.payment_to_row(p), strict=True))
        assert row["status"] == "pending"
        assert row["livemode"] == 0
        assert row["create_unknown"] == 1
        assert row["flags"] == '["a","b"]'
        assert row["webhook_event_ids"] == '["evnt_1","evnt_2"]'
        assert row["order_ref"] == "order-1"
        assert row["failure_code"] == "payment_expired"

    @given(
        livemode=st.none() | st.booleans(),
        flags=st.frozensets(st.sampled_from(["corrected", "late", "x"])),
        order_ref=st.none() | st.text(min_size=1, max_size=8),
        create_unknown=st.booleans(),
    )
    def test_round_trip(
        self,
        livemode: bool | None,
        flags: frozenset[str],
        order_ref: str | None,
        create_unknown: bool,
    ) -> None:
        p = _payment(
            livemode=livemode, flags=flags, order_ref=order_ref, create_unknown=create_unknown
        )
        row = _rows.payment_to_row(p)
        assert _rows.payment_from_row(row) == p
        assert _rows.payment_from_row(dict(zip(_rows.PAYMENT_COLUMNS, row, strict=True))) == p

    def test_a_row_from_before_order_ref(self) -> None:
        """A mapping without order_ref (a log before 0003) reads as no order."""
        row = dict(zip(_rows.PAYMENT_COLUMNS, _rows.payment_to_row(_payment()), strict=True))
        del row["order_ref"]
        assert _rows.payment_from_row(row).order_ref is None


def test_heads_from_an_empty_log() -> None:
    assert _rows.heads_from_row((None, None, None, None)) == Heads()
