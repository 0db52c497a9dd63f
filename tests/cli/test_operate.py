"""
``kplus-fsm pay``, ``reconcile``, ``serve`` and ``fake-omise`` as real processes
talking HTTP over 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from kplus_fsm import SQLiteStore, Status, Tracker
from kplus_fsm.adapters.signatures import signature_headers

pytestmark = pytest.mark.slow

EXE = str(Path(sys.executable).with_name("kplus-fsm"))
SK = "skey_test_5clisecretkey0000000001"
PK = "pkey_test_5clipublickey0000000001"
WEBHOOK_SECRET = base64.b64encode(b"cli-webhook-secret-0123456789abcd").decode()
OTHER_SECRET = base64.b64encode(b"an-attacker-guessed-this-secret!!").decode()
BASIC = base64.b64encode(f"{SK}:".encode()).decode()
SECRETS = (SK, PK, WEBHOOK_SECRET, BASIC)
RETURN_URI = "https://shop.example/r"
TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def base_env() -> dict[str, str]:
    """The test's environment without any Omise or proxy setting; unbuffered output."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OMISE_", "KPLUS_FSM_")) and "proxy" not in k.lower()
    }
    env.update(NO_PROXY="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    return env


def api_env(url: str) -> dict[str, str]:
    return {
        **base_env(),
        "OMISE_SECRET_KEY": SK,
        "OMISE_PUBLIC_KEY": PK,
        "OMISE_API_URL": url,
    }


def assert_clean(*texts: str) -> None:
    """No secret and no traceback in a process's output."""
    for text in texts:
        assert "Traceback" not in text, text
        for secret in SECRETS:
            assert secret not in text


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [EXE, *args], capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False
    )
    assert_clean(done.stdout, done.stderr)
    return done


def pay(db: Path, payment_id: str, url: str, *extra: str, amount: int = 35_000) -> Any:
    args = ["pay", "--db", str(db), "--payment-id", payment_id, "--amount", str(amount)]
    return run(*args, "--return-uri", RETURN_URI, "--json", *extra, env=api_env(url))


@attrs.define
class Process:
    """A long-running ``kplus-fsm`` command and its base URL."""

    proc: subprocess.Popen[str]
    url: str
    stdout: str = ""
    stderr: str = ""

    def stop(self) -> None:
        """Terminate, wait, kill if need be; keep the output."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, err = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=5)
        self.stdout += out
        self.stderr += err


def start(args: list[str], env: dict[str, str], port: int) -> Process:
    """Start a command serving on ``port`` and wait until ``GET /`` answers."""
    proc = subprocess.Popen(
        [EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    running = Process(proc=proc, url=f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + TIMEOUT
    try:
        with httpx.Client(trust_env=False, timeout=1.0) as probe:
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"{args[0]} exited with {proc.returncode}")
                try:
                    if probe.get(running.url + "/").status_code == 200:
                        return running
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{args[0]} did not answer GET / in time")
                time.sleep(0.05)
    except BaseException:
        running.stop()
        raise


def start_fake(*extra: str) -> Process:
    port = free_port()
    args = ["fake-omise", "--host", "127.0.0.1", "--port", str(port)]
    return start([*args, "--secret-key", SK, "--public-key", PK, *extra], base_env(), port)


def charges_for(api: httpx.Client, payment_id: str | None = None) -> list[dict[str, Any]]:
    listed = api.get("/charges", params={"limit": 100}).json()
    assert listed["object"] == "list"
    data: list[dict[str, Any]] = listed["data"]
    if payment_id is None:
        return data
    return [c for c in data if c["metadata"].get("payment_id") == payment_id]


def read_only(db: Path) -> Tracker:
    return Tracker(SQLiteStore(db, read_only=True))


@pytest.fixture(scope="module")
def fake() -> Iterator[Process]:
    """One ``kplus-fsm fake-omise`` process for the module (no webhooks)."""
    running = start_fake()
    try:
        yield running
    finally:
        running.stop()
    assert running.proc.returncode is not None
    assert running.stdout.startswith(f"fake Omise listening on {running.url}")
    assert_clean(running.stdout, running.stderr)


@pytest.fixture
def api(fake: Process) -> Iterator[httpx.Client]:
    """The fake's API with the secret key (to look at its charges, to drive it)."""
    with httpx.Client(base_url=fake.url, auth=(SK, ""), trust_env=False) as client:
        yield client
        client.delete("/_fake/faults")  # a failed test leaves no fault for the next


