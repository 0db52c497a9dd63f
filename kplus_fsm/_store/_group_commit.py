"""
Group commit: the inputs several threads record at once share one durable
``COMMIT``.

The first thread to find no commit under way leads: it gathers what is queued
(waiting up to ``group_wait`` for threads that have been recording lately),
takes at most ``max_batch`` inputs and hands them to the store's ``write``; the
others wait on a condition until their input is done. Nothing here knows SQL:
``write(batch)`` commits the batch (or fails it) and marks every item done.
Each caller returns only after the commit that holds its input, so no input is
acknowledged before it is durable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

import attrs

from ..exceptions import ConcurrencyError, StoreError
from ..typing import RecordItem
from ._rows import Recorded

#: A thread that recorded within this many seconds is expected to record again soon.
PRODUCER_WINDOW: Final = 0.05


@attrs.define(eq=False)
class Pending:
    """One input on its way into a (group) commit, and what became of it."""

    item: RecordItem
    result: Recorded | None = None
    error: BaseException | None = None
    done: bool = False
    thread: int = attrs.field(factory=threading.get_ident)

    def failure(self) -> Exception:
        """The error that kept this input out of the log (an unknown one if none was set)."""
        if isinstance(self.error, Exception):
            return self.error
        return StoreError("the input was not recorded")

    def outcome(self) -> Recorded:
        """The recorded input, or raise what kept it out of the log."""
        if self.result is not None:
            return self.result
        error = self.error
        if isinstance(error, StoreError) and not isinstance(error, ConcurrencyError):
            # The batch's shared error: a fresh instance per waiting thread.
            raise type(error)(str(error)) from error
        raise self.failure() if error is None else error


class GroupCommit:
    """
    The queue, the leader election and the gathering wait of group commit.

    Args:
        write: commits a batch in one transaction; sets each item's result or
            error and ``done`` (called by one leader at a time).
        max_batch: the most inputs one commit holds.
        group_wait: the longest a leader waits (seconds) for the inputs of
            other threads that have been recording lately; 0 disables the wait.
    """

    def __init__(
        self, write: Callable[[list[Pending]], None], *, max_batch: int, group_wait: float
    ) -> None:
        self._write = write
        self.max_batch = max_batch
        self.group_wait = group_wait
        self._queue: list[Pending] = []
        self._cond = threading.Condition(threading.Lock())
        self._leading = False
        self._gathering = False
        self._producers: dict[int, float] = {}  # thread -> when it last recorded

    @property
    def queued(self) -> int:
        """Inputs waiting for a commit (a test's view into the queue)."""
        with self._cond:
            return len(self._queue)

    def commit_now(self, items: Sequence[RecordItem]) -> list[Recorded | Exception]:
        """
        ``items`` written by this thread in one transaction, in order, without
        waiting for other threads' inputs (``record_many``): each its result, or
        its own error. Raises what the commit itself raised.
        """
        batch = [Pending(item) for item in items]
        if batch:
            self._write(batch)
        return [p.result if p.result is not None else p.failure() for p in batch]

    def submit(self, item: Pending) -> Recorded:
        """Queue ``item``, lead a commit or wait for the one that holds it; its outcome."""
        with self._cond:
            self._queue.append(item)
            if self._gathering:
                self._cond.notify_all()  # the leader is waiting for company
            while self._leading and not item.done:
                self._cond.wait()
            if item.done:
                return item.outcome()
            # Lead: commit what is queued, in order, up to and including this input
            # (more than one batch when more than max_batch inputs wait before it).
            self._leading = True
            self._gather()
        try:
            self._lead(item)
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()
        return item.outcome()

    def _lead(self, item: Pending) -> None:
        """Commit batches from the head of the queue until ``item`` is done."""
        while not item.done:
            with self._cond:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
            if not batch:  # pragma: no cover - the item is queued until a leader takes it
                return
            self._write(batch)

    def _gather(self) -> None:
        """
        Commit delay (``_cond`` held): when other threads have been recording
        lately, wait up to ``group_wait`` seconds for them to queue their next
        input, so that one fsync serves them all instead of a batch of one
        starting the moment the last commit ended. A lone producer never waits.
        """
        now = time.monotonic()
        self._producers[threading.get_ident()] = now
        horizon = now - PRODUCER_WINDOW
        for ident, seen in list(self._producers.items()):
            if seen < horizon:
                del self._producers[ident]
        for queued in self._queue:
            self._producers[queued.thread] = now
        expected = min(len(self._producers), self.max_batch)
        if expected <= 1 or self.group_wait <= 0:
            return
        deadline = now + self.group_wait
        self._gathering = True
        try:
            while len(self._queue) < expected:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        finally:
            self._gathering = False


__all__ = ["PRODUCER_WINDOW", "GroupCommit", "Pending"]
