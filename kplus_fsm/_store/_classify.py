"""
What a log location holds, found before anything is written to it, and what
each kind of command does with each kind of target.

:func:`classify` looks at a ``--db`` location and names what is there (a
:class:`LogKind`): nothing, an empty file, a kplus_fsm log of this, an older or
a newer version, another application's SQLite database, a file that is not
SQLite, a damaged one, one that cannot be read, or a PostgreSQL server. It also
says whether the storage can be written (file, directory, read-only mount).
:data:`POLICY` is the table the command line applies (docs/cli.md prints the
same table; a test checks both against a hand-written copy): for each kind and
each :class:`Access` (read, create, write), the :class:`Action` and the exit
code of a refusal.

Invariants:

- :func:`classify` writes nothing: no byte of the file, no file beside it. It
  reads the 100-byte header with plain file I/O, then opens SQLite with
  ``immutable=1`` (no locks, no ``-wal``/``-shm`` created). Only when a
  non-empty ``-wal`` or a ``-journal`` lies beside the file (a live or crashed
  writer: the file alone is not the whole log) does it open with ``mode=ro``,
  the normal reader's protocol, which reads the ``-wal``.
- Creating a log is for a missing file or an empty one (0 bytes, or a SQLite
  database with nothing in it) only; anything else that is not a kplus_fsm log
  is refused, byte for byte untouched.
- A read on read-only storage (a directory that cannot be written, a read-only
  mount) opens with ``immutable=1`` when no ``-wal`` holds pending writes
  (:func:`read_only_uri`): SQLite then takes no locks and reads the file as it
  is, which is exact because nothing can write there. With pending writes in a
  ``-wal`` it opens with ``mode=ro`` (which needs the ``-shm``); never
  ``immutable``, which would silently skip them.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import stat
import urllib.parse
from pathlib import Path
from typing import Final

import attrs

from . import _schema_sqlite as _schema
from ._urls import is_postgres, redact, sqlite_path

#: The first 16 bytes of every SQLite database file.
SQLITE_MAGIC: Final = b"SQLite format 3\x00"
HEADER_BYTES: Final = 100
#: The first 8 bytes of a rollback journal with a transaction in it.
JOURNAL_MAGIC: Final = bytes.fromhex("d9d505f920a163d7")
#: The tables a kplus_fsm log cannot be without.
LOG_TABLES: Final = frozenset({"inbox", "events", "payments", "consumers"})

#: The migrations this version knows, in the order they apply.
KNOWN_ORDER: Final = _schema.NAMES
#: SQLite result codes (``sqlite3.Error.sqlite_errorname``) meaning the file is damaged.
_DAMAGE_CODES: Final = ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_IOERR_SHORT_READ")


class LogKind(enum.StrEnum):
    """What a log location holds."""

    MISSING = "missing"
    """Nothing at the path; its directory exists."""
    NO_DIRECTORY = "no_directory"
    """The directory the file would be in does not exist (or is not a directory)."""
    EMPTY = "empty"
    """A 0-byte file, or a SQLite database with nothing in it."""
    CURRENT = "current"
    """A kplus_fsm log with every schema migration this version knows."""
    OLDER = "older"
    """A kplus_fsm log written by an older version (migrations pending)."""
    NEWER = "newer"
    """A kplus_fsm log with migrations this version does not know."""
    FOREIGN = "foreign"
    """A SQLite database with something in it, but no kplus_fsm log."""
    NOT_SQLITE = "not_sqlite"
    """A file that is not a SQLite database."""
    DAMAGED = "damaged"
    """A SQLite file cut short, with an unreadable schema, or a log missing tables."""
    UNREADABLE = "unreadable"
    """Cannot be read at all: permissions, a directory, pending writes on read-only storage."""
    SERVER = "server"
    """A ``postgresql://`` URL: the PostgreSQL store checks the database when it connects."""


