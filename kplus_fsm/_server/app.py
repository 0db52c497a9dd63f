"""
``kplus-fsm serve``: the webhook receiver as a production service.

It runs the intake's ASGI application (:func:`~kplus_fsm.adapters.webhooks.asgi_app`)
on **uvicorn** (why uvicorn: docs/design.md, "The production server") with:

- a listen socket with a real backlog (``backlog``), shared by ``workers``
  forked processes that all append to one log (the processes, the socket and
  the signals: :mod:`kplus_fsm._server.run`);
- bounded concurrency: at most ``max_connections`` open connections per process
  (uvicorn answers 503 beyond, which Omise retries) and at most ``threads``
  deliveries in the intake at once (the loop's default executor);
- the head and body deadlines of :mod:`.http` (slow-loris safe), and
  uvicorn's keep-alive timeout between requests;
- chunked request bodies decoded by h11 (never read as empty);
- a graceful stop on SIGTERM, SIGINT or SIGHUP: stop accepting, let in-flight deliveries
  finish within ``graceful_timeout`` seconds, stop the background jobs, exit 0.
  What did not finish is durable: a delivery is recorded whole or not at all,
  and Omise retries the unanswered ones;
- in each process, a :class:`kplus_fsm.Worker` when an API client is configured
  (``OMISE_SECRET_KEY``) or consumers are named: the follow-up of unresolved
  hints (woken by the intake's ``on_unresolved``), the periodic reconciler and
  the consumers, each run by one process at a time through its lease;
- ``GET /`` (liveness, ``{"ready": true}``), ``GET /ready`` (the log takes a
  write lock; unresolved hints and pending payments with their ages; 503 when
  not ready) and ``GET /metrics`` (Prometheus text, :mod:`.metrics`).

The metrics module (and with it ``prometheus_client``) is imported only once a
serving process knows whether it is one of several (``PROMETHEUS_MULTIPROC_DIR``
must be set before ``prometheus_client`` is imported).

Each serving process opens its own connections to the log: the intake's, the
worker's, one that probes writability for ``/ready`` and a read-only one for
``/ready`` and ``/metrics``.

Errors (:meth:`Runtime.open`): ``ValueError`` for a webhook secret that is not
base64, a consumer that cannot be loaded or has no start
(:class:`~kplus_fsm.exceptions.ConsumerStartError`); ``StoreError`` when the
log cannot be opened. :meth:`ServeOptions.check`: ``ValueError``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import structlog

from .._followup import ConsumerSpec, Worker
from .._imports import load_handler
from .._store import open_store
from .._time import utc_now
from .._tracker import Tracker
from ..adapters.webhooks import WebhookIntake, asgi_app, intake_from_env
from ..exceptions import ConsumerStartError, StoreError
from ..typing import SQLStore, Store, dialect_of
from .options import ConsumerRef, ServeOptions

if TYPE_CHECKING:
    from .metrics import LogFigures, ServeMetrics

log = structlog.get_logger("kplus_fsm.serve")

_T = TypeVar("_T")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Mapping[str, Any]], Any]

# --------------------------------------------------------------------- logging


def _pid(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.setdefault("pid", os.getpid())
    return event


def _exception_type_only(
    _: Any, __: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A logged exception as its type only: no traceback, no message that could echo input."""
    info = event.pop("exc_info", None)
    if info:
        if info is True:
            info = sys.exc_info()
        elif isinstance(info, BaseException):
            info = (type(info), info, info.__traceback__)
        if isinstance(info, tuple) and info[0] is not None:
            event.setdefault("exception_type", info[0].__name__)
    return event


def configure_logging(fmt: str, level: int) -> None:
    """
    structlog and the standard library (uvicorn's loggers) to stderr, one line
    per entry: ``json`` (one JSON object a line) or ``console`` (key=value).
    """
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _pid,
        _exception_type_only,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        logger.handlers = [handler] if name == "uvicorn" else []
        logger.setLevel(level)
        logger.propagate = name != "uvicorn"


# ------------------------------------------------------------------- consumers


def _consumer_spec(ref: ConsumerRef, start: str | None) -> ConsumerSpec:
    handler = load_handler(ref.reference)
    return ConsumerSpec(
        name=ref.name, handler=handler, transactional=_transactional(handler), start=start
    )


def _transactional(handler: Callable[..., Any]) -> bool:
    """A handler that takes two positional arguments (event, transaction) is exactly-once."""
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(positional) >= 2


def prepare_consumers(tracker: Tracker, options: ServeOptions) -> None:
    """
    Create every named consumer that does not exist yet at ``consumer_start``.

    Raises:
        ConsumerStartError: a consumer does not exist and no start was given.
        ValueError: a handler reference cannot be loaded.
    """
    for ref in options.consumers:
        _consumer_spec(ref, options.consumer_start)  # loads: fail now, not in a thread
        if tracker.store.consumer_exists(ref.name):
            continue
        if options.consumer_start is None:
            raise ConsumerStartError(
                f"consumer {ref.name!r} does not exist yet: say where it starts with "
                "--consumer-start beginning (every event ever recorded) or "
                "--consumer-start now (events from now on)"
            )
        tracker.consumer(ref.name, start=options.consumer_start).create()


