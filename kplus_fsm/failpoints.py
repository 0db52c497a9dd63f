"""
Failpoints: named places in the code where a test can make the process die,
raise or stall, to prove that a crash between any two writes is safe (as
FoundationDB's and TiKV's failpoints do). Off unless armed: the environment
variable ``KPLUS_FSM_FAILPOINTS`` is read once, at import, and never by
production code paths otherwise; an unarmed failpoint costs one dict lookup.

``KPLUS_FSM_FAILPOINTS="intake.after_record=kill,followup.after_read=sleep:2"``

Actions: ``kill`` (SIGKILL this process at once: no cleanup, no flush, as a
power cut or the OOM killer would), ``exit`` (``os._exit(3)``), ``raise``
(:class:`FailpointError`), ``sleep:SECONDS``. A name may carry ``@N`` to fire
only on its N-th hit (``intake.after_record@2=kill``).

In process, a test arms one with :func:`armed` (a context manager), usually
with ``raise``: the exception stands for the process dying at that point.

The failpoints in the code are listed in :data:`FAILPOINTS` (a test checks
that each one is reachable).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Final

#: Every failpoint in the code base, and where it sits.
FAILPOINTS: Final = {
    "intake.after_record": "a delivery is recorded; the re-fetch has not started",
    "intake.before_refetch_record": "the charge was re-fetched; not yet recorded",
    "intake.after_refetch_record": "the re-fetched charge is recorded; no answer sent yet",
    "followup.before_record": "the follow-up read a charge; not yet recorded",
    "create.after_request": "the write-ahead request is recorded; POST /charges not sent",
    "create.after_post": "POST /charges answered; the answer is not recorded",
    "consumer.after_handle": "a consumer's handler returned; its position is not advanced",
    "consumer.before_transaction": "a transactional consumer holds its lease; no transaction yet",
    "consumer.before_commit": "a transactional consumer handled its batch; not yet committed",
    "postgres.before_flush": "a PostgreSQL chain commit is made, its WAL flush not yet confirmed",
}


class FailpointError(RuntimeError):
    """Raised by a failpoint armed with ``raise``."""


def _parse(text: str) -> dict[str, tuple[str, int | None]]:
    armed: dict[str, tuple[str, int | None]] = {}
    for item in text.split(","):
        name, sep, action = item.strip().partition("=")
        if not sep:
            continue
        name, at, nth = name.partition("@")
        armed[name.strip()] = (action.strip(), int(nth) if at and nth.isdigit() else None)
    return armed


_ARMED: Final = _parse(os.environ.get("KPLUS_FSM_FAILPOINTS", ""))
_hits: dict[str, int] = {}
_lock = threading.Lock()


@contextlib.contextmanager
def armed(name: str, action: str = "raise", *, nth: int | None = None) -> Iterator[None]:
    """
    Arm failpoint ``name`` with ``action`` while the block runs (on its ``nth``
    hit only, if given), in this process.

    Raises:
        KeyError: ``name`` is not a failpoint of the code base.
    """
    if name not in FAILPOINTS:
        raise KeyError(f"no failpoint named {name!r}")
    with _lock:
        previous = _ARMED.get(name)
        _ARMED[name] = (action, nth)
        _hits[name] = 0
    try:
        yield
    finally:
        with _lock:
            if previous is None:
                _ARMED.pop(name, None)
            else:
                _ARMED[name] = previous


def hits(name: str) -> int:
    """How many times an armed failpoint was reached since it was armed."""
    return _hits.get(name, 0)


def failpoint(name: str) -> None:
    """Do what ``name`` is armed to do (nothing, unless a test armed it)."""
    if not _ARMED:
        return
    armed = _ARMED.get(name)
    if armed is None:
        return
    action, nth = armed
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        hit = _hits[name]
    if nth is not None and hit != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "exit":
        os._exit(3)
    elif action == "raise":
        raise FailpointError(f"failpoint {name} fired")
    elif action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))


__all__ = ["FAILPOINTS", "FailpointError", "armed", "failpoint", "hits"]
