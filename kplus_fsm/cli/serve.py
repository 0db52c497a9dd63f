"""
``kplus-fsm serve``: the webhook receiver as a production service (the runtime
is :mod:`kplus_fsm._server`; docs/cli.md lists every flag).

Its flags are read with :mod:`kplus_fsm._server.options` alone; the server
(uvicorn, h11, prometheus_client, the HTTP client and the adapters) is imported
only when the command runs.

Exit codes: 0 after a graceful stop (SIGTERM, SIGINT, SIGHUP); 1 when work
outlived the grace period, a worker did not stop, or the workers kept failing
at start-up; 2 a usage error (a bad flag, a
webhook secret that is not base64, a consumer that cannot be loaded or, new,
has no ``--consumer-start``); 4 the log cannot be opened or the address cannot
be bound.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from .._server.options import (
    CONSUMER_STARTS,
    LOG_FORMATS,
    ConsumerRef,
    ServeOptions,
    parse_consumer,
    parse_duration,
)
from .._store._classify import Access
from .._store._urls import redact
from ..exceptions import KplusFSMError
from . import _params
from ._open import target
from ._output import EXIT_STORE, EXIT_USAGE, fail
from ._params import db_option

if TYPE_CHECKING:
    _DurationParam = click.ParamType[float, str]
    _ConsumerParam = click.ParamType[ConsumerRef, str]
else:  # click < 8.2 has no type parameters
    _DurationParam = _ConsumerParam = click.ParamType


class Duration(_DurationParam):
    """``30s``, ``5m``, ``1h``, ``500ms`` or plain seconds, as a float of seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Consumer(_ConsumerParam):
    """``NAME=module:function``."""

    name = "name=module:function"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, ConsumerRef):
            return value
        try:
            return parse_consumer(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()


def _log_level() -> int:
    """The level the group's ``-v`` asked for (as the other commands log)."""
    verbose = click.get_current_context().find_root().params.get("verbose") or 0
    return {0: logging.ERROR, 1: logging.WARNING}.get(int(verbose), logging.INFO)


@click.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, type=_params.HOST)
@click.option("--port", default=8000, show_default=True, type=_params.PORT)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Serving processes sharing the socket and the log.",
)
@click.option(
    "--reconcile-every",
    default="60s",
    show_default=True,
    type=DURATION,
    metavar="DURATION",
    help="Run the reconciler this often (30s, 5m, 1h).",
)
@click.option("--no-reconcile", is_flag=True, help="No periodic reconciler in this receiver.")
@click.option(
    "--consumer",
    "consumers",
    multiple=True,
    type=Consumer(),
    metavar="NAME=module:function",
    help="Run this named consumer inside serve (repeatable).",
)
@click.option(
    "--consumer-start",
    type=click.Choice(CONSUMER_STARTS),
    default=None,
    help="Where a --consumer that does not exist yet starts (required for a new one).",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="console",
    show_default=True,
    help="Log lines on stderr: key=value text, or one JSON object a line.",
)
@click.option(
    "--header-timeout",
    default="10s",
    show_default=True,
    type=DURATION,
    metavar="DURATION",
    help="A request head must arrive whole within this.",
)
@click.option(
    "--body-timeout",
    default="30s",
    show_default=True,
    type=DURATION,
    metavar="DURATION",
    help="A request body must arrive whole within this after its head (408 past it).",
)
@click.option(
    "--keep-alive-timeout",
    default="5s",
    show_default=True,
    type=DURATION,
    metavar="DURATION",
    help="Close a kept-alive connection idle for this long.",
)
@click.option(
    "--graceful-timeout",
    default="10s",
    show_default=True,
    type=DURATION,
    metavar="DURATION",
    help="On SIGTERM, how long in-flight deliveries and background jobs may take to finish.",
)
@click.option(
    "--lease-ttl",
    default="30s",
    show_default=True,
    type=DURATION,
    metavar="DURATION",
    help="How long the follow-up and reconciler leases outlive a receiver killed holding them.",
)
@click.option(
    "--max-connections",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="Open connections per process; beyond, requests are answered 503 (Omise retries).",
)
@click.option(
    "--backlog",
    default=2048,
    show_default=True,
    type=click.IntRange(1),
    help="Connections the kernel queues before they are accepted.",
)
@click.option(
    "--threads",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Deliveries handled at once per process (the rest wait their turn).",
)
def serve(
    db: str,
    host: str,
    port: int,
    workers: int,
    reconcile_every: float,
    no_reconcile: bool,
    consumers: tuple[ConsumerRef, ...],
    consumer_start: str | None,
    log_format: str,
    header_timeout: float,
    body_timeout: float,
    keep_alive_timeout: float,
    graceful_timeout: float,
    lease_ttl: float,
    max_connections: int,
    backlog: int,
    threads: int,
) -> None:
    """
    Run the webhook receiver: POST /webhooks/omise; GET / (alive), GET /ready
    and GET /metrics (Prometheus). With OMISE_SECRET_KEY each delivery's charge
    is re-fetched, and a background worker follows up every unresolved hint and
    reconciles every --reconcile-every: no cron needed. SIGTERM stops it
    gracefully. Configured from the environment: OMISE_WEBHOOK_SECRET (base64;
    several, comma-separated, while rolling), OMISE_SECRET_KEY, OMISE_API_URL,
    KPLUS_FSM_DB (--db wins).
    """
    options = ServeOptions(
        db=db,
        host=host,
        port=port,
        workers=workers,
        reconcile_every=None if no_reconcile else reconcile_every,
        consumers=consumers,
        consumer_start=consumer_start,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        keep_alive_timeout=keep_alive_timeout,
        graceful_timeout=graceful_timeout,
        lease_ttl=lease_ttl,
        max_connections=max_connections,
        backlog=backlog,
        threads=threads,
        log_format=log_format,
        log_level=_log_level(),
    )
    noun = "worker" if workers == 1 else "workers"

    def announce(url: str) -> None:
        click.echo(f"kplus-fsm: receiving webhooks on {url} (db {redact(db)}, {workers} {noun})")

    target(db, Access.CREATE)  # the log is classified before anything binds or writes
    from .._server.run import ListenError, run_serve  # noqa: PLC0415 - the server: only to serve

    try:
        code = run_serve(options, announce=announce)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    except KplusFSMError as exc:
        fail(str(exc), EXIT_STORE)
    except ListenError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_STORE)
    except OSError as exc:
        fail(f"cannot start: {exc.strerror or exc}", EXIT_STORE)
    sys.exit(code)


__all__ = ["serve"]