class TestPay:
    """``kplus-fsm pay`` against ``kplus-fsm fake-omise``."""

    def test_pay_prints_the_charge(self, fake: Process, api: httpx.Client, tmp_path: Path) -> None:
        """JSON with the payment id, the charge id, pending and the authorize_uri."""
        db = tmp_path / "kplus.db"
        done = pay(db, "cli-order-1", fake.url)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["payment_id"] == "cli-order-1"
        assert out["status"] == "pending"
        assert out["charge_id"].startswith("chrg_test_")
        assert out["authorize_uri"] == f"{fake.url}/test/authorize/{out['charge_id']}"
        [charge] = charges_for(api, "cli-order-1")
        assert (charge["id"], charge["amount"], charge["status"]) == (
            out["charge_id"],
            35_000,
            "pending",
        )
        assert charge["source"]["type"] == "mobile_banking_kbank"
        with read_only(db) as tracker:
            assert tracker.get("cli-order-1").status is Status.PENDING

    def test_paying_again_prints_the_same_charge(
        self, fake: Process, api: httpx.Client, tmp_path: Path
    ) -> None:
        """The same parameters again: exit 0, the same charge, still one at the fake."""
        db = tmp_path / "kplus.db"
        first = pay(db, "cli-order-2", fake.url)
        second = pay(db, "cli-order-2", fake.url)
        assert (first.returncode, second.returncode) == (0, 0), second.stderr
        a, b = json.loads(first.stdout), json.loads(second.stdout)
        assert (b["charge_id"], b["status"], b["authorize_uri"]) == (
            a["charge_id"],
            "pending",
            a["authorize_uri"],
        )
        assert len(charges_for(api, "cli-order-2")) == 1

    def test_another_amount_is_refused(
        self, fake: Process, api: httpx.Client, tmp_path: Path
    ) -> None:
        """The same payment id with another amount: non-zero, a clear message."""
        db = tmp_path / "kplus.db"
        assert pay(db, "cli-order-3", fake.url).returncode == 0
        again = pay(db, "cli-order-3", fake.url, amount=40_000)
        assert again.returncode == 1
        assert "already exists with different parameters" in again.stderr
        assert "amount" in again.stderr
        assert len(charges_for(api, "cli-order-3")) == 1

    @pytest.mark.parametrize(
        ("extra", "field"),
        [
            (["--amount", "10"], "amount"),
            (["--currency", "USD"], "currency"),
            (["--return-uri", "nope"], "return_uri"),
        ],
    )
    def test_invalid_input_never_reaches_the_fake(
        self, fake: Process, api: httpx.Client, tmp_path: Path, extra: list[str], field: str
    ) -> None:
        """Exit 2 with a message naming the field; no charge, no log file."""
        before = api.get("/charges").json()["total"]
        db = tmp_path / "kplus.db"
        done = pay(db, "cli-bad", fake.url, *extra)
        assert done.returncode == 2
        assert f"invalid {field}" in done.stderr
        assert done.stdout == ""
        assert api.get("/charges").json()["total"] == before
        assert charges_for(api, "cli-bad") == []
        assert not db.exists()

    def test_missing_secret_key(self, fake: Process, api: httpx.Client, tmp_path: Path) -> None:
        """Without OMISE_SECRET_KEY: exit 2, the variable named, no request."""
        before = api.get("/charges").json()["total"]
        env = {**base_env(), "OMISE_API_URL": fake.url, "OMISE_PUBLIC_KEY": PK}
        done = run(
            "pay",
            "--db",
            str(tmp_path / "kplus.db"),
            "--payment-id",
            "cli-nokey",
            "--amount",
            "35000",
            "--return-uri",
            RETURN_URI,
            env=env,
        )
        assert done.returncode == 2
        assert "OMISE_SECRET_KEY is not set" in done.stderr
        assert api.get("/charges").json()["total"] == before


