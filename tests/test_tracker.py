"""The tracker: recording inputs, refusing bad ones, logging, callbacks and consumers."""

from __future__ import annotations

import base64
import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from store_contract import RETURN_URI, Boom, request, snapshot

from kplus_fsm import InboxRow, Outcome, Result, Status, StoredEvent, Tracker, format_time
from kplus_fsm.exceptions import (
    InvalidPaymentRequestError,
    MalformedInputError,
    OutcomeError,
    RefundNotSupportedError,
)
from kplus_fsm.testing import FakeClock, charge_json, error_json, webhook_json
from kplus_fsm.typing import Transaction


@pytest.fixture
def tracker(db_path: Path, clock: FakeClock) -> Iterator[Tracker]:
    with Tracker(db_path, clock=clock) as opened:
        yield opened


def inbox_row(tracker: Tracker, inbox_id: int | None) -> InboxRow:
    """The inbox row with that id."""
    assert inbox_id is not None
    row = next(tracker.store.iter_inbox(inbox_id - 1))
    assert row.id == inbox_id
    return row


def read_only(path: Path) -> closing[sqlite3.Connection]:
    """A separate, read-only connection to the log file."""
    return closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True))


def webhook_body(payment_id: str, charge_id: str, status: str, event_id: str) -> dict[str, Any]:
    return webhook_json(
        charge_json(payment_id=payment_id, charge_id=charge_id, status=status), event_id=event_id
    )


def _without_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "id"}


_BAD_UTF8 = b"\x80\x81\xfe{ not utf-8"
_AMOUNT_AS_TEXT = {**charge_json(payment_id="pay-1"), "amount": "100"}
_NO_ID = _without_id(webhook_body("pay-1", "chrg_1", "successful", "evnt_x"))
_BAD_CHARGE_INSIDE = webhook_json(
    {**charge_json(payment_id="pay-1", charge_id="chrg_1"), "currency": 7}, event_id="evnt_bad"
)
_NOT_AN_ERROR = {"object": "charge", "id": "chrg_1"}


class Malformed(NamedTuple):
    """One malformed input and how it must be recorded."""

    name: str
    call: Callable[[Tracker], object]
    reason: str
    raw: Any  # InboxRow.raw() of the stored row
    encoding: str
    kind: str
    payment_id: str | None = None
    external_id: str | None = None


MALFORMED = [
    Malformed(
        "charge-not-json",
        lambda t: t.record_charge(b"{not json", origin="poll", payment_id="pay-1"),
        "body is not valid JSON: JSONDecodeError",
        "{not json",
        "text",
        "charge_snapshot",
        payment_id="pay-1",
    ),
    Malformed(
        "webhook-invalid-utf8",
        lambda t: t.record_webhook(_BAD_UTF8),
        "body is not valid JSON: UnicodeDecodeError",
        _BAD_UTF8,
        "base64",
        "webhook",
    ),
    Malformed(
        "webhook-json-array",
        lambda t: t.record_webhook("[1, 2, 3]"),
        "webhook event: body is not a JSON object",
        "[1, 2, 3]",
        "text",
        "webhook",
    ),
    Malformed(
        "charge-amount-string",
        lambda t: t.record_charge(_AMOUNT_AS_TEXT, origin="poll"),
        "charge: field 'amount' is missing or not an integer",
        _AMOUNT_AS_TEXT,
        "json",
        "charge_snapshot",
    ),
    Malformed(
        "webhook-without-id",
        lambda t: t.record_webhook(_NO_ID),
        "webhook event: field 'id' is missing or not a string",
        _NO_ID,
        "json",
        "webhook",
    ),
    Malformed(
        "webhook-with-malformed-charge",
        lambda t: t.record_webhook(_BAD_CHARGE_INSIDE),
        "charge: field 'currency' is missing or not a string",
        _BAD_CHARGE_INSIDE,
        "json",
        "webhook",
        external_id="evnt_bad",
    ),
    Malformed(
        "create-error-not-an-error",
        lambda t: t.record_create_error("pay-1", _NOT_AN_ERROR),
        "create error: not an Omise error object",
        _NOT_AN_ERROR,
        "json",
        "create_error",
        payment_id="pay-1",
    ),
]