class Access(enum.StrEnum):
    """What a command needs of the log."""

    READ = "read"
    """Reads only: show, list, anomalies, stats, export, checkpoint, verify,
    replay --check, migrate-log's source."""
    CREATE = "create"
    """Writes, and may create the log: pay, serve, demo, migrate-log's target."""
    WRITE = "write"
    """Writes to an existing log only: reconcile, replay (repair)."""


class Action(enum.StrEnum):
    """What a command does with a target."""

    READ = "read"
    """Open read-only (``immutable`` on read-only storage) and run."""
    CREATE = "create"
    """Create the log (owner-only file, WAL), then run."""
    WRITE = "write"
    """Open for writing and run."""
    MIGRATE = "migrate"
    """Apply the pending schema migrations, then run."""
    REPORT = "report"
    """Read what can be read, report where the damage stops, exit 1."""
    REFUSE = "refuse"
    """Change nothing; exit 4 with the reason."""


@attrs.frozen(kw_only=True)
class Classified:
    """
    What :func:`classify` found at a location.

    ``writable`` is whether a writer could write there (the file and its
    directory writable, the file system not mounted read-only), and
    ``read_only_reason`` says why not. ``pending_wal`` is true when a non-empty
    ``-wal`` lies beside the file (a live log, or writes not yet checkpointed).
    """

    location: str
    kind: LogKind
    detail: str
    path: Path | None = None
    writable: bool = True
    read_only_reason: str | None = None
    pending_wal: bool = False
    journal: str | None = None
    schema_version: str | None = None
    schema_readable: bool = False

    @property
    def read_only_storage(self) -> bool:
        return not self.writable


@attrs.frozen(kw_only=True)
class Decision:
    """What a command does with a classified target (a row of :data:`POLICY`)."""

    action: Action
    exit_code: int | None = None
    message: str = ""


# ------------------------------------------------------------------ the policy

_REFUSE: Final = Action.REFUSE
#: kind -> access -> action: the table of docs/cli.md. A write to read-only
#: storage is refused whatever this says (:func:`decide`).
POLICY: Final[dict[LogKind, dict[Access, Action]]] = {
    LogKind.MISSING: {Access.READ: _REFUSE, Access.CREATE: Action.CREATE, Access.WRITE: _REFUSE},
    LogKind.NO_DIRECTORY: {Access.READ: _REFUSE, Access.CREATE: _REFUSE, Access.WRITE: _REFUSE},
    LogKind.EMPTY: {Access.READ: _REFUSE, Access.CREATE: Action.CREATE, Access.WRITE: _REFUSE},
    LogKind.CURRENT: {
        Access.READ: Action.READ,
        Access.CREATE: Action.WRITE,
        Access.WRITE: Action.WRITE,
    },
    LogKind.OLDER: {
        Access.READ: Action.READ,
        Access.CREATE: Action.MIGRATE,
        Access.WRITE: Action.MIGRATE,
    },
    LogKind.NEWER: {Access.READ: _REFUSE, Access.CREATE: _REFUSE, Access.WRITE: _REFUSE},
    LogKind.FOREIGN: {Access.READ: _REFUSE, Access.CREATE: _REFUSE, Access.WRITE: _REFUSE},
    LogKind.NOT_SQLITE: {Access.READ: _REFUSE, Access.CREATE: _REFUSE, Access.WRITE: _REFUSE},
    LogKind.DAMAGED: {Access.READ: Action.REPORT, Access.CREATE: _REFUSE, Access.WRITE: _REFUSE},
    LogKind.UNREADABLE: {Access.READ: _REFUSE, Access.CREATE: _REFUSE, Access.WRITE: _REFUSE},
    LogKind.SERVER: {
        Access.READ: Action.READ,
        Access.CREATE: Action.WRITE,
        Access.WRITE: Action.WRITE,
    },
}

#: The exit code of each outcome that stops a command before it runs.
EXIT_REFUSED: Final = 4
EXIT_DAMAGED: Final = 1


