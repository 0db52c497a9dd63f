"""
Open the event log at a location: a ``postgresql://`` URL or a SQLite file
(see :mod:`kplus_fsm._store._urls` for the forms a location takes).
"""

from __future__ import annotations

import os

from ..typing import SQLStore
from ._urls import is_postgres, sqlite_path
from .sqlite import SQLiteStore


def open_store(
    location: str | os.PathLike[str],
    *,
    read_only: bool = False,
    synchronous: str = "FULL",
) -> SQLStore:
    """
    Open the event log at ``location``: a ``postgresql://`` URL (a
    :class:`~kplus_fsm.PostgresStore`), a ``sqlite:///`` URL or a file path (a
    :class:`~kplus_fsm.SQLiteStore`). ``read_only`` opens a SQLite file with
    ``mode=ro`` and ``query_only``, and runs every PostgreSQL transaction read-only
    (``default_transaction_read_only``); neither applies migrations.
    ``synchronous`` is SQLite's durability level (PostgreSQL's is the server's
    ``synchronous_commit``).

    Raises:
        PostgresUnavailableError: a PostgreSQL URL without psycopg installed.
        SchemaVersionError: the log was written by a newer kplus_fsm (or, read
            only, is not a kplus_fsm log).
        StoreError: the log cannot be opened.
        ValueError: a malformed ``sqlite://`` URL or ``synchronous`` level.
    """
    if is_postgres(location):
        # Imported here: a command reading a SQLite log never loads the
        # PostgreSQL store (start-up time, docs/performance.md).
        from .postgres import PostgresStore  # noqa: PLC0415

        return PostgresStore(str(location), read_only=read_only)
    return SQLiteStore(
        sqlite_path(location),
        read_only=read_only,
        synchronous=synchronous,  # type: ignore[arg-type]
    )


__all__ = ["open_store"]
