"""
The limit: plain ``sqlite3`` writing the same rows as the library.

- The schema and indexes are kplus_fsm's own: :func:`prepare` opens a
  :class:`kplus_fsm.SQLiteStore` on the file once (its migrations), then closes it.
- The same PRAGMAs (WAL, the ``synchronous`` level, a busy timeout), the same
  transaction shape (``BEGIN IMMEDIATE``; the inbox row, the event row, the
  ``payments`` upsert; ``COMMIT``) and the same JSON codec
  (``kplus_fsm._codec.dumps``/``loads``, so a codec change applies to both sides).
- Nothing else: no state machine, no validation, no hash chain (the ``hash``
  columns get a constant of the same length), versions and projection fields
  kept in memory instead of read back.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from _workload import Step

from kplus_fsm import SQLiteStore, _codec
from kplus_fsm._store import _rows
from kplus_fsm._store._rows import INBOX_COLUMNS

LEVELS: Final = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}
NO_HASH: Final = "0" * 64
VERIFICATION: Final = {"webhook": "verified", "backfill": "fetched"}
INBOX_KIND: Final = {
    "request": "payment_request",
    "charge": "charge_snapshot",
    "webhook": "webhook",
}

INSERT_INBOX: Final = (
    f"INSERT INTO inbox ({', '.join(INBOX_COLUMNS)}) VALUES ({', '.join('?' * len(INBOX_COLUMNS))})"
)
INSERT_EVENT: Final = (
    f"INSERT INTO events ({', '.join(_rows.EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_rows.EVENT_COLUMNS))})"
)
UPSERT_PAYMENT: Final = (
    f"INSERT OR REPLACE INTO payments ({', '.join(_rows.PAYMENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_rows.PAYMENT_COLUMNS))})"
)


def prepare(path: Path) -> None:
    """Create kplus_fsm's schema (tables, indexes, triggers, views) in ``path``."""
    SQLiteStore(path).close()


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {LEVELS[synchronous]}")
    return conn


