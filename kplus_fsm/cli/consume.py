"""
``kplus-fsm consume``: run a named, leased consumer of the event log in a
process of its own (see :class:`kplus_fsm.Consumer`).

Added to the :data:`kplus_fsm.cli.cli` group by :mod:`kplus_fsm.cli`.

Invariants:

- The handler is loaded (``module:function``) and the consumer's start is
  settled *before* anything runs: a handler that cannot be imported, one that
  does not take the arguments it will be given, or a new consumer without
  ``--start`` is a usage error (exit 2) with a message, never a traceback, and
  nothing is written to the log.
- SIGTERM and SIGINT stop the runner gracefully: the event in hand is finished
  and its position advanced, the lease is released (another runner takes over
  at once), and the process exits 0.
- One active runner per consumer name, across processes and hosts (the
  lease); the others wait, ready to take over within the lease time.

Exit codes: 0 stopped (or, with ``--once``, every event recorded so far was
handled, or another runner holds the lease); 1 ``--once`` stopped at an event
the handler raised on (the position stays before it) or lost the lease; 2
usage; 4 the log cannot be opened or written.
"""

from __future__ import annotations

import datetime as dt
import inspect
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click

from .._consumer import DEFAULT_LEASE_TTL, Consumer, Start, _check_start
from .._imports import HandlerImportError, load_handler
from .._store._classify import Access
from .._store._urls import redact
from .._time import utc_now
from ..exceptions import ConsumerStartError, KplusFSMError, LeaseLostError, StoreError
from . import _queries
from ._open import db_exists, open_tracker
from ._output import EXIT_PROBLEM, EXIT_STORE, EXIT_USAGE, fail
from ._params import db_option

#: Events per transaction with ``--transactional``, and per lease check otherwise.
BATCH = 100


def parse_start(text: str) -> Start:
    """
    ``--start`` as a :data:`kplus_fsm.Start`: ``beginning``, ``now``, an event
    position (digits), or a time (ISO-8601, or ago: ``-2h``, ``-7d``).

    Raises:
        ConsumerStartError: none of those.
    """
    raw = text.strip()
    if raw.lower() in ("beginning", "now"):
        return "beginning" if raw.lower() == "beginning" else "now"
    if raw.isdigit():
        return int(raw)
    try:
        when = _queries.parse_when(raw, now=utc_now())
    except ValueError:
        raise ConsumerStartError(
            f"--start must be beginning, now, an event position or a time "
            f"(ISO-8601, or ago: -2h, -7d), not {text!r}"
        ) from None
    _check_start(when)
    return when


def _load(reference: str, transactional: bool) -> Callable[..., object]:
    """The handler, checked to take what it will be given; exit 2 otherwise."""
    try:
        handler = load_handler(reference)
    except HandlerImportError as exc:
        fail(f"cannot load the handler: {exc}", EXIT_USAGE)
    arguments = ("event", "handle") if transactional else ("event",)
    try:
        inspect.signature(handler).bind(*arguments)
    except TypeError:
        expected = "handler(event, handle)" if transactional else "handler(event)"
        fail(
            f"{reference} cannot be called as {expected}"
            + ("" if transactional else " (a transactional handler needs --transactional)"),
            EXIT_USAGE,
        )
    except ValueError:  # no signature to inspect (some builtins): let the call decide
        pass
    return handler


@contextmanager
def _stopping_on_signals(stop: threading.Event) -> Iterator[list[str]]:
    """SIGTERM and SIGINT set ``stop`` (the names of those received are collected)."""
    received: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _describe_failure(consumer: Consumer, exc: Exception) -> str:
    event = consumer.failed_event
    where = (
        f"event @{event.position} ({event.kind}, payment {event.stream})"
        if event is not None
        else "an event"
    )
    return (
        f"consumer {consumer.name!r}: the handler raised on {where}: "
        f"{type(exc).__name__}: {exc}; the position stays at {consumer.position} "
        "(run again to retry it)"
    )


def _once(consumer: Consumer, handler: Callable[..., Any], transactional: bool) -> int:
    """Handle every event recorded so far; the number handled."""
    if not consumer.acquire():
        holder = consumer.tracker.store.lease(f"consumer:{consumer.name}")
        who = f" ({holder.holder}, until {holder.expires_at})" if holder is not None else ""
        click.echo(
            f"kplus-fsm: consumer {consumer.name!r} is busy: another runner holds its lease"
            f"{who}; nothing handled here",
            err=True,
        )
        return 0
    if not transactional:
        return consumer.process(handler)
    total = 0
    while True:
        n = consumer.process_in_transaction(handler, batch=BATCH)
        total += n
        if n < BATCH:
            return total


