"""
Two ``kplus-fsm serve`` receivers, as two hosts would run them, on one
PostgreSQL log: exactly one runs the follow-up and one the reconciler at a time
(their leases in the database); SIGKILL the one that holds them and the other
takes over within the lease time. Both take deliveries all along.
"""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from serve_support import (
    WEBHOOK_SECRET,
    assert_clean,
    fake_omise,
    free_port,
    metric_samples,
    running,
    serve_env,
    start_serve,
    unsigned_event,
    wait_for,
)

from kplus_fsm.adapters.signatures import signature_headers

pytest.importorskip("psycopg", reason="psycopg is not installed")
pytestmark = pytest.mark.slow


def leads(url: str) -> tuple[float, float, float]:
    """(follow-up leader, reconciler leader, reconciler runs) of one receiver."""
    samples = metric_samples(httpx.get(url + "/metrics", trust_env=False, timeout=10).text)

    def value(name: str) -> float:
        return sum(v for (n, _), v in samples.items() if n == name)

    return (
        value("kplus_fsm_followup_leader"),
        value("kplus_fsm_reconciler_leader"),
        value("kplus_fsm_reconciler_runs_total"),
    )


def test_two_receivers_one_leader_each_and_take_over(pg_url: str) -> None:
    args = ("--reconcile-every", "1s", "--lease-ttl", "5s")
    with fake_omise(None) as (_, api):
        env = serve_env(api)
        first = start_serve(pg_url, *args, env=env, port=free_port())
        with running(first):
            wait_for(lambda: leads(first.url)[:2] == (1, 1), 15, "the first receiver leads")
            second = start_serve(pg_url, *args, env=env, port=free_port())
            with running(second):
                time.sleep(2.5)  # a few reconcile periods: the second never leads meanwhile
                assert leads(second.url) == (0, 0, 0)
                runs_before = leads(first.url)[2]
                assert runs_before >= 2
                for n, receiver in enumerate((first, second)):
                    body = unsigned_event(n)
                    headers = signature_headers(body, [WEBHOOK_SECRET], int(time.time()))
                    answer = httpx.post(
                        receiver.url + "/webhooks/omise",
                        content=body,
                        headers=headers,
                        trust_env=False,
                    )
                    assert answer.status_code == 200
                first.signal(signal.SIGKILL)
                first.wait(10)
                killed = time.monotonic()
                wait_for(lambda: leads(second.url)[:2] == (1, 1), 20, "the second takes over")
                wait_for(lambda: leads(second.url)[2] >= 1, 10, "the second reconciles")
                assert time.monotonic() - killed < 5 + 1 + 6  # the lease time, a period, slack
    assert_clean(first.stdout, first.stderr, second.stdout, second.stderr)
