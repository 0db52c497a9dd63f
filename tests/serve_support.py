"""
Helpers of the ``kplus-fsm serve`` tests: the receiver as a real process (its
output drained by threads so that ``-vv`` never fills a pipe), the fake Omise
in-process on 127.0.0.1, payments created through a real client, and raw
sockets for the slow, chunked and half-sent requests.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from kplus_fsm import Tracker
from kplus_fsm.adapters.fake import FakeOmise, RetryPolicy, start_server
from kplus_fsm.adapters.omise import OmiseClient

EXE = str(Path(sys.executable).with_name("kplus-fsm"))
SK = "skey_test_5servesecretkey00000001"
PK = "pkey_test_5servepublickey00000001"
WEBHOOK_SECRET = base64.b64encode(b"serve-webhook-secret-0123456789ab").decode()
SECRETS = (SK, PK, WEBHOOK_SECRET)
RETURN_URI = "https://shop.example/r"
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_env(api_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a receiver: no proxies, no inherited Omise or kplus settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OMISE_", "KPLUS_FSM_", "PROMETHEUS_")) and "proxy" not in k.lower()
    }
    env.update(NO_PROXY="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    env["OMISE_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    if api_url is not None:
        env.update(OMISE_SECRET_KEY=SK, OMISE_PUBLIC_KEY=PK, OMISE_API_URL=api_url)
    env.update(extra)
    return env


class Served:
    """A running ``kplus-fsm serve``: its process, URL and output so far."""

    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._drain, args=(proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._drain, args=(proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _drain(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=1.0) as probe:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    self.finish()
                    raise AssertionError(f"serve exited {self.proc.returncode}: {self.stderr}")
                with contextlib.suppress(httpx.HTTPError):
                    if probe.get(self.url + "/").status_code == 200:
                        return
                time.sleep(0.05)
        raise AssertionError(f"serve not ready after {timeout} s: {self.stderr}")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self.finish()
        return code

    def finish(self) -> None:
        """After the process ended: collect the rest of its output and close the pipes."""
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it lingers; the exit code."""
        self.signal(signal.SIGTERM)
        try:
            return self.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait(5)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, trust_env=False, timeout=10)


def start_serve(
    db: Path | str,
    *args: str,
    env: Mapping[str, str],
    port: int | None = None,
    verbose: str = "-vv",
    cwd: Path | None = None,
    ready: bool = True,
) -> Served:
    """``kplus-fsm -vv serve --db DB --port PORT ARGS`` as a process, ready to take deliveries."""
    port = port if port is not None else free_port()
    command = [EXE, *([verbose] if verbose else []), "serve", "--db", str(db)]
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env),
        cwd=cwd,
    )
    served = Served(proc, port)
    if ready:
        served.wait_ready()
    return served


@contextlib.contextmanager
def running(served: Served) -> Iterator[Served]:
    """Stop the receiver on the way out, whatever happened."""
    try:
        yield served
    finally:
        if served.proc.poll() is None:
            served.stop()


def assert_clean(*texts: str) -> None:
    """No secret and no traceback in a process's output."""
    for text in texts:
        assert "Traceback" not in text, text[-3000:]
        for secret in SECRETS:
            assert secret not in text


@contextlib.contextmanager
def fake_omise(webhook_url: str | None, **kwargs: Any) -> Iterator[tuple[FakeOmise, str]]:
    """The fake Omise on 127.0.0.1, signing webhooks to ``webhook_url`` with the wall clock."""
    kwargs.setdefault("retry", RetryPolicy(max_attempts=1))
    fake = FakeOmise(
        secret_key=SK,
        public_key=PK,
        webhook_url=webhook_url,
        webhook_secrets=[WEBHOOK_SECRET],
        signature_time=time.time,
        **kwargs,
    )
    server = start_server(fake)
    try:
        yield fake, server.url
    finally:
        server.close()
        fake.close()


def create_payment(db: Path, api_url: str, payment_id: str) -> str:
    """A pending K PLUS payment created through the tracker and a real client; its charge id."""
    with Tracker(db) as tracker, OmiseClient(secret_key=SK, public_key=PK, base_url=api_url) as c:
        result = tracker.create_charge(
            c, payment_id=payment_id, amount=35_000, currency="THB", return_uri=RETURN_URI
        )
    assert result.payment is not None, result.reason
    assert result.payment.charge_id is not None, result.reason
    return result.payment.charge_id


def status_of(db: Path, payment_id: str) -> str:
    with Tracker(db) as tracker:
        return tracker.get(payment_id).status.value


def wait_for(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> float:
    """Poll ``check`` until true; the seconds it took. AssertionError after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(poll)
    raise AssertionError(f"not within {timeout} s: {what}")


def event_body(fake: FakeOmise, charge_id: str, key: str = "charge.complete") -> bytes:
    """The body Omise POSTs for the charge's last ``key`` event (the event object)."""
    event = [e for e in fake.events(charge_id) if e["key"] == key][-1]
    return json.dumps(event).encode()


def unsigned_event(n: int) -> bytes:
    """A well-formed event for a charge nobody tracks (recorded, answered 200)."""
    charge = {
        "object": "charge",
        "id": f"chrg_test_serve{n:012d}",
        "status": "pending",
        "amount": 35_000,
        "currency": "THB",
        "metadata": {},
        "livemode": False,
        "created_at": "2026-01-01T00:00:00Z",
    }
    event = {
        "object": "event",
        "id": f"evnt_test_serve{n:012d}",
        "key": "charge.create",
        "livemode": False,
        "created_at": "2026-01-01T00:00:00Z",
        "data": charge,
    }
    return json.dumps(event).encode()


def raw_request(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a new connection; everything answered until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def status_and_json(response: bytes) -> tuple[int, Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def children_of(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(x) for x in text]


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text parsed by prometheus_client's own parser: (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out
