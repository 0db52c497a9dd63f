"""
How a ``kplus-fsm`` command ends and what it prints: the exit codes (defined
here once, re-exported by :mod:`kplus_fsm.cli`; docs/cli.md lists them and a
test checks the two agree), :func:`fail`, JSON for machines, and the aligned
tables, times, amounts and progress bars for people.

Invariants: a command exits with one of the codes below and nothing else;
:data:`EXIT_USAGE` is only ever raised through click (``click.UsageError``,
``click.BadParameter``: an unknown option, a value out of its bounds) or for a
usage problem found before anything was opened; a refused invocation
(:data:`EXIT_USAGE` or :data:`EXIT_STORE`) has written nothing. Every message
for people goes to stderr as ``kplus-fsm: message`` (:func:`fail`), so that
stdout holds only the command's answer. Progress bars are drawn on stderr,
only for a person at a terminal and never with ``--json``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, NoReturn

import click

#: Success (also when ``list`` or ``anomalies`` find something).
EXIT_OK: Final = 0
#: A check found a problem (``verify``, ``replay --check``, ``checkpoint`` of a
#: log that does not verify, a damaged log reported by any reading command);
#: ``pay``/``reconcile``: the payment failed or a read did.
EXIT_PROBLEM: Final = 1
#: A usage error: an unknown option, a value out of its bounds, a bad time.
EXIT_USAGE: Final = 2
#: No payment has that payment id or charge id.
EXIT_NOT_FOUND: Final = 3
#: The database (or a file to write) cannot be used: missing, not a kplus_fsm
#: log, written by a newer version, read-only where a write is needed, or a
#: location that cannot be created. Nothing was written.
EXIT_STORE: Final = 4
#: ``pay``: the create's outcome is unknown (deferred): no authorize_uri yet.
EXIT_DEFERRED: Final = 5
#: ``pay``: the payment (or its order) is already paid.
EXIT_PAID: Final = 6

#: Every exit code, with its one-line meaning (the table in docs/cli.md).
EXIT_CODES: Final = {
    EXIT_OK: "success",
    EXIT_PROBLEM: "a check found a problem",
    EXIT_USAGE: "usage error",
    EXIT_NOT_FOUND: "no such payment",
    EXIT_STORE: "the database or a file cannot be used",
    EXIT_DEFERRED: "pay: the create's outcome is unknown (deferred), no authorize_uri yet",
    EXIT_PAID: "pay: the payment or its order is already paid",
}


def fail(message: str, code: int) -> NoReturn:
    """Print ``kplus-fsm: message`` on stderr and exit with ``code``."""
    click.echo(f"kplus-fsm: {message}", err=True)
    sys.exit(code)


def echo_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (what every ``--json`` prints)."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


# ------------------------------------------------------------------ for people


def interactive(as_json: bool = False) -> bool:
    """Whether to draw progress bars: a person at a terminal, not --json."""
    return not as_json and sys.stdout.isatty() and sys.stderr.isatty()


@contextlib.contextmanager
def progress(label: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A ``click.progressbar`` on stderr when ``enabled``; else a no-op ``update``."""
    if not enabled or total <= 0:
        yield lambda _n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    indent: str = "",
    *,
    right: Sequence[int] = (),
) -> list[str]:
    """Aligned columns for people; the columns numbered in ``right`` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            if i in right:
                out.append(cell.rjust(widths[i]))
            else:
                out.append(cell if i == len(cells) - 1 else cell.ljust(widths[i]))
        return (indent + "  ".join(out)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def short_time(stored: str | None) -> str:
    """``2026-03-01T10:00:05.123456Z`` as ``2026-03-01T10:00:05Z`` (UTC)."""
    if not stored:
        return "-"
    return stored[:19] + "Z" if len(stored) > 19 else stored


def baht(satang: int) -> str:
    """An amount in satang as baht with two decimals and thousands separators."""
    return f"{satang / 100:,.2f}"


def duration(seconds: float | None) -> str:
    """Seconds for people: ``4.2 s``, ``3m 05s``, ``2h 10m``, ``3d 04h``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def plural(n: int, noun: str) -> str:
    """``1 payment``, ``2 payments``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def pct(rate: float | None) -> str:
    """A rate as a percentage with one decimal (``-`` when there is none)."""
    return "-" if rate is None else f"{rate * 100:.1f}%"


__all__ = [
    "EXIT_CODES",
    "EXIT_DEFERRED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_PAID",
    "EXIT_PROBLEM",
    "EXIT_STORE",
    "EXIT_USAGE",
    "baht",
    "duration",
    "echo_json",
    "fail",
    "interactive",
    "pct",
    "plural",
    "progress",
    "short_time",
    "table",
]