class TestMalformedInputs:
    """Unreadable inputs are recorded as rejected, then raise MalformedInputError."""

    @pytest.mark.parametrize("case", MALFORMED, ids=[case.name for case in MALFORMED])
    def test_recorded_then_raised(self, tracker: Tracker, case: Malformed) -> None:
        request(tracker, "pay-1")
        before = tracker.get("pay-1")
        with pytest.raises(MalformedInputError) as info:
            case.call(tracker)
        error = info.value
        assert error.inbox_id == 2
        assert error.reason == case.reason
        row = inbox_row(tracker, error.inbox_id)
        assert row.outcome == "rejected"
        assert row.reason == case.reason
        assert row.kind == case.kind
        assert row.body_encoding == case.encoding
        assert row.payment_id == case.payment_id
        assert row.external_id == case.external_id
        assert row.raw() == case.raw
        assert tracker.get("pay-1") == before
        assert tracker.store.counts() == {"inbox": 2, "events": 1, "payments": 1}

    def test_invalid_utf8_is_stored_as_base64(self, tracker: Tracker) -> None:
        with pytest.raises(MalformedInputError) as info:
            tracker.record_webhook(_BAD_UTF8)
        row = inbox_row(tracker, info.value.inbox_id)
        assert row.body == base64.b64encode(_BAD_UTF8).decode("ascii")
        assert row.raw() == _BAD_UTF8

    def test_json_object_body_is_kept_exactly(self, tracker: Tracker) -> None:
        charge = {**charge_json(payment_id="pay-1"), "amount": "100", "extra": [1, {"é": None}]}
        with pytest.raises(MalformedInputError) as info:
            tracker.record_charge(charge, origin="poll")
        assert inbox_row(tracker, info.value.inbox_id).raw() == charge

    def test_message_does_not_echo_the_body(self, tracker: Tracker) -> None:
        with pytest.raises(MalformedInputError) as info:
            tracker.record_charge(b"{SECRET-BODY-MARKER", origin="poll")
        assert "SECRET-BODY-MARKER" not in str(info.value)
        assert "inbox row 1" in str(info.value)


class TestRefusedRequests:
    """Invalid payment requests and refund requests are recorded as rejected, then raise."""

    def test_invalid_payment_request(self, tracker: Tracker) -> None:
        with pytest.raises(InvalidPaymentRequestError) as info:
            tracker.request_payment(payment_id="pay-1", amount=1, return_uri=RETURN_URI)
        error = info.value
        assert error.field == "amount"
        assert error.inbox_id == 1
        row = inbox_row(tracker, error.inbox_id)
        assert (row.kind, row.outcome, row.payment_id) == ("payment_request", "rejected", "pay-1")
        assert row.reason.startswith("invalid amount: must be from 2000 to 15000000 satang")
        assert row.reason == error.reason
        assert row.raw() == {"payment_id": "pay-1", "amount": 1, "return_uri": RETURN_URI}
        assert tracker.find("pay-1") is None
        assert tracker.store.counts() == {"inbox": 1, "events": 0, "payments": 0}

    def test_invalid_payment_id_is_stored_without_attribution(self, tracker: Tracker) -> None:
        with pytest.raises(InvalidPaymentRequestError) as info:
            tracker.request_payment(payment_id=("not", "a", "str"), amount=5000, return_uri="x")
        assert info.value.field == "payment_id"
        row = inbox_row(tracker, info.value.inbox_id)
        assert row.payment_id is None
        assert row.raw()["payment_id"] == ["not", "a", "str"]

    def test_refund_is_recorded_and_refused(self, tracker: Tracker) -> None:
        request(tracker, "pay-1")
        snapshot(tracker, "pay-1", "chrg_1", "successful")
        before = tracker.get("pay-1")
        with pytest.raises(RefundNotSupportedError, match="cannot refund") as info:
            tracker.request_refund("pay-1", amount=500)
        row = inbox_row(tracker, info.value.inbox_id)
        assert row.id == 3
        assert (row.kind, row.outcome, row.payment_id) == ("refund_request", "rejected", "pay-1")
        assert row.charge_id == "chrg_1"
        assert row.raw() == {"payment_id": "pay-1", "amount": 500}
        assert tracker.get("pay-1") == before


