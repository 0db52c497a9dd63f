"""
Security: refused webhooks, secrets that never leak, a private database file,
and SQL built only with parameters.

- Forged (wrong secret), tampered (body changed under a genuine signature),
  stale and future timestamps, and replays (the same delivery again: a
  ``duplicate``; later than the tolerance: refused; under a fresh timestamp
  header: refused) are answered 400/401, recorded with their reason, and change
  nothing.
- One full run with recognisable random keys and webhook secret (the create
  flow, webhooks, faults, forged deliveries, reconciliation, failing clients,
  the ``kplus-fsm`` commands ``pay``, ``reconcile``, ``show``, ``verify``,
  ``replay``, ``serve``, ``fake-omise``, all at ``-vv``): no secret, in any form
  (the keys, their random part, the webhook secret in base64 and hex, the Basic
  ``Authorization`` values), appears in any log line (structlog and stdlib, every
  level), any exception (``str``, ``repr``, traceback, chained causes), any byte
  of the database file (``-wal`` and ``-shm`` included) or any command's output.
- The database, its ``-wal`` and ``-shm`` are created ``0600`` under umask 000.
- Every SQL text in the package is built by the rule of ``sql_params_rule``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import io
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import sql_params_rule
import structlog
from reliability_support import Stopwatch, figure

from kplus_fsm import SQLiteStore, Status, Tracker
from kplus_fsm.adapters.fake import FakeOmise, start_server
from kplus_fsm.adapters.fake import RetryPolicy as DeliveryRetry
from kplus_fsm.adapters.omise import OmiseClient, RetryPolicy
from kplus_fsm.adapters.signatures import decode_secret, sign, signature_headers
from kplus_fsm.adapters.webhooks import WebhookIntake, serve
from kplus_fsm.exceptions import KplusFSMError
from kplus_fsm.testing import charge_json, webhook_json

ROOT = Path(__file__).resolve().parents[2]
FAST_READS = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02, max_retry_after=0.1)
CLI = [sys.executable, "-m", "kplus_fsm"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def receiver_on(intake: WebhookIntake) -> Iterator[str]:
    """The intake served on loopback; yields the delivery URL."""
    with serve(intake, "127.0.0.1", 0).start() as server:
        yield server.url + "/webhooks/omise"


# ------------------------------------------------------------ refused webhooks


def test_forged_replayed_stale_and_tampered_webhooks_are_refused_and_recorded(
    tmp_path: Path,
) -> None:
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    other = base64.b64encode(secrets.token_bytes(32)).decode()
    clock = [1_790_000_000.0]
    with Tracker(tmp_path / "sec.db") as tracker:
        tracker.request_payment(payment_id="sec-1", amount=35_000, return_uri="https://s.example/r")
        tracker.record_charge(
            charge_json(payment_id="sec-1", charge_id="chrg_test_sec1", amount=35_000),
            origin="create_response",
        )
        intake = WebhookIntake(tracker, secrets=[secret], now=lambda: clock[0])
        paid = charge_json(
            payment_id="sec-1", charge_id="chrg_test_sec1", amount=35_000, status="successful"
        )
        body = json.dumps(webhook_json(paid, event_id="evnt_test_sec1")).encode()
        now = int(clock[0])
        genuine = signature_headers(body, [secret], now)
        tampered = body.replace(b'"amount": 35000', b'"amount": 3500')
        assert tampered != body
        cases: list[tuple[str, bytes, dict[str, str], int]] = [
            ("forged: another secret", body, signature_headers(body, [other], now), 401),
            ("forged: no signature", body, {"Omise-Signature-Timestamp": str(now)}, 400),
            ("tampered body", tampered, genuine, 401),
            ("stale timestamp", body, signature_headers(body, [secret], now - 3600), 400),
            ("future timestamp", body, signature_headers(body, [secret], now + 3600), 400),
            (
                "replay under a fresh timestamp",
                body,
                {**genuine, "Omise-Signature-Timestamp": str(now + 60)},
                401,
            ),
        ]
        with receiver_on(intake) as url, httpx.Client(trust_env=False) as http:
            for name, payload, headers, expected in cases:
                before = tracker.store.head()["inbox_id"]
                answer = http.post(url, content=payload, headers=headers)
                assert answer.status_code == expected, (name, answer.text)
                assert answer.json()["outcome"] == "rejected", name
                [row] = list(tracker.store.iter_inbox(before))
                assert (row.outcome, row.payment_id, row.external_id) == (
                    "rejected",
                    "sec-1",
                    "evnt_test_sec1",
                ), name
                assert row.verification.startswith("failed: "), name
                assert row.reason.startswith("signature refused: "), name
                assert row.raw() == payload.decode(), name  # the bytes as received
                assert tracker.get("sec-1").status is Status.PENDING, name
            # The genuine delivery, then the same delivery replayed: applied once.
            first = http.post(url, content=body, headers=genuine)
            again = http.post(url, content=body, headers=genuine)
            assert (first.json()["outcome"], again.json()["outcome"]) == ("applied", "duplicate")
            # Replayed after the tolerance: refused as stale, recorded.
            clock[0] += 301
            late = http.post(url, content=body, headers=genuine)
            assert (late.status_code, late.json()["outcome"]) == (400, "rejected")
            assert "s old" in late.json()["reason"]
        payment = tracker.get("sec-1")
        assert payment.status is Status.SUCCESSFUL
        assert payment.webhook_event_ids == {"evnt_test_sec1"}
        timeline = [e for e in tracker.timeline("sec-1") if e.type == "input"]
        assert [e.outcome for e in timeline][-(len(cases) + 3) :] == [
            *(["rejected"] * len(cases)),
            "applied",
            "duplicate",
            "rejected",
        ]
        assert tracker.verify().ok
    figure(
        "security", "refused deliveries recorded (forged/tampered/stale/replayed)", len(cases) + 1
    )


# -------------------------------------------------------------- no secret leaks


class Secrets:
    """Recognisable random credentials, and every form they could leak in."""

    def __init__(self) -> None:
        self.sk_token = secrets.token_hex(16)
        self.pk_token = secrets.token_hex(16)
        self.wrong_token = secrets.token_hex(16)
        self.sk = f"skey_test_{self.sk_token}"
        self.pk = f"pkey_test_{self.pk_token}"
        self.wrong_sk = f"skey_test_{self.wrong_token}"
        self.raw = secrets.token_bytes(32)
        self.webhook = base64.b64encode(self.raw).decode()

    def forms(self) -> dict[str, str]:
        out = {
            "secret key": self.sk,
            "public key": self.pk,
            "wrong secret key": self.wrong_sk,
            "secret key (random part)": self.sk_token,
            "public key (random part)": self.pk_token,
            "wrong key (random part)": self.wrong_token,
            "webhook secret (base64)": self.webhook,
            "webhook secret (base64 url)": base64.urlsafe_b64encode(self.raw).decode(),
            "webhook secret (hex)": self.raw.hex(),
            "webhook secret (HEX)": self.raw.hex().upper(),
        }
        for name, key in (("secret", self.sk), ("public", self.pk), ("wrong", self.wrong_sk)):
            out[f"Basic auth ({name} key)"] = base64.b64encode(f"{key}:".encode()).decode()
        return out

    def byte_forms(self) -> dict[str, bytes]:
        out = {name: text.encode() for name, text in self.forms().items()}
        out["webhook secret (raw bytes)"] = self.raw
        return out


def _exception_text(exc: BaseException) -> str:
    parts = [str(exc), repr(exc), repr(exc.args), repr(vars(exc))]
    parts.extend(traceback.format_exception(exc))
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        parts.extend([str(cause), repr(cause), repr(cause.args)])
        cause = cause.__cause__ or cause.__context__
    return "\n".join(parts)


@pytest.fixture
def captured_logs() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """structlog as JSON lines and stdlib logging (httpx, httpcore), every level."""
    saved = structlog.get_config()
    structured = io.StringIO()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=repr),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.WriteLoggerFactory(file=structured),
        cache_logger_on_first_use=False,
    )
    plain = io.StringIO()
    handler = logging.StreamHandler(plain)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s %(args)s"))
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", "httpx", "httpcore")}
    root.addHandler(handler)
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield structured, plain
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        structlog.configure(**saved)


@pytest.mark.slow
def test_no_secret_in_logs_errors_database_or_cli_output(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    captured_logs: tuple[io.StringIO, io.StringIO],
) -> None:
    watch = Stopwatch()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    keys = Secrets()
    db = tmp_path / "leak.db"
    texts: dict[str, list[str]] = {"exceptions": [], "reprs": [], "cli": []}
    errors: list[BaseException] = []

    def expect_error(call: Any) -> None:
        try:
            call()
        except Exception as exc:  # collected and grepped
            errors.append(exc)
        else:  # pragma: no cover - a failure of the test itself
            raise AssertionError(f"{call} did not raise")

    with contextlib.ExitStack() as stack:
        receiver_tracker = stack.enter_context(Tracker(db))
        intake = WebhookIntake(receiver_tracker, secrets=[keys.webhook])
        url = stack.enter_context(receiver_on(intake))
        fake = stack.enter_context(
            FakeOmise(
                secret_key=keys.sk,
                public_key=keys.pk,
                webhook_url=url,
                webhook_secrets=[keys.webhook],
                retry=DeliveryRetry(max_attempts=2, backoff=0.05, max_backoff=0.1),
                sweep_interval=0.05,
            )
        )
        api = stack.enter_context(start_server(fake))
        client = stack.enter_context(
            OmiseClient(
                secret_key=keys.sk,
                public_key=keys.pk,
                base_url=api.url,
                timeout=httpx.Timeout(5.0, read=5.0),
                create_timeout=httpx.Timeout(5.0, read=5.0),
                retry=FAST_READS,
            )
        )
        intake.client = client
        intake.now = lambda: fake.now().timestamp()
        tracker = stack.enter_context(Tracker(db, clock=fake.now))
        http = stack.enter_context(httpx.Client(trust_env=False, timeout=5.0))

        def pay(pid: str) -> str:
            result = tracker.create_charge(
                client, payment_id=pid, amount=35_000, return_uri="https://shop.example/r"
            )
            fake.flush(10)
            assert result.payment is not None
            return result.payment.charge_id or ""

        # Paid, the webhook twice; declined; reordered.
        cid = pay("leak-paid")
        fake.duplicate_next(times=2)
        fake.mark_as_paid(cid)
        fake.flush(10)
        fake.mark_as_failed(pay("leak-declined"), "insufficient_fund")
        fake.flush(10)
        fake.hold_webhooks()
        fake.mark_as_paid(pay("leak-reordered"))
        fake.release_webhooks("reversed")
        fake.flush(10)
        # A create cut off after the commit, its search failing: reconciliation.
        fake.inject_fault("POST /charges", "commit_then_drop")
        fake.inject_fault("GET /search", "error", status=503, times=2)
        pay("leak-cut")
        fake.inject_fault("GET /charges/:id", "html", status=502, times=2)
        fake.inject_fault("GET /search", "truncated", times=2)
        tracker.reconcile(client, pending_threshold=dt.timedelta(0))
        tracker.reconcile(client, pending_threshold=dt.timedelta(0))
        # Refused create; expiry.
        fake.inject_fault("POST /charges", "error", status=400, code="invalid_charge")
        pay("leak-refused")
        pay("leak-expired")
        fake.advance_clock(dt.timedelta(minutes=11))
        fake.flush(10)
        # Forged, stale, and credential-carrying deliveries.
        forged = json.dumps(
            webhook_json(charge_json(payment_id="leak-paid", charge_id=cid, status="failed"))
        ).encode()
        stamp = int(fake.now().timestamp())
        wrong_secret = base64.b64encode(secrets.token_bytes(32)).decode()
        for headers in (
            signature_headers(forged, [wrong_secret], stamp),
            signature_headers(forged, [keys.webhook], stamp - 3600),
            {
                **signature_headers(forged, [keys.webhook], stamp),
                "Authorization": "Basic " + keys.forms()["Basic auth (secret key)"],
                "Cookie": f"session={keys.sk}",
                "X-Api-Key": keys.sk,
                "Proxy-Authorization": f"Bearer {keys.pk}",
            },
        ):
            http.post(url, content=forged, headers=headers)
        # Errors with keys nearby: a wrong key, no key, bad secrets, same keys.
        with OmiseClient(secret_key=keys.wrong_sk, base_url=api.url, retry=FAST_READS) as bad:
            expect_error(lambda: bad.retrieve_charge(cid))
            texts["reprs"].append(repr(bad))
            result = tracker.create_charge(
                bad, payment_id="leak-wrong-key", amount=35_000, return_uri="https://s.example/r"
            )
            assert result.status is Status.FAILED
        with OmiseClient(public_key=keys.pk, base_url=api.url) as public_only:
            expect_error(lambda: public_only.retrieve_charge(cid))
        fake.inject_fault("GET /charges/:id", "commit_then_drop", times=2)
        expect_error(lambda: client.retrieve_charge(cid))
        fake.inject_fault("GET /charges/:id", "slow", delay=1.0, times=2)
        with OmiseClient(
            secret_key=keys.sk,
            base_url=api.url,
            timeout=httpx.Timeout(2.0, read=0.3),
            retry=FAST_READS,
        ) as impatient:
            expect_error(lambda: impatient.retrieve_charge(cid))
        expect_error(lambda: WebhookIntake(tracker, secrets=[keys.webhook + "!"]))
        expect_error(lambda: decode_secret(keys.webhook[:-4] + "****"))
        expect_error(lambda: sign(b"{}", keys.webhook + "%", 1))
        expect_error(lambda: FakeOmise(secret_key=keys.sk, public_key=keys.sk))
        expect_error(
            lambda: FakeOmise(secret_key=keys.sk, public_key=keys.pk, webhook_secrets=["%"])
        )
        dead = f"http://127.0.0.1:{_free_port()}"
        with OmiseClient(secret_key=keys.sk, base_url=dead, retry=FAST_READS) as nowhere:
            expect_error(lambda: nowhere.create_charge({"amount": 35_000, "currency": "THB"}))
            expect_error(lambda: nowhere.find_charge("leak-paid"))
        texts["reprs"] += [repr(client), repr(intake), repr(fake), repr(api), repr(tracker)]

        # The command line, on the same log and the same fake, at -vv.
        env = {
            **os.environ,
            "OMISE_SECRET_KEY": keys.sk,
            "OMISE_PUBLIC_KEY": keys.pk,
            "OMISE_API_URL": api.url,
            "OMISE_WEBHOOK_SECRET": keys.webhook,
            "KPLUS_FSM_DB": str(db),
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        }

        def cli(
            *args: str, extra: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
            done = subprocess.run(
                [*CLI, *args],
                check=False,
                capture_output=True,
                text=True,
                env={**env, **(extra or {})},
                timeout=60,
            )
            texts["cli"].append(f"$ {' '.join(args)}\n{done.stdout}\n{done.stderr}")
            return done

        pay_args = ["--amount", "35000", "--return-uri", "https://shop.example/r"]
        assert cli("-vv", "pay", "--payment-id", "leak-cli", *pay_args).returncode == 0
        fake.inject_fault("POST /charges", "commit_then_drop")
        fake.inject_fault("GET /search", "error", status=503, times=3)
        fake.inject_fault("GET /charges", "error", status=503, times=3)
        # The answer is cut and the look fails: the outcome is unknown (deferred, exit 5).
        assert cli("-vv", "pay", "--payment-id", "leak-cli-cut", *pay_args).returncode == 5
        assert cli("-vv", "pay", "--json", "--payment-id", "leak-cli-wrong", *pay_args,
                   extra={"OMISE_SECRET_KEY": keys.wrong_sk}).returncode == 1  # fmt: skip
        assert cli("-vv", "reconcile", "--pending-minutes", "0").returncode in (0, 1)
        assert cli("-vv", "reconcile", "--json", "--pending-minutes", "0").returncode in (0, 1)
        assert cli("-vv", "show", "leak-cli").returncode == 0
        assert cli("-vv", "show", "leak-paid", "--json").returncode == 0
        assert cli("-vv", "verify").returncode == 0
        assert cli("-vv", "verify", "--json").returncode == 0
        assert cli("-vv", "replay", "--check").returncode == 0
        assert cli("-vv", "replay", "--json").returncode == 0
        bad_secret = {"OMISE_WEBHOOK_SECRET": keys.webhook + "!"}
        assert cli("-vv", "serve", "--port", "0", extra=bad_secret).returncode == 2

        # kplus-fsm serve: a real receiver process, signed, forged and carded deliveries.
        port = _free_port()
        served = _run_until_ready(
            [*CLI, "-vv", "serve", "--port", str(port)], env, "receiving webhooks"
        )
        cli_charge = tracker.get("leak-cli").charge_id
        assert cli_charge is not None
        fake.mark_as_paid(cli_charge)
        event = next(e for e in fake.events(cli_charge) if e["key"] == "charge.complete")
        body = json.dumps(webhook_json(fake.charge(cli_charge), event_id=event["id"])).encode()
        stamp = int(time.time())
        target = f"http://127.0.0.1:{port}/webhooks/omise"
        ok = http.post(target, content=body, headers=signature_headers(body, [keys.webhook], stamp))
        assert ok.status_code == 200, ok.text
        carded = {
            **signature_headers(body, [wrong_secret], stamp),
            "Authorization": "Basic " + keys.forms()["Basic auth (secret key)"],
        }
        assert http.post(target, content=body, headers=carded).status_code == 401
        assert http.get(f"http://127.0.0.1:{port}/").status_code == 200
        texts["cli"].append("$ serve\n" + _stop(served))
        fake_port = _free_port()
        faked = _run_until_ready(
            [
                *CLI,
                "-vv",
                "fake-omise",
                "--port",
                str(fake_port),
                "--secret-key",
                keys.sk,
                "--public-key",
                keys.pk,
                "--webhook-secret",
                keys.webhook,
            ],
            env,
            "fake Omise listening",
        )
        texts["cli"].append("$ fake-omise\n" + _stop(faked))
        fake.flush(10)

        # What the log says of the run (a sanity check that there was one).
        assert tracker.get("leak-paid").status is Status.SUCCESSFUL
        assert tracker.get("leak-cli").status is Status.SUCCESSFUL
        assert tracker.get("leak-refused").status is Status.FAILED
        assert tracker.verify().ok
        headers_stored = [
            json.loads(r.headers) for r in tracker.store.iter_inbox() if r.headers is not None
        ]
        stored_names = {name for h in headers_stored for name in h}
        assert "omise-signature" in stored_names
        assert not stored_names & {"authorization", "cookie", "x-api-key", "proxy-authorization"}
        db_bytes_open = _file_bytes(db)

    db_bytes = _file_bytes(db) + db_bytes_open
    structured, plain = captured_logs
    corpus = {
        "structlog lines": structured.getvalue(),
        "stdlib log lines": plain.getvalue(),
        "exceptions": "\n".join(_exception_text(e) for e in errors),
        "reprs": "\n".join(texts["reprs"]),
        "CLI output": "\n".join(texts["cli"]),
    }
    # The run was real: every source saw plenty.
    assert corpus["structlog lines"].count("\n") > 50
    assert "omise_request" in corpus["structlog lines"]
    assert "webhook_refused" in corpus["structlog lines"]
    assert "HTTP Request" in corpus["stdlib log lines"]
    assert len(errors) >= 11
    assert "input_recorded" in corpus["CLI output"]  # -vv reached the commands' logs
    assert b"leak-paid" in db_bytes

    leaks = [
        f"{form} in {where}"
        for where, text in corpus.items()
        for form, value in keys.forms().items()
        if value in text
    ]
    leaks += [
        f"{form} in the database" for form, value in keys.byte_forms().items() if value in db_bytes
    ]
    assert leaks == []
    for where, text in corpus.items():
        figure("security", f"scanned: {where}", f"{text.count(chr(10))} lines")
    figure("security", "scanned: database bytes (db, -wal, -shm; open and closed)", len(db_bytes))
    figure("security", "exceptions examined", len(errors))
    figure("security", "CLI commands run", len(texts["cli"]))
    figure("security", "secret forms searched", len(keys.byte_forms()))
    figure("security", "leaks found", 0)
    figure("security", "full-run seconds", watch.seconds)


def _file_bytes(db: Path) -> bytes:
    return b"".join(
        p.read_bytes()
        for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
        if p.exists()
    )


@attrs.define
class Running:
    """A command started in the background, and what it printed so far."""

    proc: subprocess.Popen[str]
    lines: list[str]


def _run_until_ready(args: list[str], env: dict[str, str], ready: str) -> Running:
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if ready in line:
            return Running(proc, lines)
    proc.kill()
    proc.communicate()
    raise AssertionError("".join(lines))


def _stop(running: Running) -> str:
    """Ctrl-C the command; everything it printed."""
    running.proc.send_signal(signal.SIGINT)
    try:
        rest, _ = running.proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:  # pragma: no cover
        running.proc.kill()
        rest, _ = running.proc.communicate()
    return "".join(running.lines) + (rest or "")


# ---------------------------------------------------------- a private file


PRIVATE_SCRIPT = """
import json, os, sys
os.umask(0)
from kplus_fsm import SQLiteStore, Tracker
folder = sys.argv[1]
with Tracker(os.path.join(folder, "tracker.db")) as t:
    t.request_payment(payment_id="p-1", amount=35000, return_uri="https://s.example/r")
    with SQLiteStore(os.path.join(folder, "store.db")) as s:
        print(json.dumps({n: os.stat(os.path.join(folder, n)).st_mode & 0o777
                          for n in sorted(os.listdir(folder))}))
