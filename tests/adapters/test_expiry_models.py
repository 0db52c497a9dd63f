"""
Every expiry model of the fake Omise, with the library's own reconciliation:
an abandoned K PLUS payment ends right with **no** webhook at all.

No webhook receiver is configured, so nothing but ``Tracker.reconcile`` (which
re-reads a charge pending past its ``expires_at`` or quiet for the pending
threshold, 30 minutes by default) can tell the tracker how the payment ended.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kplus_fsm import Status, Tracker
from kplus_fsm.adapters.fake import FakeOmise
from kplus_fsm.adapters.omise import OmiseClient, RetryPolicy
from kplus_fsm.testing import FakeClock

SK = "skey_test_5zEXPIRYsecretKEY000"
PK = "pkey_test_5zEXPIRYpublicKEY000"
THRESHOLD = dt.timedelta(minutes=30)  # Tracker.reconcile's default pending threshold

#: (name, the fake's switches, when the payment is over, how it ends).
MODELS: list[tuple[str, dict[str, Any], dt.timedelta, tuple[Status, str | None]]] = [
    (
        "bank timeout, with webhook (default)",
        {},
        THRESHOLD,
        (Status.FAILED, "payment_expired"),
    ),
    (
        "bank timeout, silent",
        {"expiry_webhook": False},
        THRESHOLD,
        (Status.FAILED, "payment_expired"),
    ),
    (
        "bank timeout of 45 minutes",
        {"bank_timeout": dt.timedelta(minutes=45)},
        dt.timedelta(minutes=45),
        (Status.FAILED, "payment_expired"),
    ),
    (
        "lifetime of 10 minutes, with webhook",
        {"expiry_model": "lifetime"},
        THRESHOLD,
        (Status.EXPIRED, None),
    ),
    (
        "lifetime of 10 minutes, silent",
        {"expiry_model": "lifetime", "expiry_webhook": False},
        THRESHOLD,
        (Status.EXPIRED, None),
    ),
    (
        "lifetime of 7 days, silent",
        {
            "expiry_model": "lifetime",
            "charge_lifetime": dt.timedelta(days=7),
            "expiry_webhook": False,
        },
        dt.timedelta(days=7),
        (Status.EXPIRED, None),
    ),
]


@pytest.fixture
def world(tmp_path: Path, clock: FakeClock, request: pytest.FixtureRequest) -> Iterator[Any]:
    switches: dict[str, Any] = request.param
    with (
        FakeOmise(secret_key=SK, public_key=PK, clock=clock, seed=5, **switches) as fake,
        OmiseClient(
            secret_key=SK,
            transport=fake.transport(),
            retry=RetryPolicy(attempts=1),
        ) as client,
        Tracker(tmp_path / "kplus.db", clock=fake.now) as tracker,
    ):
        yield fake, client, tracker


@pytest.mark.parametrize(
    ("world", "over", "end"),
    [(switches, over, end) for _, switches, over, end in MODELS],
    ids=[name for name, _, _, _ in MODELS],
    indirect=["world"],
)
def test_an_abandoned_payment_ends_right_without_a_webhook(
    world: Any, over: dt.timedelta, end: tuple[Status, str | None]
) -> None:
    fake, client, tracker = world
    created = tracker.create_charge(
        client, payment_id="order-abandoned", amount=35_000, return_uri="https://shop.example/r"
    )
    assert created.status is Status.PENDING
    [charge] = fake.charges()

    # Eleven minutes on: not yet due by the tracker's rules (unless expires_at passed).
    fake.advance_clock(dt.timedelta(minutes=11))
    early = tracker.reconcile(client)
    payment = tracker.get("order-abandoned")
    if early.checked:
        assert (payment.status, payment.failure_code) == end  # due by its expires_at
    else:
        assert payment.status is Status.PENDING

    # Once the charge is over and the payment is due, one reconciliation ends it.
    fake.advance_clock(over - dt.timedelta(minutes=11) + dt.timedelta(minutes=1))
    fake.tick()
    assert fake.charge(charge["id"])["status"] == end[0].value
    tracker.reconcile(client)
    payment = tracker.get("order-abandoned")
    assert (payment.status, payment.failure_code) == end
    assert payment.charge_id == charge["id"]
    assert fake.deliveries() == []  # not one webhook was delivered
    assert len(fake.charges()) == 1
    assert tracker.verify().ok


@pytest.mark.parametrize("world", [{}], indirect=True)
def test_the_expiry_control_under_the_default_model(world: Any) -> None:
    """fake.expire ends the charge as the bank timeout would; reconciliation follows."""
    fake, client, tracker = world
    created = tracker.create_charge(
        client, payment_id="order-gone", amount=35_000, return_uri="https://shop.example/r"
    )
    assert created.payment is not None
    assert created.payment.charge_id is not None
    ended = fake.expire(created.payment.charge_id)
    assert (ended["status"], ended["failure_code"]) == ("failed", "payment_expired")
    tracker.reconcile(client, pending_threshold=dt.timedelta(0))
    payment = tracker.get("order-gone")
    assert (payment.status, payment.failure_code) == (Status.FAILED, "payment_expired")
