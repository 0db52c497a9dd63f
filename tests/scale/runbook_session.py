"""
Rehearse docs/runbook.md: run every recipe against the fake Omise and the real
webhook receiver, and write the transcript (each command and its real output)
that the runbook quotes. Not a test.

    python tests/scale/runbook_session.py --dir /tmp/runbook

The fake Omise runs in this process on 127.0.0.1 (its Python API plays the
buyer, the bank and the network: approvals, lost webhooks, a late success, a
create that times out); everything else is the real command line, run as
separate processes exactly as on-call would type it: ``kplus-fsm serve`` receives
the signed webhooks, ``kplus-fsm pay`` creates charges, ``kplus-fsm reconcile``
re-reads them, and the incident commands read the log.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from kplus_fsm.adapters.fake import FakeOmise, RetryPolicy, start_server

SECRET_KEY = "skey_test_5runbook0000000000000"
PUBLIC_KEY = "pkey_test_5runbook0000000000000"
NEW_SECRET = base64.b64encode(b"the-webhook-secret-in-the-dashboard!").decode()
OLD_SECRET = base64.b64encode(b"last-year's-webhook-secret-retired!").decode()
RECEIVER_PORT = 8000
OMISE_PORT = 8765


class Session:
    """The fake Omise, the receiver process, and a transcript of commands."""

    def __init__(self, workdir: Path, fake: FakeOmise, api_url: str) -> None:
        self.dir = workdir
        self.fake = fake
        self.api_url = api_url
        self.transcript: list[str] = []
        self.env = {
            **os.environ,
            "KPLUS_FSM_DB": str(workdir / "shop.db"),
            "OMISE_SECRET_KEY": SECRET_KEY,
            "OMISE_API_URL": api_url,
            "COLUMNS": "200",
            # the kplus-fsm script installed next to this interpreter comes first
            "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
        }
        self.env.pop("OMISE_WEBHOOK_SECRET", None)
        self.receiver: subprocess.Popen[bytes] | None = None
        self.browser = httpx.Client(trust_env=False, follow_redirects=False)

    def sh(self, command: str, *, show: bool = True) -> str:
        """Run a shell command in the work directory; record it and its output."""
        proc = subprocess.run(
            command,
            shell=True,
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        out = proc.stdout + proc.stderr
        if show:
            self.transcript.append(f"$ {command}\n{out}" + (f"[exit {proc.returncode}]\n"))
        return out

    def note(self, text: str) -> None:
        self.transcript.append(f"# {text}\n")

    def start_receiver(self, secrets: str) -> None:
        """``kplus-fsm serve`` with OMISE_WEBHOOK_SECRET=secrets (comma-separated)."""
        self.stop_receiver()
        env = {**self.env, "OMISE_WEBHOOK_SECRET": secrets}
        self.receiver = subprocess.Popen(
            [
                shutil.which("kplus-fsm", path=self.env["PATH"]) or "kplus-fsm",
                "serve",
                "--port",
                str(RECEIVER_PORT),
            ],
            cwd=self.dir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{RECEIVER_PORT}/", trust_env=False)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("the receiver did not start")

    def stop_receiver(self) -> None:
        if self.receiver is not None:
            self.receiver.terminate()
            self.receiver.wait(10)
            self.receiver = None

    def pay(self, order: str, amount: int = 35_000, *, show: bool = False) -> str:
        """``kplus-fsm pay --order-ref ORDER``; the attempt's payment id."""
        self.sh(
            f"kplus-fsm pay --order-ref {order} --amount {amount} --platform-type IOS "
            f"--return-uri https://shop.example/orders/{order}/return",
            show=show,
        )
        self.fake.flush()
        attempts = [
            str(c["metadata"]["payment_id"])
            for c in self.fake.charges()
            if c["metadata"].get("order_ref") == order
        ]
        return attempts[-1]

    def charge_id(self, pid: str) -> str:
        for charge in self.fake.charges():
            if charge["metadata"].get("payment_id") == pid:
                return str(charge["id"])
        raise LookupError(pid)

    def approve(self, pid: str) -> None:
        """The buyer approves in K PLUS (the fake's authorize page)."""
        self.browser.post(
            f"{self.api_url}/test/authorize/{self.charge_id(pid)}", data={"action": "approve"}
        )
        self.fake.flush()

    def decline(self, pid: str, code: str = "insufficient_fund") -> None:
        self.browser.post(
            f"{self.api_url}/test/authorize/{self.charge_id(pid)}",
            data={"action": "decline", "failure_code": code},
        )
        self.fake.flush()


