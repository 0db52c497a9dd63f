"""
``kplus-fsm serve`` as a production service, as real processes over 127.0.0.1:
chunked bodies, a stalled log, slow and idle connections, SIGTERM with
deliveries in flight, ``--workers 2`` on one SQLite log, ``/ready`` and
``/metrics``, JSON logs, and the worker inside serve (follow-up after an API
outage, SIGKILL at each step of an intake, the periodic reconciler, consumers)
converging with no command run by hand.
"""

from __future__ import annotations

import datetime as dt
import json
import select
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_support import (
    EXE,
    WEBHOOK_SECRET,
    assert_clean,
    children_of,
    create_payment,
    event_body,
    fake_omise,
    free_port,
    metric_samples,
    raw_request,
    running,
    serve_env,
    start_serve,
    status_and_json,
    status_of,
    thread_count,
    unsigned_event,
    wait_for,
)

from kplus_fsm import SQLiteStore
from kplus_fsm.adapters.signatures import signature_headers

pytestmark = pytest.mark.slow


def signed(body: bytes) -> dict[str, str]:
    return signature_headers(body, [WEBHOOK_SECRET], int(time.time()))


def inbox(db: Path) -> list[Any]:
    with SQLiteStore(db, read_only=True) as store:
        return list(store.iter_inbox())


def deliver(url: str, body: bytes) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=30) as client:
        return client.post(url + "/webhooks/omise", content=body, headers=signed(body))


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    return sum(
        value
        for (sample, pairs), value in samples.items()
        if sample == name and set(labels.items()) <= set(pairs)
    )


# --------------------------------------------------------------- HTTP layer


def test_chunked_signed_delivery_is_applied_and_logs_are_json(tmp_path: Path) -> None:
    """A validly signed delivery sent chunked is read whole, verified and applied."""
    db = tmp_path / "kplus.db"
    port = free_port()
    with fake_omise(f"http://127.0.0.1:{port}/webhooks/omise") as (fake, api):
        fake.hold_webhooks()  # the test delivers by hand
        charge_id = create_payment(db, api, "chunked-1")
        fake.mark_as_paid(charge_id)
        body = event_body(fake, charge_id)
        served = start_serve(db, "--log-format", "json", env=serve_env(api), port=port)
        with running(served):
            head = "".join(f"{k}: {v}\r\n" for k, v in signed(body).items()).encode()
            pieces = [body[:100], body[100:333], body[333:]]
            request = (
                b"POST /webhooks/omise HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                + head
                + b"\r\n"
                + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
                + b"0\r\n\r\n"
            )
            status, payload = status_and_json(raw_request(port, request))
            assert status == 200, payload
            assert payload["outcome"] == "applied"
        assert served.proc.returncode == 0
    assert status_of(db, "chunked-1") == "successful"
    row = next(r for r in reversed(inbox(db)) if r.kind == "webhook")
    assert (row.verification, row.outcome) == ("verified", "applied")
    assert json.loads(row.raw()) == json.loads(body)
    lines = [line for line in served.stderr.splitlines() if line.strip()]
    assert any('"input_recorded"' in line for line in lines)
    for line in lines:
        entry = json.loads(line)  # every log line is one JSON object
        assert {"event", "level", "timestamp"} <= set(entry), entry
    assert_clean(served.stdout, served.stderr)


