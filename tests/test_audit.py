"""The audit module: replay's fast fold agrees with the machine's readable rule."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kplus_fsm import Payment, StoredEvent, evolve
from kplus_fsm._store._audit import PaymentState, apply_event, state_row
from kplus_fsm._store._rows import payment_to_row
from kplus_fsm.exceptions import IntegrityError

STATUSES = ("pending", "successful", "failed", "expired")
CODES = (None, "insufficient_fund", "payment_expired", "weird_new_code")
text = st.text(alphabet="abcXYZ019:-", min_size=1, max_size=8)
maybe = st.none() | text

requested = st.fixed_dictionaries(
    {
        "payment_id": text,
        "amount": st.integers(2_000, 15_000_000),
        "currency": st.just("THB"),
        "return_uri": st.just("https://shop.example/r"),
    },
    optional={
        "platform_type": st.sampled_from(["IOS", "ANDROID", None]),
        "description": maybe,
        "metadata": st.dictionaries(text, st.integers() | text, max_size=2),
        "order_ref": maybe,
    },
)
change = st.fixed_dictionaries(
    {"status": st.sampled_from(STATUSES), "charge_id": text},
    optional={
        "livemode": st.sampled_from([True, False, None]),
        "authorize_uri": maybe,
        "expires_at": maybe,
        "failure_code": st.sampled_from(CODES),
        "failure_message": maybe,
        "origin": st.just("poll"),
    },
)
later_event = st.one_of(
    st.tuples(st.just("charge.create_unknown"), st.fixed_dictionaries({"reason": text})),
    st.tuples(
        st.sampled_from(["charge.create_failed", "charge.not_created"]),
        st.fixed_dictionaries({"code": text}, optional={"message": maybe}),
    ),
    st.tuples(st.just("webhook.accepted"), st.fixed_dictionaries({"event_id": text})),
    st.tuples(
        st.sampled_from(
            [
                "charge.pending",
                "charge.successful",
                "charge.failed",
                "charge.expired",
                "charge.corrected",
            ]
        ),
        change,
    ),
)


def _events(first: dict[str, Any], rest: list[tuple[str, dict[str, Any]]]) -> list[StoredEvent]:
    stream = first["payment_id"]
    pairs = [("payment.requested", first), *rest]
    return [
        StoredEvent(
            position=100 + i,
            stream=stream,
            version=i + 1,
            kind=kind,
            event_version=1,
            data=data,
            recorded_at=f"2026-01-01T00:00:{i % 60:02d}.000000Z",
            causation=i + 1,
        )
        for i, (kind, data) in enumerate(pairs)
    ]


def _dict_fold(events: list[StoredEvent]) -> Payment:
    state: PaymentState | None = None
    for e in events:
        state = apply_event(state, e.stream, e.kind, e.data, e.version, e.recorded_at, e.position)
    assert state is not None
    return Payment(**state)


def _rule_fold(events: list[StoredEvent]) -> Payment:
    payment: Payment | None = None
    for e in events:
        payment = evolve(payment, e)
    assert payment is not None
    return payment


@settings(max_examples=300, deadline=None)
@given(first=requested, rest=st.lists(later_event, max_size=8))
def test_replay_fold_agrees_with_the_rule(
    first: dict[str, Any], rest: list[tuple[str, dict[str, Any]]]
) -> None:
    events = _events(first, rest)
    assert _dict_fold(events) == _rule_fold(events)


@pytest.mark.parametrize(
    "events",
    [
        [("charge.pending", {"status": "pending", "charge_id": "c"})],  # no request first
        [("payment.requested", None), ("payment.requested", None)],  # a second request
        [("payment.requested", None), ("charge.weird", {})],  # an unknown kind
        [("payment.requested", None), ("charge.pending", {"status": "pending"})],  # no charge id
    ],
)
def test_both_refuse_what_does_not_fit(events: list[tuple[str, Any]]) -> None:
    first = {"payment_id": "p", "amount": 2_000, "currency": "THB", "return_uri": "x:y"}
    stored = _events(first, [(k, d if d is not None else first) for k, d in events])[1:]
    if events[0][0] == "payment.requested":
        stored = _events(first, [(k, d if d is not None else first) for k, d in events[1:]])
    for fold in (_dict_fold, _rule_fold):
        with pytest.raises(IntegrityError):
            fold(stored)


@settings(max_examples=200, deadline=None)
@given(first=requested, rest=st.lists(later_event, max_size=8))
def test_replay_compares_the_row_the_payment_encodes_to(
    first: dict[str, Any], rest: list[tuple[str, dict[str, Any]]]
) -> None:
    """Replay compares ``state_row(state)`` with the stored row: it is ``payment_to_row``'s."""
    events = _events(first, rest)
    state: PaymentState | None = None
    for e in events:
        state = apply_event(state, e.stream, e.kind, e.data, e.version, e.recorded_at, e.position)
        assert state_row(state) == payment_to_row(Payment(**state))