@click.command("consume")
@db_option
@click.argument("name")
@click.option(
    "--handler",
    "reference",
    required=True,
    metavar="MODULE:FUNCTION",
    help="Called once per event, in order (module.path:function; the current directory "
    "is searched first).",
)
@click.option(
    "--start",
    "start_text",
    default=None,
    metavar="beginning|now|POSITION|TIME",
    help="Where a NEW consumer starts: every event ever recorded, only events from now "
    "on, the events after an event position, or those recorded from a time. Required the "
    "first time; ignored once the consumer exists.",
)
@click.option(
    "--transactional",
    is_flag=True,
    help="Call handler(event, handle) inside the transaction that advances the position "
    "(exactly once for writes to the same database).",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="How often to look for new events when idle.",
)
@click.option(
    "--lease-ttl",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_LEASE_TTL.total_seconds(),
    show_default=True,
    metavar="SECONDS",
    help="How long the lease lasts without renewal: a runner killed while holding it is "
    "replaced after at most this long. Keep every handler call well under half of it.",
)
@click.option("--once", is_flag=True, help="Handle the events recorded so far, then exit.")
def consume(
    db: str,
    name: str,
    reference: str,
    start_text: str | None,
    transactional: bool,
    poll_interval: float,
    lease_ttl: float,
    once: bool,
) -> None:
    """
    Run the consumer NAME: hand each event of the log to the handler, once, in
    order, remembering the position in the database. One runner per name works
    at a time (a lease in the database); start as many as you like, on as many
    hosts: the others wait and take over within --lease-ttl if it dies.
    SIGTERM or Ctrl-C stops it after the event in hand.
    """
    try:
        start = None if start_text is None else parse_start(start_text)
    except ConsumerStartError as exc:
        fail(str(exc), EXIT_USAGE)
    handler = _load(reference, transactional)
    if not db_exists(db):
        fail(f"no database at {redact(db)}", EXIT_STORE)
    with open_tracker(db, Access.CREATE) as tracker:
        try:
            consumer = tracker.consumer(
                name, start=start, lease_ttl=dt.timedelta(seconds=lease_ttl)
            )
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
        where = f"{reference} on {redact(db)}"
        _run(consumer, handler, where, transactional, poll_interval, once, start)


def _run(
    consumer: Consumer,
    handler: Callable[..., Any],
    where: str,
    transactional: bool,
    poll_interval: float,
    once: bool,
    start: Start | None,
) -> None:
    name = consumer.name
    try:
        if consumer.exists:
            if start is not None:
                click.echo(
                    f"kplus-fsm: consumer {name!r} exists (position {consumer.position}): "
                    "--start is ignored",
                    err=True,
                )
        elif start is None:
            fail(
                f"consumer {name!r} does not exist yet: say where it starts with --start now "
                "(only events from now on), --start beginning (every event ever recorded), "
                "or --start POSITION|TIME",
                EXIT_USAGE,
            )
        else:
            consumer.create()
        if once:
            try:
                handled = _once(consumer, handler, transactional)
            except LeaseLostError as exc:
                fail(f"{exc}; another runner carries on", EXIT_PROBLEM)
            except KplusFSMError:
                raise
            except Exception as exc:  # the host's handler
                fail(_describe_failure(consumer, exc), EXIT_PROBLEM)
            click.echo(f"consumer {name}: handled {handled} events; position {consumer.position}")
            return
        stop = threading.Event()
        click.echo(
            f"kplus-fsm: consumer {name!r} (position {consumer.position}) runs {where}; "
            "SIGTERM or Ctrl-C stops it",
            err=True,
        )
        with _stopping_on_signals(stop) as received:
            loop = consumer.run_in_transaction if transactional else consumer.run
            handled = loop(handler, poll_interval=poll_interval, stop=stop, batch=BATCH)
        why = f" on {received[0]}" if received else ""
        click.echo(
            f"kplus-fsm: consumer {name!r} stopped{why}: handled {handled} events; "
            f"position {consumer.position}; lease released",
            err=True,
        )
    except StoreError as exc:
        fail(str(exc), EXIT_STORE)


__all__ = ["consume", "parse_start"]