def now_text() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RawWriter:
    """A hand-written writer of the log's rows: what the library's writes cost at least."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.conn = connect(path, synchronous)
        self.versions: dict[str, int] = {}
        self.payments: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        self.conn.close()

    # -------------------------------------------------------------- the rows

    def _rows(
        self, step: Step, inbox_id: int | None, now: str
    ) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], tuple[Any, ...]]:
        """The inbox row, the event rows (``causation`` filled later) and the payments row."""
        body = step.body
        external_id = None
        if isinstance(body, bytes):
            # The ids are in the body: a hand-written receiver parses it too.
            envelope = _codec.loads(body)
            external_id = envelope["id"]
            text, encoding = body.decode("utf-8"), "text"
        else:
            if step.kind == "webhook":
                external_id = body["id"]
            text, encoding = _codec.dumps(body), "json"
        inbox = (
            inbox_id,
            now,
            INBOX_KIND[step.kind],
            step.origin,
            step.payment_id,
            step.charge_id,
            external_id,
            text,
            encoding,
            None if step.headers is None else _codec.dumps(step.headers),
            VERIFICATION.get(step.origin, "not_applicable"),
            "applied",
            step.event_kind,
            NO_HASH,
            None,  # reason_code: refused inputs only
        )
        version = self.versions.get(step.payment_id, 0) + 1
        self.versions[step.payment_id] = version
        event = [
            None,
            step.payment_id,
            version,
            step.event_kind,
            1,
            _codec.dumps(step.event_data),
            now,
            inbox_id,
            NO_HASH,
        ]
        payment = self._project(step, version, now, external_id)
        return inbox, [tuple(event)], payment

    def _project(
        self, step: Step, version: int, now: str, external_id: str | None
    ) -> tuple[Any, ...]:
        p = self.payments.get(step.payment_id)
        if p is None:
            assert isinstance(step.body, dict)
            req = step.body
            p = self.payments[step.payment_id] = {
                "payment_id": step.payment_id,
                "status": "created",
                "amount": req.get("amount", 35_000),
                "currency": req.get("currency", "THB"),
                "return_uri": req.get("return_uri", ""),
                "platform_type": req.get("platform_type"),
                "description": req.get("description"),
                "metadata": req.get("metadata", {}),
                "charge_id": None,
                "livemode": None,
                "authorize_uri": None,
                "expires_at": None,
                "failure_code": None,
                "failure_message": None,
                "create_unknown": 0,
                "flags": [],
                "webhook_event_ids": [],
                "version": 0,
                "created_at": now,
                "updated_at": now,
                "order_ref": req.get("order_ref"),
            }
        data = step.event_data
        p["status"] = step.status
        p["version"] = version
        p["updated_at"] = now
        if step.charge_id is not None:
            p["charge_id"] = step.charge_id
        if "authorize_uri" in data:
            p["authorize_uri"] = data["authorize_uri"]
            p["expires_at"] = data["expires_at"]
            p["livemode"] = int(data["livemode"])
        if external_id is not None:
            p["webhook_event_ids"] = [*p["webhook_event_ids"], external_id]
        return (
            p["payment_id"],
            p["status"],
            p["amount"],
            p["currency"],
            p["return_uri"],
            p["platform_type"],
            p["description"],
            _codec.dumps(p["metadata"]),
            p["charge_id"],
            p["livemode"],
            p["authorize_uri"],
            p["expires_at"],
            p["failure_code"],
            p["failure_message"],
            p["create_unknown"],
            _codec.dumps(p["flags"]),
            _codec.dumps(p["webhook_event_ids"]),
            p["version"],
            p["created_at"],
            p["updated_at"],
            p["order_ref"],
        )

    # ------------------------------------------------------------- the writes

    def write(self, step: Step) -> None:
        """One input, one transaction: inbox row, event row, projection upsert."""
        now = now_text()
        inbox, events, payment = self._rows(step, None, now)
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            inbox_id = conn.execute(INSERT_INBOX, inbox).lastrowid
            conn.executemany(INSERT_EVENT, [(*e[:7], inbox_id, e[8]) for e in events])
            conn.execute(UPSERT_PAYMENT, payment)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def write_batch(self, batch: Sequence[Step], *, events_per_input: int = 1) -> None:
        """
        Many inputs in one transaction, with ``executemany``: the inbox rows, the
        event rows (``events_per_input`` per input: the same number of rows the
        library appends) and the projection upserts.
        """
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT coalesce(max(id), 0) FROM inbox").fetchone()
            next_id = int(row[0]) + 1
            inboxes: list[tuple[Any, ...]] = []
            events: list[tuple[Any, ...]] = []
            payments: list[tuple[Any, ...]] = []
            for step in batch:
                now = now_text()
                inbox, evs, payment = self._rows(step, next_id, now)
                inboxes.append(inbox)
                for n in range(events_per_input):
                    e = evs[0]
                    if n:
                        version = self.versions[step.payment_id] + 1
                        self.versions[step.payment_id] = version
                        e = (*e[:2], version, *e[3:])
                    events.append(e)
                payments.append(payment)
                next_id += 1
            conn.executemany(INSERT_INBOX, inboxes)
            conn.executemany(INSERT_EVENT, events)
            conn.executemany(UPSERT_PAYMENT, payments)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def preload(self, steps: Iterable[Step]) -> None:
        """Know the payments ``steps`` created (versions, projection), untimed."""
        now = now_text()
        for step in steps:
            version = self.versions.get(step.payment_id, 0) + 1
            self.versions[step.payment_id] = version
            self._project(step, version, now, None)


# ------------------------------------------------------------------- the reads


def read_all(path: Path, *, order: str = "stream, version") -> int:
    """Every event row, in ``order``, its ``data`` decoded with the library's codec."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    loads = _codec.loads
    n = 0
    try:
        for row in conn.execute(
            f"SELECT {', '.join(_rows.EVENT_COLUMNS)} FROM events ORDER BY {order}"
        ):
            loads(row[5])
            n += 1
    finally:
        conn.close()
    return n


class RawShow:
    """What a hand-written ``show`` runs: the stream's events and the payment's inputs."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self.events_sql = (
            f"SELECT {', '.join(_rows.EVENT_COLUMNS)} FROM events WHERE stream = ? ORDER BY version"
        )
        self.inbox_sql = (
            f"SELECT {', '.join(INBOX_COLUMNS)} FROM inbox WHERE payment_id = ? ORDER BY id"
        )

    def show(self, payment_id: str) -> int:
        loads = _codec.loads
        events = [
            (*row[:5], loads(row[5]), *row[6:])
            for row in self.conn.execute(self.events_sql, (payment_id,))
        ]
        inputs = self.conn.execute(self.inbox_sql, (payment_id,)).fetchall()
        return len(events) + len(inputs)

    def close(self) -> None:
        self.conn.close()
