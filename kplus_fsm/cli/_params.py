"""
The click parameter types of ``kplus-fsm``: one per kind of value, each with
its bounds, used by every command so that every command validates the same way;
and the options several commands share (``--db``, ``--json``, ``--since``).

=========  ==================================================  ===================
type       accepts                                             bounds
=========  ==================================================  ===================
TIME       ISO-8601, ``now``, or a time ago (``-2h``)          years 1000 to 9999
LIMIT      a whole number (ASCII digits)                        per option (1..)
MINUTES    a whole number of minutes                            per option
PORT       a TCP port                                           0 to 65535 (0: any free port)
HOST       an IP address or a host name                         not empty, 253 characters
ID         a payment id or a charge id                          1 to 255 printable characters
DB         a SQLite path, ``sqlite:///`` or ``postgresql://``   not empty, no NUL, 4096 characters
OUTPUT     a file to write (``-``: stdout)                      its directory must exist
CHECKPOINT a checkpoint file or its JSON                        ids below 2**63
=========  ==================================================  ===================

Invariants: a value out of its bounds is a usage error (``click.BadParameter``,
exit 2) raised while click parses the command line, before any file is opened;
the message names the bound and never echoes more than a few dozen characters
of what was given (a NUL, a megabyte of text); a URL's password is never shown.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import click

from .._store._urls import is_postgres, redact, sqlite_path
from .._time import utc_now
from . import _queries

if TYPE_CHECKING:
    _Param = click.ParamType[Any, Any]
else:  # click < 8.2 has no type parameters
    _Param = click.ParamType

#: The longest value echoed back in a message.
_ECHO: Final = 40
_INTEGER: Final = re.compile(r"[+-]?[0-9]{1,30}")
#: A host name's label (RFC 1123; ``_`` too, as container and service names use it).
_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
#: The longest --db location (Linux's PATH_MAX).
MAX_LOCATION: Final = 4096
MAX_ID: Final = 255
#: Addresses that listen on every interface.
ALL_INTERFACES: Final = frozenset({"0.0.0.0", "::"})  # noqa: S104 - named, not used to bind


def quoted(value: object, limit: int = _ECHO) -> str:
    """``value`` as a message may show it: repr, cut to ``limit`` characters."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


class TimeParam(_Param):
    """ISO-8601, ``now``, or a time ago (``-30m``, ``-2h``, ``-7d``), as the stored string."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not isinstance(value, str):
            self.fail(f"not a time: {quoted(value)}", param, ctx)
        try:
            return _queries.parse_when(value, now=utc_now())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class LimitParam(_Param):
    """A whole number from ``low`` to ``high`` (ASCII digits; no float, no exponent)."""

    name = "N"

    def __init__(self, low: int, high: int, *, unit: str = "") -> None:
        self.min = low
        self.max = high
        self.unit = unit

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            text = str(value).strip()
            if not _INTEGER.fullmatch(text):
                self.fail(
                    f"{quoted(value)} is not a whole number from {self.min} to {self.max}",
                    param,
                    ctx,
                )
            number = int(text)
        if not self.min <= number <= self.max:
            unit = f" {self.unit}" if self.unit else ""
            self.fail(
                f"{quoted(number)} is out of bounds: from {self.min} to {self.max}{unit}",
                param,
                ctx,
            )
        return number


class MinutesParam(LimitParam):
    """A duration in whole minutes, from ``low`` to ``high``."""

    name = "MINUTES"

    def __init__(self, low: int, high: int) -> None:
        super().__init__(low, high, unit="minutes")


class PortParam(LimitParam):
    """A TCP port: 1 to 65535, or 0 for any free port (the one chosen is printed)."""

    name = "PORT"

    def __init__(self) -> None:
        super().__init__(0, 65535)


class HostParam(_Param):
    """
    An IP address or a host name to listen on. Empty is refused: it would listen
    on every interface without saying so; ``0.0.0.0`` (or ``::``) says it, and
    gets a warning on stderr.
    """

    name = "HOST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not text.strip():
            self.fail(
                "an empty host would listen on every interface; to mean that, say it: "
                "--host 0.0.0.0 (or --host ::)",
                param,
                ctx,
            )
        if len(text) > 253:
            self.fail(f"{quoted(text)} is longer than a host name (253 characters)", param, ctx)
        try:
            address = str(ipaddress.ip_address(text.strip("[]")))
        except ValueError:
            address = None
        if address is not None:
            if address in ALL_INTERFACES:
                click.echo(
                    f"kplus-fsm: WARNING: --host {address} listens on every network "
                    "interface; only do this behind a firewall or a TLS proxy",
                    err=True,
                )
            return address
        labels = text.rstrip(".").split(".")
        if not all(_LABEL.fullmatch(label) for label in labels):
            self.fail(f"{quoted(text)} is neither an IP address nor a host name", param, ctx)
        return text


class IdParam(_Param):
    """A payment id or a charge id: 1 to 255 printable characters."""

    name = "ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not text or len(text) > MAX_ID:
            self.fail(f"{quoted(text)} is not an id (1 to {MAX_ID} characters)", param, ctx)
        if not text.isprintable() or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            self.fail(f"{quoted(text)} is not an id (printable characters only)", param, ctx)
        return text


class DbParam(_Param):
    """A log location: a SQLite path, ``sqlite:///path``, or a ``postgresql://`` URL."""

    name = "PATH|URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        if not text:
            self.fail("an empty location: give a SQLite file or a postgresql:// URL", param, ctx)
        if "\x00" in text:
            self.fail(f"{quoted(redact(text))} holds a NUL character", param, ctx)
        if len(text) > MAX_LOCATION:
            self.fail(f"longer than {MAX_LOCATION} characters: {quoted(text)}", param, ctx)
        if is_postgres(text):
            return text
        try:
            path = os.fspath(sqlite_path(text))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if problem := _path_problem(Path(path)):
            self.fail(f"{quoted(text)}: {problem}", param, ctx)
        return text