def decide(found: Classified, access: Access) -> Decision:
    """
    What a command needing ``access`` does with ``found``: the :data:`POLICY`
    cell, and a refusal (exit 4) for any write to read-only storage.
    """
    action = POLICY[found.kind][access]
    where = found.location
    if action is Action.REFUSE:
        return Decision(action=action, exit_code=EXIT_REFUSED, message=_refusal(found, access))
    if action is Action.REPORT:
        return Decision(
            action=action, exit_code=EXIT_DAMAGED, message=f"{where} is damaged: {found.detail}"
        )
    if access is not Access.READ and not found.writable:
        verb = "create the event log" if action is Action.CREATE else "write to the event log"
        return Decision(
            action=Action.REFUSE,
            exit_code=EXIT_REFUSED,
            message=f"cannot {verb} at {where}: {found.read_only_reason}; nothing was written",
        )
    return Decision(action=action)


def _refusal(found: Classified, access: Access) -> str:
    where, detail = found.location, found.detail
    if found.kind in (LogKind.MISSING, LogKind.EMPTY) and access is not Access.CREATE:
        if found.kind is LogKind.MISSING:
            return f"no database at {where}"
        return f"no event log at {where}: {detail}"
    if found.kind is LogKind.NO_DIRECTORY:
        if access is Access.CREATE:
            return f"cannot create the event log at {where}: {detail}"
        return f"no database at {where}: {detail}"
    if found.kind is LogKind.NEWER:
        return f"{where}: {detail}; nothing was written"
    if access is Access.READ:
        return f"{where}: {detail}"
    return f"{where} is left untouched: {detail}"


# ------------------------------------------------------------------- classify


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether SQLite's error says the file is damaged (corrupt, not a database, cut short)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(_DAMAGE_CODES):
        return True
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "decode to utf-8" in text


def _directory(path: Path) -> tuple[bool, str | None]:
    """Whether this process may create files beside ``path`` (and if not, why)."""
    directory = path.parent
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return False, f"{directory} is on a read-only file system"
    except OSError:
        pass
    if not os.access(directory, os.W_OK | os.X_OK):
        return False, f"the directory {directory} is not writable"
    return True, None


def _storage(path: Path) -> tuple[bool, str | None]:
    """Whether this process could write the log at ``path`` (and if not, why)."""
    writable, why = _directory(path)
    if writable and path.exists() and not os.access(path, os.W_OK):
        return False, f"the file {path} is not writable"
    return writable, why


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def pending_wal(path: Path) -> bool:
    """Whether a non-empty ``-wal`` lies beside ``path`` (writes not yet in the file)."""
    return _size(_sibling(path, "-wal")) > 0


def _hot_journal(path: Path) -> bool:
    return _size(_sibling(path, "-journal")) > 0


def _journal_start(path: Path) -> int | None:
    """
    The database's size in pages when the transaction of a hot ``-journal``
    began (what a rollback restores), or ``None`` without a valid one.
    """
    try:
        with open(_sibling(path, "-journal"), "rb") as fh:
            header = fh.read(28)
    except OSError:
        return None
    if len(header) < 28 or header[:8] != JOURNAL_MAGIC:
        return None
    return int.from_bytes(header[16:20], "big")


def uri(path: Path, *, immutable: bool) -> str:
    """A read-only SQLite URI for ``path`` (any character in the name escaped)."""
    quoted = urllib.parse.quote(os.fsencode(os.path.abspath(path)))
    return f"file:{quoted}?mode=ro" + ("&immutable=1" if immutable else "")


def read_only_uri(path: Path) -> str:
    """
    The URI a reader opens ``path`` with: ``mode=ro``, plus ``immutable=1`` when
    this process cannot create files beside it (a directory it cannot write, a
    read-only mount) and no ``-wal`` holds pending writes: SQLite would
    otherwise need to create the ``-shm`` there. A file that is only
    write-protected itself, in a directory this process can write, is read
    with ``mode=ro`` (its owner may still be writing it).
    """
    can_create, _ = _directory(path)
    return uri(path, immutable=not can_create and not pending_wal(path))