def test_a_stalled_log_answers_every_delivery(tmp_path: Path) -> None:
    """
    50 deliveries arrive while another process holds the log's write lock for
    2.5 s: none is reset, all are answered 200 and recorded; ``/metrics``
    answers during the stall and ``/ready`` says 503, then 200 again.
    """
    db = tmp_path / "kplus.db"
    with running(start_serve(db, "--threads", "4", env=serve_env())) as served:
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        answers: dict[int, Any] = {}

        def send(n: int) -> None:
            try:
                answers[n] = deliver(served.url, unsigned_event(n)).status_code
            except httpx.HTTPError as exc:
                answers[n] = repr(exc)

        senders = [threading.Thread(target=send, args=(n,)) for n in range(50)]
        for sender in senders:
            sender.start()
        time.sleep(0.5)
        during = served.get("/metrics")
        ready_during = served.get("/ready")
        threads = thread_count(served.proc.pid)
        time.sleep(2.0)
        holder.execute("ROLLBACK")
        holder.close()
        for sender in senders:
            sender.join(30)
        ready_after = served.get("/ready")
    assert answers == dict.fromkeys(range(50), 200)
    assert during.status_code == 200
    assert ready_during.status_code == 503
    assert "write lock" in ready_during.json()["reason"]
    assert ready_after.status_code == 200
    assert ready_after.json()["ready"] is True
    # main + 4 delivery threads + 2 monitor threads (+ slack for the interpreter)
    assert threads <= 10, threads
    rows = [r for r in inbox(db) if r.kind == "webhook"]
    assert len(rows) == 50
    assert {r.verification for r in rows} == {"verified"}
    assert_clean(served.stdout, served.stderr)


def _until_closed(sock: socket.socket, trickle: bytes, limit: float) -> tuple[float, bytes]:
    """Trickle ``trickle`` a byte every 0.1 s until the server closes; (seconds, answer)."""
    started = time.monotonic()
    answer = b""
    sent = 0
    while time.monotonic() - started < limit:
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent : sent + 1])
            except OSError:
                break
            sent += 1
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable:
            try:
                chunk = sock.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
    return time.monotonic() - started, answer


