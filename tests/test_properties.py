"""Hypothesis properties of the tracker over a real SQLite file."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kplus_fsm import Outcome, Payment, Result, Status, Tracker, fold
from kplus_fsm.exceptions import InvalidPaymentRequestError, MalformedInputError
from kplus_fsm.testing import FakeClock, charge_json, error_json, webhook_json

AMOUNT = 10_000
RETURN_URI = "https://shop.example/return"
PIDS = ("p1", "p2")
AUTHORITATIVE = ("create_response", "refetch", "poll")
ORIGINS = (*AUTHORITATIVE, "webhook")
STATUSES = ("pending", "successful", "failed", "expired", "reversed", "weird")
FAILURE_CODES = (None, "payment_rejected", "insufficient_fund", "brand_new_code")
CHARGE_IDS = ("chrg_p1_a", "chrg_p1_b", "chrg_p2_a")
KEYS = ("charge.complete", "charge.create", "charge.expire", "charge.capture", "customer.update")
EVENT_IDS = ("evnt_1", "evnt_2", "evnt_3")

PROPERTY = settings(max_examples=50, deadline=None)


@contextmanager
def tracker() -> Iterator[Tracker]:
    """A tracker on a fresh SQLite file with a fake clock."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Tracker(Path(tmp) / "kplus.db", clock=FakeClock())
        try:
            yield t
        finally:
            t.close()


def tick(t: Tracker) -> None:
    clock = t.clock
    assert isinstance(clock, FakeClock)
    clock.advance(seconds=1)


# ------------------------------------------------------------------------------ steps


@attrs.frozen
class Request:
    """A merchant request: 0 the usual one, 1 other parameters, 2 invalid."""

    pid: str
    variant: int

    def feed(self, t: Tracker) -> Result | None:
        if self.variant == 2:
            with pytest.raises(InvalidPaymentRequestError):
                t.request_payment(payment_id=self.pid, amount=1, return_uri=RETURN_URI)
            return None
        return t.request_payment(
            payment_id=self.pid,
            amount=AMOUNT + 100 * self.variant,
            return_uri=RETURN_URI,
            platform_type="ios",
            description="ขอบคุณ",
            metadata={"cart": self.pid, "n": 1, "tags": ("a", "b")},
        )


@attrs.frozen
class Charge:
    """A charge object; its id says which payment's charge it is."""

    charge_id: str
    status: str
    with_metadata: bool = True
    amount_ok: bool = True
    livemode: bool = False
    failure_code: str | None = None

    def body(self) -> dict[str, Any]:
        pid = self.charge_id.split("_")[1]
        return charge_json(
            payment_id=pid if self.with_metadata else None,
            charge_id=self.charge_id,
            status=self.status,
            amount=AMOUNT if self.amount_ok else AMOUNT + 1,
            livemode=self.livemode,
            failure_code=self.failure_code,
        )


@attrs.frozen
class Snapshot:
    """A charge read (or a webhook payload) recorded with record_charge."""

    charge: Charge
    origin: str
    payment_id: str | None = None

    def feed(self, t: Tracker) -> Result | None:
        return t.record_charge(self.charge.body(), origin=self.origin, payment_id=self.payment_id)


@attrs.frozen
class Webhook:
    """A webhook delivery."""

    charge: Charge
    key: str
    event_id: str
    apply_payload: bool

    def feed(self, t: Tracker) -> Result | None:
        body = webhook_json(self.charge.body(), key=self.key, event_id=self.event_id)
        return t.record_webhook(body, apply_payload=self.apply_payload)


@attrs.frozen
class CreateErr:
    """Omise refused the create."""

    pid: str
    code: str

    def feed(self, t: Tracker) -> Result | None:
        return t.record_create_error(self.pid, error_json(self.code), http_status=400)


@attrs.frozen
class CreateUnk:
    """The create timed out."""

    pid: str

    def feed(self, t: Tracker) -> Result | None:
        return t.record_create_unknown(self.pid, reason="read timed out")


MALFORMED_WEBHOOK = {"object": "event", "id": "evnt_bad", "key": "charge.complete", "data": "x"}
MALFORMED_CHARGE = {**charge_json(payment_id="p1", charge_id="chrg_p1_a"), "amount": "10000"}


@attrs.frozen
class Malformed:
    """A body that cannot be read; recorded, then refused."""

    which: int

    def feed(self, t: Tracker) -> Result | None:
        calls: list[Callable[[], object]] = [
            lambda: t.record_charge(b"{not json", origin="poll"),
            lambda: t.record_charge(MALFORMED_CHARGE, origin="refetch"),
            lambda: t.record_webhook(MALFORMED_WEBHOOK),
            lambda: t.record_webhook("[]"),
            lambda: t.record_create_error("p1", {"object": "charge"}),
        ]
        with pytest.raises(MalformedInputError) as info:
            calls[self.which]()
        assert info.value.inbox_id is not None
        return None


Step = Request | Snapshot | Webhook | CreateErr | CreateUnk | Malformed