def _header_problem(header: bytes, size: int, *, check_length: bool) -> str | None:
    """Why a SQLite header (``header`` starts with the magic) is damaged, or ``None``."""
    if len(header) < HEADER_BYTES:
        return f"cut short: {size} bytes, less than a SQLite header"
    raw = int.from_bytes(header[16:18], "big")
    page_size = 65536 if raw == 1 else raw
    if page_size < 512 or page_size & (page_size - 1):
        return f"the header's page size ({raw}) is not a SQLite page size"
    if header[18] not in (1, 2) or header[19] not in (1, 2):
        return "the header's file format bytes are not SQLite's"
    pages = int.from_bytes(header[28:32], "big")
    valid = pages > 0 and header[24:28] == header[92:96]
    if check_length and valid and size < pages * page_size:
        return (
            f"cut short: the header says {pages} pages of {page_size} bytes "
            f"({pages * page_size} bytes), the file has {size}"
        )
    if check_length and size % page_size:
        return f"cut short: {size} bytes is not a whole number of {page_size}-byte pages"
    return None


def _shown_tables(names: list[str]) -> str:
    listed = ", ".join(sorted(names)[:5])
    return listed + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def classify(location: str | os.PathLike[str]) -> Classified:
    """
    What ``location`` holds, found without writing anything (see the module's
    invariants).

    Raises:
        ValueError: a malformed ``sqlite://`` URL, or a path holding a NUL.
    """
    shown = redact(location)
    if is_postgres(location):
        return Classified(
            location=shown,
            kind=LogKind.SERVER,
            detail="a PostgreSQL database (its store checks it when connecting)",
        )
    raw = os.fspath(sqlite_path(location))
    if not raw or "\x00" in raw:
        raise ValueError(f"not a usable file name: {raw!r}")
    path = Path(raw)
    base = Classified(location=shown, kind=LogKind.MISSING, detail="no such file", path=path)
    directory = path.parent
    try:
        is_dir = directory.is_dir()
    except OSError as exc:  # a name too long, a loop of links
        return attrs.evolve(base, kind=LogKind.UNREADABLE, detail=exc.strerror or str(exc))
    if not is_dir:
        what = "does not exist" if not directory.exists() else "is not a directory"
        return attrs.evolve(base, kind=LogKind.NO_DIRECTORY, detail=f"{directory} {what}")
    writable, why = _storage(path)
    base = attrs.evolve(base, writable=writable, read_only_reason=why)
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            return attrs.evolve(base, kind=LogKind.UNREADABLE, detail="a directory, not a file")
        if not stat.S_ISREG(mode):  # a FIFO would block, a device is nobody's log
            return attrs.evolve(
                base, kind=LogKind.UNREADABLE, detail="not a regular file (a device or a FIFO)"
            )
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            header = fh.read(HEADER_BYTES)
    except FileNotFoundError:
        return base
    except OSError as exc:
        return attrs.evolve(
            base, kind=LogKind.UNREADABLE, detail=f"cannot be read ({exc.strerror or exc})"
        )
    wal = pending_wal(path)
    if size == 0 and not wal:
        return attrs.evolve(base, kind=LogKind.EMPTY, detail="an empty file")
    if _journal_start(path) == 0:
        # A writer died in the first transaction of a new file (creating it, or
        # switching it to WAL): rolling its -journal back leaves the file empty.
        return attrs.evolve(
            base,
            kind=LogKind.EMPTY,
            detail="an empty file whose creation was cut short (the next writer rolls "
            "back its -journal)",
        )
    if size and not header.startswith(SQLITE_MAGIC):
        return attrs.evolve(base, kind=LogKind.NOT_SQLITE, detail="not a SQLite database")
    base = attrs.evolve(base, pending_wal=wal, journal=_journal(header))
    if size:
        problem = _header_problem(header, size, check_length=not wal)
        if problem is not None:
            return attrs.evolve(base, kind=LogKind.DAMAGED, detail=problem)
    return _classify_schema(path, base, live=wal or _hot_journal(path))


def _journal(header: bytes) -> str | None:
    if len(header) < 20 or not header.startswith(SQLITE_MAGIC):
        return None
    return "wal" if header[18] == 2 else "rollback"