def test_idle_and_half_sent_connections_are_closed(tmp_path: Path) -> None:
    """
    Idle connections, heads sent a byte at a time and bodies that stop are all
    closed after their deadline (1 s here), with a bounded number of threads;
    a cut body is recorded as refused (408), never as a forgery.
    """
    db = tmp_path / "kplus.db"
    args = ("--header-timeout", "1s", "--body-timeout", "1s", "--threads", "2")
    with running(start_serve(db, *args, env=serve_env())) as served:
        body = unsigned_event(1)
        head = (
            b"POST /webhooks/omise HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"".join(f"{k}: {v}\r\n".encode() for k, v in signed(body).items())
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        results: dict[str, list[tuple[float, bytes]]] = {"idle": [], "head": [], "body": []}
        plans = [("idle", b"")] * 20 + [("head", head)] * 5 + [("body", head + body[:10])] * 5

        def hold(kind: str, data: bytes) -> None:
            with socket.create_connection(("127.0.0.1", served.port)) as sock:
                if kind == "body":
                    sock.sendall(data)
                    data = b""
                results[kind].append(_until_closed(sock, data, 8.0))

        holders = [threading.Thread(target=hold, args=plan) for plan in plans]
        for holder in holders:
            holder.start()
        time.sleep(0.6)
        threads = thread_count(served.proc.pid)
        for holder in holders:
            holder.join(15)
        metrics = metric_samples(served.get("/metrics").text)
    for kind, closed in results.items():
        assert len(closed) == len([p for p in plans if p[0] == kind])
        for seconds, _ in closed:
            assert 0.8 <= seconds < 4.0, (kind, seconds)
    assert all(answer == b"" for _, answer in results["idle"])
    assert all(answer.startswith(b"HTTP/1.1 408 ") for _, answer in results["head"])
    assert all(answer.startswith(b"HTTP/1.1 408 ") for _, answer in results["body"])
    assert threads <= 8, threads  # 30 open connections, no thread each
    assert total(metrics, "kplus_fsm_http_timeouts_total", phase="head") == 25
    assert total(metrics, "kplus_fsm_http_timeouts_total", phase="body") == 5
    rows = inbox(db)
    assert len(rows) == 5
    for row in rows:
        assert (row.outcome, row.verification) == ("rejected", "not checked")
        assert row.reason.startswith(f"body incomplete: 10 of {len(body)} bytes"), row.reason
        assert "timed out after 1 s" in row.reason
    anomalies = subprocess.run(
        [EXE, "anomalies", "--db", str(db), "--json"], capture_output=True, text=True, check=True
    )
    categories = json.loads(anomalies.stdout)["by_category"]
    assert categories == {"malformed": 5}  # what arrived is not an event; never a forgery
    assert_clean(served.stdout, served.stderr)


def test_sigterm_lets_in_flight_deliveries_finish(tmp_path: Path) -> None:
    """
    SIGTERM while five deliveries are in flight (each held 1.5 s by a
    failpoint): the socket stops accepting, all five are answered, and the
    process exits 0 within the grace period.
    """
    db = tmp_path / "kplus.db"
    env = serve_env(KPLUS_FSM_FAILPOINTS="intake.after_record=sleep:1.5")
    served = start_serve(db, "--graceful-timeout", "5s", env=env)
    with running(served):
        answers: list[Any] = []

        def send(n: int) -> None:
            try:
                answers.append(deliver(served.url, unsigned_event(n)).status_code)
            except httpx.HTTPError as exc:
                answers.append(repr(exc))

        senders = [threading.Thread(target=send, args=(n,)) for n in range(5)]
        for sender in senders:
            sender.start()
        wait_for(lambda: len(inbox(db)) == 5, 10, "five deliveries recorded")
        signalled = time.monotonic()
        served.signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", served.port), timeout=2).close()
        code = served.wait(10)
        stopped = time.monotonic() - signalled
        for sender in senders:
            sender.join(10)
    assert answers == [200] * 5
    assert code == 0
    assert stopped < 5.0, stopped
    assert_clean(served.stdout, served.stderr)


def test_sigterm_with_a_delivery_that_outlives_the_grace(tmp_path: Path) -> None:
    """
    A delivery still running when the grace period ends: the process exits 1
    five seconds later without it; what it recorded stays (Omise retries it).
    """
    db = tmp_path / "kplus.db"
    env = serve_env(KPLUS_FSM_FAILPOINTS="intake.after_record=sleep:60")
    served = start_serve(db, "--graceful-timeout", "1s", env=env)
    with running(served):
        sender = threading.Thread(target=lambda: deliver(served.url, unsigned_event(1)))
        sender.start()
        wait_for(lambda: len(inbox(db)) == 1, 10, "the delivery recorded")
        signalled = time.monotonic()
        served.signal(signal.SIGTERM)
        code = served.wait(20)
        stopped = time.monotonic() - signalled
        sender.join(10)
    assert code == 1
    assert stopped < 12, stopped
    assert "serve_stop_overdue" in served.stderr
    assert len(inbox(db)) == 1
    assert_clean(served.stdout, served.stderr)


# -------------------------------------------------------------- operability


def test_two_workers_share_one_log(tmp_path: Path) -> None:
    """
    ``--workers 2`` on one SQLite log: both processes serve the socket, every
    delivery is recorded once, ``/metrics`` sums both workers' counters from
    whichever answers (and keeps a killed worker's), the killed worker is
    replaced, one process holds each lease, and SIGTERM stops all with exit 0.
    """
    db = tmp_path / "kplus.db"
    port = free_port()
    with fake_omise(f"http://127.0.0.1:{port}/webhooks/omise") as (fake, api):
        args = ("--workers", "2", "--reconcile-every", "1s")
        served = start_serve(db, *args, env=serve_env(api), port=port)
        with running(served):
            wait_for(lambda: len(children_of(served.proc.pid)) == 2, 10, "two workers")
            paid = [f"two-{n}" for n in range(4)]
            for payment_id in paid:
                fake.mark_as_paid(create_payment(db, api, payment_id))
            assert fake.wait_idle(20)
            for n in range(20):
                assert deliver(served.url, unsigned_event(n)).status_code == 200
            wait_for(lambda: all(status_of(db, p) == "successful" for p in paid), 20, "all paid")
            webhooks = len([r for r in inbox(db) if r.kind == "webhook"])
            scrapes = [metric_samples(served.get("/metrics").text) for _ in range(6)]
            counted = {total(s, "kplus_fsm_webhook_deliveries_total") for s in scrapes}
            assert counted == {float(webhooks)}

            def one_leader_each() -> bool:
                s = metric_samples(served.get("/metrics").text)
                return (
                    total(s, "kplus_fsm_reconciler_leader") == 1
                    and total(s, "kplus_fsm_followup_leader") == 1
                    and total(s, "kplus_fsm_reconciler_runs_total") >= 1
                )

            wait_for(one_leader_each, 15, "one leader per job, a reconciler run")
            victim = children_of(served.proc.pid)[0]
            subprocess.run(["kill", "-KILL", str(victim)], check=True)
            wait_for(
                lambda: (
                    len(children_of(served.proc.pid)) == 2
                    and victim not in children_of(served.proc.pid)
                ),
                10,
                "the killed worker replaced",
            )
            for _ in range(4):
                after = metric_samples(served.get("/metrics").text)
                assert total(after, "kplus_fsm_webhook_deliveries_total") == webhooks
            ready = served.get("/ready")
            assert ready.status_code == 200
            body = ready.json()
            assert body["unresolved_hints"]["count"] == 0
            assert body["pending_payments"]["count"] == 0
            code = served.stop()
    assert code == 0
    assert_clean(served.stdout, served.stderr)


def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL the parent of ``--workers 2``: its workers stop on their own, none is orphaned."""
    db = tmp_path / "kplus.db"
    served = start_serve(db, "--workers", "2", "--graceful-timeout", "2s", env=serve_env())
    with running(served):
        workers = wait_for_children(served.proc.pid, 2)
        served.signal(signal.SIGKILL)
        served.wait(10)

        def gone() -> bool:
            return not any(Path(f"/proc/{pid}").exists() for pid in workers)

        wait_for(gone, 10, "the orphaned workers stopped")
    assert "serve_supervisor_gone" in served.stderr


def wait_for_children(pid: int, count: int) -> list[int]:
    wait_for(lambda: len(children_of(pid)) == count, 10, f"{count} workers")
    return children_of(pid)


def test_ready_and_metrics(tmp_path: Path) -> None:
    """``/ready`` and ``/metrics`` (parsed by prometheus_client) report the log and the intake."""
    db = tmp_path / "kplus.db"
    port = free_port()
    with fake_omise(f"http://127.0.0.1:{port}/webhooks/omise") as (fake, api):
        fake.hold_webhooks()
        pending = create_payment(db, api, "metrics-pending")
        paid = create_payment(db, api, "metrics-paid")
        fake.mark_as_paid(paid)
        args = ("--no-reconcile",)
        with running(start_serve(db, *args, env=serve_env(api), port=port)) as served:
            assert served.get("/").json() == {"ready": True}
            # the client tries a read 3 times: all three fail
            fake.inject_fault("GET /charges/:id", "error", status=503, times=3)
            hinted = deliver(served.url, event_body(fake, pending, "charge.create"))
            assert hinted.status_code == 200
            assert deliver(served.url, event_body(fake, paid)).json()["outcome"] == "applied"
            forged = httpx.post(
                served.url + "/webhooks/omise",
                content=b"{}",
                headers=signature_headers(b"{}", [WEBHOOK_SECRET.swapcase()], int(time.time())),
                trust_env=False,
            )
            assert forged.status_code in (400, 401)
            ready = served.get("/ready")
            metrics = served.get("/metrics")
            assert served.get("/metrics").headers["content-type"].startswith("text/plain")
            assert httpx.post(served.url + "/ready", trust_env=False).status_code == 405
    assert ready.status_code == 200
    state = ready.json()
    assert state["ready"] is True
    assert state["log"] == "writable"
    assert state["pending_payments"]["count"] == 1
    assert state["pending_payments"]["oldest_age_seconds"] >= 0
    assert "followup" in state
    assert "reconciler" not in state
    samples = metric_samples(metrics.text)
    assert total(samples, "kplus_fsm_webhook_deliveries_total", status="200") == 2
    assert total(samples, "kplus_fsm_webhook_deliveries_total", outcome="rejected") == 1
    assert total(samples, "kplus_fsm_refetch_seconds_count") == 2
    assert total(samples, "kplus_fsm_refetch_failures_total") == 1
    assert total(samples, "kplus_fsm_pending_payments") == 1
    assert total(samples, "kplus_fsm_log_up") == 1
    for name in (
        "kplus_fsm_unresolved_hints",
        "kplus_fsm_oldest_unresolved_hint_age_seconds",
        "kplus_fsm_oldest_pending_payment_age_seconds",
        "kplus_fsm_followup_backlog",
        "kplus_fsm_webhook_delivery_seconds_bucket",
    ):
        assert any(key[0] == name for key in samples), name


# ------------------------------------------------------ the worker in serve


def test_followup_converges_after_an_api_outage(tmp_path: Path) -> None:
    """
    The re-fetch of a paid charge's webhook fails (the API answers 503 seven
    times; the client tries each read 3 times): the delivery is answered 200,
    the hint stays unresolved, and the follow-up inside serve settles the
    payment once the API is back: no ``reconcile`` run, no redelivery.
    """
    db = tmp_path / "kplus.db"
    port = free_port()
    with fake_omise(f"http://127.0.0.1:{port}/webhooks/omise") as (fake, api):
        served = start_serve(db, "--no-reconcile", env=serve_env(api), port=port)
        with running(served):
            charge_id = create_payment(db, api, "outage-1")
            assert fake.wait_idle(10)
            fake.inject_fault("GET /charges/:id", "error", status=503, times=7)
            fake.mark_as_paid(charge_id)
            took = wait_for(lambda: status_of(db, "outage-1") == "successful", 30, "settled")
            samples = metric_samples(served.get("/metrics").text)
            ready = served.get("/ready").json()
    deliveries = fake.deliveries()
    assert [d.status for d in deliveries if d.error is None] == [200] * len(deliveries)
    assert total(samples, "kplus_fsm_refetch_failures_total") >= 1
    assert total(samples, "kplus_fsm_followup_refetches_total", result="failed") >= 1
    assert total(samples, "kplus_fsm_followup_refetches_total", result="ok") >= 1
    assert ready["unresolved_hints"]["count"] == 0
    assert took < 30
    assert_clean(served.stdout, served.stderr)


@pytest.mark.parametrize(
    "point", ["intake.after_record", "intake.before_refetch_record", "intake.after_refetch_record"]
)
def test_killed_at_each_intake_step_converges_on_restart(tmp_path: Path, point: str) -> None:
    """
    serve is SIGKILLed at a step of an intake (a failpoint); Omise does not
    redeliver. serve started again settles the payment to the fake's state on
    its own, and the log verifies.
    """
    db = tmp_path / "kplus.db"
    port = free_port()
    with fake_omise(f"http://127.0.0.1:{port}/webhooks/omise") as (fake, api):
        charge_id = create_payment(db, api, "killed-1")
        assert fake.wait_idle(10)  # charge.create went nowhere: the kill is on charge.complete
        lease = ("--lease-ttl", "5s")  # the dead receiver's lease lapses after 5 s
        doomed = start_serve(
            db, *lease, env=serve_env(api, KPLUS_FSM_FAILPOINTS=f"{point}=kill"), port=port
        )
        with running(doomed):
            fake.mark_as_paid(charge_id)
            assert doomed.wait(15) == -signal.SIGKILL
        assert fake.wait_idle(10)
        assert [d.status for d in fake.deliveries()][-1] is None  # no answer, no retry
        with running(start_serve(db, *lease, env=serve_env(api), port=port)) as again:
            wait_for(lambda: status_of(db, "killed-1") == "successful", 25, "settled")
        assert fake.charge(charge_id)["status"] == "successful"
    verified = subprocess.run(
        [EXE, "verify", "--db", str(db)], capture_output=True, text=True, check=False
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert_clean(doomed.stdout, doomed.stderr, again.stdout, again.stderr)


def test_periodic_reconciler_settles_a_lost_webhook(tmp_path: Path) -> None:
    """A charge expires and its webhook is lost: the reconciler inside serve settles it."""
    db = tmp_path / "kplus.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/omise"
    with fake_omise(url, charge_lifetime=dt.timedelta(seconds=2)) as (fake, api):
        args = ("--reconcile-every", "1s")
        with running(start_serve(db, *args, env=serve_env(api), port=port)) as served:
            fake.hold_webhooks()  # every webhook of this charge is lost
            create_payment(db, api, "lost-1")
            wait_for(lambda: status_of(db, "lost-1") == "expired", 30, "expired by the reconciler")
    kinds = [(r.kind, r.origin) for r in inbox(db) if r.payment_id == "lost-1"]
    assert ("charge_snapshot", "poll") in kinds
    assert_clean(served.stdout, served.stderr)


HANDLER = """
import json, os
from pathlib import Path

