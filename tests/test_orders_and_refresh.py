"""
Attempts per order and settling one payment now, as a shop and its on-call
engineer use them: ``kplus-fsm pay --order-ref`` (and every exit code of
``pay``), ``kplus-fsm reconcile ID`` and ``Tracker.refresh`` (one payment among
10,000 pending, one API read, nothing else touched), an order paid twice shown
by ``anomalies``, ``stats`` and the view, and ``list --stuck --exit-code``. The
fake Omise runs in this process on 127.0.0.1; the commands are real processes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from consumer_runners import quiet

from kplus_fsm import (
    ChargeSnapshot,
    ChargeView,
    InputKind,
    Origin,
    PaymentRequest,
    SQLiteStore,
    Status,
    Tracker,
    format_time,
    utc_now,
)
from kplus_fsm._codec import dumps
from kplus_fsm._machine import decide
from kplus_fsm._store._rows import InboxDraft
from kplus_fsm.adapters.fake import FakeOmise, FakeOmiseServer, start_server
from kplus_fsm.adapters.omise import OmiseClient
from kplus_fsm.testing import charge_json
from kplus_fsm.typing import RecordItem

pytestmark = pytest.mark.slow

EXE = str(Path(sys.executable).with_name("kplus-fsm"))
SK = "skey_test_5ordersecretkey00000001"
PK = "pkey_test_5orderpublickey0000001"
RETURN_URI = "https://shop.example/orders/return"
TIMEOUT = 60.0
PENDING = 10_000


# ----------------------------------------------------------------- the fake


class CountingProxy:
    """An HTTP forwarder on 127.0.0.1 in front of the fake: counts each request."""

    def __init__(self, target: str) -> None:
        self.requests: list[tuple[str, str]] = []
        proxy = self
        upstream = httpx.Client(base_url=target, trust_env=False, timeout=30.0)

        class Forward(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests.append((self.command, self.path.split("?")[0]))
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                answer = upstream.request(self.command, self.path, content=body, headers=headers)
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._upstream = upstream
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._upstream.close()


@attrs.define
class Omise:
    """The fake (driven in process), its server on loopback, and a counting proxy."""

    fake: FakeOmise
    server: FakeOmiseServer
    proxy: CountingProxy

    @property
    def url(self) -> str:
        return self.proxy.url

    def client(self) -> OmiseClient:
        return OmiseClient(secret_key=SK, base_url=self.url)


@pytest.fixture
def omise() -> Iterator[Omise]:
    fake = FakeOmise(secret_key=SK, public_key=PK)
    server = start_server(fake)
    proxy = CountingProxy(server.url)
    try:
        yield Omise(fake=fake, server=server, proxy=proxy)
    finally:
        proxy.close()
        server.close()
        fake.close()


def env(url: str | None = None) -> dict[str, str]:
    out = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OMISE_", "KPLUS_FSM_")) and "proxy" not in k.lower()
    }
    out.update(NO_PROXY="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    if url is not None:
        out.update(OMISE_SECRET_KEY=SK, OMISE_API_URL=url)
    return out


def kplus(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [EXE, *args], capture_output=True, text=True, env=env(url), timeout=TIMEOUT, check=False
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert SK not in done.stdout + done.stderr
    return done


def pay(db: Path, url: str, *args: str, amount: int = 35_000) -> subprocess.CompletedProcess[str]:
    common = ["--db", str(db), "--amount", str(amount), "--return-uri", RETURN_URI, "--json"]
    return kplus("pay", *common, *args, url=url)


def read(db: Path) -> Tracker:
    return Tracker(SQLiteStore(db, read_only=True))


# ------------------------------------------------------------ a big pending log


def _pending_inputs(pid: str, cid: str, now: str) -> list[RecordItem]:
    """A payment request and its create response, as ``record_many`` items."""
    request = PaymentRequest.create(payment_id=pid, amount=35_000, return_uri=RETURN_URI)
    charge = charge_json(payment_id=pid, charge_id=cid, amount=35_000)
    snapshot = ChargeSnapshot(charge=ChargeView.from_json(charge), origin=Origin.CREATE_RESPONSE)
    return [
        RecordItem(
            draft=InboxDraft(
                kind=InputKind.PAYMENT_REQUEST,
                body=dumps(request.to_json()),
                body_encoding="json",
                origin="merchant",
            ),
            decide=partial(decide, inp=request),
            now=now,
            payment_id=pid,
        ),
        RecordItem(
            draft=InboxDraft(
                kind=InputKind.CHARGE_SNAPSHOT,
                body=dumps(charge),
                body_encoding="json",
                origin="create_response",
            ),
            decide=partial(decide, inp=snapshot),
            now=now,
            payment_id=pid,
            charge_id=cid,
        ),
    ]


def bulk_pending(db: Path, count: int, *, first: int = 0, batch: int = 2000) -> None:
    """``count`` pending payments, recorded through the machine in batches (fast)."""
    now = format_time(utc_now())
    items: list[RecordItem] = []
    with quiet(), SQLiteStore(db, synchronous="OFF") as store:
        for i in range(first, first + count):
            items += _pending_inputs(f"bulk-{i:05d}", f"chrg_test_bulk{i:05d}", now)
            if len(items) >= batch or i == first + count - 1:
                results = store.record_many(items)
                outcomes = [
                    r if isinstance(r, Exception) else r.decision.outcome.value for r in results
                ]
                assert outcomes == ["applied"] * len(items)
                items.clear()


@attrs.frozen
class Picture:
    """Everything reconciliation could touch: every payment row, the heads, the queue."""

    payments: Mapping[str, tuple[Any, ...]]
    last_inbox: int
    last_event: int
    checks: int


def picture(db: Path) -> Picture:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        payments = {row[0]: row for row in conn.execute("SELECT * FROM payments")}
        last_inbox = conn.execute("SELECT coalesce(max(id), 0) FROM inbox").fetchone()[0]
        last_event = conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0]
        checks = conn.execute("SELECT count(*) FROM reconcile_checks").fetchone()[0]
    return Picture(payments, last_inbox, last_event, checks)


def assert_only(db: Path, before: Picture, payment_id: str) -> None:
    """Only ``payment_id``'s row changed; every new row is about it; the queue is untouched."""
    after = picture(db)
    changed = {pid for pid, row in after.payments.items() if before.payments.get(pid) != row}
    assert changed == {payment_id}
    assert set(after.payments) == set(before.payments)
    assert after.checks == before.checks
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        inputs = conn.execute(
            "SELECT DISTINCT payment_id FROM inbox WHERE id > ?", (before.last_inbox,)
        ).fetchall()
        events = conn.execute(
            "SELECT DISTINCT stream FROM events WHERE position > ?", (before.last_event,)
        ).fetchall()
    assert inputs == [(payment_id,)]
    assert events == [(payment_id,)]


