"""
The CLI's queries (kplus_fsm.cli._queries) on their own: the one time parser of
``--since``/``--until``/``--as-of`` and the percentile of ``stats``. The queries
against a log are run through the commands in test_incident.py.
"""

from __future__ import annotations

import datetime as dt

import pytest

from kplus_fsm.cli import _queries

# ------------------------------------------------------------------ time parser


class TestParseWhen:
    """One parser for --since, --until and --as-of."""

    NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("-2h", "2026-03-01T10:00:00.000000Z"),
            ("30m", "2026-03-01T11:30:00.000000Z"),
            ("-7d", "2026-02-22T12:00:00.000000Z"),
            ("-1w", "2026-02-22T12:00:00.000000Z"),
            ("-90s", "2026-03-01T11:58:30.000000Z"),
            ("now", "2026-03-01T12:00:00.000000Z"),
            ("2026-03-01T10:00:00Z", "2026-03-01T10:00:00.000000Z"),
            ("2026-03-01T17:00:00+07:00", "2026-03-01T10:00:00.000000Z"),
            ("2026-03-01", "2026-03-01T00:00:00.000000Z"),
            ("2026-03-01 10:00", "2026-03-01T10:00:00.000000Z"),
        ],
    )
    def test_accepted(self, text: str, expected: str) -> None:
        assert _queries.parse_when(text, now=self.NOW) == expected

    @pytest.mark.parametrize("text", ["", "-2x", "yesterday", "2026-13-01", "--2h"])
    def test_refused(self, text: str) -> None:
        with pytest.raises(ValueError, match="not a time"):
            _queries.parse_when(text, now=self.NOW)


def test_percentile_nearest_rank() -> None:
    """p50 of 1..10 is 5, p90 is 9, p99 is 10; empty is None."""
    data = [float(i) for i in range(1, 11)]
    assert [_queries.percentile(data, p) for p in (50, 90, 99)] == [5.0, 9.0, 10.0]
    assert _queries.percentile([], 50) is None
