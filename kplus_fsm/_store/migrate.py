"""
``kplus-fsm migrate-log``: move an event log to another database (SQLite to
PostgreSQL, or back), row for row, and prove the move.

1. The source (opened read-only) is verified first: its hash chains give the
   heads the copy must reproduce. A source that does not verify is not moved.
2. The target must hold no row at all (its schema is created if missing).
3. Every ``inbox`` row, every event, every ``payments`` row and every consumer
   position is copied verbatim — the same ids, positions, stored strings and
   hashes — streamed in batches (constant memory), inside **one** write
   transaction on the target (PostgreSQL: ``COPY``, holding the chain lock), so
   a failed move leaves the target empty and can simply be run again.
4. The target is then verified end to end: its recomputed hash chains must end
   at the source's heads, with the same row counts, and a replay of every
   stream must match the copied projection.

Stop the writers of the source first (the copy is bounded by the source's head
when it starts; rows appended during the move would be left behind).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import attrs

from ..exceptions import MigrationRefused
from ..typing import SQLStore
from . import _rows, open_store
from ._rows import INBOX_COLUMNS
from ._urls import redact

BATCH: Final = 2000
CONSUMER_COLUMNS: Final = _rows.CONSUMER_COLUMNS


@attrs.frozen(kw_only=True)
class MigrationReport:
    """What ``migrate-log`` copied and what the verification of the target found."""

    source: str
    target: str
    inbox_rows: int
    events: int
    payments: int
    consumers: int
    source_inbox_head: str
    source_events_head: str
    target_inbox_head: str
    target_events_head: str
    schema_version: str | None
    replayed_payments: int
    differences: int
    seconds: float
    problem: str | None = None

    @property
    def heads_equal(self) -> bool:
        return (self.source_inbox_head, self.source_events_head) == (
            self.target_inbox_head,
            self.target_events_head,
        )

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["ok"] = self.ok
        out["heads_equal"] = self.heads_equal
        return out


def _keyset(source: SQLStore, sql: str, last: int | None, batch: int) -> Iterator[tuple[Any, ...]]:
    """Rows of ``sql`` (``WHERE key > ? [AND key <= ?] ORDER BY key LIMIT ?``), in batches."""
    after: Any = 0 if last is not None else ""
    while True:
        params = [after, last, batch] if last is not None else [after, batch]
        rows = source.query(sql, params)
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1][0]


COPIED: Final = _rows.COPIED


def _source_rows(
    source: SQLStore, table: str, head: dict[str, Any], batch: int
) -> Iterator[tuple[Any, ...]]:
    """The rows of ``table`` to copy, in key order, in batches (inbox and events up to ``head``)."""
    if table == "inbox":
        return _keyset(
            source,
            f"SELECT {', '.join(INBOX_COLUMNS)} FROM inbox WHERE id > ? AND id <= ?"
            " ORDER BY id LIMIT ?",
            int(head["inbox_id"]),
            batch,
        )
    if table == "events":
        return _keyset(
            source,
            f"SELECT {', '.join(_rows.EVENT_COLUMNS)} FROM events"
            " WHERE position > ? AND position <= ? ORDER BY position LIMIT ?",
            int(head["event_position"]),
            batch,
        )
    if table == "payments":
        return _keyset(
            source,
            f"SELECT {', '.join(_rows.PAYMENT_COLUMNS)} FROM payments"
            " WHERE payment_id > ? ORDER BY payment_id LIMIT ?",
            None,
            batch,
        )
    return _keyset(
        source,
        "SELECT name, position, updated_at FROM consumers WHERE name > ? ORDER BY name LIMIT ?",
        None,
        batch,
    )


def _copy(
    target: SQLStore,
    table: str,
    columns: Sequence[str],
    rows: Iterator[tuple[Any, ...]],
    progress: Callable[[int], None],
) -> int:
    def counted() -> Iterator[tuple[Any, ...]]:
        n = 0
        for row in rows:
            yield row
            n += 1
            if n % 1000 == 0:
                progress(1000)
        progress(n % 1000)

    return target.copy_rows(table, columns, counted())


def migrate_log(
    source_location: str | os.PathLike[str],
    target_location: str | os.PathLike[str],
    *,
    batch: int = BATCH,
    progress: Callable[[str, int], None] | None = None,
) -> MigrationReport:
    """
    Copy the log at ``source_location`` into the empty log at
    ``target_location`` and verify the copy (see the module's description).
    ``progress(stage, n)`` reports rows as they are checked and copied.

    Raises:
        MigrationRefused: the source does not verify, or the target is not
            empty; nothing was written.
        StoreError: a log cannot be opened, or the copy failed (nothing committed).
    """
    started = time.monotonic()
    tick = progress or (lambda _stage, _n: None)
    src_name, dst_name = redact(source_location), redact(target_location)
    source = open_store(source_location, read_only=True)
    try:
        checked = source.verify(progress=lambda n: tick("verify source", n))
        if not checked.ok:
            raise MigrationRefused(
                f"the source does not verify, so it was not moved: {checked.problem}"
            )
        head = source.head()
        if (int(head["inbox_id"]), int(head["event_position"])) != (
            checked.inbox_rows,
            checked.events,
        ):
            raise MigrationRefused(
                "the source was written to while it was verified: stop its writers"
            )
        target = open_store(target_location)
        try:
            if not target.is_empty():
                raise MigrationRefused(
                    f"the target {dst_name} is not empty: migrate-log only fills an empty log"
                )
            counts: dict[str, int] = {}

            def work(_handle: Any) -> None:
                counts.clear()
                for table, columns in COPIED:
                    rows = _source_rows(source, table, head, batch)
                    counts[table] = _copy(target, table, columns, rows, lambda n: tick("copy", n))

            target.write_transaction(work)
            report = target.verify(progress=lambda n: tick("verify target", n))
            replay = target.replay(progress=lambda n: tick("replay target", n))
        finally:
            target.close()
    finally:
        source.close()
    problem = None
    if not report.ok:
        problem = f"the target does not verify: {report.problem}"
    elif (report.inbox_head, report.events_head) != (checked.inbox_head, checked.events_head):
        problem = "the target's hash chains do not end at the source's heads"
    elif (report.inbox_rows, report.events) != (checked.inbox_rows, checked.events):
        problem = "the target holds a different number of rows than the source"
    elif not replay.ok:
        problem = (
            f"replaying the target differs from its projection in {len(replay.differences)} fields"
        )
    elif replay.payments != counts.get("payments"):
        problem = "the target has payments without events, or events without a payment row"
    return MigrationReport(
        source=src_name,
        target=dst_name,
        inbox_rows=counts.get("inbox", 0),
        events=counts.get("events", 0),
        payments=counts.get("payments", 0),
        consumers=counts.get("consumers", 0),
        source_inbox_head=checked.inbox_head,
        source_events_head=checked.events_head,
        target_inbox_head=report.inbox_head,
        target_events_head=report.events_head,
        schema_version=report.schema_version,
        replayed_payments=replay.payments,
        differences=len(replay.differences),
        seconds=round(time.monotonic() - started, 3),
        problem=problem,
    )


__all__ = ["MigrationRefused", "MigrationReport", "migrate_log"]