@pytest.fixture
def crowded(tmp_path: Path, omise: Omise) -> tuple[Path, str, str]:
    """A log of 10,000 pending payments and, among them, a real one paid at the fake since."""
    db = tmp_path / "kplus.db"
    bulk_pending(db, PENDING // 2)
    with Tracker(db) as tracker, omise.client() as api:
        made = tracker.create_charge(api, order_ref="order-7", amount=35_000, return_uri=RETURN_URI)
    payment = made.payment
    assert payment is not None
    assert payment.charge_id is not None
    bulk_pending(db, PENDING // 2, first=PENDING // 2)
    omise.fake.mark_as_paid(payment.charge_id)
    omise.proxy.requests.clear()
    return db, payment.payment_id, payment.charge_id


# -------------------------------------------------------- settle one payment now


class CountingAPI:
    """A :class:`kplus_fsm.ChargeAPI` that records every call before making it."""

    def __init__(self, api: OmiseClient) -> None:
        self.api = api
        self.calls: list[tuple[str, str]] = []

    def create_charge(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        self.calls.append(("create_charge", ""))
        return self.api.create_charge(params)

    def retrieve_charge(self, charge_id: str) -> Mapping[str, Any]:
        self.calls.append(("retrieve_charge", charge_id))
        return self.api.retrieve_charge(charge_id)

    def find_charge(self, payment_id: str) -> Mapping[str, Any] | None:
        self.calls.append(("find_charge", payment_id))
        return self.api.find_charge(payment_id)

    def charges_created(self, *, since: Any, until: Any) -> Iterator[Mapping[str, Any]]:
        self.calls.append(("charges_created", ""))
        return self.api.charges_created(since=since, until=until)


class TestSettleOneNow:
    """One payment among 10,000 pending: one read, its rows only."""

    def test_tracker_refresh(self, crowded: tuple[Path, str, str], omise: Omise) -> None:
        db, payment_id, charge_id = crowded
        before = picture(db)
        assert len(before.payments) == PENDING + 1
        with Tracker(db) as tracker, omise.client() as client:
            api = CountingAPI(client)
            result = tracker.refresh(api, charge_id)  # by charge id, as a buyer's receipt shows
        assert (result.outcome.value, result.status) == ("applied", Status.SUCCESSFUL)
        assert result.previous is not None
        assert result.previous.status is Status.PENDING
        assert api.calls == [("retrieve_charge", charge_id)]
        assert omise.proxy.requests == [("GET", f"/charges/{charge_id}")]
        assert_only(db, before, payment_id)

    def test_reconcile_id(self, crowded: tuple[Path, str, str], omise: Omise) -> None:
        db, payment_id, charge_id = crowded
        before = picture(db)
        done = kplus("reconcile", payment_id, "--db", str(db), "--json", url=omise.url)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert (report["checked"], report["changed"], report["errors"]) == (1, 1, 0)
        assert report["unknown_ids"] == []
        [item] = report["items"]
        assert (item["payment_id"], item["action"], item["outcome"]) == (
            payment_id,
            "refetched",
            "applied",
        )
        assert (item["from_status"], item["to_status"]) == ("pending", "successful")
        assert omise.proxy.requests == [("GET", f"/charges/{charge_id}")]
        assert_only(db, before, payment_id)
        with read(db) as tracker:
            kinds = [(e.kind, e.origin) for e in tracker.timeline(payment_id)][-2:]
        assert kinds == [("charge_snapshot", "poll"), ("charge.successful", None)]

    def test_unknown_ids_are_reported(self, tmp_path: Path, omise: Omise) -> None:
        db = tmp_path / "kplus.db"
        paid = pay(db, omise.url, "--order-ref", "order-8")
        assert paid.returncode == 0, paid.stderr
        charge_id = json.loads(paid.stdout)["charge_id"]
        omise.proxy.requests.clear()
        args = ("reconcile", "nope-1", "order-8.1", "chrg_test_nope", charge_id, "--db", str(db))
        done = kplus(*args, url=omise.url)
        assert done.returncode == 3
        assert "no payment with payment id or charge id 'nope-1'" in done.stderr
        assert "'chrg_test_nope'" in done.stderr
        assert "checked 1, changed 0, errors 0" in done.stdout  # one payment, named twice
        assert "order-8.1" in done.stdout
        assert omise.proxy.requests == [("GET", f"/charges/{charge_id}")]
        as_json = kplus(*args, "--json", url=omise.url)
        assert json.loads(as_json.stdout)["unknown_ids"] == ["nope-1", "chrg_test_nope"]

    def test_bulk_flags_do_not_apply_to_ids(self, tmp_path: Path, omise: Omise) -> None:
        db = tmp_path / "kplus.db"
        assert pay(db, omise.url, "--order-ref", "order-9").returncode == 0
        done = kplus("reconcile", "order-9.1", "--limit", "5", "--db", str(db), url=omise.url)
        assert done.returncode == 2
        assert "--limit applies to the bulk run" in done.stderr

    def test_a_failed_read_exits_1(self, tmp_path: Path, omise: Omise) -> None:
        db = tmp_path / "kplus.db"
        assert pay(db, omise.url, "--order-ref", "order-10").returncode == 0
        omise.fake.inject_fault("GET /charges/*", "error", status=503, times=10)
        done = kplus("reconcile", "order-10.1", "--db", str(db), "--json", url=omise.url)
        omise.fake.clear_faults()
        assert done.returncode == 1
        [item] = json.loads(done.stdout)["items"]
        assert item["action"] == "error"


# -------------------------------------------------------------- pay and orders


def paid_json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def settle(db: Path, omise: Omise, payment_id: str) -> dict[str, Any]:
    done = kplus("reconcile", payment_id, "--db", str(db), "--json", url=omise.url)
    assert done.returncode == 0, done.stderr
    [item] = json.loads(done.stdout)["items"]
    return dict(item)


def charges_of(omise: Omise, order_ref: str) -> list[dict[str, Any]]:
    return [c for c in omise.fake.charges() if c["metadata"].get("order_ref") == order_ref]


class TestPay:
    """``pay --order-ref``: attempts, retries, and one exit code per situation."""

    def test_attempts_of_one_order(self, tmp_path: Path, omise: Omise) -> None:
        db = tmp_path / "kplus.db"
        first = pay(db, omise.url, "--order-ref", "ord-1")
        assert first.returncode == 0, first.stderr
        one = paid_json(first)
        assert (one["payment_id"], one["order_ref"], one["status"]) == (
            "ord-1.1",
            "ord-1",
            "pending",
        )
        assert one["authorize_uri"]
        again = pay(db, omise.url, "--order-ref", "ord-1")
        assert again.returncode == 0
        assert paid_json(again)["charge_id"] == one["charge_id"]  # the open attempt again
        assert len(charges_of(omise, "ord-1")) == 1

        omise.fake.mark_as_failed(one["charge_id"], failure_code="insufficient_fund")
        assert settle(db, omise, "ord-1.1")["to_status"] == "failed"
        declined = pay(db, omise.url, "--payment-id", "ord-1.1", "--order-ref", "ord-1")
        assert declined.returncode == 1
        assert "payment ord-1.1 cannot be paid: it failed (insufficient_fund" in declined.stderr
        assert "new attempt: kplus-fsm pay --order-ref ord-1" in declined.stderr

        retry = pay(db, omise.url, "--order-ref", "ord-1")
        assert retry.returncode == 0, retry.stderr
        two = paid_json(retry)
        assert two["payment_id"] == "ord-1.2"
        assert two["charge_id"] != one["charge_id"]
        omise.fake.mark_as_paid(two["charge_id"])
        assert settle(db, omise, "ord-1.2")["to_status"] == "successful"

        done = pay(db, omise.url, "--order-ref", "ord-1")
        assert done.returncode == 6
        assert "payment ord-1.2 is already paid (successful): do not charge again" in done.stderr
        other = pay(db, omise.url, "--order-ref", "ord-1", "--payment-id", "ord-1.extra")
        assert other.returncode == 6
        assert "order ord-1 is already paid by attempt ord-1.2" in other.stderr
        assert len(charges_of(omise, "ord-1")) == 2
        with read(db) as tracker:
            attempts = tracker.attempts("ord-1")
        assert [(a.payment_id, a.status) for a in attempts] == [
            ("ord-1.1", Status.FAILED),
            ("ord-1.2", Status.SUCCESSFUL),
        ]

    def test_timed_out_at_the_bank_then_a_new_attempt(self, tmp_path: Path, omise: Omise) -> None:
        """The fake's default model: the bank gives up after ten minutes (``payment_expired``)."""
        db = tmp_path / "kplus.db"
        assert pay(db, omise.url, "--order-ref", "ord-4").returncode == 0
        omise.fake.advance_clock(601)
        assert settle(db, omise, "ord-4.1")["to_status"] == "failed"
        late = pay(db, omise.url, "--payment-id", "ord-4.1", "--order-ref", "ord-4")
        assert late.returncode == 1
        assert "payment ord-4.1 cannot be paid: it failed (payment_expired" in late.stderr
        retry = pay(db, omise.url, "--order-ref", "ord-4")
        assert retry.returncode == 0, retry.stderr
        assert paid_json(retry)["payment_id"] == "ord-4.2"

    def test_expired_then_a_new_attempt(self, tmp_path: Path, omise: Omise) -> None:
        """The ``lifetime`` model: the charge itself expires, status ``expired``."""
        db = tmp_path / "kplus.db"
        omise.fake.set_options(expiry_model="lifetime")
        assert pay(db, omise.url, "--order-ref", "ord-2").returncode == 0
        omise.fake.advance_clock(601)
        assert settle(db, omise, "ord-2.1")["to_status"] == "expired"
        late = pay(db, omise.url, "--payment-id", "ord-2.1", "--order-ref", "ord-2")
        assert late.returncode == 1
        assert "payment ord-2.1 expired before the buyer approved it" in late.stderr
        retry = pay(db, omise.url, "--order-ref", "ord-2")
        assert retry.returncode == 0, retry.stderr
        assert paid_json(retry)["payment_id"] == "ord-2.2"

    def test_a_refused_create(self, tmp_path: Path, omise: Omise) -> None:
        db = tmp_path / "kplus.db"
        omise.fake.inject_fault("POST /charges", "error", status=400, code="invalid_charge")
        refused = pay(db, omise.url, "--order-ref", "ord-3")
        assert refused.returncode == 1
        out = paid_json(refused)
        assert (out["payment_id"], out["status"], out["failure_code"]) == (
            "ord-3.1",
            "failed",
            "invalid_charge",
        )
        assert "cannot be paid: it failed (invalid_charge" in refused.stderr
        retry = pay(db, omise.url, "--order-ref", "ord-3")
        assert retry.returncode == 0, retry.stderr
        assert paid_json(retry)["payment_id"] == "ord-3.2"

    def test_an_unknown_outcome_is_deferred(self, tmp_path: Path, omise: Omise) -> None:
        db = tmp_path / "kplus.db"
        omise.fake.inject_fault("POST /charges", "commit_then_drop")
        omise.fake.inject_fault("GET /search", "error", status=400, code="bad_request")
        omise.fake.inject_fault("GET /charges", "error", status=400, code="bad_request")
        limbo = pay(db, omise.url, "--order-ref", "ord-4")
        assert limbo.returncode == 5
        out = paid_json(limbo)
        assert (out["status"], out["create_unknown"], out["authorize_uri"]) == (
            "created",
            True,
            None,
        )
        assert "the create's outcome is unknown" in limbo.stderr
        assert "kplus-fsm reconcile ord-4.1" in limbo.stderr
        [charge] = charges_of(omise, "ord-4")  # it was made
        assert settle(db, omise, "ord-4.1")["action"] == "found"
        again = pay(db, omise.url, "--order-ref", "ord-4")
        assert again.returncode == 0, again.stderr
        assert paid_json(again)["charge_id"] == charge["id"]
        assert len(charges_of(omise, "ord-4")) == 1

    def test_refusals(self, tmp_path: Path, omise: Omise) -> None:
        db = tmp_path / "kplus.db"
        assert pay(db, omise.url, "--payment-id", "single-1").returncode == 0
        other = pay(db, omise.url, "--payment-id", "single-1", amount=40_000)
        assert other.returncode == 1
        assert "refused: " in other.stderr
        assert "different parameters" in other.stderr
        assert pay(db, omise.url, "--order-ref", "ord-6").returncode == 0
        busy = pay(db, omise.url, "--order-ref", "ord-6", "--payment-id", "ord-6.b")
        assert busy.returncode == 1
        assert "attempt in progress: ord-6.1" in busy.stderr
        neither = pay(db, omise.url)
        assert neither.returncode == 2
        assert "give --order-ref" in neither.stderr
        bad = pay(db, omise.url, "--order-ref", "no spaces")
        assert bad.returncode == 2
        assert "invalid order_ref" in bad.stderr


class TestOrderPaidTwice:
    """Two attempts of one order both successful: anomalies, stats and the view say so."""

    def test_shown_everywhere(self, tmp_path: Path, omise: Omise) -> None:
        db = tmp_path / "kplus.db"
        first = paid_json(pay(db, omise.url, "--order-ref", "ord-5"))
        omise.fake.advance_clock(601)  # nobody approved in time: the bank gave up...
        assert settle(db, omise, "ord-5.1")["to_status"] == "failed"
        second = paid_json(pay(db, omise.url, "--order-ref", "ord-5"))
        assert second["payment_id"] == "ord-5.2"
        omise.fake.mark_as_paid(second["charge_id"])
        assert settle(db, omise, "ord-5.2")["to_status"] == "successful"
        # ...but the bank's late answer on the first charge was "paid".
        omise.fake.mark_as_paid(first["charge_id"], force=True)
        corrected = settle(db, omise, "ord-5.1")
        assert (corrected["from_status"], corrected["to_status"]) == ("failed", "successful")

        anomalies = json.loads(kplus("anomalies", "--db", str(db), "--json").stdout)
        assert anomalies["by_category"]["order_paid_twice"] >= 1
        twice = [a for a in anomalies["anomalies"] if a["category"] == "order_paid_twice"]
        assert {a["payment_id"] for a in twice} <= {"ord-5.1", "ord-5.2"}
        assert all("ord-5" in a["reason"] for a in twice)
        stats = json.loads(kplus("stats", "--db", str(db), "--json").stdout)
        assert stats["orders_paid_twice"] == 1
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute("SELECT * FROM orders_paid_twice")]
        assert len(rows) == 1
        assert (rows[0]["order_ref"], rows[0]["successful_attempts"], rows[0]["amount"]) == (
            "ord-5",
            2,
            70_000,
        )
        again = pay(db, omise.url, "--order-ref", "ord-5")
        assert again.returncode == 6


class TestAttemptAgain:
    """Asking for an existing attempt again is that attempt, whatever its siblings did."""

    def test_not_refused_for_a_paid_sibling(self, tmp_path: Path) -> None:
        with Tracker(tmp_path / "kplus.db") as tracker:
            for pid, cid, status in (("o.1", "chrg_1", "expired"), ("o.2", "chrg_2", "successful")):
                tracker.request_payment(
                    payment_id=pid, amount=35_000, return_uri=RETURN_URI, order_ref="o"
                )
                tracker.record_charge(
                    charge_json(payment_id=pid, charge_id=cid, amount=35_000, status=status),
                    origin="poll",
                )
            again = tracker.request_payment(
                payment_id="o.1", amount=35_000, return_uri=RETURN_URI, order_ref="o"
            )
            assert (again.outcome.value, again.status) == ("duplicate", Status.EXPIRED)
            new = tracker.request_payment(
                payment_id="o.3", amount=35_000, return_uri=RETURN_URI, order_ref="o"
            )
            assert new.outcome.value == "rejected"
            assert "already paid by attempt o.2" in new.reason
            assert tracker.next_attempt_id("o") == "o.2"


# ----------------------------------------------------------- list --exit-code


class TestListExitCode:
    def test_alerts_only_when_something_is_stuck(self, tmp_path: Path) -> None:
        db = tmp_path / "kplus.db"
        with Tracker(db) as tracker:
            tracker.request_payment(payment_id="calm-1", amount=35_000, return_uri=RETURN_URI)
        calm = kplus("list", "--stuck", "--exit-code", "--db", str(db))
        assert calm.returncode == 0
        assert "no payments match" in calm.stdout
        with Tracker(db) as tracker:
            tracker.request_payment(payment_id="limbo-1", amount=35_000, return_uri=RETURN_URI)
            tracker.record_create_unknown("limbo-1", reason="read timeout")
        stuck = kplus("list", "--stuck", "--exit-code", "--db", str(db))
        assert stuck.returncode == 1
        assert "limbo-1" in stuck.stdout
        assert "STUCK" in stuck.stdout
        as_json = kplus("list", "--stuck", "--exit-code", "--json", "--db", str(db))
        assert as_json.returncode == 1
        assert [p["payment_id"] for p in json.loads(as_json.stdout)["payments"]] == ["limbo-1"]
        assert kplus("list", "--stuck", "--db", str(db)).returncode == 0  # without the flag
