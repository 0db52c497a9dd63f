"""
Shared by the hostile-input tests (``tests/test_hostile*.py``): a small log,
the ways to spoil a copy of it (damaged pages, cut short, another
application's schema, a newer version, not SQLite), a snapshot of a directory
to prove nothing was written, every command with its minimal arguments, and a
way to run a command as a user who is not root.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import sqlite3
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import structlog
from click.testing import CliRunner, Result

from kplus_fsm import Origin, Tracker
from kplus_fsm.cli import cli
from kplus_fsm.testing import FakeClock, charge_json, webhook_json

T0 = "2026-03-01T10:00:00+00:00"
#: Every exit code docs/cli.md documents.
DOCUMENTED = frozenset({0, 1, 2, 3, 4})
NOBODY = 65534


def build_log(path: Path, payments: int = 30) -> None:
    """A small log: payments created, charged, some paid by webhook, some expired."""
    clock = FakeClock(T0)
    with structlog_quiet(), Tracker(path, clock=clock) as t:
        for i in range(payments):
            pid, cid, amount = f"order-{i}", f"chrg_test_{i}", 10_000 + i

            def charge(status: str, pid: str = pid, cid: str = cid, amount: int = amount) -> Any:
                return charge_json(payment_id=pid, charge_id=cid, amount=amount, status=status)

            t.request_payment(payment_id=pid, amount=amount, return_uri="https://s.example/r")
            clock.advance(seconds=5)
            t.record_charge(charge("pending"), origin=Origin.CREATE_RESPONSE)
            clock.advance(seconds=5)
            if i % 3 == 0:
                t.record_webhook(webhook_json(charge("successful"), event_id=f"evnt_test_{i}"))
            elif i % 3 == 1:
                t.record_charge(charge("expired"), origin=Origin.POLL)


@contextlib.contextmanager
def structlog_quiet() -> Iterator[None]:
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))
    try:
        yield
    finally:
        structlog.configure(**saved)


# ------------------------------------------------------------- spoiled copies


def page_size(path: Path) -> int:
    raw = int.from_bytes(path.read_bytes()[16:18], "big")
    return 65536 if raw == 1 else raw


def damage_pages(path: Path, pages: list[int], seed: int) -> None:
    """Overwrite whole pages (1-based) with random bytes."""
    rng = random.Random(seed)
    size = page_size(path)
    with path.open("r+b") as fh:
        for page in pages:
            fh.seek((page - 1) * size)
            fh.write(rng.randbytes(size))


def leaf_pages(path: Path, table: str) -> list[int]:
    """The leaf pages of a table's b-tree, in key order (SQLite's dbstat)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY path",
            (table,),
        ).fetchall()
    finally:
        conn.close()
    return [int(r[0]) for r in rows]


def truncate(path: Path, length: int) -> None:
    with path.open("r+b") as fh:
        fh.truncate(length)


def make_foreign(path: Path, tables: list[str] | None = None, user_version: int = 0) -> None:
    """Another application's SQLite database (rollback journal, as most are)."""
    conn = sqlite3.connect(path)
    try:
        for name in tables or ["customers", "orders"]:
            quoted = '"' + name.replace('"', '""') + '"'
            conn.execute(f"CREATE TABLE IF NOT EXISTS {quoted} (id INTEGER PRIMARY KEY, x)")
            conn.execute(f"INSERT INTO {quoted} (x) VALUES ('theirs')")
        if user_version:
            conn.execute(f"PRAGMA user_version = {int(user_version)}")
        conn.commit()
    finally:
        conn.close()


def make_newer(path: Path, name: str = "0099_future", *, journal: str = "delete") -> None:
    """A log written by a newer kplus_fsm: a migration this version does not know."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
            "VALUES ('kplus_fsm', ?, '2030-01-01 00:00:00.000000+00:00')",
            (name,),
        )
        conn.execute(f"PRAGMA journal_mode = {journal}")
    finally:
        conn.close()


#: What migration 0005_index_accounting changed, undone: the indexes of 0001-0004.
UNDO_INDEX_ACCOUNTING = (
    "DROP INDEX events_rare_kind",
    "DROP INDEX inbox_event_id",
    "DROP INDEX inbox_unmatched_charge",
    "DROP INDEX inbox_outcome_kind",
    "CREATE INDEX inbox_charge ON inbox (charge_id, id)",
    "CREATE INDEX inbox_external ON inbox (external_id)",
    "CREATE INDEX inbox_outcome ON inbox (outcome, id)",
    "CREATE INDEX events_causation ON events (causation)",
    "CREATE INDEX inbox_kind ON inbox (kind, outcome, received_at)",
    "CREATE INDEX events_kind ON events (kind, stream)",
    "DELETE FROM _sqlite_migrations WHERE name = '0005_index_accounting'",
)


def make_0004(path: Path) -> None:
    """A log from before migration 0005_index_accounting (the indexes of 0001-0004)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in UNDO_INDEX_ACCOUNTING:
            conn.execute(statement)
    finally:
        conn.close()


