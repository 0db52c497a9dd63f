"""
``kplus-fsm migrate-log``: move an event log between databases (SQLite to
PostgreSQL, or back) and prove the move (see :mod:`kplus_fsm._store.migrate`).

Added to the :data:`kplus_fsm.cli.cli` group by :mod:`kplus_fsm.cli`. Exit
codes: 0 moved and verified; 1 refused (the source does not verify, the target
is not empty) or the target does not verify after the move; 2 usage; 4 a log
cannot be opened or the copy failed (nothing committed).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import click

from .._store import migrate as _migrate
from .._store import open_store
from .._store._classify import Access
from .._store._urls import is_postgres, sqlite_path
from ..exceptions import KplusFSMError
from . import _params
from ._open import target as classified
from ._output import EXIT_PROBLEM, EXIT_STORE, EXIT_USAGE, echo_json, fail
from ._params import json_option


def _total(source: str) -> int:
    """Rows the copy will move (for the progress bar); 0 when unknown."""
    try:
        store = open_store(source, read_only=True)
    except (KplusFSMError, ValueError):
        return 0
    try:
        return sum(store.counts().values())
    except KplusFSMError:
        return 0
    finally:
        store.close()


@contextlib.contextmanager
def _bar(total: int, enabled: bool) -> Iterator[Callable[[str, int], None]]:
    if not enabled or total <= 0:
        yield lambda _stage, _n: None
        return
    with click.progressbar(length=total, label="copy", file=sys.stderr) as bar:
        yield lambda stage, n: bar.update(n) if stage == "copy" else None


@click.command("migrate-log")
@click.option(
    "--from",
    "source",
    required=True,
    metavar="PATH|URL",
    type=_params.DB,
    help="The log to move: a SQLite file (path or sqlite:///path) or a postgresql:// URL.",
)
@click.option(
    "--to",
    "target",
    required=True,
    metavar="URL|PATH",
    type=_params.DB,
    help="Where to move it: an empty log (postgresql://..., or a SQLite file).",
)
@click.option(
    "--batch",
    type=_params.BATCH,
    default=_migrate.BATCH,
    show_default=True,
    help="Rows read from the source per query.",
)
@json_option
def migrate_log(source: str, target: str, batch: int, as_json: bool) -> None:
    """
    Move an event log to another database, row for row (the same ids,
    positions and hashes), in one transaction, then verify the copy: its hash
    chains must end at the source's heads and a replay must match its
    projection. The target must be empty. Stop the source's writers first.
    """
    for name, location in (("--from", source), ("--to", target)):
        try:
            sqlite_path(location)
        except ValueError as exc:
            fail(f"{name}: {exc}", EXIT_USAGE)
    if source == target or (
        not is_postgres(source)
        and not is_postgres(target)
        and str(sqlite_path(source)) == str(sqlite_path(target))
    ):
        fail("--from and --to name the same log", EXIT_USAGE)
    classified(source, Access.READ)
    classified(target, Access.CREATE)
    interactive = not as_json and sys.stdout.isatty() and sys.stderr.isatty()
    try:
        with _bar(_total(source) if interactive else 0, interactive) as tick:
            report = _migrate.migrate_log(source, target, batch=batch, progress=tick)
    except _migrate.MigrationRefused as exc:
        fail(str(exc), EXIT_PROBLEM)
    except KplusFSMError as exc:
        fail(str(exc), EXIT_STORE)
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(f"moved {report.source} -> {report.target} in {report.seconds:.1f} s")
        click.echo(
            f"  copied    {report.inbox_rows} inputs, {report.events} events, "
            f"{report.payments} payments, {report.consumers} consumer positions"
        )
        click.echo(
            f"  verified  inbox head {report.target_inbox_head} "
            f"({'=' if report.target_inbox_head == report.source_inbox_head else '!='} source)"
        )
        click.echo(
            f"            events head {report.target_events_head} "
            f"({'=' if report.target_events_head == report.source_events_head else '!='} source)"
        )
        click.echo(
            f"  replayed  {report.replayed_payments} payments, {report.differences} differences"
        )
        if report.ok:
            click.echo(f"ok: point KPLUS_FSM_DB (or --db) at {report.target}")
        else:
            click.echo(f"FAILED: {report.problem}")
    if not report.ok:
        sys.exit(EXIT_PROBLEM)


__all__ = ["migrate_log"]
