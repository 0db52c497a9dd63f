"""The tracker's create flow and reconciliation, against a scripted ChargeAPI."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kplus_fsm import Outcome, Status, Tracker
from kplus_fsm.exceptions import (
    GatewayRefusedError,
    GatewayUnavailableError,
    InvalidPaymentRequestError,
)
from kplus_fsm.testing import FakeClock, charge_json, error_json

Answer = Mapping[str, Any] | Exception | None


class ScriptedAPI:
    """A ChargeAPI whose answers are scripted per call; it records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.creates: list[Answer] = []
        self.reads: dict[str, list[Answer]] = {}
        self.searches: list[Answer] = []
        self.listings: list[list[Mapping[str, Any]] | Exception] = []

    def _next(self, queue: list[Answer], default: Answer) -> Any:
        answer = queue.pop(0) if queue else default
        if isinstance(answer, Exception):
            raise answer
        return answer

    def create_charge(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        self.calls.append(("create", dict(params)))
        return self._next(self.creates, None)  # type: ignore[no-any-return]

    def retrieve_charge(self, charge_id: str) -> Mapping[str, Any]:
        self.calls.append(("retrieve", charge_id))
        return self._next(self.reads.setdefault(charge_id, []), None)  # type: ignore[no-any-return]

    def find_charge(self, payment_id: str) -> Mapping[str, Any] | None:
        self.calls.append(("find", payment_id))
        return self._next(self.searches, None)  # type: ignore[no-any-return]

    def charges_created(self, *, since: dt.datetime, until: dt.datetime) -> list[Mapping[str, Any]]:
        self.calls.append(("list", (since, until)))
        answer = self.listings.pop(0) if self.listings else []
        if isinstance(answer, Exception):
            raise answer
        return answer

    def count(self, kind: str) -> int:
        return sum(1 for c in self.calls if c[0] == kind)


REQ: dict[str, Any] = {
    "payment_id": "order-9",
    "amount": 25_000,
    "return_uri": "https://shop.example/r",
    "platform_type": "android",
}


@pytest.fixture
def env(tmp_path: Path) -> tuple[Tracker, ScriptedAPI, FakeClock]:
    clock = FakeClock("2026-05-01T09:00:00+00:00")
    return Tracker(tmp_path / "k.db", clock=clock), ScriptedAPI(), clock


def _pending(**kw: Any) -> dict[str, Any]:
    return charge_json(
        payment_id="order-9",
        charge_id="chrg_test_9",
        amount=25_000,
        created_at=dt.datetime(2026, 5, 1, 9, tzinfo=dt.UTC),
        **kw,
    )


Env = tuple[Tracker, ScriptedAPI, FakeClock]


class TestCreate:
    """write-ahead request, POST /charges, record the answer."""

    def test_success_records_pending(self, env: Env) -> None:
        """The charge comes back pending; the params carry the inline source and metadata."""
        t, api, _ = env
        api.creates.append(_pending())
        with t:
            result = t.create_charge(api, **REQ)
        assert (result.outcome, result.status) == (Outcome.APPLIED, Status.PENDING)
        ((_, params),) = api.calls
        assert params["source"] == {"type": "mobile_banking_kbank", "platform_type": "ANDROID"}
        assert params["metadata"] == {"payment_id": "order-9"}
        assert (params["amount"], params["currency"]) == (25_000, "THB")

    def test_error_object_fails_the_payment(self, env: Env) -> None:
        """An Omise error object is a definite failure with its code."""
        t, api, _ = env
        api.creates.append(
            GatewayRefusedError("bad", http_status=400, code="invalid_charge", error=error_json())
        )
        with t:
            result = t.create_charge(api, **REQ)
            assert result.status is Status.FAILED
            assert t.get("order-9").failure_code == "invalid_charge"

    def test_timeout_then_search_finds_the_charge(self, env: Env) -> None:
        """An unknown outcome is settled by a search on the payment id."""
        t, api, _ = env
        api.creates.append(GatewayUnavailableError("read timeout"))
        api.searches.append(_pending())
        with t:
            result = t.create_charge(api, **REQ)
            assert result.status is Status.PENDING
            assert not t.get("order-9").create_unknown
            kinds = [e.kind for e in t.timeline("order-9") if e.type == "input"]
        assert kinds == ["payment_request", "create_unknown", "charge_snapshot"]

    def test_timeout_search_empty_stays_unknown(self, env: Env) -> None:
        """With nothing found the payment stays created, flagged."""
        t, api, _ = env
        api.creates.append(GatewayUnavailableError("connection reset"))
        with t:
            result = t.create_charge(api, **REQ)
            assert (result.outcome, result.status) == (Outcome.UNKNOWN, Status.CREATED)
            assert t.get("order-9").create_unknown

    def test_never_a_second_charge(self, env: Env) -> None:
        """Paying again with the same parameters returns the existing payment, no API call."""
        t, api, _ = env
        api.creates.append(_pending())
        with t:
            t.create_charge(api, **REQ)
            again = t.create_charge(api, **REQ)
        assert again.outcome is Outcome.DUPLICATE
        assert again.payment is not None
        assert again.payment.charge_id == "chrg_test_9"
        assert api.count("create") == 1

    def test_other_parameters_rejected_without_api_call(self, env: Env) -> None:
        """The same payment id with another amount is rejected; Omise is not called."""
        t, api, _ = env
        api.creates.append(_pending())
        with t:
            t.create_charge(api, **REQ)
            other = t.create_charge(api, **{**REQ, "amount": 30_000})
        assert other.outcome is Outcome.REJECTED
        assert "amount 25000 != 30000" in other.reason
        assert api.count("create") == 1

    def test_invalid_request_never_reaches_the_api(self, env: Env) -> None:
        """Validation fails before the API; the refused request is recorded."""
        t, api, _ = env
        with t, pytest.raises(InvalidPaymentRequestError) as info:
            t.create_charge(api, **{**REQ, "amount": 10})
        assert info.value.field == "amount"
        assert info.value.inbox_id == 1
        assert api.calls == []

    def test_unknown_retry_never_posts_again(self, env: Env) -> None:
        """After an unknown outcome, a retry looks for the charge; it never posts again."""
        t, api, clock = env
        api.creates.append(GatewayUnavailableError("timeout"))
        with t:
            t.create_charge(api, **REQ)
            deferred = t.create_charge(api, **REQ)
            assert (deferred.outcome, deferred.status) == (Outcome.UNKNOWN, Status.CREATED)
            clock.advance(minutes=16)
            later = t.create_charge(api, **REQ)
            assert later.status is Status.CREATED  # one look after the grace: not enough
        assert api.count("create") == 1
        assert api.count("find") == 3
        assert api.count("list") == 3

    def test_listing_finds_what_search_misses(self, env: Env) -> None:
        """Metadata not indexed (or a lagging index): the listing by creation time finds it."""
        t, api, _ = env
        api.creates.append(GatewayUnavailableError("timeout"))
        api.listings.append([_pending(), charge_json(payment_id="other", amount=25_000)])
        with t:
            result = t.create_charge(api, **REQ)
        assert result.status is Status.PENDING
        assert api.count("create") == 1

    def test_settled_as_not_created_after_grace_and_two_looks(self, env: Env) -> None:
        """Two empty looks after the grace period, 60 s apart, settle the create as never made."""
        t, api, clock = env
        api.creates.append(GatewayUnavailableError("timeout"))
        with t:
            t.create_charge(api, **REQ)
            clock.advance(minutes=15, seconds=1)
            first = t.create_charge(api, **REQ)
            assert first.status is Status.CREATED
            clock.advance(seconds=30)
            too_soon = t.create_charge(api, **REQ)
            assert too_soon.status is Status.CREATED  # the looks must be 60 s apart
            clock.advance(seconds=31)
            settled = t.create_charge(api, **REQ)
            assert (settled.outcome, settled.status) == (Outcome.APPLIED, Status.FAILED)
            payment = t.get("order-9")
            assert payment.failure_code == "not_created"
            assert [e.kind for e in settled.events] == ["charge.not_created"]
            evidence = settled.events[0].data["evidence"]
            looks = [e for e in t.timeline("order-9") if e.kind == "charge_lookup"]
            assert evidence == [looks[1].inbox_id, looks[3].inbox_id]
        assert api.count("create") == 1

    def test_a_look_that_fails_is_no_evidence(self, env: Env) -> None:
        """A search or listing that fails records nothing: 'no answer' is not 'not found'."""
        t, api, clock = env
        api.creates.append(GatewayUnavailableError("timeout"))
        with t:
            t.create_charge(api, **REQ)
            for _ in range(3):
                clock.advance(minutes=16)
                api.listings.append(GatewayUnavailableError("503", http_status=503))
                assert t.create_charge(api, **REQ).status is Status.CREATED
            looks = [e for e in t.timeline("order-9") if e.kind == "charge_lookup"]
        assert len(looks) == 1  # only the look right after the timeout answered
        assert api.count("create") == 1

    def test_a_recorded_request_is_a_write_ahead(self, env: Env) -> None:
        """request_payment records the write-ahead of the caller's own POST: create_charge
        after it only looks for the charge, it never posts (it could be the second)."""
        t, api, _ = env
        api.searches.append(_pending())
        with t:
            t.request_payment(**REQ)
            result = t.create_charge(api, **REQ)
        assert result.status is Status.PENDING
        assert api.count("create") == 0


class TestReconcile:
    """reconcile() re-reads what webhooks may have missed."""

    def _pending_payment(self, t: Tracker, api: ScriptedAPI) -> None:
        api.creates.append(_pending())
        t.create_charge(api, **REQ)

    def test_pending_past_expiry_is_read(self, env: Env) -> None:
        """A pending charge past expires_at is re-read and moved on."""
        t, api, clock = env
        with t:
            self._pending_payment(t, api)
            assert t.reconcile(api).checked == 0  # not due yet
            clock.advance(minutes=11)
            api.reads["chrg_test_9"] = [_pending(status="expired")]
            report = t.reconcile(api)
            assert (report.checked, report.changed) == (1, 1)
            assert t.get("order-9").status is Status.EXPIRED
            assert t.reconcile(api).checked == 0  # terminal: never again

    def test_unknown_create_settled_by_search(self, env: Env) -> None:
        """A payment whose create outcome is unknown is found by its payment id."""
        t, api, _ = env
        api.creates.append(GatewayUnavailableError("timeout"))
        with t:
            t.create_charge(api, **REQ)
            api.searches.append(_pending(status="successful"))
            report = t.reconcile(api)
            assert report.items[0].action == "found"
            assert t.get("order-9").status is Status.SUCCESSFUL

    def test_dead_creates_do_not_block_the_rest(self, env: Env) -> None:
        """Successive bounded runs reach every due payment: the least recently checked first."""
        t, api, clock = env
        with t:
            for i in range(3):  # creates cut off before any charge existed
                api.creates.append(GatewayUnavailableError("503", http_status=503))
                t.create_charge(api, **{**REQ, "payment_id": f"order-dead{i}"})
            api.creates.append(
                charge_json(payment_id="order-paid", charge_id="chrg_p", amount=25_000)
            )
            t.create_charge(api, **{**REQ, "payment_id": "order-paid"})
            clock.advance(hours=1)
            api.reads["chrg_p"] = [
                charge_json(
                    payment_id="order-paid", charge_id="chrg_p", amount=25_000, status="successful"
                )
            ]
            seen: list[str] = []
            for _ in range(3):
                report = t.reconcile(api, limit=3)
                seen += [i.payment_id for i in report.items]
                clock.advance(minutes=2)
            assert "order-paid" in seen[:4]
            assert t.get("order-paid").status is Status.SUCCESSFUL

    def test_dead_create_settles_without_any_command_but_reconcile(self, env: Env) -> None:
        """Reconciliation settles a create that never reached Omise, after the grace period."""
        t, api, clock = env
        api.creates.append(GatewayUnavailableError("503", http_status=503))
        with t:
            t.create_charge(api, **REQ)
            actions: list[str] = []
            for _ in range(20):
                clock.advance(minutes=2)
                actions += [i.action for i in t.reconcile(api).items]
            payment = t.get("order-9")
        assert (payment.status, payment.failure_code) == (Status.FAILED, "not_created")
        assert actions[-1] == "not_created"
        assert "found" not in actions
        assert api.count("create") == 1

    def test_unchanged_payments_rest(self, env: Env) -> None:
        """A pending payment found unchanged is not read again at once (backoff)."""
        t, api, clock = env
        with t:
            self._pending_payment(t, api)
            clock.advance(hours=1)
            api.reads["chrg_test_9"] = [_pending(), _pending()]
            assert t.reconcile(api).checked == 1
            assert t.reconcile(api).checked == 0  # resting
            clock.advance(minutes=2)
            assert t.reconcile(api).checked == 1
        assert api.count("retrieve") == 2

    def test_stops_at_429(self, env: Env, tmp_path: Path) -> None:
        """The first 429 ends the run and reports retry_after."""
        t, api, clock = env
        with t:
            for i in range(3):
                pid = f"order-r{i}"
                api.creates.append(
                    charge_json(payment_id=pid, charge_id=f"chrg_test_r{i}", amount=25_000)
                )
                t.create_charge(api, **{**REQ, "payment_id": pid})
            clock.advance(hours=1)
            api.reads["chrg_test_r0"] = [
                GatewayUnavailableError("rate limited", http_status=429, retry_after=7)
            ]
            report = t.reconcile(api)
        assert report.rate_limited
        assert report.retry_after == 7
        assert report.checked == 1
        assert api.count("retrieve") == 1

    def test_limit_bounds_a_run(self, env: Env) -> None:
        """At most `limit` payments per run, oldest first."""
        t, api, clock = env
        with t:
            for i in range(5):
                pid = f"order-l{i}"
                api.creates.append(
                    charge_json(payment_id=pid, charge_id=f"chrg_test_l{i}", amount=25_000)
                )
                t.create_charge(api, **{**REQ, "payment_id": pid})
                api.reads[f"chrg_test_l{i}"] = [
                    charge_json(payment_id=pid, charge_id=f"chrg_test_l{i}", amount=25_000)
                ]
                clock.advance(seconds=1)
            clock.advance(hours=1)
            report = t.reconcile(api, limit=2)
            assert [i.payment_id for i in report.items] == ["order-l0", "order-l1"]
            again = t.reconcile(api, limit=2)
        assert [i.payment_id for i in again.items] == ["order-l2", "order-l3"]

    def test_errors_are_counted_not_raised(self, env: Env) -> None:
        """A 5xx on one read is reported; the run goes on."""
        t, api, clock = env
        with t:
            self._pending_payment(t, api)
            clock.advance(hours=1)
            api.reads["chrg_test_9"] = [GatewayUnavailableError("boom", http_status=503)]
            report = t.reconcile(api)
        assert (report.errors, report.rate_limited) == (1, False)
        assert report.items[0].action == "error"