def make_older(path: Path) -> None:
    """A log from before migrations 0002_views to 0005 (an older kplus_fsm's)."""
    make_0004(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        views = ("unresolved_hints", "orders_paid_twice", "timeline", "stuck_payments")
        for view in (*views, "anomalies", "webhook_lag", "payment_stats"):
            conn.execute(f"DROP VIEW {view}")
        indexes = ("payments_order", "inbox_hints", "inbox_reads", "payments_created")
        for index in (*indexes, "inbox_kind", "events_kind"):
            conn.execute(f"DROP INDEX {index}")
        conn.execute("ALTER TABLE payments DROP COLUMN order_ref")
        conn.execute("ALTER TABLE inbox DROP COLUMN reason_code")
        conn.execute("DROP TABLE leases")
        conn.execute("DROP TABLE reconcile_checks")
        conn.execute(
            "DELETE FROM _sqlite_migrations"
            " WHERE name IN ('0002_views', '0003_followup', '0004_reason_code')"
        )
    finally:
        conn.close()


def journal_bytes(path: Path) -> tuple[int, int]:
    """The header's write/read format versions: (1, 1) rollback journal, (2, 2) WAL."""
    header = path.read_bytes()[:20]
    return header[18], header[19]


# ------------------------------------------------------------------ snapshots


def snapshot(directory: Path) -> dict[str, str]:
    """Every file of ``directory`` (not recursive) and the sha256 of its bytes."""
    out = {}
    for entry in sorted(directory.iterdir()):
        if entry.is_file():
            out[entry.name] = hashlib.sha256(entry.read_bytes()).hexdigest()
        else:
            out[entry.name] = "<dir>"
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------- commands


@attrs.frozen
class Command:
    """A command with the arguments it needs (``--db`` added by the caller)."""

    name: str
    args: tuple[str, ...]
    writes: bool

    @property
    def argv(self) -> list[str]:
        return [self.name, *self.args]


READS = (
    Command("show", ("show", "order-3"), False),
    Command("show --json", ("show", "chrg_test_4", "--json"), False),
    Command("list", ("list",), False),
    Command("list --stuck", ("list", "--stuck", "--json"), False),
    Command("anomalies", ("anomalies", "--json"), False),
    Command("stats", ("stats",), False),
    Command("export", ("export",), False),
    Command("export --format csv", ("export", "--format", "csv"), False),
    Command("checkpoint", ("checkpoint", "--json"), False),
    Command("verify", ("verify", "--json"), False),
    Command("replay --check", ("replay", "--check"), False),
)
WRITES = (
    Command("replay", ("replay",), True),
    Command("reconcile", ("reconcile", "--json"), True),
    Command(
        "pay",
        ("pay", "--payment-id", "hostile-1", "--amount", "5000", "--return-uri", "https://s.ex/r"),
        True,
    ),
    Command("demo", ("demo", "--offline"), True),
)


def argv(command: Command, db: Path | str) -> list[str]:
    return [*command.args, "--db", str(db)]


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    """Run the CLI in this process (click's runner), never catching into a pass."""
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=True)


def assert_no_traceback(res: Result) -> None:
    """The command ended by exiting (never an exception) and printed no traceback."""
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        detail = "".join(traceback.format_exception(res.exception))
        raise AssertionError(f"exception escaped: {detail}\noutput: {res.output}")
    assert "Traceback" not in res.output, res.output
    assert res.exit_code in DOCUMENTED, (res.exit_code, res.output)


# ---------------------------------------------------------- as another user


def shared_tmpdir() -> Path:
    """A temporary directory another user may enter (pytest's own is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="kplus-hostile-", dir="/tmp"))
    path.chmod(0o755)
    return path


def can_drop_root() -> str | None:
    """``None`` if tests can run commands as a user who is not root; else why not."""
    if os.geteuid() != 0:
        return None  # already not root: run directly
    if not hasattr(os, "fork") or not hasattr(os, "setuid"):
        return "no fork/setuid on this platform"
    return None


def as_nobody(work: Callable[[], Any]) -> Any:
    """
    Run ``work`` as the unprivileged user ``nobody`` (uid/gid 65534) in a forked
    child (this process's imports are reused: the interpreter's files may not be
    readable by that user) and return its JSON-able result. Already not root:
    run it here.
    """
    if os.geteuid() != 0:
        return work()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = json.dumps({"ok": work()})
        except BaseException as exc:  # report anything to the parent
            out = json.dumps({"error": "".join(traceback.format_exception(exc))})
            code = 1
        with os.fdopen(write, "w") as pipe:
            pipe.write(out)
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    result = json.loads(data)
    if "error" in result:
        raise AssertionError(f"the child failed:\n{result['error']}")
    return result["ok"]


def invoke_as_nobody(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the CLI as ``nobody``; its exit code, output and any escaped exception."""

    def work() -> dict[str, Any]:
        res = invoke(args, env=env)
        escaped = None
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            escaped = "".join(traceback.format_exception(res.exception))
        return {"exit_code": res.exit_code, "output": res.output, "exception": escaped}

    return dict(as_nobody(work))


def copy_to(master: Path, directory: Path, name: str = "kplus.db") -> Path:
    target = directory / name
    shutil.copyfile(master, target)
    return target
