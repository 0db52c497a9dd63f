"""kplus_fsm._store._group_commit: leader election and batching, without a database."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from kplus_fsm import InboxDraft
from kplus_fsm._store._group_commit import GroupCommit, Pending
from kplus_fsm.exceptions import StoreError
from kplus_fsm.typing import RecordItem


def _item(n: int) -> Pending:
    draft = InboxDraft(kind="webhook", body=str(n), body_encoding="text")
    return Pending(RecordItem(draft=draft, decide=lambda _p: None, now="t"))  # type: ignore[arg-type,return-value]


class Committer:
    """A fake ``write``: records each batch; optionally holds the first commit."""

    def __init__(self, hold_first: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.hold_first = hold_first
        self.entered = threading.Event()
        self.fail: BaseException | None = None

    def __call__(self, batch: list[Pending]) -> None:
        self.entered.set()
        if self.hold_first is not None and not self.batches:
            self.hold_first.wait(10)
        self.batches.append([p.item.draft.body for p in batch])
        for p in batch:
            if self.fail is not None:
                p.error = self.fail
            else:
                p.result = p.item.draft.body  # type: ignore[assignment]
            p.done = True


def test_a_lone_caller_commits_its_own_input_at_once() -> None:
    write = Committer()
    group = GroupCommit(write, max_batch=8, group_wait=5.0)
    started = time.monotonic()
    assert group.submit(_item(1)) == "1"  # type: ignore[comparison-overlap]
    assert time.monotonic() - started < 1.0, "a lone producer never waits for company"
    assert write.batches == [["1"]]


def test_inputs_queued_during_a_commit_share_the_next_one() -> None:
    release = threading.Event()
    write = Committer(hold_first=release)
    group = GroupCommit(write, max_batch=8, group_wait=0.0)
    results: dict[int, Any] = {}

    def submit(n: int) -> None:
        results[n] = group.submit(_item(n))

    first = threading.Thread(target=submit, args=(0,))
    first.start()
    assert write.entered.wait(5)
    others = [threading.Thread(target=submit, args=(n,)) for n in (1, 2, 3)]
    for t in others:
        t.start()
    deadline = time.monotonic() + 5
    while group.queued < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert group.queued == 3
    assert results == {}, "nothing is acknowledged before its commit"
    release.set()
    for t in (first, *others):
        t.join(5)
    assert results == {0: "0", 1: "1", 2: "2", 3: "3"}
    assert write.batches[0] == ["0"]
    assert sorted(write.batches[1]) == ["1", "2", "3"]
    assert len(write.batches) == 2


def test_max_batch_splits_the_queue() -> None:
    release = threading.Event()
    write = Committer(hold_first=release)
    group = GroupCommit(write, max_batch=2, group_wait=0.0)
    threads = [threading.Thread(target=group.submit, args=(_item(n),)) for n in range(5)]
    threads[0].start()
    assert write.entered.wait(5)
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 5
    while group.queued < 4 and time.monotonic() < deadline:
        time.sleep(0.001)
    release.set()
    for t in threads:
        t.join(5)
    assert [len(b) for b in write.batches] == [1, 2, 2]


def test_a_leader_whose_input_is_past_max_batch_commits_until_it_is_in() -> None:
    """Whichever waiting thread leads, its own input is committed before it returns."""
    release = threading.Event()
    write = Committer(hold_first=release)
    group = GroupCommit(write, max_batch=1, group_wait=0.0)
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def submit(n: int) -> None:
        try:
            results[n] = group.submit(_item(n))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(6)]
    threads[0].start()
    assert write.entered.wait(5)
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 5
    while group.queued < 5 and time.monotonic() < deadline:
        time.sleep(0.001)
    release.set()
    for t in threads:
        t.join(5)
    assert errors == []
    assert results == {n: str(n) for n in range(6)}
    assert all(len(b) == 1 for b in write.batches)
    assert len(write.batches) == 6


def test_a_failed_commit_reaches_every_caller_in_it_as_its_own_error() -> None:
    release = threading.Event()
    write = Committer(hold_first=release)
    write.fail = StoreError("disk full")
    group = GroupCommit(write, max_batch=8, group_wait=0.0)
    errors: list[BaseException] = []

    def submit(n: int) -> None:
        try:
            group.submit(_item(n))
        except StoreError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(3)]
    threads[0].start()
    assert write.entered.wait(5)
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 5
    while group.queued < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    release.set()
    for t in threads:
        t.join(5)
    assert len(errors) == 3
    assert len({id(e) for e in errors}) == 3, "a fresh error per waiting thread"
    assert all(str(e) == "disk full" for e in errors)


def test_an_input_never_marked_done_is_not_recorded() -> None:
    pending = _item(1)
    with pytest.raises(StoreError, match="not recorded"):
        pending.outcome()