def _classify_schema(path: Path, base: Classified, *, live: bool) -> Classified:
    """Open ``path`` read-only (``immutable`` unless ``live``) and read its schema."""
    try:
        conn = sqlite3.connect(
            uri(path, immutable=not live), uri=True, isolation_level=None, timeout=10.0
        )
    except sqlite3.Error as exc:
        return _schema_error(base, exc)
    try:
        try:
            objects = conn.execute("SELECT type, name FROM sqlite_master").fetchall()
            user_version = conn.execute("PRAGMA user_version").fetchone()[0]
            application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        except sqlite3.Error as exc:
            return _schema_error(base, exc)
        tables = [str(name) for kind, name in objects if kind == "table"]
        if not objects:
            if user_version == 0 and application_id == 0:
                return attrs.evolve(
                    base, kind=LogKind.EMPTY, detail="a SQLite database with nothing in it"
                )
            return attrs.evolve(
                base,
                kind=LogKind.FOREIGN,
                schema_readable=True,
                detail="not a kplus_fsm event log (an empty schema, but another "
                f"application's ids: user_version {user_version}, "
                f"application_id {application_id})",
            )
        applied: list[str] = []
        if "_sqlite_migrations" in tables:
            try:
                applied = [
                    str(r[0])
                    for r in conn.execute(
                        "SELECT name FROM _sqlite_migrations WHERE migration_set = ? "
                        "ORDER BY rowid",
                        (_schema.MIGRATION_SET,),
                    )
                ]
            except sqlite3.Error as exc:
                if is_damage(exc):
                    return _schema_error(base, exc)
                applied = []
        return _kind_of(base, tables, applied)
    finally:
        conn.close()


def _kind_of(base: Classified, tables: list[str], applied: list[str]) -> Classified:
    version = applied[-1] if applied else None
    if not applied:
        return attrs.evolve(
            base,
            kind=LogKind.FOREIGN,
            schema_readable=True,
            detail=f"not a kplus_fsm event log (its tables: {_shown_tables(tables) or 'none'})",
        )
    unknown = [name for name in applied if name not in _schema.KNOWN]
    if unknown:
        return attrs.evolve(
            base,
            kind=LogKind.NEWER,
            schema_readable=True,
            schema_version=version,
            detail="written by a newer kplus_fsm: it has schema migrations "
            f"{', '.join(unknown)} that this version does not know; upgrade kplus_fsm "
            "to read or write it",
        )
    missing = sorted(LOG_TABLES - set(tables))
    if missing:
        return attrs.evolve(
            base,
            kind=LogKind.DAMAGED,
            schema_readable=True,
            schema_version=version,
            detail=f"a kplus_fsm log without its tables {', '.join(missing)}",
        )
    pending = [name for name in KNOWN_ORDER if name not in applied]
    if pending:
        return attrs.evolve(
            base,
            kind=LogKind.OLDER,
            schema_readable=True,
            schema_version=version,
            detail=f"a kplus_fsm log of schema {version} (this version adds {', '.join(pending)})",
        )
    return attrs.evolve(
        base,
        kind=LogKind.CURRENT,
        schema_readable=True,
        schema_version=version,
        detail=f"a kplus_fsm log of schema {version}",
    )


def _schema_error(base: Classified, exc: sqlite3.Error) -> Classified:
    if is_damage(exc):
        return attrs.evolve(base, kind=LogKind.DAMAGED, detail=f"the schema cannot be read ({exc})")
    reason = str(exc)
    if base.pending_wal and not base.writable:
        reason = (
            f"writes still in its -wal cannot be read on read-only storage ({exc}); "
            "copy the file with its -wal and -shm to writable storage, or open it once "
            "where it can be written"
        )
    return attrs.evolve(base, kind=LogKind.UNREADABLE, detail=f"cannot be read: {reason}")


__all__ = [
    "POLICY",
    "Access",
    "Action",
    "Classified",
    "Decision",
    "LogKind",
    "classify",
    "decide",
    "is_damage",
    "pending_wal",
    "read_only_uri",
    "uri",
]