class TestUnknownOutcome:
    """The create's answer is lost and the look (search, listing) fails: reconcile settles it."""

    def test_pay_then_reconcile(self, fake: Process, api: httpx.Client, tmp_path: Path) -> None:
        """pay exits 5 with create_unknown; reconcile finds the one charge: pending."""
        db = tmp_path / "kplus.db"
        for fault in (
            {"route": "POST /charges", "kind": "commit_then_drop"},
            {"route": "GET /search", "kind": "error", "status": 400, "code": "bad_request"},
            {"route": "GET /charges", "kind": "error", "status": 400, "code": "bad_request"},
        ):
            assert api.post("/_fake/faults", json=fault).status_code == 200
        paid = pay(db, "cli-limbo", fake.url)
        assert paid.returncode == 5  # deferred: no authorize_uri yet
        out = json.loads(paid.stdout)
        assert (out["status"], out["create_unknown"], out["charge_id"]) == ("created", True, None)
        assert out["outcome"] == "unknown"
        [charge] = charges_for(api, "cli-limbo")  # the create did commit
        done = run("reconcile", "--db", str(db), "--json", env=api_env(fake.url))
        assert done.returncode == 0, done.stderr
        [item] = json.loads(done.stdout)["items"]
        assert (item["action"], item["from_status"], item["to_status"]) == (
            "found",
            "created",
            "pending",
        )
        again = pay(db, "cli-limbo", fake.url)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["charge_id"] == charge["id"]
        assert len(charges_for(api, "cli-limbo")) == 1
        with read_only(db) as tracker:
            payment = tracker.get("cli-limbo")
            assert (payment.status, payment.create_unknown) == (Status.PENDING, False)


