"""
The writing half of ``kplus-fsm export``: rows in JSON lines or CSV, and the
trailer that ends every export.

The trailer lets an auditor check that an export is whole without trusting
the tool: how many inbox rows and events it holds, the first and last id or
position of each, the hash each chain starts from (the row before the first
exported one: 64 zeros for a full export) and its head (the hash of the last
row exported), whether the export is complete, and if not, why it stopped.

- JSON lines: the last line is ``{"table": "trailer", ...}`` with the keys of
  :data:`TRAILER_KEYS`.
- CSV: the last row has ``trailer`` in its ``table`` column and the same
  object, as JSON, in its ``data`` column; every other column is empty.

Invariants: the trailer is written last and only after every row before it
(a file that ends without one was cut short); its counts and heads are those
of the rows written, never of the log, so a reader can check them line by line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from typing import IO, Any, Final

import attrs

from .. import _codec
from ..exceptions import StoreError
from ..typing import SQLStore
from . import _queries

#: The ``table`` value of the trailer line (JSON lines) or row (CSV).
TRAILER: Final = "trailer"
#: The format of the trailer (incremented if its keys ever change meaning).
FORMAT: Final = "kplus-fsm-export/1"
TRAILER_KEYS: Final = (
    "table",
    "format",
    "complete",
    "problem",
    "since",
    "inbox_rows",
    "events",
    "inbox_first",
    "inbox_last",
    "events_first",
    "events_last",
    "inbox_from_hash",
    "events_from_hash",
    "inbox_head",
    "events_head",
)
_PROGRESS_EVERY: Final = 1000
#: The hash of the row before a given one (where a partial export's chain starts).
_INBOX_BEFORE: Final = "SELECT hash FROM inbox WHERE id < ? ORDER BY id DESC LIMIT 1"
_EVENTS_BEFORE: Final = "SELECT hash FROM events WHERE position < ? ORDER BY position DESC LIMIT 1"


@attrs.define
class _Chain:
    rows: int = 0
    first: int | None = None
    last: int | None = None
    head: str | None = None

    def add(self, key: int, hash_: str) -> None:
        self.rows += 1
        if self.first is None:
            self.first = key
        self.last = key
        self.head = hash_


@attrs.define
class ExportTally:
    """What an export has written so far: per chain, the count, the ends, the head."""

    inbox: _Chain = attrs.field(factory=_Chain)
    events: _Chain = attrs.field(factory=_Chain)

    @property
    def rows(self) -> int:
        return self.inbox.rows + self.events.rows

    def add(self, row: dict[str, Any]) -> None:
        if row["table"] == "inbox":
            self.inbox.add(row["id"], row["hash"])
        else:
            self.events.add(row["position"], row["hash"])

    def trailer(
        self, store: SQLStore, *, since: str | None, problem: str | None = None
    ) -> dict[str, Any]:
        """The trailer object for the rows added (reads the two hashes the chains start from)."""
        starts = {
            "inbox": _chain_start(store, "inbox", self.inbox.first),
            "events": _chain_start(store, "events", self.events.first),
        }
        return {
            "table": TRAILER,
            "format": FORMAT,
            "complete": problem is None,
            "problem": problem,
            "since": since,
            "inbox_rows": self.inbox.rows,
            "events": self.events.rows,
            "inbox_first": self.inbox.first,
            "inbox_last": self.inbox.last,
            "events_first": self.events.first,
            "events_last": self.events.last,
            "inbox_from_hash": starts["inbox"],
            "events_from_hash": starts["events"],
            "inbox_head": self.inbox.head or starts["inbox"],
            "events_head": self.events.head or starts["events"],
        }


def _chain_start(store: SQLStore, table: str, first: int | None) -> str | None:
    """
    The hash of the row before ``first`` (genesis before row 1); ``None`` when no
    row of the chain was exported, or that row cannot be read.
    """
    if first is None:
        return None
    if first <= 1:
        return _codec.GENESIS
    sql = _INBOX_BEFORE if table == "inbox" else _EVENTS_BEFORE
    try:
        rows = store.query(sql, [first])
    except StoreError:
        return None
    return str(rows[0][0]) if rows else _codec.GENESIS


def write_rows(
    rows: Iterator[dict[str, Any]],
    out: IO[str],
    fmt: str,
    tally: ExportTally,
    update: Callable[[int], None] = lambda _n: None,
) -> str | None:
    """
    Write ``rows`` (a header first for CSV) and count them in ``tally``.
    Returns ``None``, or why reading stopped early (a damaged log).
    """
    problem: str | None = None
    write: Callable[[dict[str, Any]], Any]
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=_queries.EXPORT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        write = writer.writerow
    else:

        def write(row: dict[str, Any]) -> None:
            out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
            out.write("\n")

    n = 0
    try:
        for row in rows:
            write(row)
            tally.add(row)
            n += 1
            if n % _PROGRESS_EVERY == 0:
                update(_PROGRESS_EVERY)
    except StoreError as exc:
        problem = (
            f"reading stopped after inbox row {tally.inbox.last or 0} and events row "
            f"{tally.events.last or 0}: {exc}"
        )
    update(n % _PROGRESS_EVERY)
    return problem


def write_trailer(out: IO[str], fmt: str, trailer: dict[str, Any]) -> None:
    """The trailer line (JSON lines) or row (CSV): written last."""
    if fmt == "csv":
        body = {k: v for k, v in trailer.items() if k != "table"}
        row = dict.fromkeys(_queries.EXPORT_COLUMNS, "")
        row["table"] = TRAILER
        row["data"] = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        csv.DictWriter(out, fieldnames=_queries.EXPORT_COLUMNS, lineterminator="\n").writerow(row)
    else:
        out.write(json.dumps(trailer, ensure_ascii=False, separators=(",", ":")))
        out.write("\n")


__all__ = ["FORMAT", "TRAILER", "TRAILER_KEYS", "ExportTally", "write_rows", "write_trailer"]
