"""
Time the questions the indexes exist for, on a (copy of a) big log, before and
after an index change. Not a test; the figures are in docs/million-events.md
("Index accounting"), the plans are asserted by tests/test_index_plans.py.

    python tests/scale/index_queries.py --db /tmp/copy-of-kplus-1m.db [--json]

- the on-call commands in process (``show`` by payment id and by charge id,
  ``list --stuck``, ``anomalies`` over the whole log, ``stats``), median of
  several calls;
- the store's questions: the follow-up's unresolved hints (whole log, and the
  incremental scan above a recent inbox id), reconciliation's due queue, and an
  inbox row by webhook event id (``external_id``), the last one as plain SQL
  (the lookup an engineer types into sqlite3 or Datasette).

Every command opens the log read-only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from click.testing import CliRunner


def _median_ms(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    fn()  # warm the page cache
    if time.perf_counter() - start > 10:
        calls = 1
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return round(statistics.median(samples) * 1000, 2)


def measure(db: Path, *, calls: int) -> dict[str, Any]:
    from kplus_fsm import SQLiteStore
    from kplus_fsm._time import omise_time
    from kplus_fsm.cli import cli

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    runner = CliRunner()

    def run(args: list[str]) -> Callable[[], object]:
        def go() -> object:
            res = runner.invoke(cli, [*args, "--db", str(db)])
            if res.exit_code != 0:
                raise SystemExit(f"{args} exited {res.exit_code}: {res.output}")
            return res

        return go

    out: dict[str, Any] = {}
    with SQLiteStore(db, read_only=True) as store:
        pid, cid = store.query(
            "SELECT payment_id, charge_id FROM payments WHERE charge_id IS NOT NULL"
            " ORDER BY payment_id LIMIT 1 OFFSET 1000"
        )[0]
        (event_id,) = store.query(
            "SELECT external_id FROM inbox WHERE id = (SELECT max(id) FROM inbox"
            " WHERE external_id IS NOT NULL AND id < 1000000)"
        )[0]
        (top,) = store.query("SELECT max(id) FROM inbox")[0]
        out["show_ms"] = _median_ms(run(["show", pid]), calls)
        out["show_charge_id_ms"] = _median_ms(run(["show", cid]), calls)
        out["list_stuck_ms"] = _median_ms(run(["list", "--stuck"]), calls)
        out["anomalies_ms"] = _median_ms(run(["anomalies", "--since", "-3650d"]), 3)
        out["stats_ms"] = _median_ms(run(["stats"]), 3)
        out["hints_whole_log_ms"] = _median_ms(store.unresolved_hints, 3)
        out["hints_after_recent_ms"] = _median_ms(
            lambda: store.unresolved_hints(after=int(top) - 2000), calls
        )
        now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
        out["reconcile_due_ms"] = _median_ms(
            lambda: store.reconcile_candidates(
                now=omise_time(now), cutoff=omise_time(now - dt.timedelta(minutes=15)), limit=100
            ),
            calls,
        )
        out["inbox_by_event_id_ms"] = _median_ms(
            lambda: store.query("SELECT id FROM inbox WHERE external_id = ?", [event_id]), calls
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = measure(args.db, calls=args.calls)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:24} {value:10.2f}")


if __name__ == "__main__":
    main()
