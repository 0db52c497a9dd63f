"""
Property tests (Hypothesis) of issue 14, in process through click's runner:

- every command x every option x hostile values (huge, negative, zero,
  unicode, empty, NUL, very long, non-UTF-8 bytes): never a traceback, an exit
  code the command documents, and for a refused invocation (exit 2, or 4) the
  log byte for byte as it was (exit 2: nothing written anywhere);
- every command over spoiled log files (random pages overwritten, cut at a
  random length, another application's random schema, a random future
  version, random bytes, empty): a report or a clean refusal, never a
  traceback, never a write to a file the command refused, the read commands
  never a write at all, and ``verify`` always finding the damage.

Read-only storage needs a user who is not root: tests/test_hostile.py runs
every command that way. Examples are derandomized (the same every run) and
capped to keep the suite quick on two cores.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import attrs
import pytest
import structlog
from hostile_support import (
    assert_no_traceback,
    build_log,
    damage_pages,
    invoke,
    make_foreign,
    make_newer,
    snapshot,
    truncate,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kplus_fsm._store._classify import Access, Action, LogKind, classify, decide
from kplus_fsm.adapters import fake as fake_module
from kplus_fsm.adapters.fake import FakeOmise, start_server

SK, PK = "skey_test_hostile000000000000000", "pkey_test_hostile000000000000000"
PROPERTY = settings(
    max_examples=int(os.environ.get("KPLUS_HOSTILE_EXAMPLES", "200")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


#: Examples for each (command, option) pair.
PER_OPTION = settings(
    PROPERTY, max_examples=int(os.environ.get("KPLUS_HOSTILE_EXAMPLES_PER_OPTION", "12"))
)


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@attrs.frozen
class World:
    """What every example starts from: a log, another application's file, an API, a busy port."""

    log: Path
    foreign: Path
    api: dict[str, str]
    busy_port: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("hostile-world")
    log = base / "kplus.db"
    build_log(log, payments=12)
    foreign = base / "theirs.db"
    make_foreign(foreign)
    fake = FakeOmise(secret_key=SK, public_key=PK, seed=14)
    with (
        start_server(fake) as server,
        socket.socket() as busy,
    ):
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        api = {
            "OMISE_SECRET_KEY": SK,
            "OMISE_PUBLIC_KEY": PK,
            "OMISE_API_URL": server.url,
            "NO_PROXY": "127.0.0.1,localhost",
        }
        yield World(log=log, foreign=foreign, api=api, busy_port=busy.getsockname()[1])
    fake.close()


def _fake_omise_without_a_socket(host: str, port: int, **kwargs: Any) -> None:
    """``fake-omise``'s body minus the socket: builds the fake (its validation), then stops."""
    secret = kwargs.get("webhook_secret")
    FakeOmise(
        secret_key=kwargs["secret_key"],
        public_key=kwargs["public_key"],
        webhook_url=kwargs.get("webhook_url"),
        webhook_secrets=[secret] if secret else [],
        charge_lifetime=kwargs.get("charge_lifetime", dt.timedelta(minutes=10)),
    ).close()


# ------------------------------------------------------------ hostile values

SPECIAL = [
    "",
    " ",
    "0",
    "-0",
    "1",
    "-1",
    "65535",
    "65536",
    "70000",
    "99999999999999999999",
    "-99999999999999999999",
    str(10**22),
    str(2**63),
    "1e9",
    "0x10",
    "1.5",
    "NaN",
    "inf",
    " 5 ",
    "\x00",
    "a\x00b",
    "-800000d",
    "-99999999999d",
    "99999999999999999999h",
    "0999-06-01",
    "9999-12-31T23:59:59-05:00",
    "1000-01-01",
    "now",
    "-2h",
    "0.0.0.0",
    "::",
    "localhost",
    ".",
    "..",
    "/",
    "/dev/null",
    "/nonexistent/dir/file",
    "-",
    "--",
    "--json",
    "sqlite://host/x.db",
    "sqlite:///",
    "postgresql://u:pw@127.0.0.1:1/x",
    "{}",
    '{"inbox_id": 1e400}',
    "[" * 2000,
    "\u202e\u0663\u200b",
    "\ud83d\ude00" * 10,
]
HOSTILE = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.text(max_size=30),
    st.text(min_size=1, max_size=3).map(lambda s: s * 3000),  # very long
    st.binary(min_size=1, max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")),
)


@attrs.frozen
class Case:
    """A command, its minimal arguments, the options it takes a value for, its exit codes."""

    base: tuple[str, ...]
    options: tuple[str, ...]
    allowed: frozenset[int]
    reads_only: bool = False
    db: str = "log"  # the log, "foreign" (serve must never serve), or "none"