class TestForeignPayloads:
    """Payloads for another payment, or for no payment, are rejected outcomes."""

    @pytest.mark.parametrize(
        ("charge", "reason"),
        [
            (charge_json(payment_id="pay-2", charge_id="chrg_1"), "payment id mismatch"),
            (charge_json(payment_id="pay-1", charge_id="chrg_1", amount=99_999), "amount mismatch"),
            (charge_json(payment_id="pay-1", charge_id="chrg_1", currency="USD"), "currency"),
        ],
        ids=["other-payment-id", "other-amount", "other-currency"],
    )
    def test_snapshot_for_another_payment(
        self, tracker: Tracker, charge: dict[str, Any], reason: str
    ) -> None:
        request(tracker, "pay-1")
        request(tracker, "pay-2")
        before = tracker.get("pay-1")
        result = tracker.record_charge(charge, origin="poll", payment_id="pay-1")
        assert result.outcome is Outcome.REJECTED
        assert reason in result.reason
        assert result.events == ()
        assert result.payment == before
        assert tracker.get("pay-1") == before
        with pytest.raises(OutcomeError) as info:
            result.raise_for_outcome()
        assert (info.value.outcome, info.value.inbox_id) == ("rejected", result.inbox_id)
        assert inbox_row(tracker, result.inbox_id).outcome == "rejected"

    def test_webhook_for_another_amount(self, tracker: Tracker) -> None:
        request(tracker, "pay-1")
        body = webhook_json(
            charge_json(payment_id="pay-1", charge_id="chrg_1", status="successful", amount=3000),
            event_id="evnt_1",
        )
        result = tracker.record_webhook(body)
        assert result.outcome is Outcome.REJECTED
        assert "amount mismatch" in result.reason
        assert tracker.get("pay-1").status is Status.CREATED
        with pytest.raises(OutcomeError):
            result.raise_for_outcome()

    def test_snapshot_for_an_unknown_payment(self, tracker: Tracker) -> None:
        result = snapshot(tracker, "ghost", "chrg_9", "successful")
        assert (result.outcome, result.reason) == (Outcome.REJECTED, "no such payment")
        assert result.payment is None
        assert tracker.find("ghost") is None
        assert tracker.find("chrg_9") is None
        row = inbox_row(tracker, result.inbox_id)
        assert (row.outcome, row.payment_id, row.charge_id) == ("rejected", "ghost", "chrg_9")
        with pytest.raises(OutcomeError):
            result.raise_for_outcome()

    def test_accepted_outcomes_do_not_raise(self, tracker: Tracker) -> None:
        applied = request(tracker, "pay-1")
        duplicate = request(tracker, "pay-1")
        assert duplicate.outcome is Outcome.DUPLICATE
        assert applied.raise_for_outcome() is applied
        assert duplicate.raise_for_outcome() is duplicate


SECRET_AUTH = "Basic c2tleV90ZXN0X1NFQ1JFVA=="
SECRET_COOKIE = "session=cookie-s3cr3t"
HEADERS = {
    "Authorization": SECRET_AUTH,
    "Cookie": SECRET_COOKIE,
    "X-Api-Key": "api-key-s3cr3t",
    "Omise-Signature": "sig-abc123",
    "Omise-Signature-Timestamp": "1767225600",
    "Content-Type": "application/json",
}