def ship(event):
    with open(Path(os.environ["SHIPPED"]), "a") as out:
        out.write(json.dumps([event.position, event.stream, event.kind]) + "\\n")
"""


def test_consumer_inside_serve(tmp_path: Path) -> None:
    """``--consumer`` runs a named consumer in serve; a new one needs ``--consumer-start``."""
    db = tmp_path / "kplus.db"
    (tmp_path / "shop_handlers.py").write_text(HANDLER)
    shipped = tmp_path / "shipped.jsonl"
    port = free_port()
    with fake_omise(f"http://127.0.0.1:{port}/webhooks/omise") as (fake, api):
        env = serve_env(api, SHIPPED=str(shipped))
        consumer = ("--consumer", "shipping=shop_handlers:ship")
        refused = subprocess.run(
            [EXE, "serve", "--db", str(db), "--port", str(port), *consumer],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30, check=False,
        )  # fmt: skip
        assert refused.returncode == 2
        assert "--consumer-start" in refused.stderr
        assert_clean(refused.stdout, refused.stderr)
        served = start_serve(
            db, *consumer, "--consumer-start", "now", env=env, port=port, cwd=tmp_path
        )
        with running(served):
            fake.mark_as_paid(create_payment(db, api, "ship-1"))
            wait_for(
                lambda: shipped.exists() and "charge.successful" in shipped.read_text(),
                20,
                "shipped",
            )
    handled = [json.loads(line) for line in shipped.read_text().splitlines()]
    assert ["ship-1", "charge.successful"] in [h[1:] for h in handled]
    positions = [h[0] for h in handled]
    assert positions == sorted(set(positions))  # each event once, in order
    assert_clean(served.stdout, served.stderr)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--reconcile-every", "soon"], "not a duration"),
        (["--reconcile-every", "0s"], "must be positive"),
        (["--consumer", "nothing-here"], "NAME=module:function"),
        (["--consumer", "x=no_such_module_here:f", "--consumer-start", "now"], "cannot import"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], says: str) -> None:
    """Bad flags: exit 2 with a clear message, nothing served, no traceback."""
    done = subprocess.run(
        [EXE, "serve", "--db", str(tmp_path / "k.db"), "--port", str(free_port()), *args],
        capture_output=True, text=True, env=serve_env(), timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert_clean(done.stdout, done.stderr)