charges = st.builds(
    Charge,
    charge_id=st.sampled_from([*CHARGE_IDS, "chrg_p1_a", "chrg_p2_a"]),
    status=st.sampled_from(STATUSES),
    with_metadata=st.sampled_from([True, True, True, False]),
    amount_ok=st.sampled_from([True] * 7 + [False]),
    livemode=st.sampled_from([False] * 7 + [True]),
    failure_code=st.sampled_from(FAILURE_CODES),
)
steps: st.SearchStrategy[Step] = st.one_of(
    st.builds(Request, pid=st.sampled_from(PIDS), variant=st.sampled_from([0, 0, 0, 1, 2])),
    st.builds(
        Snapshot,
        charge=charges,
        origin=st.sampled_from(ORIGINS),
        payment_id=st.sampled_from([None] * 6 + [*PIDS]),
    ),
    st.builds(
        Webhook,
        charge=charges,
        key=st.sampled_from([*KEYS, "charge.complete", "charge.complete"]),
        event_id=st.sampled_from(EVENT_IDS),
        apply_payload=st.booleans(),
    ),
    st.builds(CreateErr, pid=st.sampled_from(PIDS), code=st.sampled_from(["invalid_charge"])),
    st.builds(CreateUnk, pid=st.sampled_from(PIDS)),
    st.builds(Malformed, which=st.integers(0, 4)),
)
# Most histories start with the payments existing.
_starts = st.sampled_from([(), ("p1",), ("p1", "p2"), ("p1", "p2"), ("p2", "p1")])
histories = st.tuples(_starts, st.lists(steps, max_size=25)).map(
    lambda pair: [*(Request(pid, 0) for pid in pair[0]), *pair[1]]
)


def feed(t: Tracker, step: Step) -> Result | None:
    tick(t)
    return step.feed(t)


# ------------------------------------------------------------------------- properties


def _final(history: list[tuple[str, str]]) -> Payment:
    """The payment after p1's request and then ``history`` of (status, origin) reads."""
    with tracker() as t:
        feed(t, Request("p1", 0))
        for status, origin in history:
            result = feed(t, Snapshot(Charge("chrg_p1_a", status), origin))
            assert result is not None
            assert result.outcome in (Outcome.APPLIED, Outcome.DUPLICATE, Outcome.STALE)
        return t.get("p1")


def _comparable(p: Payment) -> Payment:
    return attrs.evolve(p, version=0, created_at="", updated_at="")


class TestConvergence:
    """Order and duplication of the same authoritative reads do not matter."""

    @PROPERTY
    @given(
        terminal=st.sampled_from(["successful", "failed", "expired"]),
        n_pending=st.integers(0, 3),
        n_terminal=st.integers(1, 3),
        data=st.data(),
    )
    def test_any_order_ends_in_the_terminal_state(
        self, terminal: str, n_pending: int, n_terminal: int, data: st.DataObject
    ) -> None:
        statuses = ["pending"] * n_pending + [terminal] * n_terminal
        order = data.draw(st.permutations(statuses), label="order")
        origins = data.draw(
            st.lists(st.sampled_from(AUTHORITATIVE), min_size=len(order), max_size=len(order)),
            label="origins",
        )
        final = _final(list(zip(order, origins, strict=True)))
        assert final.status is Status(terminal)
        assert final.flags == frozenset()
        assert final.charge_id == "chrg_p1_a"
        # The same state as the terminal read alone gives.
        alone = _final([(terminal, origins[0])])
        assert _comparable(final) == _comparable(alone)


class TestIdempotence:
    """Feeding an input again right away changes nothing."""

    @PROPERTY
    @given(history=histories)
    def test_reapplying_is_a_no_op(self, history: list[Step]) -> None:
        with tracker() as t:
            for step in history:
                first = feed(t, step)
                if first is None:
                    continue
                before = {pid: t.find(pid) for pid in PIDS}
                again = feed(t, step)
                assert again is not None
                after = {pid: t.find(pid) for pid in PIDS}
                if isinstance(step, CreateUnk):
                    # Each timeout is its own fact; it never changes the status.
                    assert again.outcome is first.outcome
                    assert again.status == first.status
                    continue
                assert again.events == (), (step, first.outcome, again.outcome)
                assert again.payment == first.payment
                assert after == before
                if first.outcome is Outcome.APPLIED:
                    assert again.outcome in (Outcome.DUPLICATE, Outcome.STALE), again.reason


class TestReplay:
    """Replaying the stored events reproduces the live state exactly."""

    @PROPERTY
    @given(history=histories)
    def test_replay_matches_live_state(self, history: list[Step]) -> None:
        with tracker() as t:
            for step in history:
                result = feed(t, step)
                if result is not None and result.payment is not None:
                    assert result.payment == t.get(result.payment.payment_id)
            report = t.replay()
            assert report.differences == ()
            assert report.ok
            existing = [p for p in (t.find(pid) for pid in PIDS) if p is not None]
            assert report.payments == len(existing)
            assert report.events == sum(1 for _ in t.events())
            for live in existing:
                stream = t.store.stream(live.payment_id)
                assert [e.version for e in stream] == list(range(1, live.version + 1))
                assert fold(stream) == live