"""


def test_database_files_are_created_owner_only(tmp_path: Path) -> None:
    """Under umask 000: the tracker's, the store's and the CLI's files are 0600."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    inner = tmp_path / "inner"
    inner.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", PRIVATE_SCRIPT, str(inner)],
        capture_output=True,
        text=True,
        env=env,
        umask=0,
        check=True,
    )
    modes = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"tracker.db", "tracker.db-wal", "tracker.db-shm", "store.db"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o600), {k: oct(v) for k, v in modes.items()}

    # The command line: pay (against nothing: the request is still recorded) and demo.
    dead = f"http://127.0.0.1:{_free_port()}"
    cli_env = {**env, "OMISE_SECRET_KEY": "skey_test_x", "OMISE_API_URL": dead}
    paid = tmp_path / "pay.db"
    subprocess.run(
        [*CLI, "pay", "--db", str(paid), "--payment-id", "p-1", "--amount", "35000",
         "--return-uri", "https://s.example/r"],
        check=False, capture_output=True, env=cli_env, umask=0, timeout=60,
    )  # fmt: skip
    demo = tmp_path / "demo.db"
    subprocess.run(
        [*CLI, "demo", "--offline", "--db", str(demo)],
        capture_output=True, env=env, umask=0, timeout=60, check=True,
    )  # fmt: skip
    port = _free_port()
    served = tmp_path / "serve.db"
    proc = _run_until_ready(
        [*CLI, "serve", "--db", str(served), "--port", str(port)], env, "receiving webhooks"
    )
    try:
        files = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir() if p.is_file()}
    finally:
        _stop(proc)
    for name in ("pay.db", "demo.db", "serve.db"):
        assert files.get(name) == 0o600, (name, oct(files.get(name, 0)))
    assert all(mode == 0o600 for mode in files.values()), {k: oct(v) for k, v in files.items()}
    figure("security", "files checked 0600 under umask 000", len(modes) + len(files))


