"""
Unknown create outcomes and lookups against the fake Omise (issue 13):
``backend_error`` on ``POST /charges`` with and without the charge made, the
client's lookups (``find_charge``, ``charges_created``) under the real search
order and page size and under the pessimistic search switches, and throttling.

The library is driven as an application drives it: ``Tracker.create_charge``
then ``Tracker.reconcile`` with the real ``OmiseClient``; charges are counted
in the fake. No webhook receiver: only reads settle anything.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kplus_fsm import Status, Tracker
from kplus_fsm.adapters.fake import FakeOmise, start_server
from kplus_fsm.adapters.omise import OmiseClient, OmiseUnavailableError, RetryPolicy
from kplus_fsm.testing import FakeClock

SK = "skey_test_5zUNKNOWNsecretKEY00"
PK = "pkey_test_5zUNKNOWNpublicKEY00"
RETURN_URI = "https://shop.example/r"
#: Longer than the create flow's grace for an unknown create (15 minutes).
LATER = dt.timedelta(minutes=16)

#: The fake's search switches: the default, an index lag, metadata not indexed.
SEARCH_MODES: dict[str, dict[str, Any]] = {
    "search ok": {},
    "index lag 5 s": {"search_lag": 5.0},
    "metadata not indexed": {"search_metadata": False},
}


def client_for(fake: FakeOmise, **extra: Any) -> OmiseClient:
    extra.setdefault("retry", RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0))
    return OmiseClient(secret_key=SK, transport=fake.transport(), **extra)


def charges_for(fake: FakeOmise, pid: str) -> list[dict[str, Any]]:
    return [c for c in fake.charges() if c["metadata"].get("payment_id") == pid]


def statuses(tracker: Tracker, pid: str) -> list[str]:
    return [
        str(e.data["status"])
        for e in tracker.timeline(pid)
        if e.type == "event" and isinstance(e.data, dict) and "status" in e.data
    ]


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[Tracker]:
    with Tracker(tmp_path / "kplus.db") as t:
        yield t


# --- backend_error on the create --------------------------------------------------------------


def _backend_error_case(
    clock: FakeClock, tracker: Tracker, switches: dict[str, Any], kind: Any, made: bool
) -> None:
    # The buyer has an hour: no bank timeout within the 16 minutes this takes.
    hour = dt.timedelta(hours=1)
    with FakeOmise(
        secret_key=SK, public_key=PK, clock=clock, seed=3, bank_timeout=hour, **switches
    ) as fake:
        tracker.clock = fake.now
        with client_for(fake) as client:
            fake.inject_fault("POST /charges", kind, code="backend_error")
            first = tracker.create_charge(
                client, payment_id="order-be", amount=35_000, return_uri=RETURN_URI
            )
            assert first.payment is not None
            assert first.status is not Status.FAILED, first.reason  # never a definite "no"
            assert len(charges_for(fake, "order-be")) == (1 if made else 0)
            if first.status is Status.CREATED:
                assert first.payment.create_unknown

            fake.advance_clock(dt.timedelta(seconds=10))  # past any index lag
            tracker.reconcile(client, pending_threshold=dt.timedelta(0))
            payment = tracker.get("order-be")
            assert payment.failure_code != "backend_error"
            assert "failed" not in statuses(tracker, "order-be")
            if not made:
                # No charge exists, and it is too early to say none ever will:
                # the outcome stays unknown, never failed, and nothing was charged.
                assert (payment.status, payment.create_unknown) == (Status.CREATED, True)
                assert charges_for(fake, "order-be") == []
                return
            [charge] = charges_for(fake, "order-be")
            assert (payment.status, payment.charge_id) == (Status.PENDING, charge["id"])
            assert not payment.create_unknown
            # The merchant retries long after: the charge is found, never made twice.
            fake.advance_clock(LATER)
            again = tracker.create_charge(
                client, payment_id="order-be", amount=35_000, return_uri=RETURN_URI
            )
            assert (again.status, len(charges_for(fake, "order-be"))) == (Status.PENDING, 1)


@pytest.mark.parametrize(
    ("mode", "kind", "made"),
    [
        ("search ok", "error", False),
        ("search ok", "commit_then_error", True),
        ("index lag 5 s", "error", False),
        ("index lag 5 s", "commit_then_error", True),
        ("metadata not indexed", "error", False),
        # Search cannot see it: the listing by creation time finds it (never a second one).
        ("metadata not indexed", "commit_then_error", True),
    ],
    ids=lambda v: (
        {True: "charge made", False: "charge not made"}.get(v, str(v))
        if isinstance(v, bool)
        else str(v)
    ),
)
def test_backend_error_on_create_is_never_a_refusal(
    clock: FakeClock, tracker: Tracker, mode: str, kind: Any, made: bool
) -> None:
    """
    create_charge + reconcile: never failed; with the charge made, pending on exactly
    that one charge (a retry long after finds it); without, unknown and uncharged.
    """
    _backend_error_case(clock, tracker, SEARCH_MODES[mode], kind, made)


# --- the client's lookups against the fake ------------------------------------------------------


class TestLookups:
    """find_charge under newest-first 30-per-page search; charges_created by time."""

    def test_find_charge_reads_past_the_first_page(self, clock: FakeClock) -> None:
        """The exact match is the oldest of 36 hits: on page 2, newest first."""
        with (
            FakeOmise(secret_key=SK, public_key=PK, clock=clock) as fake,
            client_for(fake) as c,
            httpx.Client(transport=fake.transport(), base_url="https://x", auth=(SK, "")) as api,
        ):
            target = _create(api, "order-7")
            for n in range(35):
                fake.advance_clock(1)
                _create(api, f"order-7-{n}")  # every word of "order-7": a near match
            assert c.search_charges("order-7")["total"] == 36
            found = c.find_charge("order-7")
            assert found is not None
            assert found["id"] == target["id"]

    def test_find_charge_misses_what_search_cannot_see(self, clock: FakeClock) -> None:
        """None means "not found by the search": charges_created still lists it."""
        with (
            FakeOmise(secret_key=SK, public_key=PK, clock=clock, search_metadata=False) as fake,
            client_for(fake) as c,
            httpx.Client(transport=fake.transport(), base_url="https://x", auth=(SK, "")) as api,
        ):
            start = fake.now()
            target = _create(api, "order-hidden")
            assert c.find_charge("order-hidden") is None
            listed = list(c.charges_created(since=start, until=fake.now()))
            assert [ch["id"] for ch in listed] == [target["id"]]

    def test_an_index_lag(self, clock: FakeClock) -> None:
        with (
            FakeOmise(secret_key=SK, public_key=PK, clock=clock, search_lag=30.0) as fake,
            client_for(fake) as c,
            httpx.Client(transport=fake.transport(), base_url="https://x", auth=(SK, "")) as api,
        ):
            start = fake.now()
            target = _create(api, "order-late-index")
            assert c.find_charge("order-late-index") is None
            assert [ch["id"] for ch in c.charges_created(since=start, until=fake.now())] == [
                target["id"]
            ]
            fake.advance_clock(30)
            found = c.find_charge("order-late-index")
            assert found is not None
            assert found["id"] == target["id"]

    def test_charges_created_over_loopback(self, clock: FakeClock) -> None:
        """250 charges a second apart; a window of 150 of them, oldest first, 2 pages."""
        with FakeOmise(secret_key=SK, public_key=PK, clock=clock) as fake:
            made = []
            with httpx.Client(
                transport=fake.transport(), base_url="https://x", auth=(SK, "")
            ) as api:
                for n in range(250):
                    made.append(_create(api, f"order-w-{n}"))
                    fake.advance_clock(1)
            since = dt.datetime.fromisoformat(made[50]["created_at"])
            until = dt.datetime.fromisoformat(made[199]["created_at"])
            with start_server(fake) as server, OmiseClient(secret_key=SK, base_url=server.url) as c:
                listed = list(c.charges_created(since=since, until=until))
                # A fraction of a second is rounded outwards: the next second is in too.
                wider = list(
                    c.charges_created(
                        since=since + dt.timedelta(milliseconds=300),
                        until=until + dt.timedelta(milliseconds=300),
                    )
                )
            assert [ch["id"] for ch in listed] == [ch["id"] for ch in made[50:200]]
            assert [ch["id"] for ch in wider] == [ch["id"] for ch in made[50:201]]


def _create(api: httpx.Client, pid: str) -> dict[str, Any]:
    response = api.post(
        "/charges",
        data={
            "amount": "35000",
            "currency": "THB",
            "return_uri": RETURN_URI,
            "source[type]": "mobile_banking_kbank",
            "metadata[payment_id]": pid,
        },
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --- throttling ---------------------------------------------------------------------------------


class TestThrottling:
    """The fake throttles by rate with Retry-After; the client and reconciler back off."""

    def test_reads_wait_for_retry_after(self, clock: FakeClock) -> None:
        slept: list[float] = []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            time.sleep(0.06)  # the bucket refills at 20 per second: long enough

        with (
            FakeOmise(
                secret_key=SK, public_key=PK, clock=clock, rate_limit=20.0, rate_burst=1
            ) as fake,
            client_for(fake, sleep=sleep, retry=RetryPolicy(attempts=3)) as c,
        ):
            c.list_charges()
            c.list_charges()  # throttled once, then retried after Retry-After
            assert slept == [1.0]

    def test_reconcile_stops_at_the_first_429(self, clock: FakeClock, tracker: Tracker) -> None:
        with FakeOmise(secret_key=SK, public_key=PK, clock=clock) as fake, client_for(fake) as c:
            tracker.clock = fake.now
            for pid in ("order-t1", "order-t2", "order-t3"):
                assert (
                    tracker.create_charge(
                        c, payment_id=pid, amount=35_000, return_uri=RETURN_URI
                    ).status
                    is Status.PENDING
                )
            fake.set_options(rate_limit=0.01, rate_burst=1)  # then one request per 100 s
            report = tracker.reconcile(c, pending_threshold=dt.timedelta(0))
            assert report.rate_limited
            assert report.retry_after is not None
            assert 1 <= report.retry_after <= 100
            assert (report.changed, report.errors) == (0, 1)
            assert report.checked < 3  # stopped at the 429: the third was not read
            with pytest.raises(OmiseUnavailableError) as info:
                c.list_charges()
            assert info.value.http_status == 429