# --------------------------------------------------------------------- runtime


class Runtime:
    """
    What one serving process holds: the intake, its worker, the connections
    that answer ``/ready`` and ``/metrics``, and the metrics.

    Raises (:meth:`open`): as :func:`run_serve`.
    """

    def __init__(
        self,
        options: ServeOptions,
        intake: WebhookIntake,
        worker: Worker | None,
        probe: Store,
        reader: SQLStore,
        metrics: ServeMetrics | None,
        closers: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.options = options
        self.intake = intake
        self.worker = worker
        self.probe_store = probe
        self.reader = reader
        self.metrics = metrics
        #: Threads of /ready and /metrics (and of stopping), apart from the
        #: deliveries': a stalled log must not leave the monitors unanswered.
        self.monitor_pool = ThreadPoolExecutor(2, thread_name_prefix="kplus-monitor")
        self._closers = list(closers)
        self._probing: Future[None] | None = None
        self._probe_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        options: ServeOptions,
        *,
        metrics_dir: str | None = None,
        with_metrics: bool = True,
    ) -> Runtime:
        """Open everything; ``with_metrics``: import and make the metrics too."""
        metrics: ServeMetrics | None = None
        if with_metrics:
            from .metrics import ServeMetrics  # noqa: PLC0415 (see the module docstring)

            metrics = ServeMetrics(multiprocess_dir=metrics_dir)
        opened: list[Callable[[], None]] = []
        try:
            waker = _Waker()
            intake = intake_from_env(
                os.environ, db=options.db, observer=metrics, on_unresolved=waker.wake
            )
            opened.append(intake.close)
            worker: Worker | None = None
            if intake.client is not None or options.consumers:
                tracker = Tracker(options.db)
                opened.append(tracker.close)
                prepare_consumers(tracker, options)
                every = options.reconcile_every
                worker = Worker(
                    tracker,
                    intake.client,
                    followup=True,
                    reconcile_every=dt.timedelta(seconds=every) if every is not None else None,
                    consumers=[
                        _consumer_spec(c, options.consumer_start) for c in options.consumers
                    ],
                )
                _set_lease_times(worker, options)
                waker.worker = worker
            probe = open_store(options.db)
            opened.append(probe.close)
            reader = open_store(options.db, read_only=True)
            opened.append(reader.close)
        except BaseException:
            for close in reversed(opened):
                close()
            raise
        return cls(options, intake, worker, probe, reader, metrics, opened)

    def start(self) -> None:
        """Start the background jobs."""
        if self.worker is not None:
            self.worker.start()

    def stop(self, grace: float) -> bool:
        """Stop the background jobs within ``grace`` seconds; whether they all stopped."""
        return self.worker.stop(grace) if self.worker is not None else True

    def close(self) -> None:
        """Close every connection (after :meth:`stop`)."""
        self.monitor_pool.shutdown(wait=False, cancel_futures=True)
        for close in reversed(self._closers):
            try:
                close()
            except Exception as exc:  # closing must go on
                log.warning("serve_close_failed", error=type(exc).__name__)
        self._closers = []

    # ----------------------------------------------------------- /ready

    def log_figures(self) -> LogFigures:
        from .metrics import read_log_figures  # noqa: PLC0415

        return read_log_figures(self.reader, now=utc_now())

    def _probe_writable(self) -> None:
        """Take the log's write lock and let it go (PostgreSQL: refuse a read-only server)."""
        postgres = dialect_of(self.probe_store) == "postgresql"

        def work(handle: Any) -> None:
            if postgres:
                row = handle.execute("SHOW transaction_read_only").fetchone()
                if row is not None and str(row[0]).lower() == "on":
                    raise StoreError("the log is read-only (transaction_read_only is on)")

        self.probe_store.write_transaction(work)

    def probe(self) -> Future[None]:
        """One writability probe at a time; callers share the one in flight."""
        with self._probe_lock:
            if self._probing is None or self._probing.done():
                self._probing = self.monitor_pool.submit(self._probe_writable)
            return self._probing

    def health(self) -> dict[str, Any]:
        return self.worker.health() if self.worker is not None else {}

    def sync_metrics(self) -> None:
        if self.metrics is not None and self.worker is not None:
            self.metrics.sync(self.worker.health())

    def metrics_text(self) -> bytes:
        assert self.metrics is not None
        self.sync_metrics()
        return self.metrics.exposition(self.log_figures)


def _set_lease_times(worker: Worker, options: ServeOptions) -> None:
    """
    ``--lease-ttl``: how long the follow-up's lease outlives a receiver killed
    while holding it (the reconciler's: its period plus that). Both jobs only
    read the truth, so a lease that lapses during a stall costs at most a
    duplicate read; a shorter time means a faster take-over after a crash.
    """
    ttl = dt.timedelta(seconds=options.lease_ttl)
    if worker.followup is not None:
        worker.followup.lease_ttl = ttl
    if worker.reconciler is not None:
        worker.reconciler.lease_ttl = worker.reconciler.every + ttl