# ------------------------------------------------------- SQL only with parameters


#: Every module, subpackages (``kplus_fsm/cli/``, ``kplus_fsm/_server/``) included.
PACKAGE_FILES = sorted(
    [*(ROOT / "kplus_fsm").rglob("*.py"), *(ROOT / "adapters").rglob("*.py")],
    key=lambda p: p.relative_to(ROOT).parts,
)
#: Found by the rule: ``_store.py`` interpolated ``SQLiteStore(synchronous=...)``
#: unchecked into ``PRAGMA synchronous = {synchronous}`` (a caller's value in SQL
#: text; an unknown level such as "FUL" silently ran as NORMAL). Fixed in
#: ``_store.py`` (the level is checked, then interpolated as its number).


@pytest.mark.parametrize(
    "path", PACKAGE_FILES, ids=[p.relative_to(ROOT).as_posix() for p in PACKAGE_FILES]
)
def test_sql_is_built_only_with_parameters(path: Path) -> None:
    """
    Every ``execute``/``executemany``/``executescript``/``query`` SQL text is built
    from literals, module-level constant identifiers (table and column names),
    ``int()``/``len()``, and values built from those alone (the full rule is in
    ``sql_params_rule``'s docstring); every other value is a bound ``?``.
    """
    assert sql_params_rule.violations(ROOT, path) == []


