"""
A PostgreSQL server for the tests, and a fresh database for each test.

Where the server comes from, in order:

1. ``$KPLUS_FSM_TEST_PG``: a ``postgresql://`` URL of a role that may
   ``CREATE DATABASE`` (each test gets a database of its own, dropped after);
2. the PostgreSQL server binaries (``initdb``, ``pg_ctl`` on ``PATH`` or in
   ``/usr/lib/postgresql/*/bin``): a throwaway cluster in a temporary directory,
   listening on 127.0.0.1 on a free port, trust authentication, for the session
   (run as the ``postgres`` user when the tests run as root: initdb refuses root);
3. neither: the PostgreSQL tests skip, saying so. With ``KPLUS_FSM_REQUIRE_PG=1``
   (CI) they fail instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

SKIP_MESSAGE = "no PostgreSQL server: set KPLUS_FSM_TEST_PG or install postgresql"


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    )
    for candidate in reversed(candidates):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user() -> tuple[list[str], int | None, int | None]:
    """The command prefix (and uid, gid) to run the server as: root may not."""
    if os.geteuid() != 0:
        return [], None, None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        runuser = shutil.which("runuser")
        if runuser:
            return [runuser, "-u", name, "--"], entry.pw_uid, entry.pw_gid
        setpriv = shutil.which("setpriv")
        if setpriv:
            return (
                [
                    setpriv,
                    f"--reuid={entry.pw_uid}",
                    f"--regid={entry.pw_gid}",
                    "--clear-groups",
                ],
                entry.pw_uid,
                entry.pw_gid,
            )
    raise RuntimeError("running as root with no postgres/nobody user to run PostgreSQL as")


class Cluster:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) on 127.0.0.1."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.prefix, uid, gid = _as_server_user()
        self.root = Path(tempfile.mkdtemp(prefix="kplus-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if uid is not None and gid is not None:
            os.chown(self.root, uid, gid)
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        done = subprocess.run(
            [*self.prefix, *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            cwd=self.root,
            timeout=120,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip()} {log}"
            )

    def start(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        )
        self.restart()

    def restart(self) -> None:
        """Start the server on the cluster's data (after :meth:`crash`: crash recovery)."""
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} "
            f"-c unix_socket_directories={self.root} -c max_connections=100"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "start",
        )

    def crash(self) -> None:
        """Stop the server as a power cut would: ``immediate`` (no checkpoint, no flush)."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def with_database(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` instead."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{dbname}", parts.query, parts.fragment))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The URL of a PostgreSQL database on a server where the tests may create databases."""
    url = os.environ.get("KPLUS_FSM_TEST_PG")
    if url:
        yield url
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'kplus-fsm[postgres]'")
    bin_dir = _bin_dir()
    if bin_dir is None:
        if os.environ.get("KPLUS_FSM_REQUIRE_PG"):
            pytest.fail(SKIP_MESSAGE + " (KPLUS_FSM_REQUIRE_PG is set)")
        pytest.skip(SKIP_MESSAGE)
    cluster = Cluster(bin_dir)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database for one test (dropped afterwards)."""
    import psycopg

    name = f"kplus_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(pg_server, name)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