READ_EXITS = frozenset({0, 1, 2, 4})
CASES = [
    Case(("show", "order-3"), ("ARG", "--as-of", "--db"), READ_EXITS | {3}, reads_only=True),
    Case(("list",), ("--status", "--since", "--until", "--limit", "--db"), READ_EXITS, True),
    Case(("anomalies",), ("--since", "--limit", "--db"), READ_EXITS, True),
    Case(("stats",), ("--since", "--db"), READ_EXITS, True),
    Case(("export",), ("--since", "--format", "--output", "--db"), READ_EXITS, True),
    Case(("checkpoint",), ("--output", "--db"), READ_EXITS, True),
    Case(("verify",), ("--checkpoint", "--db"), READ_EXITS, True),
    Case(("replay", "--check"), ("--db",), READ_EXITS, True),
    Case(("replay",), ("--db",), frozenset({0, 1, 2, 4})),
    Case(
        ("pay", "--payment-id", "p-1", "--amount", "5000", "--return-uri", "https://s.ex/r"),
        ("--payment-id", "--amount", "--currency", "--platform-type", "--return-uri", "--db"),
        frozenset({0, 1, 2, 4}),
    ),
    Case(("reconcile",), ("--limit", "--pending-minutes", "--db"), frozenset({0, 1, 2, 4})),
    Case(("serve",), ("--host", "--port", "--db"), frozenset({2, 4}), db="foreign"),
    Case(
        ("fake-omise", "--secret-key", SK, "--public-key", PK),
        (
            "--host",
            "--port",
            "--secret-key",
            "--public-key",
            "--webhook-url",
            "--webhook-secret",
            "--charge-minutes",
        ),
        frozenset({0, 2, 4}),
        db="none",
    ),
    Case(("demo", "--offline"), ("--db",), frozenset({0, 2, 4})),
    Case(("migrate-log",), ("--from", "--to", "--batch"), frozenset({0, 1, 2, 4}), db="none"),
]
OPTION_CASES = [(case, option) for case in CASES for option in case.options]


def _argv(case: Case, option: str, value: str, log: Path, world: World, cwd: Path) -> list[str]:
    args = list(case.base)
    if option == "ARG":
        args[1] = value
    elif option in case.base:
        i = args.index(option)
        args[i + 1] = value
    else:
        args += [option, value]
    if case.base[0] == "serve" and option != "--port":
        args += ["--port", str(world.busy_port)]  # serve may open a log, never listen
    if case.base[0] == "migrate-log":
        if option != "--from":
            args += ["--from", str(log)]
        if option != "--to":
            args += ["--to", str(cwd / "moved.db")]
    if option != "--db" and case.db != "none":
        args += ["--db", str(world.foreign if case.db == "foreign" else log)]
    return args


@contextlib.contextmanager
def _sandbox(world: World) -> Iterator[tuple[Path, Path]]:
    """A fresh directory as the working directory, with a copy of the log in it."""
    with tempfile.TemporaryDirectory(prefix="kplus-prop-") as raw:
        cwd = Path(raw)
        log = cwd / "kplus.db"
        shutil.copyfile(world.log, log)
        with contextlib.chdir(cwd):
            yield cwd, log


@pytest.mark.parametrize("pick", OPTION_CASES, ids=[f"{c.base[0]} {o}" for c, o in OPTION_CASES])
@PER_OPTION
@given(value=HOSTILE)
def test_every_option_with_hostile_values(world: World, pick: tuple[Case, str], value: str) -> None:
    """Never a traceback; a documented exit code; a refused invocation wrote nothing."""
    case, option = pick
    foreign_before = snapshot(world.foreign.parent)
    with (
        _sandbox(world) as (cwd, log),
        mock.patch.object(fake_module, "run_server", _fake_omise_without_a_socket),
    ):
        before = snapshot(cwd)
        main = before["kplus.db"]
        res = invoke(_argv(case, option, value, log, world, cwd), env=world.api)
        assert_no_traceback(res)
        assert res.exit_code in case.allowed, (case.base, option, value[:60], res.output[-500:])
        after = snapshot(cwd)
        if res.exit_code == 2:
            assert after == before, (case.base, option, value[:60])
        if res.exit_code in (2, 4) or case.reads_only:
            assert after["kplus.db"] == main
    assert snapshot(world.foreign.parent) == foreign_before


# ------------------------------------------------------------ spoiled files


@attrs.frozen
class Spoil:
    """How a copy of the log is spoiled."""

    how: str
    pages: tuple[int, ...] = ()
    seed: int = 0
    length: int = 0
    tables: tuple[str, ...] = ()
    name: str = ""
    journal: str = "delete"
    data: bytes = b""

    def apply(self, path: Path) -> None:
        if self.how == "damage":
            damage_pages(path, list(self.pages), self.seed)
        elif self.how == "truncate":
            truncate(path, self.length)
        elif self.how == "foreign":
            path.unlink()
            make_foreign(path, list(self.tables), user_version=self.seed)
        elif self.how == "future":
            make_newer(path, self.name, journal=self.journal)
        elif self.how == "garbage":
            path.write_bytes(self.data)
        elif self.how == "empty":
            path.write_bytes(b"")


def _pages(path: Path) -> int:
    return path.stat().st_size // int.from_bytes(path.read_bytes()[16:18], "big")


IDENTIFIER = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
    min_size=1,
    max_size=12,
).filter(lambda n: not n.lower().startswith("sqlite_"))