def test_unknown_synchronous_level_is_refused(tmp_path: Path) -> None:
    """A typo in the durability level must not silently weaken it."""
    try:
        store = SQLiteStore(tmp_path / "s.db", synchronous="FUL")  # type: ignore[arg-type]
    except (ValueError, KplusFSMError):
        return  # refused: the behaviour we want
    level = store.conn.execute("PRAGMA synchronous").fetchone()[0]
    store.close()
    pytest.fail(f"synchronous='FUL' was accepted and the log runs at synchronous={level}")


def test_the_sql_rule_catches_injection(tmp_path: Path) -> None:
    """The checker itself: what it must refuse, and what it must allow."""
    package = tmp_path / "kplus_fsm"
    package.mkdir()
    (tmp_path / "adapters").mkdir()
    (package / "_consts.py").write_text(
        'COLUMNS = ("a", "b")\n\ndef select_sql():\n    return "SELECT 1"\n'
        "\ndef echo(x):\n    return x\n"
    )
    module = package / "bad.py"
    module.write_text(
        """
from ._consts import COLUMNS
from . import _consts
TABLE = "inbox"

def ok(conn, payment_id, limit):
    conn.execute("SELECT * FROM inbox WHERE id = ?", (payment_id,))
    conn.execute(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} LIMIT {int(limit)}")
    conn.execute(f"SELECT {', '.join(_consts.COLUMNS)} FROM t")
    sql = "SELECT 1"
    sql += " WHERE a = ?"
    conn.execute(sql, (payment_id,))
    for table in ("inbox", "events"):
        conn.execute(f"SELECT count(*) FROM {table}")
    return _helper(conn, f"SELECT * FROM {TABLE}")

def _helper(conn, sql):
    return conn.execute(sql)

def bad(conn, payment_id, status):
    conn.execute(f"SELECT * FROM inbox WHERE id = '{payment_id}'")
    conn.execute("SELECT * FROM payments WHERE status = '" + status + "'")
    where = []
    where.append(f"status = {status!r}")
    conn.execute("SELECT * FROM payments WHERE " + " AND ".join(where))
    conn.executemany("INSERT INTO t VALUES (%s)" % payment_id, [])
    conn.execute(_helper2(payment_id))
    return _helper(conn, "SELECT * FROM t WHERE a = " + payment_id)

def _helper2(x):
    return "SELECT " + x

COPY = {t: f"COPY {t} FROM STDIN" for t in ("inbox", "events")}

def more(cur, x):
    cur.copy(COPY["inbox"])
    cur.execute(_consts.select_sql())
    cur.copy(f"COPY {x} FROM STDIN")
    cur.execute(_consts.echo(x))
"""
    )
    found = sql_params_rule.violations(tmp_path, module)
    lines = sorted(int(v.split(":")[1]) for v in found)
    # bad(): five sinks, and _helper's; more(): the COPY of a caller's name, a
    # package function (called through its module) returning the caller's value
    assert lines == [18, 21, 22, 25, 26, 27, 38, 39], found


