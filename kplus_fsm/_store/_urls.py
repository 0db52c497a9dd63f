"""
Where the event log lives (:func:`kplus_fsm.open_store` opens it): a SQLite
file or a PostgreSQL server, chosen by one string, the same everywhere
(``Tracker(...)``, ``--db``, ``KPLUS_FSM_DB``):

- ``postgresql://user:password@host:5432/dbname?sslmode=require`` (or
  ``postgres://``): :class:`kplus_fsm.PostgresStore` (needs ``pip install
  'kplus-fsm[postgres]'``);
- ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, or a plain
  path: :class:`kplus_fsm.SQLiteStore`.

A PostgreSQL URL may carry a password: :func:`redact` is the only form of a
location that kplus_fsm ever prints, logs or puts in an error message.
"""

from __future__ import annotations

import os
import re
from typing import Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")
SQLITE_SCHEME: Final = "sqlite://"
_SECRET_PARAMS: Final = frozenset({"password", "passfile", "sslpassword"})


def is_postgres(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a PostgreSQL database (a ``postgresql://`` URL)."""
    return isinstance(location, str) and location.lower().startswith(POSTGRES_SCHEMES)


def sqlite_path(location: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """
    The file of a SQLite location: ``sqlite:///rel.db`` is ``rel.db``,
    ``sqlite:////abs.db`` is ``/abs.db``; a plain path is itself.

    Raises:
        ValueError: a ``sqlite://`` URL with a host (``sqlite://host/x.db``).
    """
    if not isinstance(location, str) or not location.lower().startswith(SQLITE_SCHEME):
        return location
    rest = location[len(SQLITE_SCHEME) :]
    if not rest.startswith("/"):
        raise ValueError(
            "a SQLite URL has three slashes before a relative path (sqlite:///kplus.db) "
            "and four before an absolute one (sqlite:////var/lib/kplus.db)"
        )
    path = rest[1:]
    if not path:
        raise ValueError("a SQLite URL needs a path: sqlite:///kplus.db")
    return path


def redact(location: str | os.PathLike[str]) -> str:
    """
    ``location`` as it may be shown: a URL's password (and ``password=`` query
    parameters) replaced by ``***``. Anything unparsable is shown as ``<db url>``
    rather than risk printing a secret.
    """
    text = os.fspath(location)
    if "://" not in text or (not secrets_of(text) and "@" not in text.split("/", 3)[2]):
        return text
    try:
        parts = urlsplit(text)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user, sep, _password = userinfo.partition(":")
            netloc = f"{user}{':***' if sep else ''}@{hostinfo}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs],
                quote_via=quote,
                safe="*",
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<db url>"


def secrets_of(location: str | os.PathLike[str]) -> list[str]:
    """The secret values a URL carries (to scrub them from driver messages)."""
    text = os.fspath(location)
    if "://" not in text:
        return []
    found: list[str] = []
    try:
        parts = urlsplit(text)
        if parts.password:
            found.append(parts.password)
            raw = parts.netloc.rpartition("@")[0].partition(":")[2]
            if raw and raw != parts.password:
                found.append(raw)
        found.extend(
            v
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if k.lower() in _SECRET_PARAMS and v
        )
    except ValueError:
        pass
    return found


def scrub(text: str, location: str | os.PathLike[str]) -> str:
    """``text`` with the location's secrets (and any URL password) replaced by ``***``."""
    for secret in sorted(secrets_of(location), key=len, reverse=True):
        text = text.replace(secret, "***")
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


__all__ = ["is_postgres", "redact", "scrub", "secrets_of", "sqlite_path"]
