"""
``kplus-fsm``: the command line of kplus_fsm.

Every command takes ``--db`` (default: ``$KPLUS_FSM_DB``, else ``./kplus.db``):
a SQLite file (a path or ``sqlite:///path``) or a ``postgresql://`` URL
(:func:`kplus_fsm.open_store`). A URL's password is never printed: every message
shows the location through :func:`kplus_fsm.redact`.
``show``, ``list``, ``anomalies``, ``stats``, ``export``, ``checkpoint``,
``verify`` and ``replay --check`` (in :mod:`kplus_fsm.cli.incident`) open the
database read-only.

Every command opens its log through :mod:`kplus_fsm.cli._open`, which
classifies the target before writing a byte (:mod:`kplus_fsm._store._classify`), and
validates its options with the parameter types of :mod:`kplus_fsm.cli._params`.

Exit codes (defined once, in :mod:`kplus_fsm.cli._output`, and re-exported
here): 0 success; 1 a check found a problem (``verify``, ``replay --check``, a
damaged log); 2 usage error; 3 no such payment; 4 the database or a file cannot
be used (missing, not a kplus_fsm log, written by a newer version, read-only
where a write is needed); ``pay`` also 5 (the create's outcome is unknown) and
6 (already paid).

Layout: each command is defined in its module without reference to the group
(:mod:`.incident`, :mod:`.operate`, :mod:`.consume`, :mod:`.migrate_log`,
:mod:`.fake_omise`, :mod:`.serve`, :mod:`.demo`) and added to :data:`cli` here.
A command's function has the command's name (``-`` as ``_``), with a trailing
underscore where that name is a Python builtin or keyword (``list_``).

Start-up: the group and every command module import only what reading a log
needs; the API client, the adapters, the server (uvicorn, h11,
prometheus_client) and the PostgreSQL driver are imported inside the commands
that use them, so ``show``, ``list`` or ``verify`` never load them. The reading
commands (:data:`kplus_fsm.cli.incident.COMMANDS`) log only through the core's
loggers, which import structlog on their first line
(:mod:`kplus_fsm._logging`): for them the logging configuration waits for that
line, and is dropped if none comes.
"""

from __future__ import annotations

import functools
import io
import logging
import sys

import click

from .. import _logging
from . import consume, demo, fake_omise, incident, migrate_log, operate, serve
from ._output import (
    EXIT_CODES,
    EXIT_DEFERRED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PAID,
    EXIT_PROBLEM,
    EXIT_STORE,
    EXIT_USAGE,
)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``--version``, as ``click.version_option`` prints it; the version is read only now."""
    if not value or ctx.resilient_parsing:
        return
    from .. import __version__  # noqa: PLC0415 - package metadata: only when asked

    click.echo(f"kplus-fsm, version {__version__}", color=ctx.color)
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log to stderr: -v warnings, -vv every input recorded.",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Track K PLUS (Opn/Omise) payments in an append-only, replayable event log."""
    # A file name from argv may hold bytes that are not UTF-8 (surrogate escapes):
    # print them escaped rather than die on them in a UTF-8 locale.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    level = {0: logging.ERROR, 1: logging.WARNING}.get(verbose, logging.INFO)
    configure = functools.partial(_configure_logging, level)
    if ctx.invoked_subcommand in _READING:
        _logging.defer(configure)
        ctx.call_on_close(_logging.cancel)
    else:
        configure()


#: The commands whose logging is configured only if they log (see the docstring).
_READING = frozenset(command.name for command in incident.COMMANDS)


def _configure_logging(level: int) -> None:
    """structlog, as a host configures it: one key=value line per entry on stderr."""
    import structlog  # noqa: PLC0415 - only when something logs (see the docstring)

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


for _command in (
    *incident.COMMANDS,
    operate.pay,
    operate.reconcile,
    consume.consume,
    migrate_log.migrate_log,
    fake_omise.fake_omise,
    serve.serve,
    demo.demo,
):
    cli.add_command(_command)


def main() -> None:
    """The console-script entry point."""
    cli(prog_name="kplus-fsm")


__all__ = [
    "EXIT_CODES",
    "EXIT_DEFERRED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_PAID",
    "EXIT_PROBLEM",
    "EXIT_STORE",
    "EXIT_USAGE",
    "cli",
    "main",
]
