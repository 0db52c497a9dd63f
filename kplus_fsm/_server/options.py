"""
What ``kplus-fsm serve`` is told: :class:`ServeOptions`, and the parsers of
the flags that are not plain numbers (``--consumer NAME=module:function``,
durations such as ``30s``).

Invariant: this module imports nothing heavy (no HTTP client, no adapter, no
server, no metrics library), so that the CLI can build ``serve``'s options at
start-up for every command; the intake's defaults (``path``, ``max_body``) are
read from :mod:`kplus_fsm.adapters.webhooks` only when options are made.

Errors: :meth:`ServeOptions.check`, :func:`parse_consumer` and
:func:`parse_duration` raise ``ValueError`` with a message for people.
"""

from __future__ import annotations

import logging
from typing import Final

import attrs

#: How a new consumer named with ``--consumer`` may start (``--consumer-start``).
CONSUMER_STARTS: Final = ("beginning", "now")
#: The log formats of ``--log-format``.
LOG_FORMATS: Final = ("console", "json")


@attrs.frozen(kw_only=True)
class ConsumerRef:
    """A consumer to run inside ``serve``: its name and ``module:function``."""

    name: str
    reference: str


def _default_path() -> str:
    from ..adapters.webhooks import DEFAULT_PATH  # noqa: PLC0415 - see the module docstring

    return DEFAULT_PATH


def _default_max_body() -> int:
    from ..adapters.webhooks import MAX_BODY  # noqa: PLC0415 - see the module docstring

    return MAX_BODY


@attrs.frozen(kw_only=True)
class ServeOptions:
    """
    Everything ``kplus-fsm serve`` is told (durations in seconds). The
    environment supplies the rest (``OMISE_*``, see
    :func:`~kplus_fsm.adapters.webhooks.intake_from_env`). ``path`` and
    ``max_body`` default to the intake's (``/webhooks/omise``, its body limit).
    """

    db: str
    host: str = "127.0.0.1"
    port: int = 8000
    path: str = attrs.field(factory=_default_path)
    workers: int = 1
    reconcile_every: float | None = 60.0
    consumers: tuple[ConsumerRef, ...] = ()
    consumer_start: str | None = None
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    graceful_timeout: float = 10.0
    max_connections: int = 1000
    backlog: int = 2048
    threads: int = 8
    max_body: int = attrs.field(factory=_default_max_body)
    ready_timeout: float = 2.0
    lease_ttl: float = 30.0
    log_format: str = "console"
    log_level: int = logging.ERROR

    def check(self) -> None:
        """
        Raises:
            ValueError: an option out of its range.
        """
        if self.workers < 1 or self.threads < 1 or self.max_connections < 1 or self.backlog < 1:
            raise ValueError("workers, threads, max connections and backlog must be 1 or more")
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout", "ready_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', ' ')} must be positive")
        if self.lease_ttl < 5:
            raise ValueError("the lease time must be 5 s or more (the follow-up polls every 2 s)")
        if self.graceful_timeout < 0:
            raise ValueError("graceful timeout must be 0 or more")
        if self.reconcile_every is not None and self.reconcile_every <= 0:
            raise ValueError("the reconcile period must be positive")
        if self.consumer_start is not None and self.consumer_start not in CONSUMER_STARTS:
            raise ValueError(f"a consumer starts at one of {', '.join(CONSUMER_STARTS)}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"the log format is one of {', '.join(LOG_FORMATS)}")
        names = [c.name for c in self.consumers]
        if len(set(names)) != len(names):
            raise ValueError("each --consumer needs its own name")


def parse_consumer(text: str) -> ConsumerRef:
    """
    ``NAME=module:function`` as ``--consumer`` takes it.

    Raises:
        ValueError: not of that form.
    """
    name, sep, reference = text.partition("=")
    if not sep or not name.strip() or not reference.strip():
        raise ValueError(f"{text!r} is not NAME=module:function (e.g. shipping=myshop.fulfil:ship)")
    return ConsumerRef(name=name.strip(), reference=reference.strip())


def parse_duration(text: str) -> float:
    """
    Seconds from ``90``, ``1.5s``, ``500ms``, ``5m`` or ``1h``.

    Raises:
        ValueError: another form, or not positive.
    """
    raw = str(text).strip().lower()
    number, scale = raw, 1.0
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if raw.endswith(suffix):
            number, scale = raw[: -len(suffix)], factor
            break
    try:
        seconds = float(number) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 5m, 1h, 500ms)") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{text!r}: a duration must be positive")
    return seconds


__all__ = [
    "CONSUMER_STARTS",
    "LOG_FORMATS",
    "ConsumerRef",
    "ServeOptions",
    "parse_consumer",
    "parse_duration",
]
