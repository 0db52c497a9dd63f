"""
The processes of ``kplus-fsm serve`` (:func:`run_serve`): the listening socket,
the stop signals, one process serving with uvicorn, or a :class:`Supervisor`
forking ``--workers`` of them. What each serving process holds and answers is
:mod:`kplus_fsm._server.app`.

Invariants: the socket is bound once, by the first process, before any worker
exists; SIGTERM, SIGINT and SIGHUP always mean a graceful stop (never ignored,
even while a process is starting); a process exits 0 only after a graceful
stop, and never outlives the grace period by more than :data:`OVERDUE`
seconds; every worker dies with its supervisor.

Errors (:func:`run_serve`, before serving): ``ValueError`` for a bad option, a
webhook secret that is not base64, a consumer that cannot be loaded or has no
start; ``StoreError`` when the log cannot be opened; :class:`ListenError` when
the address cannot be bound.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import structlog

from ..exceptions import KplusFSMError
from .app import Runtime, ServeApp, configure_logging
from .options import ServeOptions

log = structlog.get_logger("kplus_fsm.serve")

#: A worker process that dies this soon after it started counts as failing to start.
_QUICK_DEATH: Final = 5.0


class ListenError(OSError):
    """The address cannot be bound or listened on (``errno``/``strerror`` kept)."""


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """
    The listening socket (``SO_REUSEADDR``; IPv6 when ``host`` is).

    Raises:
        ListenError: the address cannot be bound.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(exc.errno, exc.strerror) from None
    family, kind, proto, _, address = infos[0]
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets that do, and
    # without it every answer waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise ListenError(exc.errno, exc.strerror) from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


_STOP_REQUESTED = threading.Event()
_serving: list[Any] = []  # the uvicorn server of this process, while it runs


def _noted(signum: int, frame: Any) -> None:
    """
    The handler of SIGTERM, SIGINT and SIGHUP outside uvicorn's own (uvicorn
    handles SIGTERM and SIGINT while it serves): it notes the request and
    stops the server if one runs. Before uvicorn listens (the process is
    starting), the server then stops gracefully as soon as it serves; after
    (uvicorn restores the handler it found and raises the signal again), the
    process exits 0 instead of dying by the signal.
    """
    _STOP_REQUESTED.set()
    for server in _serving:
        server.should_exit = True


def _note_stop_signals() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _noted)


def _serve_forever(runtime: Runtime, sock: socket.socket) -> int:
    """Serve on ``sock`` until SIGTERM/SIGINT; 0 after a graceful stop."""
    from .http import GracefulServer, ServeConfig  # noqa: PLC0415 (uvicorn: only to serve)

    options = runtime.options
    app = ServeApp(runtime)
    config = ServeConfig(
        app,
        header_timeout=options.header_timeout,
        body_timeout=options.body_timeout,
        on_timeout=runtime.metrics.timed_out if runtime.metrics is not None else None,
        lifespan="on",
        interface="asgi3",
        loop="asyncio",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        backlog=options.backlog,
        limit_concurrency=options.max_connections,
        timeout_keep_alive=max(1, round(options.keep_alive_timeout)),
        timeout_graceful_shutdown=max(1, round(options.graceful_timeout)),
    )
    # uvicorn types these as whole seconds but uses them as any number of seconds
    config.timeout_keep_alive = options.keep_alive_timeout  # type: ignore[assignment]
    config.timeout_graceful_shutdown = options.graceful_timeout  # type: ignore[assignment]
    server = GracefulServer(
        config, on_shutdown=app.begin_shutdown, stop_requested=_STOP_REQUESTED.is_set
    )
    _serving.append(server)
    try:
        server.run(sockets=[sock])
    finally:
        _serving.remove(server)
        runtime.close()
    if not server.started:
        log.error("serve_start_failed")
        return 1
    log.info("serve_stopped")
    return 0


def _watch_parent(parent: int) -> None:
    """A worker whose supervisor is gone (killed) stops gracefully, not serve on orphaned."""
    while os.getppid() == parent:
        time.sleep(1.0)
    log.error("serve_supervisor_gone", supervisor_pid=parent)
    os.kill(os.getpid(), signal.SIGTERM)