@contextmanager
def session(workdir: Path) -> Iterator[Session]:
    fake = FakeOmise(
        secret_key=SECRET_KEY,
        public_key=PUBLIC_KEY,
        webhook_url=f"http://127.0.0.1:{RECEIVER_PORT}/webhooks/omise",
        webhook_secrets=[NEW_SECRET],
        retry=RetryPolicy(max_attempts=2, backoff=0.1, max_backoff=0.2),
        sweep_interval=0.1,
        # Recipe 3 shows a charge that expired (status expired), then was paid.
        expiry_model="lifetime",
    )
    with fake, start_server(fake, host="127.0.0.1", port=OMISE_PORT) as server:
        s = Session(workdir, fake, server.url)
        try:
            yield s
        finally:
            s.stop_receiver()
            s.browser.close()


def rehearse(s: Session) -> None:
    s.start_receiver(NEW_SECRET)
    # An ordinary morning: paid, declined, paid twice over (a duplicate delivery).
    for i in range(1, 7):
        pid = s.pay(f"order-{1000 + i * 10}", 20_000 + i * 5_000)
        if i == 3:
            s.decline(pid)
        else:
            if i == 5:
                s.fake.duplicate_next(times=2)
            s.approve(pid)

    s.note("RECIPE 1: the buyer says they paid but the order is pending")
    pid = s.pay("order-1001")
    s.fake.drop_next()  # the completion webhook is lost on the way
    s.approve(pid)
    s.sh(f"kplus-fsm show {pid}")
    s.sh("kplus-fsm anomalies --since -15m")
    s.sh(f"kplus-fsm reconcile {pid}")
    s.sh(f"kplus-fsm show {pid}")

    s.note("RECIPE 2: webhooks stopped arriving")
    s.start_receiver(OLD_SECRET)  # a deploy put back last year's secret
    for order in ("order-1002", "order-1003", "order-1004"):
        s.approve(s.pay(order))
    s.sh("kplus-fsm stats --since -10m")
    s.sh("kplus-fsm anomalies --since -10m")
    s.sh("kplus-fsm list --status pending")
    s.sh(f"curl -s -o /dev/null -w '%{{http_code}}\\n' http://127.0.0.1:{RECEIVER_PORT}/")
    s.start_receiver(f"{NEW_SECRET},{OLD_SECRET}")
    s.sh("kplus-fsm reconcile --pending-minutes 0")
    s.sh("kplus-fsm list --stuck")

    s.note("RECIPE 3: a charge went from expired to successful")
    pid = s.pay("order-1005")
    s.fake.expire(s.charge_id(pid))
    s.fake.flush()
    expired_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(2)
    s.fake.mark_as_paid(s.charge_id(pid), force=True)  # the bank's late confirmation
    s.fake.flush()
    s.sh("kplus-fsm anomalies --since -5m")
    s.sh(f"kplus-fsm show {pid}")
    s.sh(f"kplus-fsm show {pid} --as-of {expired_at} --json | jq '{{status, flags}}'")
    s.sh(
        "kplus-fsm list --since -1d --limit 1000 --json "
        "| jq -r '.payments[] | select(.flags | index(\"corrected\")) | .payment_id'"
    )

    s.note("RECIPE 5: the API timed out on create")
    faults = f"{s.api_url}/_fake/faults"
    for fault in (
        "-d route='POST /charges' -d kind=commit_then_timeout -d delay=65",
        "-d route='GET /search' -d kind=error -d status=503 -d times=3",
        "-d route='GET /charges' -d kind=error -d status=503 -d times=3",
    ):
        s.sh(f"curl -s -u {SECRET_KEY}: {faults} {fault} > /dev/null", show=False)
    s.fake.drop_next()  # and the charge.create webhook is lost too
    s.sh(
        "kplus-fsm pay --order-ref order-1006 --amount 35000 "
        "--return-uri https://shop.example/orders/order-1006/return"
    )
    s.sh("kplus-fsm show order-1006.1")
    s.sh("kplus-fsm list --stuck --exit-code")
    s.sh("kplus-fsm reconcile")
    s.sh("kplus-fsm show order-1006.1")

    s.note("RECIPE 6: an order was paid twice")
    first = s.pay("order-1008")
    s.fake.expire(s.charge_id(first))  # nobody approved in time, we read: expired
    s.fake.flush()
    s.sh(
        "kplus-fsm pay --order-ref order-1008 --amount 35000 "
        "--return-uri https://shop.example/orders/order-1008/return"
    )
    s.fake.flush()
    s.approve("order-1008.2")  # the buyer pays the new attempt...
    time.sleep(1)
    s.fake.mark_as_paid(s.charge_id(first), force=True)  # ...and the bank approves the first late
    s.fake.flush()
    s.sh("kplus-fsm anomalies --since -5m")
    s.sh(
        'sqlite3 -header -column shop.db "select payment_id, charge_id, status, amount, '
        "updated_at from payments where order_ref = 'order-1008'\""
    )
    s.sh("sqlite3 -header -column shop.db 'select * from orders_paid_twice'")

    s.note("RECIPE 4: prove to an auditor that this log is complete and untampered")
    s.sh("kplus-fsm verify")
    s.sh("kplus-fsm checkpoint --json > checkpoint-2026-q1.json && cat checkpoint-2026-q1.json")
    s.approve(s.pay("order-1007"))
    s.sh("kplus-fsm verify --checkpoint checkpoint-2026-q1.json")
    s.sh(
        "kplus-fsm export --output audit.jsonl && wc -l audit.jsonl && "
        "tail -1 audit.jsonl | cut -c1-120"
    )
    s.sh("kplus-fsm export --format csv --since -1h | head -c 300; echo")
    s.sh(
        "sqlite3 shop.db '.backup tampered.db' && sqlite3 tampered.db "
        '"DROP TRIGGER inbox_no_update; '
        "UPDATE inbox SET reason = 'ok' WHERE id = 5; CREATE TRIGGER inbox_no_update "
        "BEFORE UPDATE ON inbox BEGIN SELECT RAISE(ABORT, 'inbox is append-only: UPDATE "
        "refused'); END;\""
    )
    s.sh("kplus-fsm verify --db tampered.db")
    s.sh("python rechain.py tampered.db")
    s.sh("kplus-fsm verify --db tampered.db")
    s.sh("kplus-fsm verify --db tampered.db --checkpoint checkpoint-2026-q1.json")
    s.sh("kplus-fsm stats")


