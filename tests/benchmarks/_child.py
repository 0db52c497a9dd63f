"""
One full read in a fresh process, for an honest peak-memory reading:

    python tests/benchmarks/_child.py {ours|raw|raw_position|peer} PATH

Prints one JSON line: ``events``, ``seconds``, ``peak_mb`` (this process's
``VmHWM``: interpreter, imports and the read), ``base_mb`` (``VmRSS`` after the
imports and the open, before the read) and ``ok``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    kind, path = argv[0], Path(argv[1])
    from _common import peak_rss_mb, rss_mb
    from _workload import quiet_logging

    quiet_logging()
    ok = True
    if kind == "ours":
        from kplus_fsm import SQLiteStore

        # What `kplus-fsm replay --check` runs: the store opened read-only, replay().
        with SQLiteStore(path, read_only=True) as store:
            base = rss_mb()
            started = time.perf_counter()
            report = store.replay()
            elapsed = time.perf_counter() - started
        events, ok = report.events, report.ok
    elif kind in ("raw", "raw_position"):
        import _raw

        base = rss_mb()
        started = time.perf_counter()
        events = _raw.read_all(
            path, order="position" if kind == "raw_position" else "stream, version"
        )
        elapsed = time.perf_counter() - started
    elif kind == "peer":
        import _peer

        app = _peer.open_app(path, "FULL")
        base = rss_mb()
        started = time.perf_counter()
        events = _peer.read_all(app)
        elapsed = time.perf_counter() - started
        app.close()
    else:
        raise SystemExit(f"unknown read {kind!r}")
    print(
        json.dumps(
            {
                "kind": kind,
                "events": events,
                "seconds": elapsed,
                "peak_mb": peak_rss_mb(),
                "base_mb": base,
                "ok": ok,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