class TestReconcile:
    """``kplus-fsm reconcile`` after the fake's clock moved past the charge's end."""

    def test_pending_ends_by_the_bank_timeout(
        self, fake: Process, api: httpx.Client, tmp_path: Path
    ) -> None:
        """The default model: ten minutes on, the bank gave up; reconcile: failed."""
        db = tmp_path / "kplus.db"
        paid = pay(db, "cli-order-late", fake.url)
        assert paid.returncode == 0, paid.stderr
        charge_id = json.loads(paid.stdout)["charge_id"]
        advanced = api.post("/_fake/clock/advance", json={"seconds": 601})
        assert advanced.status_code == 200, advanced.text
        ended = api.get(f"/charges/{charge_id}").json()
        assert (ended["status"], ended["failure_code"]) == ("failed", "payment_expired")
        # Our own clock has not moved: the charge is due only as "not updated
        # for --pending-minutes" (0 here), not by its expires_at.
        done = run(
            "reconcile", "--db", str(db), "--json", "--pending-minutes", "0", env=api_env(fake.url)
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert (report["checked"], report["changed"], report["errors"]) == (1, 1, 0)
        [item] = report["items"]
        assert (item["payment_id"], item["action"]) == ("cli-order-late", "refetched")
        assert (item["from_status"], item["to_status"]) == ("pending", "failed")
        with read_only(db) as tracker:
            payment = tracker.get("cli-order-late")
            assert (payment.status, payment.failure_code) == (Status.FAILED, "payment_expired")
            kinds = [(e.kind, e.origin, e.outcome) for e in tracker.timeline("cli-order-late")]
            assert kinds[-2:] == [
                ("charge_snapshot", "poll", "applied"),
                ("charge.failed", None, None),
            ]


class TestFakeOmiseSwitches:
    """``kplus-fsm fake-omise`` options: the fake's switches, as a separate process."""

    def test_the_lifetime_model_chosen_on_the_command_line(self, tmp_path: Path) -> None:
        """--expiry-model lifetime --charge-minutes 10 --no-expiry-webhook: expired, silently."""
        fake = start_fake(
            "--expiry-model", "lifetime", "--charge-minutes", "10", "--no-expiry-webhook"
        )
        try:
            with httpx.Client(base_url=fake.url, auth=(SK, ""), trust_env=False) as api:
                options = api.get("/_fake/options").json()
                assert (options["expiry_model"], options["expiry_webhook"]) == ("lifetime", False)
                assert options["charge_lifetime"] == 600
                db = tmp_path / "kplus.db"
                paid = pay(db, "cli-order-expired", fake.url)
                assert paid.returncode == 0, paid.stderr
                charge_id = json.loads(paid.stdout)["charge_id"]
                api.post("/_fake/clock/advance", json={"seconds": 601})
                ended = api.get(f"/charges/{charge_id}").json()
                assert (ended["status"], ended["expired_at"]) == ("expired", ended["expires_at"])
                events = api.get(f"/charges/{charge_id}/events").json()["data"]
                assert [e["key"] for e in events] == ["charge.create"]  # no expiry event
                done = run(
                    "reconcile", "--db", str(db), "--json", "--pending-minutes", "0",
                    env=api_env(fake.url),
                )  # fmt: skip
                assert done.returncode == 0, done.stderr
            with read_only(db) as tracker:
                assert tracker.get("cli-order-expired").status is Status.EXPIRED
        finally:
            fake.stop()
        assert_clean(fake.stdout, fake.stderr)

    def test_every_switch_reaches_the_fake(self) -> None:
        """Each fake-omise option sets its switch (GET /_fake/options shows them all)."""
        fake = start_fake(
            "--expiry-model", "bank_timeout", "--charge-minutes", "60",
            "--bank-timeout-minutes", "2.5", "--no-expiry-webhook", "--expire-endpoint",
            "--no-search-metadata", "--search-lag", "4", "--kplus-disabled",
            "--api-version", "2017-11-02", "--rate-limit", "500", "--rate-burst", "50",
            "--no-retry-after",
        )  # fmt: skip
        try:
            with httpx.Client(base_url=fake.url, auth=(SK, ""), trust_env=False) as api:
                assert api.get("/_fake/options").json() == {
                    "object": "fake_options",
                    "expiry_model": "bank_timeout",
                    "charge_lifetime": 3600.0,
                    "bank_timeout": 150.0,
                    "expiry_webhook": False,
                    "expire_endpoint": True,
                    "search_metadata": False,
                    "search_lag": 4.0,
                    "kplus_enabled": False,
                    "api_version": "2017-11-02",
                    "rate_limit": 500.0,
                    "rate_burst": 50,
                    "retry_after_header": False,
                }
                refused = api.post(
                    "/charges",
                    json={
                        "amount": 35_000,
                        "currency": "THB",
                        "return_uri": RETURN_URI,
                        "source": {"type": "mobile_banking_kbank"},
                    },
                )
                assert refused.json()["code"] == "service_not_found"
        finally:
            fake.stop()
        assert_clean(fake.stdout, fake.stderr)

    def test_bad_switches_exit_2_without_a_traceback(self) -> None:
        """An API version that is not a date: exit 2, one line, no secret."""
        args = ["fake-omise", "--port", "0", "--secret-key", SK, "--public-key", PK]
        done = run(*args, "--api-version", "last-tuesday", env=base_env())
        assert done.returncode == 2
        assert "api_version" in done.stderr


class TestServe:
    """``kplus-fsm serve`` receiving the webhooks of ``kplus-fsm fake-omise``."""

    def test_webhooks_end_to_end(self, tmp_path: Path) -> None:
        """Signed deliveries re-fetched and applied, forged ones refused, all in the log."""
        db = tmp_path / "kplus.db"
        serve_port, fake_port = free_port(), free_port()
        fake_url = f"http://127.0.0.1:{fake_port}"
        env = {**api_env(fake_url), "OMISE_WEBHOOK_SECRET": WEBHOOK_SECRET}
        processes: list[Process] = []
        try:
            serve_args = ["serve", "--db", str(db), "--host", "127.0.0.1", "--port"]
            receiver = start([*serve_args, str(serve_port)], env, serve_port)
            processes.append(receiver)
            assert httpx.get(receiver.url + "/", trust_env=False).json() == {"ready": True}
            fake = start(
                [
                    "fake-omise",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(fake_port),
                    "--secret-key",
                    SK,
                    "--public-key",
                    PK,
                    "--webhook-url",
                    receiver.url + "/webhooks/omise",
                    "--webhook-secret",
                    WEBHOOK_SECRET,
                ],
                base_env(),
                fake_port,
            )
            processes.append(fake)
            with httpx.Client(base_url=fake.url, auth=(SK, ""), trust_env=False) as api:
                paid = pay(db, "cli-hooked", fake.url)
                assert paid.returncode == 0, paid.stderr
                out = json.loads(paid.stdout)
                assert api.post("/_fake/webhooks/flush", json={"timeout": 10}).json()["idle"]

                charge = api.get(f"/charges/{out['charge_id']}").json()
                lie = json.dumps(
                    {
                        "object": "event",
                        "id": "evnt_test_clilie00000000001",
                        "livemode": False,
                        "key": "charge.complete",
                        "created_at": charge["created_at"],
                        "data": {**charge, "status": "successful", "paid": True},
                    }
                ).encode()
                now = int(time.time())
                with httpx.Client(base_url=receiver.url, trust_env=False) as sender:
                    signed = sender.post(
                        "/webhooks/omise",
                        content=lie,
                        headers=signature_headers(lie, [WEBHOOK_SECRET], now),
                    )
                    forged = sender.post(
                        "/webhooks/omise",
                        content=lie,
                        headers={
                            **signature_headers(lie, [OTHER_SECRET], now),
                            "Authorization": f"Basic {BASIC}",
                        },
                    )
                assert signed.status_code == 200, signed.text
                assert signed.json()["outcome"] == "applied"
                assert forged.status_code == 401
                assert forged.json()["outcome"] == "rejected"

                approved = httpx.post(
                    out["authorize_uri"], data={"action": "approve"}, trust_env=False
                )
                assert approved.status_code == 302
                assert api.post("/_fake/webhooks/flush", json={"timeout": 10}).json()["idle"]
                deliveries = api.get("/_fake/webhooks/deliveries").json()["data"]
                assert [d["status"] for d in deliveries] == [200, 200]
        finally:
            for process in reversed(processes):
                process.stop()
        for process in processes:
            assert_clean(process.stdout, process.stderr)
        assert receiver.stdout.startswith(f"kplus-fsm: receiving webhooks on {receiver.url}")

        with read_only(db) as tracker:
            payment = tracker.get("cli-hooked")
            assert payment.status is Status.SUCCESSFUL
            inputs = [
                (e.kind, e.origin, e.outcome, e.verification)
                for e in tracker.timeline("cli-hooked")
                if e.type == "input"
            ]
            assert inputs[0] == ("payment_request", "create_charge", "applied", "not_applicable")
            # pay's answer and the charge.create webhook (re-fetched) race: any order.
            first = inputs[1:4]
            assert sorted((kind, str(origin)) for kind, origin, _, _ in first) == [
                ("charge_snapshot", "create_response"),
                ("charge_snapshot", "refetch"),
                ("webhook", "webhook"),
            ]
            assert sorted(str(o) for k, _, o, _ in first if k == "charge_snapshot") == [
                "applied",
                "duplicate",
            ]
            refused = "failed: no signature matches the webhook secret"
            assert inputs[4:] == [
                ("webhook", "webhook", "applied", "verified"),  # the lie: a hint only
                ("charge_snapshot", "refetch", "duplicate", "not_applicable"),
                ("webhook", "webhook", "rejected", refused),  # the forgery
                ("webhook", "webhook", "applied", "verified"),  # charge.complete
                ("charge_snapshot", "refetch", "applied", "not_applicable"),
            ]
            rejected = [r for r in tracker.store.iter_inbox() if r.outcome == "rejected"]
            assert [r.external_id for r in rejected] == ["evnt_test_clilie00000000001"]
            assert rejected[0].headers is not None
            assert "authorization" not in json.loads(rejected[0].headers)
        stored = db.read_bytes()
        wal = db.with_name(db.name + "-wal")
        stored += wal.read_bytes() if wal.exists() else b""
        assert b"cli-hooked" in stored
        for secret in SECRETS:
            assert secret.encode() not in stored


class TestSecrets:
    """Verbose runs: no key, secret or Authorization value in output or in the log file."""

    def test_verbose_pay_and_reconcile(
        self, fake: Process, api: httpx.Client, tmp_path: Path
    ) -> None:
        """-vv logs every input; none shows a secret; neither does the SQLite file."""
        db = tmp_path / "kplus.db"
        env = api_env(fake.url)
        args = ["--payment-id", "cli-quiet", "--amount", "35000", "--return-uri", RETURN_URI]
        paid = run("-vv", "pay", "--db", str(db), *args, env=env)
        assert paid.returncode == 0, paid.stderr
        assert "input_recorded" in paid.stderr
        api.post("/_fake/faults", json={"route": "GET /charges/:id", "kind": "error", "times": 3})
        reconciled = run("-vv", "reconcile", "--db", str(db), "--pending-minutes", "0", env=env)
        assert reconciled.returncode == 1  # the re-read failed: reported, exit 1
        assert "errors 1" in reconciled.stdout
        assert "omise_retry" in reconciled.stderr
        api.delete("/_fake/faults")
        stored = db.read_bytes()
        wal = db.with_name(db.name + "-wal")
        stored += wal.read_bytes() if wal.exists() else b""
        assert b"cli-quiet" in stored
        for secret in SECRETS:
            assert secret.encode() not in stored