class TestHeaders:
    """Credential headers are never stored; the signature headers are."""

    def test_webhook_headers(self, tracker: Tracker, db_path: Path) -> None:
        request(tracker, "pay-1")
        result = tracker.record_webhook(
            webhook_body("pay-1", "chrg_1", "pending", "evnt_1"),
            headers=HEADERS,
            verification="verified",
        )
        assert result.outcome is Outcome.APPLIED
        row = inbox_row(tracker, result.inbox_id)
        assert row.headers is not None
        assert json.loads(row.headers) == {
            "omise-signature": "sig-abc123",
            "omise-signature-timestamp": "1767225600",
            "content-type": "application/json",
        }
        assert row.verification == "verified"
        tracker.close()
        stored = db_path.read_bytes()
        assert b"sig-abc123" in stored
        for secret in (SECRET_AUTH, SECRET_COOKIE, "api-key-s3cr3t"):
            assert secret.encode() not in stored

    def test_refused_webhook_headers(self, tracker: Tracker) -> None:
        result = tracker.refuse_webhook(
            b'{"object": "event"}',
            headers=HEADERS,
            verification="bad_signature",
            reason="signature does not match",
        )
        assert result.outcome is Outcome.REJECTED
        row = inbox_row(tracker, result.inbox_id)
        assert row.headers is not None
        assert set(json.loads(row.headers)) == {
            "omise-signature",
            "omise-signature-timestamp",
            "content-type",
        }
        assert (row.verification, row.reason) == ("bad_signature", "signature does not match")


def _record_a_mix(tracker: Tracker) -> int:
    """Feed one of every kind of input; return how many inputs were given."""
    marker = "SECRET-BODY-MARKER"
    request(tracker, "pay-1")
    tracker.record_charge(
        charge_json(payment_id="pay-1", charge_id="chrg_1", description=marker),
        origin="create_response",
    )
    body = webhook_json(
        charge_json(
            payment_id="pay-1", charge_id="chrg_1", status="successful", description=marker
        ),
        event_id="evnt_1",
    )
    tracker.record_webhook(body, headers=HEADERS)
    tracker.record_webhook(json.dumps(body).encode(), headers=HEADERS)  # duplicate
    with pytest.raises(MalformedInputError):
        tracker.record_charge(f"{{{marker}".encode(), origin="poll")
    with pytest.raises(RefundNotSupportedError):
        tracker.request_refund("pay-1")
    with pytest.raises(InvalidPaymentRequestError):
        tracker.request_payment(payment_id="pay-2", amount=5, return_uri=RETURN_URI)
    request(tracker, "pay-3")
    tracker.record_create_unknown("pay-3", reason="read timeout")
    tracker.record_create_error("pay-3", error_json("invalid_charge", marker))
    return 10


class TestLogging:
    """One structlog line per input, with ids and statuses; never a body or a secret."""

    @pytest.fixture(autouse=True)
    def default_structlog(self) -> Iterator[None]:
        """structlog's default configuration (other tests, e.g. the CLI's, change it)."""
        saved = structlog.get_config()
        structlog.reset_defaults()
        yield
        structlog.configure(**saved)

    def test_one_line_per_input(self, tracker: Tracker) -> None:
        with structlog.testing.capture_logs() as logs:
            n = _record_a_mix(tracker)
        lines = [e for e in logs if e["event"] == "input_recorded"]
        assert tracker.store.counts()["inbox"] == n
        assert [line["inbox_id"] for line in lines] == list(range(1, n + 1))
        for line in lines:
            assert {"payment_id", "charge_id", "outcome", "from_status", "to_status"} <= set(line)
        pending = lines[1]
        assert (pending["payment_id"], pending["charge_id"]) == ("pay-1", "chrg_1")
        assert (pending["outcome"], pending["from_status"], pending["to_status"]) == (
            "applied",
            "created",
            "pending",
        )
        assert pending["log_level"] == "info"
        webhook = lines[2]
        assert (webhook["from_status"], webhook["to_status"]) == ("pending", "successful")
        assert webhook["external_id"] == "evnt_1"
        assert [line["outcome"] for line in lines] == [
            "applied",
            "applied",
            "applied",
            "duplicate",
            "rejected",
            "rejected",
            "rejected",
            "applied",
            "unknown",
            "applied",
        ]
        assert lines[4]["log_level"] == "warning"
        assert lines[9]["to_status"] == "failed"

    def test_no_body_or_secret_is_logged(self, tracker: Tracker) -> None:
        def failing(_result: Result) -> None:
            raise Boom("callback failed")

        tracker.on_commit(failing)
        with structlog.testing.capture_logs() as logs:
            _record_a_mix(tracker)
        assert any(e["event"] == "on_commit_callback_failed" for e in logs)
        text = repr(logs)
        assert "input_recorded" in text
        for secret in ("SECRET-BODY-MARKER", SECRET_AUTH, SECRET_COOKIE, "api-key-s3cr3t"):
            assert secret not in text


