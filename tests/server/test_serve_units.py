"""
The parts of ``kplus-fsm serve`` that need no process: durations and consumer
references, option checks, the metrics, and what the HTTP wrappers record for a
body that could not be read whole (cut off, timed out, chunked on wsgiref).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kplus_fsm import Tracker
from kplus_fsm._server.app import _transactional
from kplus_fsm._server.metrics import (
    LogFigures,
    ServeMetrics,
    forget_dead_processes,
    read_log_figures,
)
from kplus_fsm._server.options import ServeOptions, parse_consumer, parse_duration
from kplus_fsm._time import utc_now
from kplus_fsm.adapters.signatures import signature_headers
from kplus_fsm.adapters.webhooks import (
    CHUNKED_REFUSED,
    TIMEOUT_EXTENSION,
    IntakeResult,
    WebhookIntake,
    asgi_app,
    serve,
)
from kplus_fsm.testing import charge_json, webhook_json

SECRET = base64.b64encode(b"serve-unit-secret-0123456789abcd").decode()

# ---------------------------------------------------------------- durations

#: Written out by hand: text -> seconds.
DURATIONS = {
    "90": 90.0,
    "1.5s": 1.5,
    "500ms": 0.5,
    "5m": 300.0,
    "1h": 3600.0,
    " 30S ": 30.0,
    "0.25": 0.25,
}


@pytest.mark.parametrize(("text", "seconds"), DURATIONS.items())
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "soon", "0", "0s", "-1s", "inf", "nan", "1d", "5 m s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_consumer_references() -> None:
    ref = parse_consumer(" shipping = myshop.fulfil:ship ")
    assert (ref.name, ref.reference) == ("shipping", "myshop.fulfil:ship")
    for bad in ("shipping", "=m:f", "shipping=", ""):
        with pytest.raises(ValueError, match="NAME=module:function"):
            parse_consumer(bad)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"workers": 0}, "1 or more"),
        ({"threads": 0}, "1 or more"),
        ({"header_timeout": 0.0}, "header timeout"),
        ({"body_timeout": -1.0}, "body timeout"),
        ({"reconcile_every": 0.0}, "reconcile period"),
        ({"lease_ttl": 1.0}, "lease time"),
        ({"graceful_timeout": -1.0}, "graceful"),
        ({"consumer_start": "tomorrow"}, "consumer starts"),
        ({"log_format": "xml"}, "log format"),
    ],
)
def test_option_checks(change: dict[str, Any], says: str) -> None:
    ServeOptions(db="x.db").check()
    with pytest.raises(ValueError, match=says):
        ServeOptions(db="x.db", **change).check()


def _one(event: object) -> None: ...


def _two(event: object, transaction: object) -> None: ...


def _defaulted(event: object, transaction: object = None) -> None: ...


class _Callable:
    def __call__(self, event: object, transaction: object) -> None: ...


def test_transactional_handlers_are_told_by_their_signature() -> None:
    """A handler taking (event, transaction) runs exactly-once; one taking (event) at-least-once."""
    table: dict[Callable[..., Any], bool] = {
        _one: False,
        _two: True,
        _defaulted: False,
        _Callable(): True,
        print: False,
    }
    assert {h: _transactional(h) for h in table} == table


# ------------------------------------------------------------------ metrics


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


FIGURES = LogFigures(
    unresolved_hints=2,
    oldest_unresolved_at="2026-01-01T00:00:00.000000Z",
    oldest_unresolved_age_seconds=12.5,
    pending_payments=3,
    oldest_pending_at=None,
    oldest_pending_age_seconds=None,
)


def test_metrics_follow_the_intake_and_the_worker() -> None:
    metrics = ServeMetrics()
    ok = IntakeResult(status=200, outcome="applied", reason="")
    metrics.delivered(ok, seconds=0.01)
    metrics.delivered(ok, seconds=0.02)
    metrics.delivered(IntakeResult(status=500, outcome=None, reason=""), seconds=0.5)
    metrics.refetched(seconds=0.1, error=None)
    metrics.refetched(seconds=2.0, error="OmiseTimeoutError")
    metrics.timed_out("head")
    health: dict[str, Any] = {
        "followup": {"leader": True, "refetched": 3, "failed": 1, "rate_limited": 0, "backlog": 4},
        "reconciler": {
            "leader": False,
            "runs": 2,
            "changes": 1,
            "errors": 0,
            "failed_runs": 0,
            "last_run_at": "2026-01-01T00:00:00Z",
        },
    }
    metrics.sync(health)
    metrics.sync(health)  # the same totals again: nothing counted twice
    health["followup"] = {**health["followup"], "refetched": 5, "leader": False}
    metrics.sync(health)
    s = _samples(metrics.exposition(lambda: FIGURES))
    assert (
        s[("kplus_fsm_webhook_deliveries_total", (("outcome", "applied"), ("status", "200")))] == 2
    )
    assert s[("kplus_fsm_webhook_deliveries_total", (("outcome", "none"), ("status", "500")))] == 1
    assert s[("kplus_fsm_webhook_delivery_seconds_count", ())] == 3
    assert s[("kplus_fsm_refetch_seconds_count", ())] == 2
    assert s[("kplus_fsm_refetch_failures_total", (("error", "OmiseTimeoutError"),))] == 1
    assert s[("kplus_fsm_http_timeouts_total", (("phase", "head"),))] == 1
    assert s[("kplus_fsm_followup_refetches_total", (("result", "ok"),))] == 5
    assert s[("kplus_fsm_followup_refetches_total", (("result", "failed"),))] == 1
    assert s[("kplus_fsm_followup_leader", ())] == 0
    assert s[("kplus_fsm_followup_backlog", ())] == 0  # only the leader's queue counts
    assert s[("kplus_fsm_reconciler_runs_total", ())] == 2
    assert s[("kplus_fsm_reconciler_changes_total", ())] == 1
    assert s[("kplus_fsm_reconciler_last_run_timestamp_seconds", ())] == 1767225600
    assert s[("kplus_fsm_unresolved_hints", ())] == 2
    assert s[("kplus_fsm_oldest_unresolved_hint_age_seconds", ())] == 12.5
    assert s[("kplus_fsm_pending_payments", ())] == 3
    assert s[("kplus_fsm_oldest_pending_payment_age_seconds", ())] == 0
    assert s[("kplus_fsm_log_up", ())] == 1
    assert all(name.startswith("kplus_fsm_") for name, _ in s)


def test_a_log_that_cannot_be_read_still_gets_a_scrape() -> None:
    def broken() -> LogFigures:
        raise OSError("disk gone")

    s = _samples(ServeMetrics().exposition(broken))
    assert s[("kplus_fsm_log_up", ())] == 0
    assert ("kplus_fsm_pending_payments", ()) not in s


def test_dead_workers_live_gauges_are_dropped(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    dead = int(done.stdout)
    for pid in (dead, os.getpid()):
        for mode in ("livesum", "livemax"):
            (tmp_path / f"gauge_{mode}_{pid}.db").write_bytes(b"")
    (tmp_path / f"counter_{dead}.db").write_bytes(b"")
    forget_dead_processes(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            f"counter_{dead}.db",  # a dead worker's counts still count
            f"gauge_livemax_{os.getpid()}.db",
            f"gauge_livesum_{os.getpid()}.db",
        ]
    )


def test_log_figures(tmp_path: Path) -> None:
    with Tracker(tmp_path / "k.db") as tracker:
        tracker.request_payment(payment_id="p-1", amount=10_000, return_uri="https://s.example/r")
        tracker.record_charge(charge_json(payment_id="p-1", charge_id="chrg_test_1"), origin="poll")
        figures = read_log_figures(tracker.store, now=utc_now())  # type: ignore[arg-type]
    assert figures.pending_payments == 1
    assert figures.oldest_pending_age_seconds is not None
    assert figures.oldest_pending_age_seconds >= 0
    assert figures.unresolved_hints == 0
    assert figures.to_json()["pending_payments"]["count"] == 1


# ------------------------------------------------- bodies not read whole


@pytest.fixture
def intake(tmp_path: Path) -> Iterator[WebhookIntake]:
    with Tracker(tmp_path / "k.db") as tracker:
        yield WebhookIntake(tracker, secrets=[SECRET])


def _event() -> bytes:
    charge = charge_json(payment_id="p-1", charge_id="chrg_test_1", status="successful")
    return json.dumps(webhook_json(charge, event_id="evnt_test_1")).encode()


def _cut_off(
    intake: WebhookIntake, body: bytes, headers: Mapping[str, str], scope_extra: dict[str, Any]
) -> list[dict[str, Any]]:
    """Drive asgi_app with a body that stops after 10 bytes; what the app sent."""
    app = asgi_app(intake)
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": body[:10], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return dict(messages.pop(0))

    async def send(message: Mapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/webhooks/omise",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        **scope_extra,
    }
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    return sent


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({}, "before the connection was closed"),
        ({"extensions": {TIMEOUT_EXTENSION: 1.5}}, "before the connection timed out after 1.5 s"),
    ],
)
def test_a_cut_body_is_refused_never_taken_for_a_forgery(
    intake: WebhookIntake, extra: dict[str, Any], says: str
) -> None:
    body = _event()
    headers = {
        **signature_headers(body, [SECRET], int(intake.now())),
        "Content-Length": str(len(body)),
    }
    assert _cut_off(intake, body, headers, extra) == []  # nobody is left to answer
    row = list(intake.tracker.store.iter_inbox())[-1]
    assert (row.outcome, row.verification) == ("rejected", "not checked")
    assert row.reason == (
        f"body incomplete: 10 of {len(body)} bytes arrived {says}: "
        "not processed, signature not checked"
    )
    assert row.raw() == body[:10].decode()


def test_chunked_on_wsgiref_is_refused_with_411(intake: WebhookIntake) -> None:
    """wsgiref cannot decode a chunked body: 411, recorded, never read as empty (a forgery)."""
    body = _event()
    with serve(intake, "127.0.0.1", 0).start() as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        headers = {**signature_headers(body, [SECRET], int(intake.now())), "Content-Type": "a/j"}
        conn.request("POST", "/webhooks/omise", body=iter([body]), headers=headers)
        response = conn.getresponse()
        payload = json.loads(response.read())
        conn.close()
    assert response.status == 411
    assert payload["reason"] == CHUNKED_REFUSED
    row = list(intake.tracker.store.iter_inbox())[-1]
    assert (row.outcome, row.verification, row.reason) == (
        "rejected",
        "not checked",
        CHUNKED_REFUSED,
    )
    assert payload["inbox_id"] == row.id


def test_the_documented_alerts_use_metrics_that_exist() -> None:
    """Every kplus_fsm_ name in going-live.md's rule file and metric table is served."""
    import re

    import yaml
    from docs_blocks import ROOT, blocks_of

    metrics = ServeMetrics()
    metrics.delivered(IntakeResult(status=200, outcome="applied", reason=""), seconds=0.1)
    metrics.refetched(seconds=0.1, error="OmiseTimeoutError")
    metrics.timed_out("body")
    followup = {"leader": True, "refetched": 1, "failed": 1, "rate_limited": 1, "backlog": 1}
    reconciler = {"leader": True, "runs": 1, "changes": 1, "errors": 1, "failed_runs": 1}
    metrics.sync(
        {"followup": followup, "reconciler": {**reconciler, "last_run_at": "2026-01-01T00:00:00Z"}}
    )
    served = {name for name, _ in _samples(metrics.exposition(lambda: FIGURES))}
    page = ROOT / "docs" / "going-live.md"
    [rules] = [b for b in blocks_of(page) if b.lang == "yaml"]
    exprs = [r["expr"] for g in yaml.safe_load(rules.code)["groups"] for r in g["rules"]]
    named = {n for e in exprs for n in re.findall(r"kplus_fsm_\w+", e)}
    assert named
    assert named <= served, named - served
    table = page.read_text().split("## 8. Monitoring", 1)[1].split("```yaml", 1)[0]
    documented = set(re.findall(r"`(kplus_fsm_\w+)", table))
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in served}
    assert documented <= served | families, documented - served - families


def test_accepted_connections_have_tcp_nodelay() -> None:
    """
    The socket serve binds says it is TCP, so asyncio sets TCP_NODELAY on every
    connection it accepts (without it, each answer waited for the client's
    delayed ACK: ~40 ms a request on loopback, found by the benchmark).
    """
    import socket

    from kplus_fsm._server.run import bind

    async def accept_one(sock: socket.socket) -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                raw = transport.get_extra_info("socket")
                accepted.set_result(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        port = sock.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        nodelay = await asyncio.wait_for(accepted, 5)
        writer.close()
        server.close()
        await server.wait_closed()
        return nodelay

    sock = bind("127.0.0.1", 0, 16)
    assert sock.proto == socket.IPPROTO_TCP
    assert asyncio.run(accept_one(sock)) != 0