def _child(options: ServeOptions, sock: socket.socket, metrics_dir: str, parent: int) -> int:
    """A forked worker process: open its own runtime and serve."""
    _note_stop_signals()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        runtime = Runtime.open(options, metrics_dir=metrics_dir)
    except (ValueError, KplusFSMError) as exc:
        log.error("serve_worker_open_failed", error=type(exc).__name__)
        return 4
    return _serve_forever(runtime, sock)


class Supervisor:
    """
    The parent of ``--workers N``: forks the workers (each serves the shared
    socket), replaces one that dies, and on SIGTERM/SIGINT/SIGHUP closes the socket,
    passes SIGTERM on and waits ``graceful_timeout`` (+5 s) for them before
    SIGKILL. Exits 0 when every worker stopped gracefully. Workers that keep
    dying within 5 s of their start make it give up (exit 1). A worker whose
    supervisor was killed notices within a second and stops gracefully.
    """

    def __init__(self, options: ServeOptions, sock: socket.socket, metrics_dir: str) -> None:
        self.options = options
        self.sock = sock
        self.metrics_dir = metrics_dir
        self.children: dict[int, float] = {}
        self.stopping = False
        self.quick_deaths = 0

    def _spawn(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                code = _child(self.options, self.sock, self.metrics_dir, parent)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = time.monotonic()
        log.info("serve_worker_started", worker_pid=pid)

    def _reap(self) -> list[tuple[int, int, float]]:
        """``(pid, exit code, seconds alive)`` of the workers that ended."""
        ended = []
        for pid, started in list(self.children.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                del self.children[pid]
                ended.append((pid, os.waitstatus_to_exitcode(status), time.monotonic() - started))
        return ended

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._stop)
        for _ in range(self.options.workers):
            self._spawn()
        failed = False
        while not self.stopping:
            for pid, code, alive in self._reap():
                log.warning("serve_worker_died", worker_pid=pid, exit_code=code)
                self.quick_deaths = self.quick_deaths + 1 if alive < _QUICK_DEATH else 0
                if self.quick_deaths >= 3 * self.options.workers:
                    log.error("serve_workers_keep_failing")
                    self.stopping = failed = True
                    break
                self._spawn()
            time.sleep(0.1)
        return self._shutdown(failed)

    def _shutdown(self, failed: bool) -> int:
        self.sock.close()
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.options.graceful_timeout + 5.0
        codes = []
        while self.children and time.monotonic() < deadline:
            codes += [code for _, code, _ in self._reap()]
            time.sleep(0.05)
        for pid in list(self.children):
            log.error("serve_worker_killed", worker_pid=pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            codes.append(-signal.SIGKILL)
        return 1 if failed or any(codes) else 0


def check_setup(options: ServeOptions) -> None:
    """
    Open what a worker will open, once, and close it: bad configuration fails
    here, with its own error, before anything is forked or bound. Consumers
    that do not exist yet are created at their start.
    """
    Runtime.open(options, with_metrics=False).close()


def run_serve(options: ServeOptions, *, announce: Callable[[str], None]) -> int:
    """
    Serve until SIGTERM or SIGINT; the exit code (0 after a graceful stop).
    ``announce`` is called once listening, with the webhook URL.

    Raises:
        ValueError: a bad option, webhook secret or consumer (nothing served).
        StoreError: the log cannot be opened.
        ListenError: the address cannot be bound.
    """
    options.check()
    configure_logging(options.log_format, options.log_level)
    if options.workers == 1:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        _note_stop_signals()  # a SIGTERM while starting stops it once it serves
        runtime = Runtime.open(options)
        try:
            sock = bind(options.host, options.port, options.backlog)
        except BaseException:
            runtime.close()
            raise
        announce(url_of(sock) + options.path)
        log.info("serve_listening", url=url_of(sock), workers=1)
        return _serve_forever(runtime, sock)
    check_setup(options)
    sock = bind(options.host, options.port, options.backlog)
    metrics_dir = tempfile.mkdtemp(prefix="kplus-fsm-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        supervisor = Supervisor(options, sock, metrics_dir)
        announce(url_of(sock) + options.path)
        log.info("serve_listening", url=url_of(sock), workers=options.workers)
        return supervisor.run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


__all__ = ["ListenError", "Supervisor", "bind", "check_setup", "run_serve", "url_of"]
