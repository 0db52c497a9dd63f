"""
The exit codes of ``kplus-fsm``, defined once (docs/cli.md lists them; a test
checks the two agree).

Invariants: a command exits with one of these and nothing else; ``2`` is only
ever raised through click (``click.UsageError``/``click.BadParameter``: an
unknown option, a value out of its bounds) or for a usage problem found before
anything was opened; a refused invocation (``2`` or ``4``) has written nothing.
"""

from __future__ import annotations

import sys
from typing import Final, NoReturn

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


__all__ = [
    "EXIT_CODES",
    "EXIT_DEFERRED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_PAID",
    "EXIT_PROBLEM",
    "EXIT_STORE",
    "EXIT_USAGE",
    "fail",
]
