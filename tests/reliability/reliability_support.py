"""
Shared helpers of the reliability suite (``tests/reliability``): the figures each
test reports, quiet logging for hot loops, and Omise-shaped builders.

Figures are printed in the ``reliability figures`` section at the end of a pytest
run (see ``pytest_terminal_summary`` in ``tests/conftest.py``); with
``KPLUS_RELIABILITY_FIGURES=path`` they are also appended to ``path`` as JSON lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import structlog

#: (test, figure, value) in the order they were reported.
FIGURES: list[tuple[str, str, Any]] = []


def figure(test: str, name: str, value: Any) -> None:
    """Report one figure of a reliability test."""
    FIGURES.append((test, name, value))
    target = os.environ.get("KPLUS_RELIABILITY_FIGURES")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(json.dumps({"test": test, "figure": name, "value": value}) + "\n")


def seed_for(test: str) -> int:
    """
    The random seed of a test: ``KPLUS_RELIABILITY_SEED`` if set (to reproduce a
    run), else a fresh one. Either way it is reported as a figure.
    """
    raw = os.environ.get("KPLUS_RELIABILITY_SEED")
    seed = int(raw) if raw else random.SystemRandom().randrange(1, 2**31)
    figure(test, "seed", seed)
    return seed


@contextlib.contextmanager
def quiet_structlog(level: int = logging.CRITICAL) -> Iterator[None]:
    """Silence structlog below ``level`` (hot loops), restoring the configuration after."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    try:
        yield
    finally:
        structlog.configure(**saved)


class Stopwatch:
    """Wall-clock seconds since creation."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 2)