class TestOnCommit:
    """Post-commit callbacks see committed data and cannot undo an input."""

    def test_callback_runs_after_commit(self, tracker: Tracker, db_path: Path) -> None:
        seen: list[tuple[int, str, int]] = []

        def check(result: Result) -> None:
            with read_only(db_path) as conn:
                row = conn.execute(
                    "SELECT id, outcome FROM inbox WHERE id = ?", (result.inbox_id,)
                ).fetchone()
                n_events = conn.execute(
                    "SELECT count(*) FROM events WHERE causation = ?", (result.inbox_id,)
                ).fetchone()[0]
            seen.append((row[0], row[1], n_events))

        tracker.on_commit(check)
        request(tracker, "pay-1")
        snapshot(tracker, "pay-1", "chrg_1", "pending")
        with pytest.raises(MalformedInputError):
            tracker.record_webhook(b"nope")
        assert seen == [(1, "applied", 1), (2, "applied", 1), (3, "rejected", 0)]

    def test_raising_callback_does_not_break_the_input(
        self, tracker: Tracker, db_path: Path
    ) -> None:
        later: list[Result] = []

        def failing(_result: Result) -> None:
            raise Boom("callback failed")

        tracker.on_commit(failing)
        tracker.on_commit(later.append)
        result = request(tracker, "pay-1")
        assert result.outcome is Outcome.APPLIED
        assert later == [result]
        with read_only(db_path) as conn:
            assert conn.execute("SELECT count(*) FROM inbox").fetchone()[0] == 1
            assert conn.execute("SELECT status FROM payments").fetchone()[0] == "created"

    def test_unsubscribe(self, tracker: Tracker) -> None:
        calls: list[Result] = []
        unsubscribe = tracker.on_commit(calls.append)
        first = request(tracker, "pay-1")
        unsubscribe()
        request(tracker, "pay-2")
        assert calls == [first]

    def test_callback_sees_refused_inputs(self, tracker: Tracker) -> None:
        calls: list[Result] = []
        tracker.on_commit(calls.append)
        with pytest.raises(InvalidPaymentRequestError) as info:
            tracker.request_payment(payment_id="pay-1", amount=1, return_uri=RETURN_URI)
        assert [(c.outcome, c.inbox_id) for c in calls] == [(Outcome.REJECTED, info.value.inbox_id)]


@pytest.fixture
def three_events(tracker: Tracker) -> None:
    request(tracker, "pay-1")
    snapshot(tracker, "pay-1", "chrg_1", "pending")
    snapshot(tracker, "pay-1", "chrg_1", "successful")


def shipments(path: Path) -> list[int]:
    with read_only(path) as conn:
        return [r[0] for r in conn.execute("SELECT position FROM shipments ORDER BY position")]


