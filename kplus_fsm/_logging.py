"""
The package's loggers, with structlog imported on the first line logged rather
than when the package is imported (structlog and what it imports, asyncio among
them, are a large part of a short command's start-up: docs/performance.md).

:func:`get_logger` gives what ``structlog.get_logger(name)`` gives, but made on
first use: every call goes to structlog's logger of that name, configured as
structlog is at that moment (nothing is cached past structlog's own rules).

A host that configures structlog only if something is logged (``kplus-fsm``'s
reading commands) hands its configuration to :func:`defer`: it is applied just
before the next line any of these loggers logs, once, and :func:`cancel`
withdraws it (the host's invocation ended without a line).

Invariants: a logger made here never imports structlog until a method of it is
called; a deferred configuration is applied before the line that triggered it
is logged, at most once, and never after :func:`cancel`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_lock = threading.RLock()
_deferred: Callable[[], None] | None = None


def defer(configure: Callable[[], None]) -> None:
    """Run ``configure`` (it configures structlog) before the next line logged here."""
    global _deferred  # noqa: PLW0603 - the one pending configuration of the process
    with _lock:
        _deferred = configure


def cancel() -> None:
    """Withdraw a configuration :func:`defer` holds, if it was not applied."""
    global _deferred  # noqa: PLW0603
    with _lock:
        _deferred = None


def _apply_deferred() -> None:
    global _deferred
    with _lock:
        configure, _deferred = _deferred, None
        if configure is not None:
            configure()


class _Logger:
    """structlog's logger ``name``, looked up on first use (see the module docstring)."""

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attribute: str) -> Any:
        if _deferred is not None:
            _apply_deferred()
        logger = self._logger
        if logger is None:
            import structlog  # noqa: PLC0415 - the point of this module

            logger = self._logger = structlog.get_logger(self._name)
        return getattr(logger, attribute)


def get_logger(name: str) -> Any:
    """``structlog.get_logger(name)``, with structlog imported on the first line logged."""
    return _Logger(name)


__all__ = ["cancel", "defer", "get_logger"]