def test_the_sql_rule_follows_subpackages(tmp_path: Path) -> None:
    """
    A module in a subpackage is checked like any other, and its ``..`` imports
    (a name, a module, a subpackage's module) resolve to the package's constants
    and functions: allowed when they are SQL, refused when they are not.
    """
    package = tmp_path / "kplus_fsm"
    (package / "sub").mkdir(parents=True)
    (package / "other").mkdir()
    (tmp_path / "adapters").mkdir()
    (package / "__init__.py").write_text("")
    (package / "_consts.py").write_text(
        'COLUMNS = ("a", "b")\nCALLER = input()\n\ndef where_sql():\n    return "a = ?"\n'
    )
    (package / "other" / "__init__.py").write_text("")
    (package / "other" / "_more.py").write_text('TABLE = "events"\n')
    (package / "sub" / "__init__.py").write_text("")
    module = package / "sub" / "mod.py"
    module.write_text(
        """
from .. import _consts
from .._consts import COLUMNS, CALLER, where_sql
from ..other import _more
from kplus_fsm.other._more import TABLE

def ok(conn):
    conn.execute(f"SELECT {', '.join(COLUMNS)} FROM t WHERE {where_sql()}")
    conn.execute(f"SELECT {', '.join(_consts.COLUMNS)} FROM {_more.TABLE}")
    conn.execute(f"SELECT * FROM {TABLE}")

def bad(conn):
    conn.execute(f"SELECT * FROM t WHERE a = '{CALLER}'")
    conn.execute(f"SELECT * FROM t WHERE a = '{_consts.CALLER}'")
"""
    )
    assert module.resolve() in sql_params_rule.Package(tmp_path).modules  # found by rglob
    found = sql_params_rule.violations(tmp_path, module)
    lines = sorted(int(v.split(":")[1]) for v in found)
    assert lines == [13, 14], found