RECHAIN = '''"""An attacker who knows the scheme: recompute every inbox hash after an edit."""
import sqlite3, sys
from kplus_fsm import _codec
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("DROP TRIGGER inbox_no_update")
prev = _codec.GENESIS
cols = _rows.INBOX_HASHED
for row in conn.execute(f"SELECT {', '.join(cols)} FROM inbox ORDER BY id").fetchall():
    values = dict(zip(cols, row))
    prev = _codec.chain_hash(prev, values, cols)
    conn.execute("UPDATE inbox SET hash = ? WHERE id = ?", (prev, values["id"]))
conn.execute("CREATE TRIGGER inbox_no_update BEFORE UPDATE ON inbox BEGIN "
             "SELECT RAISE(ABORT, 'inbox is append-only: UPDATE refused'); END")
print("rewrote the inbox hash chain")
'''


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, required=True, help="an empty work directory")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    if any(args.dir.iterdir()):
        parser.error(f"{args.dir} is not empty")
    (args.dir / "rechain.py").write_text(RECHAIN, encoding="utf-8")
    with session(args.dir) as s:
        rehearse(s)
    (args.dir / "transcript.txt").write_text("\n".join(s.transcript), encoding="utf-8")
    print(args.dir / "transcript.txt")


if __name__ == "__main__":
    main()