class TestConsumer:
    """Consumers: at-least-once process, exactly-once process_in_transaction."""

    def test_process_is_at_least_once(self, tracker: Tracker, three_events: None) -> None:
        consumer = tracker.consumer("mailer", start="beginning")
        handled: list[int] = []

        def flaky(event: StoredEvent) -> None:
            handled.append(event.position)
            if len(handled) == 2:
                raise Boom("mail server down")

        with pytest.raises(Boom):
            consumer.process(flaky)
        assert handled == [1, 2]
        assert consumer.position == 1
        assert [e.position for e in consumer.pending()] == [2, 3]
        again: list[int] = []
        assert consumer.process(lambda e: again.append(e.position)) == 2
        assert again == [2, 3]
        assert consumer.position == 3
        assert consumer.process(lambda e: again.append(e.position)) == 0

    def test_process_limit(self, tracker: Tracker, three_events: None) -> None:
        consumer = tracker.consumer("mailer", start="beginning")
        assert consumer.process(lambda _e: None, limit=2) == 2
        assert consumer.position == 2
        assert [e.position for e in consumer.pending(limit=5)] == [3]

    def test_positions_persist_across_trackers(self, db_path: Path, clock: FakeClock) -> None:
        with Tracker(db_path, clock=clock) as first:
            request(first, "pay-1")
            snapshot(first, "pay-1", "chrg_1", "pending")
            assert first.consumer("a", start="beginning").process(lambda _e: None, limit=1) == 1
            assert first.consumer("b", start="beginning").process(lambda _e: None) == 2
        with Tracker(db_path, clock=clock) as second:
            assert second.consumer("a").position == 1
            assert second.consumer("b").position == 2
            assert second.consumer("c").position == 0
            assert [e.position for e in second.consumer("a").pending()] == [2]

    def test_consumer_needs_a_name(self, tracker: Tracker) -> None:
        with pytest.raises(ValueError, match="name"):
            tracker.consumer("")

    @pytest.fixture
    def shipments_table(self, tracker: Tracker, db_path: Path, three_events: None) -> None:
        with closing(sqlite3.connect(db_path)) as conn, conn:
            conn.execute("CREATE TABLE shipments (position INTEGER PRIMARY KEY, kind TEXT)")

    def test_in_transaction_rolls_back_both(
        self, tracker: Tracker, db_path: Path, shipments_table: None
    ) -> None:
        consumer = tracker.consumer("shipper", start="beginning")

        def handler(event: StoredEvent, tx: Transaction) -> None:
            tx.execute(
                "INSERT INTO shipments (position, kind) VALUES (?, ?)", (event.position, event.kind)
            )
            if event.position == 2:
                raise Boom("warehouse down")

        with pytest.raises(Boom):
            consumer.process_in_transaction(handler)
        assert shipments(db_path) == []
        assert consumer.position == 0

    def test_in_transaction_commits_both(
        self, tracker: Tracker, db_path: Path, shipments_table: None
    ) -> None:
        consumer = tracker.consumer("shipper", start="beginning")

        def handler(event: StoredEvent, db: Any) -> None:
            # A round-1 handler: on SQLite the transaction still answers as the
            # sqlite_utils.Database it was promised.
            db.table("shipments").insert({"position": event.position, "kind": event.kind})

        assert consumer.process_in_transaction(handler, batch=2) == 2
        assert shipments(db_path) == [1, 2]
        assert consumer.position == 2
        assert consumer.process_in_transaction(handler) == 1
        assert shipments(db_path) == [1, 2, 3]
        assert consumer.position == 3
        assert consumer.process_in_transaction(handler) == 0
        assert shipments(db_path) == [1, 2, 3]