def _path_problem(path: Path) -> str | None:
    """Why no file system here can hold ``path`` (unencodable, a name over 255 bytes), if so."""
    for part in path.parts:
        try:
            encoded = os.fsencode(part)
        except UnicodeError:
            return "a file name holds characters this system cannot encode"
        if len(encoded) > 255:
            return "a file name is longer than 255 bytes"
    return None


class OutputParam(_Param):
    """A file to write (``-``: stdout); its directory must exist."""

    name = "FILE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        if text == "-":
            return Path("-")
        if not text or "\x00" in text:
            self.fail(f"not a file name: {quoted(text)}", param, ctx)
        path = Path(text)
        if problem := _path_problem(path):
            self.fail(f"{quoted(text)}: {problem}", param, ctx)
        try:
            if path.is_dir():
                self.fail(f"{quoted(text)} is a directory", param, ctx)
            if path.exists() and not path.is_file():  # /dev/null would be replaced
                self.fail(f"{quoted(text)} is not a regular file", param, ctx)
            if not path.parent.is_dir():
                self.fail(f"the directory of {quoted(text)} does not exist", param, ctx)
        except OSError as exc:
            self.fail(f"{quoted(text)}: {exc.strerror or exc}", param, ctx)
        return path


class CheckpointParam(_Param):
    """
    A checkpoint: its JSON (checked while parsing), or a file written by
    ``checkpoint --output``/``--json`` (its name checked while parsing, its
    content by :meth:`load` when the command runs: parsing reads no file).
    """

    name = "FILE_OR_JSON"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> _queries.Checkpoint | str:
        if isinstance(value, _queries.Checkpoint):
            return value
        text = str(value)
        if text.strip().startswith("{"):
            return self.load(text, param, ctx)
        if not text or "\x00" in text or len(text) > MAX_LOCATION:
            self.fail(f"neither inline JSON nor a file name: {quoted(text)}", param, ctx)
        return text

    def load(
        self,
        value: _queries.Checkpoint | str,
        param: click.Parameter | None,
        ctx: click.Context | None,
    ) -> _queries.Checkpoint:
        """The checkpoint itself (reads the file); a usage error if it is not one."""
        if isinstance(value, _queries.Checkpoint):
            return value
        try:
            return _queries.load_checkpoint(value)
        except ValueError as exc:
            self.fail(str(exc).removeprefix("--checkpoint: "), param, ctx)


TIME: Final = TimeParam()
LIMIT: Final = LimitParam(1, 10_000_000)
BATCH: Final = LimitParam(1, 100_000)
#: ``reconcile --pending-minutes``: 0 (every pending charge) to a year.
PENDING_MINUTES: Final = MinutesParam(0, 525_600)
#: ``fake-omise --charge-minutes``: a charge's lifetime, a minute to a year.
CHARGE_MINUTES: Final = MinutesParam(1, 525_600)
PORT: Final = PortParam()
HOST: Final = HostParam()
ID: Final = IdParam()
DB: Final = DbParam()
OUTPUT: Final = OutputParam()
CHECKPOINT: Final = CheckpointParam()

#: Where ``--db`` points when it is not given (after ``$KPLUS_FSM_DB``).
DEFAULT_DB: Final = "kplus.db"


def default_db() -> str:
    """``$KPLUS_FSM_DB``, else ``./kplus.db``."""
    return os.environ.get("KPLUS_FSM_DB") or DEFAULT_DB


#: ``--db``: the log every command but ``demo``, ``fake-omise`` and ``migrate-log`` uses.
db_option: Final = click.option(
    "--db",
    "db",
    default=default_db,
    show_default="$KPLUS_FSM_DB or ./kplus.db",
    metavar="PATH|URL",
    type=DB,
    help="The event log: a SQLite file (path or sqlite:///path) or a postgresql:// URL.",
)
#: ``--json``: an object for machines instead of text for people.
json_option: Final = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for machines."
)
#: ``--since``: the reading commands' lower time bound.
since_option: Final = click.option(
    "--since",
    type=TIME,
    default=None,
    help="Only from this time on (ISO-8601, or ago: -30m, -2h, -7d).",
)

__all__ = [
    "ALL_INTERFACES",
    "BATCH",
    "CHARGE_MINUTES",
    "CHECKPOINT",
    "DB",
    "DEFAULT_DB",
    "HOST",
    "ID",
    "LIMIT",
    "OUTPUT",
    "PENDING_MINUTES",
    "PORT",
    "TIME",
    "CheckpointParam",
    "DbParam",
    "HostParam",
    "IdParam",
    "LimitParam",
    "MinutesParam",
    "OutputParam",
    "PortParam",
    "TimeParam",
    "db_option",
    "default_db",
    "json_option",
    "quoted",
    "since_option",
]
