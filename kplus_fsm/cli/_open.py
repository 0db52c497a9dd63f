"""
The one place where every ``kplus-fsm`` command opens its log.

Each command says what it needs (:class:`~kplus_fsm._store._classify.Access`: read,
create, or write an existing log); :func:`target` classifies the location
before anything is written and applies the policy table
(:data:`kplus_fsm._store._classify.POLICY`, printed in docs/cli.md): a refusal exits
4 with the reason and leaves the file as it was; a damaged log is opened for
reading and reported (exit 1); everything else is opened.

Invariants: no command opens a SQLite file for writing unless it was
classified missing, empty, or a kplus_fsm log of this or an older version on
writable storage; a read that meets damage exits 1 naming it, a read that
fails otherwise exits 4; no storage error reaches the user as a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from .._store import open_store
from .._store._classify import Access, Action, Classified, LogKind, classify, decide
from .._store._urls import is_postgres, redact, sqlite_path
from .._tracker import Tracker
from ..exceptions import DamagedLogError, IntegrityError, KplusFSMError, StoreError
from ..typing import SQLStore
from ._output import EXIT_PROBLEM, EXIT_STORE, EXIT_USAGE, fail

#: What a row that SQLite reads but kplus_fsm cannot decode raises (a damaged or
#: edited row): reported as damage, never as a traceback.
_UNDECODABLE = (IntegrityError, ValueError, KeyError, TypeError, IndexError)


def target(db: str, access: Access, *, report_unreadable: bool = True) -> Classified:
    """
    Classify ``db`` and apply the policy for ``access``: return what was found
    when the command may go on; otherwise print why and exit (4 refused; 1 a
    damaged log whose schema cannot even be read, unless ``report_unreadable``
    is false: ``verify`` reports that itself).
    """
    try:
        found = classify(db)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    decision = decide(found, access)
    if decision.action is Action.REFUSE:
        fail(decision.message, decision.exit_code or EXIT_STORE)
    if decision.action is Action.REPORT and not found.schema_readable and report_unreadable:
        fail(f"{decision.message}; nothing could be read", EXIT_PROBLEM)
    return found


def damage_exit(found: Classified) -> None:
    """After a command ran on a damaged log: say so, exit 1."""
    if found.kind is LogKind.DAMAGED:
        fail(f"{found.location} is damaged: {found.detail}; see kplus-fsm verify", EXIT_PROBLEM)


def open_reader(db: str, found: Classified) -> SQLStore:
    """The log at ``db`` opened read-only (already classified readable)."""
    try:
        return open_store(db, read_only=True)
    except ValueError as exc:  # a malformed sqlite:// URL
        fail(str(exc), EXIT_USAGE)
    except DamagedLogError as exc:
        fail(f"{found.location}: {exc}", EXIT_PROBLEM)
    except KplusFSMError as exc:
        fail(str(exc), EXIT_STORE)
    except OSError as exc:
        fail(f"cannot open {found.location}: {exc.strerror or exc}", EXIT_STORE)


@contextlib.contextmanager
def reading(db: str, found: Classified | None = None) -> Iterator[SQLStore]:
    """
    Open ``db`` read-only for the block. Damage met while reading exits 1
    (what was printed before stands), any other failed read exits 4; a log
    classified damaged exits 1 after the block even if nothing failed.
    """
    found = found if found is not None else target(db, Access.READ)
    store = open_reader(db, found)
    try:
        yield store
    except DamagedLogError as exc:
        fail(f"{found.location}: {exc}; see kplus-fsm verify", EXIT_PROBLEM)
    except StoreError as exc:
        fail(str(exc), EXIT_STORE)
    except _UNDECODABLE as exc:
        fail(
            f"{found.location}: a stored row cannot be decoded, the log is damaged or was "
            f"edited ({type(exc).__name__}: {exc}); see kplus-fsm verify",
            EXIT_PROBLEM,
        )
    finally:
        store.close()
    damage_exit(found)


def open_tracker(db: str, access: Access) -> Tracker:
    """A :class:`Tracker` writing to ``db`` (classified first; refusals exit 4)."""
    found = target(db, access)
    try:
        return Tracker(db)
    except ValueError as exc:  # a malformed sqlite:// URL
        fail(str(exc), EXIT_USAGE)
    except KplusFSMError as exc:
        fail(str(exc), EXIT_STORE)
    except OSError as exc:
        fail(f"cannot open {found.location}: {exc.strerror or exc}", EXIT_STORE)


def open_writer(db: str) -> SQLStore:
    """
    The log at ``db`` opened for writing (``replay`` without ``--check``),
    already classified an existing log; refusals exit 4.
    """
    try:
        return open_store(db)
    except ValueError as exc:  # a malformed sqlite:// URL
        fail(str(exc), EXIT_USAGE)
    except KplusFSMError as exc:
        fail(str(exc), EXIT_STORE)
    except OSError as exc:
        fail(f"cannot open {redact(db)}: {exc.strerror or exc}", EXIT_STORE)


def db_exists(db: str) -> bool:
    """Whether the log at ``db`` may exist: a SQLite file that exists, or any server URL."""
    if is_postgres(db):
        return True
    try:
        return Path(sqlite_path(db)).exists()
    except ValueError:
        return False


__all__ = [
    "damage_exit",
    "db_exists",
    "open_reader",
    "open_tracker",
    "open_writer",
    "reading",
    "target",
]