class TestCreateFlow:
    """The create call's answers: unknown (settled by a read) or a definite error."""

    def test_create_unknown_then_poll_settles(self, tracker: Tracker) -> None:
        request(tracker, "pay-1")
        unknown = tracker.record_create_unknown("pay-1", reason="read timeout")
        assert unknown.outcome is Outcome.UNKNOWN
        assert unknown.status is Status.CREATED
        assert unknown.payment is not None
        assert unknown.payment.create_unknown is True
        assert [e.kind for e in unknown.events] == ["charge.create_unknown"]
        assert tracker.get("pay-1").create_unknown is True
        settled = snapshot(tracker, "pay-1", "chrg_1", "pending", origin="poll")
        assert settled.outcome is Outcome.APPLIED
        assert settled.status is Status.PENDING
        assert settled.changed
        payment = tracker.get("pay-1")
        assert payment.create_unknown is False
        assert payment.charge_id == "chrg_1"

    def test_create_error_fails_with_its_code(self, tracker: Tracker) -> None:
        request(tracker, "pay-1")
        result = tracker.record_create_error(
            "pay-1", error_json("invalid_amount", "amount too small"), http_status=400
        )
        assert result.outcome is Outcome.APPLIED
        assert result.status is Status.FAILED
        payment = tracker.get("pay-1")
        assert (payment.failure_code, payment.failure_message) == (
            "invalid_amount",
            "amount too small",
        )
        assert result.events[0].data["http_status"] == 400
        row = inbox_row(tracker, result.inbox_id)
        assert row.headers == '{"status":400}'

    def test_create_unknown_for_no_payment_is_rejected(self, tracker: Tracker) -> None:
        result = tracker.record_create_unknown("ghost", reason="timeout")
        assert result.outcome is Outcome.REJECTED
        assert tracker.find("ghost") is None


class TestClock:
    """The injected clock stamps every input, in UTC, and must be timezone-aware."""

    def test_naive_clock_is_refused(self, db_path: Path) -> None:
        with Tracker(db_path, clock=lambda: dt.datetime(2026, 1, 1)) as tracker:
            with pytest.raises(ValueError, match="timezone-aware"):
                request(tracker, "pay-1")
            assert tracker.store.counts() == {"inbox": 0, "events": 0, "payments": 0}

    def test_times_are_stored_in_utc(self, db_path: Path) -> None:
        clock = FakeClock("2026-01-01T07:00:00+07:00")
        with Tracker(db_path, clock=clock) as tracker:
            result = request(tracker, "pay-1")
            assert inbox_row(tracker, result.inbox_id).received_at == (
                "2026-01-01T00:00:00.000000Z"
            )
            assert result.events[0].recorded_at == "2026-01-01T00:00:00.000000Z"

    @given(
        when=st.datetimes(
            min_value=dt.datetime(1000, 1, 2),
            max_value=dt.datetime(9999, 12, 30),
            timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=7))]),
        )
    )
    def test_format_time_is_the_strftime_form(self, when: dt.datetime) -> None:
        """
        The fast formatter writes exactly what the stored format always was (from
        the year 1000 on; earlier times are refused: tests/test_hostile.py).
        """
        expected = when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert format_time(when) == expected


class TestTimeline:
    """``Tracker.timeline`` takes an id or the payment itself."""

    def test_payment_or_id(self, tracker: Tracker) -> None:
        request(tracker, "pay-1")
        snapshot(tracker, "pay-1", "chrg_1", "pending")
        payment = tracker.get("chrg_1")
        by_payment = tracker.timeline(payment)
        assert by_payment == tracker.timeline("pay-1") == tracker.timeline("chrg_1")
        assert [e.kind for e in by_payment if e.type == "input"] == [
            "payment_request",
            "charge_snapshot",
        ]


class TestThreads:
    """One tracker shared by the threads of a host (a threaded webhook server)."""

    def test_eight_threads_share_one_tracker(self, tmp_path: Path) -> None:
        """Concurrent inputs on one Tracker all commit; no transaction error escapes."""
        import threading

        from kplus_fsm.exceptions import StoreError

        errors: list[StoreError] = []
        with Tracker(tmp_path / "t.db") as t:

            def work(i: int) -> None:
                for j in range(50):
                    try:
                        t.request_payment(
                            payment_id=f"p-{i}-{j}", amount=5_000, return_uri="https://s.example/r"
                        )
                    except StoreError as exc:
                        errors.append(exc)

            threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            assert errors == []
            assert t.store.counts() == {"inbox": 400, "events": 400, "payments": 400}
            assert t.verify().ok
