"""Tests of the pure machine: the transition table, decide's pre-checks, evolve and fold."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kplus_fsm import (
    CHARGE_EVENT_KEYS,
    TRANSITIONS,
    ChargeLookup,
    ChargeSnapshot,
    ChargeView,
    CreateError,
    CreateUnknown,
    Decision,
    Input,
    NotCreated,
    Origin,
    Outcome,
    Payment,
    PaymentRequest,
    Signal,
    Status,
    StoredEvent,
    WebhookEvent,
    WebhookHint,
    decide,
    evolve,
    fold,
    signal_of,
)
from kplus_fsm.exceptions import IntegrityError
from kplus_fsm.testing import charge_json, error_json, webhook_json

PID = "order-1"
CID = "chrg_test_0000000000000000001"
AMOUNT = 10_000
RETURN_URI = "https://shop.example/return"
RECORDED = "2026-01-01T00:00:05.000000Z"
CHARGE_KEYS = frozenset({"charge.create", "charge.complete", "charge.update", "charge.expire"})

# ------------------------------------------------------------------ the expected table
# (state, signal) -> (outcome, status after folding the events, event kinds).
# Written out by hand: this pins the rules, it is not derived from TRANSITIONS.

A, D, S, C, R, U = "applied", "duplicate", "stale", "conflict", "rejected", "unknown"
WA = "webhook.accepted"
Row = dict[str, tuple[str, str | None, tuple[str, ...]]]

_NO_PAYMENT: Row = {
    "request": (A, "created", ("payment.requested",)),
    "create_unknown": (R, None, ()),
    "create_error": (R, None, ()),
    "read_pending": (R, None, ()),
    "read_successful": (R, None, ()),
    "read_failed": (R, None, ()),
    "read_expired": (R, None, ()),
    "hint_pending": (R, None, ()),
    "hint_successful": (R, None, ()),
    "hint_failed": (R, None, ()),
    "hint_expired": (R, None, ()),
    "unknown_status": (R, None, ()),
    "lookup_empty": (R, None, ()),
    "not_created": (R, None, ()),
}
_CREATED: Row = {
    "request": (D, "created", ()),
    "create_unknown": (U, "created", ("charge.create_unknown",)),
    "create_error": (A, "failed", ("charge.create_failed",)),
    "read_pending": (A, "pending", ("charge.pending",)),
    "read_successful": (A, "successful", ("charge.successful",)),
    "read_failed": (A, "failed", ("charge.failed",)),
    "read_expired": (A, "expired", ("charge.expired",)),
    "hint_pending": (A, "pending", (WA, "charge.pending")),
    "hint_successful": (A, "successful", (WA, "charge.successful")),
    "hint_failed": (A, "failed", (WA, "charge.failed")),
    "hint_expired": (A, "expired", (WA, "charge.expired")),
    "unknown_status": (U, "created", ()),
    "lookup_empty": (U, "created", ()),
    "not_created": (A, "failed", ("charge.not_created",)),
}
_PENDING: Row = {
    "request": (D, "pending", ()),
    "create_unknown": (S, "pending", ()),
    "create_error": (C, "pending", ()),
    "read_pending": (D, "pending", ()),
    "read_successful": (A, "successful", ("charge.successful",)),
    "read_failed": (A, "failed", ("charge.failed",)),
    "read_expired": (A, "expired", ("charge.expired",)),
    "hint_pending": (D, "pending", (WA,)),
    "hint_successful": (A, "successful", (WA, "charge.successful")),
    "hint_failed": (A, "failed", (WA, "charge.failed")),
    "hint_expired": (A, "expired", (WA, "charge.expired")),
    "unknown_status": (U, "pending", ()),
    "lookup_empty": (S, "pending", ()),
    "not_created": (S, "pending", ()),
}
_SUCCESSFUL: Row = {
    "request": (D, "successful", ()),
    "create_unknown": (S, "successful", ()),
    "create_error": (C, "successful", ()),
    "read_pending": (S, "successful", ()),
    "read_successful": (D, "successful", ()),
    "read_failed": (A, "failed", ("charge.corrected",)),
    "read_expired": (A, "expired", ("charge.corrected",)),
    "hint_pending": (S, "successful", (WA,)),
    "hint_successful": (D, "successful", (WA,)),
    "hint_failed": (C, "successful", (WA,)),
    "hint_expired": (C, "successful", (WA,)),
    "unknown_status": (U, "successful", ()),
    "lookup_empty": (S, "successful", ()),
    "not_created": (S, "successful", ()),
}
_FAILED: Row = {
    "request": (D, "failed", ()),
    "create_unknown": (S, "failed", ()),
    "create_error": (D, "failed", ()),
    "read_pending": (S, "failed", ()),
    "read_successful": (A, "successful", ("charge.corrected",)),
    "read_failed": (D, "failed", ()),
    "read_expired": (A, "expired", ("charge.corrected",)),
    "hint_pending": (S, "failed", (WA,)),
    "hint_successful": (C, "failed", (WA,)),
    "hint_failed": (D, "failed", (WA,)),
    "hint_expired": (C, "failed", (WA,)),
    "unknown_status": (U, "failed", ()),
    "lookup_empty": (S, "failed", ()),
    "not_created": (S, "failed", ()),
}
_EXPIRED: Row = {
    "request": (D, "expired", ()),
    "create_unknown": (S, "expired", ()),
    "create_error": (C, "expired", ()),
    "read_pending": (S, "expired", ()),
    "read_successful": (A, "successful", ("charge.corrected",)),
    "read_failed": (A, "failed", ("charge.corrected",)),
    "read_expired": (D, "expired", ()),
    "hint_pending": (S, "expired", (WA,)),
    "hint_successful": (C, "expired", (WA,)),
    "hint_failed": (C, "expired", (WA,)),
    "hint_expired": (D, "expired", (WA,)),
    "unknown_status": (U, "expired", ()),
    "lookup_empty": (S, "expired", ()),
    "not_created": (S, "expired", ()),
}
EXPECTED: dict[str | None, Row] = {
    None: _NO_PAYMENT,
    "created": _CREATED,
    "pending": _PENDING,
    "successful": _SUCCESSFUL,
    "failed": _FAILED,
    "expired": _EXPIRED,
}
CELLS = [(state, signal) for state, row in EXPECTED.items() for signal in row]

# ----------------------------------------------------------------------------- builders


def request(**changes: Any) -> PaymentRequest:
    fields: dict[str, Any] = {"payment_id": PID, "amount": AMOUNT, "return_uri": RETURN_URI}
    return PaymentRequest.create(**{**fields, **changes})


def payment(state: Status, **changes: Any) -> Payment:
    """A payment in ``state`` as it would stand after its events (charge known unless created)."""
    base = Payment(
        payment_id=PID,
        status=state,
        amount=AMOUNT,
        currency="THB",
        return_uri=RETURN_URI,
        charge_id=None if state is Status.CREATED else CID,
        livemode=None if state is Status.CREATED else False,
        failure_code="payment_rejected" if state is Status.FAILED else None,
        version=1 if state is Status.CREATED else 2,
        created_at="2026-01-01T00:00:00.000000Z",
        updated_at="2026-01-01T00:00:01.000000Z",
    )
    return attrs.evolve(base, **changes)


def charge(status: str = "pending", **changes: Any) -> dict[str, Any]:
    """A charge object of PID/CID with top-level fields replaced."""
    return {**charge_json(payment_id=PID, charge_id=CID, status=status, amount=AMOUNT), **changes}


def snapshot(
    status: str = "pending", origin: Origin = Origin.REFETCH, **changes: Any
) -> ChargeSnapshot:
    return ChargeSnapshot(charge=ChargeView.from_json(charge(status, **changes)), origin=origin)


def hint(
    status: str = "pending",
    *,
    event_id: str = "evnt_test_1",
    key: str = "charge.complete",
    apply_payload: bool = True,
    **changes: Any,
) -> WebhookHint:
    body = webhook_json(charge(status, **changes), key=key, event_id=event_id)
    return WebhookHint(event=WebhookEvent.from_json(body), apply_payload=apply_payload)


def input_for(signal: Signal) -> Input:
    """A real input whose signal is ``signal``."""
    kind, _, status = signal.value.partition("_")
    if signal is Signal.REQUEST:
        return request()
    if signal is Signal.CREATE_UNKNOWN:
        return CreateUnknown(reason="read timed out")
    if signal is Signal.CREATE_ERROR:
        return CreateError.from_json(error_json("invalid_charge", "bad"), http_status=400)
    if signal is Signal.UNKNOWN_STATUS:
        return snapshot("reversed", Origin.POLL)
    if signal is Signal.LOOKUP_EMPTY:
        return ChargeLookup(payment_id=PID, methods=("search", "list"))
    if signal is Signal.NOT_CREATED:
        return NotCreated(payment_id=PID, reason="no charge found twice", evidence=(3, 5))
    if kind == "read":
        return snapshot(status, Origin.REFETCH)
    assert kind == "hint"
    return hint(status)


def stored(p: Payment | None, decision: Decision) -> list[StoredEvent]:
    """The decided events as the store would hand them back."""
    base = p.version if p is not None else 0
    return [
        StoredEvent(
            position=100 + i,
            stream=decision.payment_id or PID,
            version=base + i + 1,
            kind=e.kind.value,
            event_version=1,
            data=e.data,
            recorded_at=RECORDED,
            causation=7,
        )
        for i, e in enumerate(decision.events)
    ]


def run(p: Payment | None, inp: Input) -> tuple[Decision, Payment | None]:
    """decide, then fold the decided events into the payment."""
    decision = decide(p, inp)
    return decision, fold(stored(p, decision), p)


def kinds(decision: Decision) -> tuple[str, ...]:
    return tuple(e.kind.value for e in decision.events)


# -------------------------------------------------------------------------------- tests


class TestTransitionTable:
    """Every (state, signal) cell of TRANSITIONS, against the hand-written table."""

    def test_the_table_has_every_cell_and_no_other(self) -> None:
        states: list[Status | None] = [None, *Status]
        assert len(TRANSITIONS) == (len(Status) + 1) * len(Signal)
        assert set(TRANSITIONS) == {(st_, sg) for st_ in states for sg in Signal}
        assert len(CELLS) == len(TRANSITIONS)
        assert {(None if s is None else Status(s), Signal(g)) for s, g in CELLS} == set(TRANSITIONS)

    @pytest.mark.parametrize(("state", "signal"), CELLS, ids=[f"{s}-{g}" for s, g in CELLS])
    def test_cell(self, state: str | None, signal: str) -> None:
        outcome, after, events = EXPECTED[state][signal]
        status = None if state is None else Status(state)
        sig = Signal(signal)
        before = None if status is None else payment(status)
        inp = input_for(sig)
        assert signal_of(inp) is sig

        decision, folded = run(before, inp)

        assert decision.outcome.value == outcome, decision.reason
        assert kinds(decision) == events
        assert (folded.status.value if folded is not None else None) == after
        if not events:
            assert folded == before
        # The table itself agrees (the webhook.accepted prefix is added by decide).
        rule = TRANSITIONS[status, sig]
        assert rule.outcome.value == outcome
        table_events = tuple(k for k in events if k != WA)
        assert (rule.event.value if rule.event else None) == (
            table_events[0] if table_events else None
        )
        assert (rule.to.value if rule.to else None) == (after if after != state else None)
        assert rule.reason
        if decision.outcome is Outcome.APPLIED and folded is not None:
            assert folded.version == (before.version if before else 0) + len(events)
            assert folded.updated_at == RECORDED

    @pytest.mark.parametrize("origin", [Origin.CREATE_RESPONSE, Origin.REFETCH, Origin.POLL])
    @pytest.mark.parametrize("status", ["pending", "successful", "failed", "expired"])
    def test_every_authoritative_origin_reads(self, origin: Origin, status: str) -> None:
        assert signal_of(snapshot(status, origin)) is Signal(f"read_{status}")

    @pytest.mark.parametrize("status", ["pending", "successful", "failed", "expired"])
    def test_a_webhook_origin_snapshot_is_a_hint(self, status: str) -> None:
        assert signal_of(snapshot(status, Origin.WEBHOOK)) is Signal(f"hint_{status}")

    @pytest.mark.parametrize("status", ["reversed", "weird", "", "PENDING"])
    @pytest.mark.parametrize("origin", list(Origin))
    def test_unknown_statuses_are_unknown(self, status: str, origin: Origin) -> None:
        inp = snapshot(status, origin)
        assert signal_of(inp) is Signal.UNKNOWN_STATUS
        decision, folded = run(payment(Status.PENDING), inp)
        assert decision.outcome is Outcome.UNKNOWN
        assert repr(status) in decision.reason
        assert decision.events == ()
        assert folded == payment(Status.PENDING)

    def test_unknown_status_in_a_webhook_payload_is_unknown(self) -> None:
        decision, folded = run(payment(Status.PENDING), hint("reversed"))
        assert decision.outcome is Outcome.UNKNOWN
        assert folded is not None
        assert folded.status is Status.PENDING
        assert kinds(decision) == (WA,)


class TestIdentityChecks:
    """A snapshot for another payment, charge, amount, currency or mode is rejected."""

    MISMATCHES = (
        ("payment id", {"metadata": {"payment_id": "order-2"}}),
        ("charge id", {"id": "chrg_test_other"}),
        ("amount", {"amount": AMOUNT + 1}),
        ("currency", {"currency": "USD"}),
        ("livemode", {"livemode": True}),
    )

    @pytest.mark.parametrize(("field", "changes"), MISMATCHES, ids=[m[0] for m in MISMATCHES])
    @pytest.mark.parametrize("origin", [Origin.REFETCH, Origin.WEBHOOK])
    @pytest.mark.parametrize("status", ["pending", "successful"])
    def test_snapshot_mismatch_is_rejected(
        self, field: str, changes: dict[str, Any], origin: Origin, status: str
    ) -> None:
        before = payment(Status.PENDING)
        decision, folded = run(before, snapshot(status, origin, **changes))
        assert decision.outcome is Outcome.REJECTED
        assert decision.reason.startswith(f"{field} mismatch"), decision.reason
        assert decision.events == ()
        assert folded == before

    @pytest.mark.parametrize(("field", "changes"), MISMATCHES, ids=[m[0] for m in MISMATCHES])
    @pytest.mark.parametrize("apply_payload", [True, False])
    def test_webhook_mismatch_is_rejected(
        self, field: str, changes: dict[str, Any], apply_payload: bool
    ) -> None:
        before = payment(Status.PENDING)
        decision, folded = run(before, hint("successful", apply_payload=apply_payload, **changes))
        assert decision.outcome is Outcome.REJECTED
        assert decision.reason.startswith(f"{field} mismatch"), decision.reason
        assert decision.events == ()
        assert folded == before

    def test_terminal_payment_rejects_before_correcting(self) -> None:
        before = payment(Status.SUCCESSFUL)
        decision = decide(before, snapshot("failed", Origin.REFETCH, amount=AMOUNT * 2))
        assert decision.outcome is Outcome.REJECTED
        assert "amount" in decision.reason

    def test_event_livemode_mismatch_is_rejected(self) -> None:
        body = webhook_json(charge("successful"), event_id="evnt_live")
        body["livemode"] = True
        inp = WebhookHint(event=WebhookEvent.from_json(body), apply_payload=True)
        decision = decide(payment(Status.PENDING), inp)
        assert decision.outcome is Outcome.REJECTED
        assert "livemode" in decision.reason
        assert decision.events == ()

    def test_unknown_livemode_or_charge_id_on_the_payment_is_not_a_mismatch(self) -> None:
        before = payment(Status.CREATED)
        assert before.charge_id is None
        assert before.livemode is None
        decision, folded = run(before, snapshot("pending", livemode=True, id="chrg_test_any"))
        assert decision.outcome is Outcome.APPLIED
        assert folded is not None
        assert folded.charge_id == "chrg_test_any"
        assert folded.livemode is True

    def test_a_charge_without_payment_id_matches_by_its_other_fields(self) -> None:
        decision = decide(payment(Status.PENDING), snapshot("successful", metadata=None))
        assert decision.outcome is Outcome.APPLIED


class TestRequests:
    """A payment request: new, repeated, or conflicting."""

    def test_same_request_again_is_a_duplicate(self) -> None:
        req = request(metadata={"cart": "c1"}, platform_type="IOS", description="d")
        first, created = run(None, req)
        assert first.outcome is Outcome.APPLIED
        assert created is not None
        assert created.request() == req
        again, after = run(created, req)
        assert again.outcome is Outcome.DUPLICATE
        assert again.events == ()
        assert after == created

    @pytest.mark.parametrize(
        ("field", "changes"),
        [
            ("amount", {"amount": AMOUNT + 100}),
            ("return_uri", {"return_uri": "https://shop.example/other"}),
            ("platform_type", {"platform_type": "ANDROID"}),
            ("description", {"description": "other"}),
            ("metadata", {"metadata": {"cart": "c2"}}),
        ],
    )
    @pytest.mark.parametrize("state", list(Status))
    def test_same_id_other_parameters_is_rejected_naming_the_field(
        self, field: str, changes: dict[str, Any], state: Status
    ) -> None:
        before = payment(state)
        decision, after = run(before, request(**changes))
        assert decision.outcome is Outcome.REJECTED
        assert f"different parameters: {field} " in decision.reason, decision.reason
        assert decision.reason.count("!=") == 1
        assert decision.events == ()
        assert after == before

    def test_payment_requested_event_carries_the_request(self) -> None:
        req = request(metadata={"cart": "c1"})
        decision = decide(None, req)
        assert decision.payment_id == PID
        assert dict(decision.events[0].data) == req.to_json()


class TestWebhooks:
    """Webhook-specific rules: dedupe by event id, unknown keys, hint-only mode."""

    @pytest.mark.parametrize("apply_payload", [True, False])
    def test_known_event_id_is_a_duplicate(self, apply_payload: bool) -> None:
        before = payment(Status.PENDING, webhook_event_ids=frozenset({"evnt_seen"}))
        decision, after = run(
            before, hint("successful", event_id="evnt_seen", apply_payload=apply_payload)
        )
        assert decision.outcome is Outcome.DUPLICATE
        assert "evnt_seen" in decision.reason
        assert decision.events == ()
        assert after == before

    def test_a_new_event_id_is_recorded(self) -> None:
        decision, after = run(payment(Status.PENDING), hint("successful", event_id="evnt_new"))
        assert decision.outcome is Outcome.APPLIED
        assert after is not None
        assert after.webhook_event_ids == {"evnt_new"}
        assert decision.events[1].data["webhook_event_id"] == "evnt_new"
        assert decision.events[1].data["from"] == "pending"

    @pytest.mark.parametrize(
        ("key", "data"),
        [
            ("refund.create", {"object": "refund", "id": "rfnd_test_1", "amount": AMOUNT}),
            ("customer.update", {"object": "customer", "id": "cust_test_1"}),
            ("charge.capture", None),
            ("charge.reverse", None),
        ],
    )
    def test_unknown_event_key_is_unknown(self, key: str, data: dict[str, Any] | None) -> None:
        body = webhook_json(data if data is not None else charge("successful"), key=key)
        inp = WebhookHint(event=WebhookEvent.from_json(body), apply_payload=True)
        before = payment(Status.PENDING)
        decision, after = run(before, inp)
        assert decision.outcome is Outcome.UNKNOWN
        assert repr(key) in decision.reason
        assert decision.events == ()
        assert after == before

    @pytest.mark.parametrize(
        ("key", "data"),
        [
            ("refund.create", {"object": "refund", "id": "rfnd_test_1", "amount": AMOUNT}),
            ("customer.update", {"object": "customer", "id": "cust_test_1"}),
            ("charge.capture", None),
        ],
    )
    def test_unknown_event_key_without_a_payment_is_unknown(
        self, key: str, data: dict[str, Any] | None
    ) -> None:
        body = webhook_json(data if data is not None else charge("successful"), key=key)
        decision = decide(None, WebhookHint(event=WebhookEvent.from_json(body), apply_payload=True))
        assert decision.outcome is Outcome.UNKNOWN
        assert repr(key) in decision.reason
        assert decision.events == ()

    def test_the_known_keys_are_the_exported_ones(self) -> None:
        assert CHARGE_KEYS == CHARGE_EVENT_KEYS

    @pytest.mark.parametrize("key", sorted(CHARGE_KEYS))
    def test_charge_keys_are_known(self, key: str) -> None:
        decision = decide(payment(Status.PENDING), hint("successful", key=key))
        assert decision.outcome is Outcome.APPLIED

    @pytest.mark.parametrize("state", list(Status))
    def test_hint_only_records_the_event_and_keeps_the_state(self, state: Status) -> None:
        before = payment(state)
        decision, after = run(before, hint("successful", apply_payload=False, event_id="evnt_h"))
        assert decision.outcome is Outcome.APPLIED
        assert kinds(decision) == (WA,)
        assert dict(decision.events[0].data) == {
            "event_id": "evnt_h",
            "key": "charge.complete",
            "status": "successful",
        }
        assert after is not None
        assert after.status is state
        assert after.webhook_event_ids == {"evnt_h"}
        assert after == attrs.evolve(
            before,
            webhook_event_ids=frozenset({"evnt_h"}),
            version=before.version + 1,
            updated_at=RECORDED,
        )

    def test_webhook_for_no_payment_is_rejected(self) -> None:
        decision = decide(None, hint("successful"))
        assert decision.outcome is Outcome.REJECTED
        assert decision.payment_id == PID
        assert decision.charge_id == CID


class TestFailureCodesAndFlags:
    """Unknown failure codes and corrections flag the payment."""

    def test_unknown_failure_code_is_applied_and_flagged(self) -> None:
        decision, after = run(
            payment(Status.PENDING), snapshot("failed", failure_code="brand_new_code")
        )
        assert decision.outcome is Outcome.APPLIED
        assert "'brand_new_code'" in decision.reason
        assert after is not None
        assert after.status is Status.FAILED
        assert after.failure_code == "brand_new_code"
        assert after.flags == {"unknown_failure_code"}

    @pytest.mark.parametrize("code", ["payment_expired", "insufficient_fund", "invalid_account"])
    def test_known_failure_code_is_not_flagged(self, code: str) -> None:
        decision, after = run(payment(Status.PENDING), snapshot("failed", failure_code=code))
        assert decision.outcome is Outcome.APPLIED
        assert "unknown failure code" not in decision.reason
        assert after is not None
        assert after.failure_code == code
        assert after.flags == frozenset()

    @pytest.mark.parametrize(
        ("state", "read"),
        [
            (Status.SUCCESSFUL, "failed"),
            (Status.SUCCESSFUL, "expired"),
            (Status.FAILED, "successful"),
            (Status.EXPIRED, "successful"),
        ],
    )
    def test_authoritative_correction_is_flagged(self, state: Status, read: str) -> None:
        decision, after = run(payment(state), snapshot(read, Origin.POLL))
        assert kinds(decision) == ("charge.corrected",)
        assert decision.events[0].data["from"] == state.value
        assert decision.events[0].data["origin"] == "poll"
        assert after is not None
        assert after.status is Status(read)
        assert after.flags == {"corrected"}

    def test_flags_accumulate(self) -> None:
        _, after = run(payment(Status.SUCCESSFUL), snapshot("failed", failure_code="odd_code"))
        assert after is not None
        assert after.flags == {"corrected", "unknown_failure_code"}

    def test_a_successful_correction_clears_the_failure_code(self) -> None:
        _, after = run(payment(Status.FAILED), snapshot("successful"))
        assert after is not None
        assert after.failure_code is None

    def test_create_unknown_is_flagged_until_a_read(self) -> None:
        _, unknown = run(payment(Status.CREATED), CreateUnknown(reason="timeout"))
        assert unknown is not None
        assert unknown.create_unknown is True
        assert unknown.status is Status.CREATED
        _, settled = run(unknown, snapshot("pending", Origin.REFETCH))
        assert settled is not None
        assert settled.create_unknown is False
        assert settled.status is Status.PENDING

    def test_create_error_fails_with_its_code(self) -> None:
        error = CreateError(code="invalid_amount", message="m", http_status=400)
        decision, after = run(payment(Status.CREATED), error)
        assert decision.outcome is Outcome.APPLIED
        assert after is not None
        assert after.status is Status.FAILED
        assert after.failure_code == "invalid_amount"
        assert after.failure_message == "m"


class TestStatusOnly:
    """The state is derived from status only, never from expired or expired_at."""

    def test_successful_with_expired_fields_stays_successful(self) -> None:
        inp = snapshot("successful", expired=True, expired_at="2026-01-01T00:10:00Z")
        decision, after = run(payment(Status.PENDING), inp)
        assert decision.outcome is Outcome.APPLIED
        assert after is not None
        assert after.status is Status.SUCCESSFUL
        assert after.flags == frozenset()
        decision, again = run(after, inp)
        assert decision.outcome is Outcome.DUPLICATE
        assert again == after

    def test_pending_with_expired_fields_stays_pending(self) -> None:
        inp = snapshot("pending", expired=True, expired_at="2026-01-01T00:10:00Z")
        decision, after = run(payment(Status.CREATED), inp)
        assert decision.outcome is Outcome.APPLIED
        assert after is not None
        assert after.status is Status.PENDING


# ---------------------------------------------------------------------------- evolving


def event(kind: str, data: Mapping[str, Any], *, version: int, position: int = 1) -> StoredEvent:
    return StoredEvent(
        position=position,
        stream=PID,
        version=version,
        kind=kind,
        event_version=1,
        data=data,
        recorded_at=RECORDED,
        causation=1,
    )


REQUESTED = event("payment.requested", request().to_json(), version=1)


class TestEvolve:
    """evolve/fold refuse events that do not fit the stream."""

    def test_a_well_formed_stream_folds(self) -> None:
        pending = event(
            "charge.pending",
            {"charge_id": CID, "status": "pending", "livemode": False},
            version=2,
            position=2,
        )
        folded = fold([REQUESTED, pending])
        assert folded is not None
        assert (folded.status, folded.charge_id, folded.version) == (Status.PENDING, CID, 2)
        assert fold([]) is None

    def test_unknown_kind(self) -> None:
        start = evolve(None, REQUESTED)
        with pytest.raises(IntegrityError) as info:
            evolve(start, event("charge.refunded", {}, version=2, position=9))
        assert "charge.refunded" in str(info.value)
        assert info.value.table == "events"
        assert info.value.row_id == 9

    @pytest.mark.parametrize(
        "kind", ["charge.pending", "webhook.accepted", "charge.create_unknown", "nonsense"]
    )
    def test_stream_not_starting_with_payment_requested(self, kind: str) -> None:
        first = event(kind, {"charge_id": CID, "status": "pending", "event_id": "e"}, version=1)
        with pytest.raises(IntegrityError) as info:
            fold([first])
        assert "payment.requested" in str(info.value)

    def test_payment_requested_mid_stream(self) -> None:
        with pytest.raises(IntegrityError) as info:
            fold([REQUESTED, event("payment.requested", request().to_json(), version=2)])
        assert "middle" in str(info.value)

    @pytest.mark.parametrize(
        ("kind", "data"),
        [
            ("charge.successful", {"status": "successful"}),
            ("charge.successful", {"charge_id": CID, "status": "reversed"}),
            ("charge.create_failed", {"message": "m"}),
            ("webhook.accepted", {"key": "charge.complete"}),
        ],
    )
    def test_missing_or_bad_fields(self, kind: str, data: dict[str, Any]) -> None:
        start = evolve(None, REQUESTED)
        with pytest.raises(IntegrityError):
            evolve(start, event(kind, data, version=2))

    def test_first_event_missing_fields(self) -> None:
        with pytest.raises(IntegrityError):
            evolve(None, event("payment.requested", {"payment_id": PID}, version=1))


# ------------------------------------------------------------------------ totality

_texts = st.text(max_size=12)
_status_text = st.one_of(st.sampled_from(["pending", "successful", "failed", "expired"]), _texts)


@st.composite
def charge_views(draw: st.DrawFn) -> ChargeView:
    return ChargeView(
        charge_id=draw(st.sampled_from([CID, "chrg_test_other", ""])),
        status=draw(_status_text),
        amount=draw(st.sampled_from([AMOUNT, 2_000, -1, 0])),
        currency=draw(st.sampled_from(["THB", "USD", ""])),
        livemode=draw(st.sampled_from([None, True, False])),
        payment_id=draw(st.sampled_from([None, PID, "order-2", ""])),
        authorize_uri=draw(st.none() | _texts),
        expires_at=draw(st.none() | _texts),
        failure_code=draw(st.none() | st.sampled_from(["payment_rejected", "odd"]) | _texts),
        failure_message=draw(st.none() | _texts),
        created_at=None,
        paid_at=draw(st.none() | _texts),
    )


@st.composite
def inputs(draw: st.DrawFn) -> Input:
    which = draw(st.sampled_from(["request", "snapshot", "error", "unknown", "webhook"]))
    if which == "request":
        return request(
            amount=draw(st.sampled_from([AMOUNT, 2_000])),
            platform_type=draw(st.sampled_from([None, "IOS"])),
            description=draw(st.none() | _texts),
            metadata=draw(st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), max_size=2)),
        )
    if which == "snapshot":
        return ChargeSnapshot(charge=draw(charge_views()), origin=draw(st.sampled_from(Origin)))
    if which == "error":
        return CreateError(
            code=draw(_texts), message=draw(_texts), http_status=draw(st.none() | st.integers())
        )
    if which == "unknown":
        return CreateUnknown(reason=draw(_texts))
    ev = WebhookEvent(
        event_id=draw(st.sampled_from(["evnt_1", "evnt_2"])),
        key=draw(st.sampled_from([*sorted(CHARGE_KEYS), "charge.capture", "refund.create", ""])),
        livemode=draw(st.sampled_from([None, True, False])),
        created_at=None,
        charge=draw(st.none() | charge_views()),
    )
    return WebhookHint(event=ev, apply_payload=draw(st.booleans()))


@st.composite
def payments(draw: st.DrawFn) -> Payment | None:
    state = draw(st.none() | st.sampled_from(Status))
    if state is None:
        return None
    return payment(
        state,
        charge_id=draw(st.sampled_from([None, CID, "chrg_test_other"])),
        livemode=draw(st.sampled_from([None, True, False])),
        currency=draw(st.sampled_from(["THB", "USD"])),
        webhook_event_ids=frozenset(draw(st.sets(st.sampled_from(["evnt_1", "evnt_2"])))),
        flags=frozenset(draw(st.sets(st.sampled_from(["corrected", "unknown_failure_code"])))),
        create_unknown=draw(st.booleans()),
    )


class TestTotality:
    """decide never raises, and what it decides can always be folded."""

    @settings(max_examples=300, deadline=None)
    @given(p=payments(), inp=inputs())
    def test_decide_is_total(self, p: Payment | None, inp: Input) -> None:
        decision = decide(p, inp)
        assert isinstance(decision.outcome, Outcome)
        assert decision.reason
        if decision.outcome is not Outcome.APPLIED and decision.outcome is not Outcome.UNKNOWN:
            # only the webhook.accepted record may come with a non-applied outcome
            assert set(kinds(decision)) <= {WA}
        folded = fold(stored(p, decision), p)
        if decision.events:
            assert folded is not None
            assert folded.version == (p.version if p else 0) + len(decision.events)
        else:
            assert folded == p