@st.composite
def spoils(draw: st.DrawFn, pages: int, size: int) -> Spoil:
    how = draw(st.sampled_from(["damage", "truncate", "foreign", "future", "garbage", "empty"]))
    if how == "damage":
        chosen = draw(st.lists(st.integers(1, pages), min_size=1, max_size=3, unique=True))
        return Spoil(how, pages=tuple(chosen), seed=draw(st.integers(0, 2**32)))
    if how == "truncate":
        return Spoil(how, length=draw(st.integers(0, size - 1)))
    if how == "foreign":
        tables = draw(st.lists(IDENTIFIER, min_size=1, max_size=4, unique_by=str.lower))
        return Spoil(how, tables=tuple(tables), seed=draw(st.integers(0, 2**31 - 1)))
    if how == "future":
        name = draw(IDENTIFIER.filter(lambda n: n not in ("0001_initial", "0002_views")))
        return Spoil(how, name=name, journal=draw(st.sampled_from(["delete", "wal"])))
    if how == "garbage":
        return Spoil(how, data=draw(st.binary(min_size=1, max_size=4096)))
    return Spoil(how)


FILE_COMMANDS: list[tuple[tuple[str, ...], frozenset[int], bool]] = [
    (("show", "order-3"), frozenset({0, 1, 3, 4}), True),
    (("list", "--json"), frozenset({0, 1, 4}), True),
    (("anomalies",), frozenset({0, 1, 4}), True),
    (("stats", "--json"), frozenset({0, 1, 4}), True),
    (("export",), frozenset({0, 1, 4}), True),
    (("export", "--format", "csv", "--output", "out.csv"), frozenset({0, 1, 4}), True),
    (("checkpoint", "--output", "cp.json"), frozenset({0, 1, 4}), True),
    (("verify", "--json"), frozenset({1, 4}), True),
    (("replay", "--check"), frozenset({0, 1, 4}), True),
    (("replay",), frozenset({0, 1, 4}), False),
    (("reconcile",), frozenset({0, 1, 4}), False),
    (
        ("pay", "--payment-id", "p-2", "--amount", "5000", "--return-uri", "https://s.ex/r"),
        frozenset({0, 1, 4}),
        False,
    ),
    (("serve",), frozenset({4}), False),
    (("demo", "--offline"), frozenset({0, 4}), False),
    (("migrate-log", "--to", "moved.db", "--from"), frozenset({0, 1, 4}), True),
]


@pytest.fixture(scope="module")
def shape(world: World) -> tuple[int, int]:
    return _pages(world.log), world.log.stat().st_size


@PROPERTY
@given(data=st.data(), pick=st.sampled_from(FILE_COMMANDS))
def test_every_command_over_spoiled_files(
    world: World, shape: tuple[int, int], data: st.DataObject, pick: Any
) -> None:
    """A report or a clean refusal; nothing written to a refused file; reads write nothing."""
    args, allowed, reads_only = pick
    spoil = data.draw(spoils(*shape), label="spoil")
    with _sandbox(world) as (cwd, log):
        spoil.apply(log)
        before = snapshot(cwd)
        found = classify(str(log))
        assert snapshot(cwd) == before  # classifying writes nothing
        access = Access.READ if reads_only else Access.CREATE
        refused = decide(found, access).action is Action.REFUSE
        argv = [*args, str(log)] if args[0] == "migrate-log" else [*args, "--db", str(log)]
        if args[0] == "serve":
            argv += ["--port", str(world.busy_port)]
        res = invoke(argv, env=world.api)
        assert_no_traceback(res)
        assert res.exit_code in allowed, (spoil.how, found.kind, args, res.output[-600:])
        after = snapshot(cwd)
        if refused:
            assert res.exit_code == 4, (spoil.how, found.kind, args, res.output[-300:])
            assert after == before  # not a byte, not a file beside it
        if reads_only:
            assert after.get("kplus.db") == before.get("kplus.db")
        if args[0] == "verify" and spoil.how in ("damage", "truncate"):
            assert res.exit_code in (1, 4)  # the damage is always found
        if found.kind is LogKind.DAMAGED and reads_only:
            assert res.exit_code in (1, 3, 4)  # the damage is said, whatever could be read


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_classify_never_writes(world: World, shape: tuple[int, int], data: st.DataObject) -> None:
    """Whatever the file, classifying it leaves the directory exactly as it was."""
    spoil = data.draw(spoils(*shape))
    with _sandbox(world) as (cwd, log):
        spoil.apply(log)
        before = snapshot(cwd)
        found = classify(str(log))
        assert found.detail
        assert snapshot(cwd) == before
        if spoil.how == "foreign":
            assert found.kind in (LogKind.FOREIGN, LogKind.EMPTY)
        if spoil.how == "future":
            assert found.kind is LogKind.NEWER
        if spoil.how == "empty":
            assert found.kind is LogKind.EMPTY
        with contextlib.suppress(sqlite3.Error):  # what SQLite itself says, for the record
            sqlite3.connect(f"file:{log}?immutable=1", uri=True).close()
