"""
Figure 4b: webhook deliveries through the real ``kplus-fsm serve`` over loopback.

Set up outside the timed part: the fake Omise on 127.0.0.1 (its own HTTP
server, in this process), ``deliveries`` payments created through the tracker
and paid at the fake, their ``charge.complete`` events signed as Omise sends
them; then ``kplus-fsm serve`` started as its own process on that log (one
worker, the defaults: ``synchronous=FULL``, 8 delivery threads; no periodic
reconciler, so that only deliveries are measured). Timed: ``concurrency``
client threads, each with a kept-alive connection, POST every delivery; serve
verifies it, records it, re-fetches the charge from the fake over HTTP and
records that (two commits). Reported: deliveries per second over the whole
batch and the 99th percentile of one delivery's latency as the client saw it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from _common import percentile

from kplus_fsm import Tracker
from kplus_fsm.adapters.fake import FakeOmise, RetryPolicy, start_server
from kplus_fsm.adapters.omise import OmiseClient
from kplus_fsm.adapters.signatures import signature_headers

SKEY = "skey_test_benchmarkserve000001"
PKEY = "pkey_test_benchmarkserve000001"
SECRET = "c2VydmUtYmVuY2htYXJrLXdlYmhvb2stc2VjcmV0MDE="
RETURN_URI = "https://shop.example/return"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServeBench:
    """One run of figure 4b (see the module docstring)."""

    def __init__(self, path: Path, deliveries: int, *, concurrency: int = 8) -> None:
        self.path = path
        self.concurrency = concurrency
        self.fake = FakeOmise(
            secret_key=SKEY, public_key=PKEY, seed=11, retry=RetryPolicy(max_attempts=1)
        )
        self.fake.hold_webhooks()  # the benchmark delivers them itself
        self.server = start_server(self.fake)
        self.bodies: list[bytes] = []
        with (
            Tracker(path, synchronous="OFF") as setup,
            OmiseClient(secret_key=SKEY, base_url=self.server.url) as api,
        ):
            for n in range(deliveries):
                result = setup.create_charge(
                    api, payment_id=f"serve-{n:08d}", amount=35_000, return_uri=RETURN_URI
                )
                assert result.payment is not None
                cid = result.payment.charge_id
                assert cid is not None
                self.fake.mark_as_paid(cid)
                (event,) = (e for e in self.fake.events(cid) if e["key"] == "charge.complete")
                self.bodies.append(json.dumps(event).encode())
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env.update(
            NO_PROXY="127.0.0.1",
            OMISE_SECRET_KEY=SKEY,
            OMISE_API_URL=self.server.url,
            OMISE_WEBHOOK_SECRET=SECRET,
        )
        env.pop("KPLUS_FSM_FAILPOINTS", None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kplus_fsm",
                "serve",
                "--db",
                str(path),
                "--port",
                str(self.port),
                "--no-reconcile",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/", trust_env=False, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("serve did not start")

    def run(self) -> tuple[float, list[float]]:
        """Deliver everything; (seconds for the batch, each delivery's seconds)."""
        latencies: list[float] = []
        failures: list[Any] = []
        lock = threading.Lock()
        shares = [self.bodies[i :: self.concurrency] for i in range(self.concurrency)]
        barrier = threading.Barrier(self.concurrency + 1)

        def client(bodies: list[bytes]) -> None:
            with httpx.Client(base_url=self.url, trust_env=False, timeout=60) as http:
                barrier.wait()
                for body in bodies:
                    headers = {
                        "content-type": "application/json",
                        **signature_headers(body, [SECRET], int(time.time())),
                    }
                    started = time.perf_counter()
                    answer = http.post("/webhooks/omise", content=body, headers=headers)
                    took = time.perf_counter() - started
                    with lock:
                        latencies.append(took)
                        if answer.status_code != 200 or answer.json()["outcome"] != "applied":
                            failures.append(answer.text)

        threads = [threading.Thread(target=client, args=(share,)) for share in shares]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        if failures:
            raise AssertionError(f"{len(failures)} deliveries not applied: {failures[0]}")
        with Tracker(self.path) as check:
            for n in range(len(self.bodies)):
                status = check.get(f"serve-{n:08d}").status.value
                if status != "successful":
                    raise AssertionError(f"serve-{n:08d} is {status}")
        return elapsed, latencies

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.server.close()
        self.fake.close()


def p99_ms(latencies: list[float]) -> float:
    return percentile(latencies, 99) * 1000