@attrs.define
class _Waker:
    """The intake's ``on_unresolved``, bound to the worker once it exists."""

    worker: Worker | None = None

    def wake(self, charge_id: str) -> None:
        if self.worker is not None:
            self.worker.wake(charge_id)


# ------------------------------------------------------------------ the app


class ServeApp:
    """
    The ASGI application of ``serve``: ``GET /ready`` and ``GET /metrics``
    here, everything else to :func:`~kplus_fsm.adapters.webhooks.asgi_app`;
    the lifespan starts and stops the runtime's background jobs.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        options = runtime.options
        self.inner = asgi_app(runtime.intake, path=options.path, max_body=options.max_body)
        self.shutdown_deadline: float | None = None
        self._sync_task: asyncio.Task[None] | None = None

    def begin_shutdown(self) -> None:
        """The server stopped accepting: the grace period starts now."""
        if self.shutdown_deadline is None:
            self.shutdown_deadline = time.monotonic() + self.runtime.options.graceful_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "http" and scope.get("path") in ("/ready", "/metrics"):
            method = str(scope.get("method", "GET")).upper()
            if method not in ("GET", "HEAD"):
                await _respond(
                    send, 405, _json({"reason": "Method Not Allowed"}), allow="GET, HEAD"
                )
            elif scope["path"] == "/ready":
                status, payload = await self._ready()
                await _respond(send, status, _json(payload), head=method == "HEAD")
            else:
                await self._metrics(send, head=method == "HEAD")
            return
        await self.inner(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                loop = asyncio.get_running_loop()
                loop.set_default_executor(
                    ThreadPoolExecutor(
                        self.runtime.options.threads, thread_name_prefix="kplus-http"
                    )
                )
                self.runtime.start()
                if self.runtime.metrics is not None and self.runtime.worker is not None:
                    self._sync_task = asyncio.create_task(self._sync_metrics())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.begin_shutdown()
                if self._sync_task is not None:
                    self._sync_task.cancel()
                assert self.shutdown_deadline is not None
                grace = max(0.5, self.shutdown_deadline - time.monotonic())
                await self._monitor(self.runtime.stop, grace)
                _exit_if_overdue(self.shutdown_deadline + OVERDUE)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _monitor(self, work: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.runtime.monitor_pool, work, *args)

    async def _sync_metrics(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.runtime.sync_metrics()

    async def _ready(self) -> tuple[int, dict[str, Any]]:
        runtime = self.runtime
        payload: dict[str, Any] = {"ready": True, "pid": os.getpid()}
        reason: str | None = None
        try:
            await asyncio.wait_for(
                asyncio.wrap_future(runtime.probe()), runtime.options.ready_timeout
            )
            payload["log"] = "writable"
        except TimeoutError:
            reason = f"the log gave no write lock within {runtime.options.ready_timeout:g} s"
        except Exception as exc:  # whatever it is, the answer is "not ready"
            reason = f"the log is not writable ({type(exc).__name__})"
        try:
            figures = await asyncio.wait_for(
                self._monitor(runtime.log_figures), runtime.options.ready_timeout
            )
            payload.update(figures.to_json())
        except Exception as exc:
            reason = reason or f"the log cannot be read ({type(exc).__name__})"
        payload.update(runtime.health())
        if reason is not None:
            payload.update(ready=False, reason=reason)
            return 503, payload
        return 200, payload

    async def _metrics(self, send: Send, *, head: bool) -> None:
        from .metrics import CONTENT_TYPE  # noqa: PLC0415

        if self.runtime.metrics is None:
            await _respond(send, 404, _json({"reason": "Not Found"}))
            return
        text = await self._monitor(self.runtime.metrics_text)
        await _respond(send, 200, text, content_type=CONTENT_TYPE, head=head)


#: Seconds past the grace period after which a process whose deliveries are
#: still running (a re-fetch hung on the API) exits anyway.
OVERDUE: Final = 5.0


def _exit_if_overdue(deadline: float) -> None:
    """
    Once uvicorn has cancelled what outlived the grace period, the threads that
    ran those deliveries are still joined at exit. Past ``deadline`` the
    process exits 1 without them, as a kill would: every record is one
    transaction, and an unanswered delivery is retried by Omise (and its hint,
    if recorded, followed up by the next start).
    """

    def overdue() -> None:
        log.error("serve_stop_overdue", waited=round(time.monotonic() - deadline + OVERDUE, 1))
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), overdue)
    timer.daemon = True
    timer.start()


def _json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: str = "application/json",
    allow: str | None = None,
    head: bool = False,
) -> None:
    headers = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    if allow is not None:
        headers.append((b"allow", allow.encode("ascii")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


__all__ = [
    "OVERDUE",
    "Runtime",
    "ServeApp",
    "configure_logging",
    "prepare_consumers",
]
