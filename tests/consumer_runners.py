"""
Real ``kplus-fsm consume`` processes sharing one consumer name over one log
(SQLite or PostgreSQL), and what they did: the handlers append ``position pid``
to a side file with ``fsync`` before returning (so a count survives SIGKILL),
and the transactional handler inserts into a side table of the same database.

Used by tests/test_consumer_processes.py and
tests/test_consumer_processes_postgres.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import structlog
from store_contract import request, snapshot

from kplus_fsm import Lease, Tracker, open_store

EXE = str(Path(sys.executable).with_name("kplus-fsm"))
NAME = "shipping"
LEASE = "consumer:" + NAME
#: Short, so a killed holder is replaced quickly; every handler call is far shorter.
LEASE_TTL = 2.0
POLL = 0.25
#: 350 payments x (requested, pending, successful).
PAYMENTS = 350
EVENTS = PAYMENTS * 3

HANDLERS = '''
"""Handlers for the consumer process tests: each call leaves a durable trace."""
import os
import time

SIDE = os.environ["KPLUS_TEST_SIDE"]
DELAY = float(os.environ.get("KPLUS_TEST_DELAY") or 0)


def _trace(position):
    fd = os.open(SIDE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{position} {os.getpid()}\\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if DELAY:
        time.sleep(DELAY)


def record(event):
    """At least once: the trace is made before the position advances."""
    _trace(event.position)


def record_in_transaction(event, handle):
    """Exactly once: the row commits with the position, or not at all."""
    _trace(event.position)  # every attempt, committed or not
    handle.execute(
        "INSERT INTO shipped (position, pid) VALUES (?, ?)", [event.position, os.getpid()]
    )
'''


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No kplus_fsm log lines inside (a bulk set-up); the configuration is restored after."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        yield
    finally:
        structlog.configure(**saved)


def build_log(db: str, *, side_table: bool = False) -> int:
    """A log of :data:`EVENTS` events; the last position."""
    with quiet(), Tracker(open_store(db, synchronous="OFF")) as tracker:
        conn: Any = getattr(tracker.store, "conn", None)
        if type(conn).__module__.startswith("psycopg"):
            conn.execute("SET synchronous_commit = off")  # the build only: fast, not durable
        for i in range(PAYMENTS):
            pid, cid = f"pay-{i}", f"chrg_{i}"
            request(tracker, pid)
            snapshot(tracker, pid, cid, "pending", origin="create_response")
            snapshot(tracker, pid, cid, "successful")
        if side_table:
            tracker.store.write_transaction(
                lambda handle: handle.execute(
                    "CREATE TABLE shipped (position INTEGER NOT NULL, pid INTEGER NOT NULL)"
                )
            )
        last = tracker.store.last_position()
    assert last == EVENTS
    return last


@attrs.define
class Runner:
    """One ``kplus-fsm consume`` process."""

    proc: subprocess.Popen[str]
    out: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")


@attrs.define
class Fleet:
    """Several runners of one consumer name, the log they read, and their traces."""

    db: str
    work: Path
    side: Path
    runners: list[Runner] = attrs.Factory(list)

    @classmethod
    def create(cls, db: str, work: Path) -> Fleet:
        (work / "consumer_handlers.py").write_text(HANDLERS, encoding="utf-8")
        return cls(db=db, work=work, side=work / "side.txt")

    def start(
        self,
        *,
        handler: str = "consumer_handlers:record",
        transactional: bool = False,
        failpoints: str = "",
        delay: float = 0.0,
    ) -> Runner:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OMISE_", "KPLUS_FSM_"))}
        env.update(KPLUS_TEST_SIDE=str(self.side), PYTHONUNBUFFERED="1")
        if failpoints:
            env["KPLUS_FSM_FAILPOINTS"] = failpoints
        if delay:
            env["KPLUS_TEST_DELAY"] = str(delay)
        args = [EXE, "consume", NAME, "--db", self.db, "--handler", handler]
        args += ["--start", "beginning", "--lease-ttl", str(LEASE_TTL)]
        args += ["--poll-interval", str(POLL)]
        if transactional:
            args.append("--transactional")
        out = self.work / f"runner-{len(self.runners)}.log"
        with out.open("w", encoding="utf-8") as sink:
            proc = subprocess.Popen(
                args, cwd=self.work, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True
            )
        runner = Runner(proc=proc, out=out)
        self.runners.append(runner)
        return runner

    # ------------------------------------------------------------------ reads

    def read(self, fn: Callable[[Any], Any]) -> Any:
        store = open_store(self.db, read_only=True)
        try:
            return fn(store)
        finally:
            store.close()

    def position(self) -> int:
        return int(self.read(lambda s: s.consumer_position(NAME)))

    def lease(self) -> Lease | None:
        lease: Lease | None = self.read(lambda s: s.lease(LEASE))
        return lease

    def holder(self) -> Runner | None:
        """The runner whose process holds the lease now (by the pid in ``holder``)."""
        lease = self.lease()
        if lease is None:
            return None
        pid = int(lease.holder.split(":")[-2])
        return next((r for r in self.runners if r.pid == pid and r.alive()), None)

    def traces(self) -> list[tuple[int, int]]:
        if not self.side.exists():
            return []
        out = []
        for line in self.side.read_text(encoding="utf-8").splitlines():
            position, pid = line.split()
            out.append((int(position), int(pid)))
        return out

    def handled(self) -> Counter[int]:
        return Counter(position for position, _ in self.traces())

    def shipped(self) -> list[tuple[int, int]]:
        """The rows the transactional handler committed: (position, pid)."""
        store = open_store(self.db)
        try:
            rows = store.write_transaction(
                lambda handle: handle.execute("SELECT position, pid FROM shipped").fetchall()
            )
        finally:
            store.close()
        return [(int(position), int(pid)) for position, pid in rows]

    # ------------------------------------------------------------------ waits

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 60.0) -> float:
        """Poll ``check`` until true; the monotonic time it became true."""
        deadline = time.monotonic() + timeout
        while True:
            if check():
                return time.monotonic()
            for runner in self.runners:
                if runner.proc.poll() not in (None, 0, -signal.SIGKILL):
                    raise AssertionError(f"a runner failed:\n{runner.output()[-3000:]}")
            if time.monotonic() > deadline:
                outputs = "\n".join(r.output()[-1500:] for r in self.runners)
                raise AssertionError(f"timed out waiting for {what}\n{outputs}")
            time.sleep(0.05)

    def holder_at(self, handled_at_least: int) -> Runner:
        """Wait until ``handled_at_least`` events are traced; the runner holding the lease."""
        self.wait_for(
            f"{handled_at_least} events handled", lambda: len(self.traces()) >= handled_at_least
        )
        found: list[Runner] = []

        def held() -> bool:
            runner = self.holder()
            if runner is not None:
                found.append(runner)
            return runner is not None

        self.wait_for("a holder", held)
        return found[-1]

    def stop_all(self, timeout: float = 20.0) -> list[int]:
        """SIGTERM every live runner, wait for each; their exit codes."""
        for runner in self.runners:
            if runner.alive():
                runner.proc.send_signal(signal.SIGTERM)
        codes = []
        for runner in self.runners:
            try:
                codes.append(runner.proc.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                runner.proc.kill()
                codes.append(runner.proc.wait())
        return codes

    def kill_all(self) -> None:
        for runner in self.runners:
            if runner.alive():
                runner.proc.kill()
                runner.proc.wait()


def fleet_scope(db: str, work: Path) -> Iterator[Fleet]:
    """A fleet whose processes are killed whatever happens to the test."""
    fleet = Fleet.create(db, work)
    try:
        yield fleet
    finally:
        fleet.kill_all()


@attrs.frozen
class KillReport:
    killed_pid: int
    advanced_before_kill: int
    killed_lease: Lease
    takeover: Lease


def kill_holder_and_wait_takeover(fleet: Fleet, holder: Runner) -> KillReport:
    """SIGKILL ``holder``; wait until another runner holds a newer lease and moves on."""
    before = fleet.lease()
    assert before is not None
    os.kill(holder.pid, signal.SIGKILL)
    holder.proc.wait(timeout=10)
    advanced = fleet.position()  # the killed runner's last advance: nothing moves it now
    killed = fleet.lease()
    assert killed is not None
    assert killed.token == before.token, "the lease changed hands before the kill"

    def taken_over() -> bool:
        lease = fleet.lease()
        return lease is not None and lease.token > killed.token and fleet.position() > advanced

    fleet.wait_for("another runner to take over", taken_over, timeout=LEASE_TTL * 10)
    takeover = fleet.lease()
    assert takeover is not None
    return KillReport(
        killed_pid=holder.pid,
        advanced_before_kill=advanced,
        killed_lease=killed,
        takeover=takeover,
    )


__all__ = [
    "EVENTS",
    "LEASE_TTL",
    "NAME",
    "Fleet",
    "KillReport",
    "Runner",
    "build_log",
    "fleet_scope",
    "kill_holder_and_wait_takeover",
    "quiet",
]
