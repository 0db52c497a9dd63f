"""kplus_fsm._time: the stored time format, Omise's, parsing and the year bounds."""

from __future__ import annotations

import datetime as dt

import pytest

from kplus_fsm import format_time, omise_time, parse_time
from kplus_fsm.exceptions import InvalidTimeError

BANGKOK = dt.timezone(dt.timedelta(hours=7))


def test_stored_format_is_utc_microseconds_z() -> None:
    when = dt.datetime(2026, 3, 1, 17, 0, 5, 123, tzinfo=BANGKOK)
    assert format_time(when) == "2026-03-01T10:00:05.000123Z"


def test_omise_format_is_utc_seconds_z() -> None:
    when = dt.datetime(2026, 3, 1, 17, 0, 5, 999_999, tzinfo=BANGKOK)
    assert omise_time(when) == "2026-03-01T10:00:05Z"
    assert omise_time(when.astimezone(dt.UTC).replace(tzinfo=None)) == "2026-03-01T10:00:05Z"


def test_omise_time_is_the_stored_time_cut_to_the_second() -> None:
    when = dt.datetime(2026, 12, 31, 23, 59, 59, 500_000, tzinfo=dt.UTC)
    assert omise_time(when) == format_time(when)[:19] + "Z"


@pytest.mark.parametrize(
    "text",
    ["2026-03-01T10:00:05Z", "2026-03-01T10:00:05.000123Z", "2026-03-01T17:00:05+07:00"],
)
def test_parse_reads_both_formats_and_offsets(text: str) -> None:
    assert parse_time(text).astimezone(dt.UTC).replace(microsecond=0) == dt.datetime(
        2026, 3, 1, 10, 0, 5, tzinfo=dt.UTC
    )


def test_parse_takes_naive_as_utc_and_round_trips() -> None:
    assert parse_time("2026-03-01T10:00:05") == dt.datetime(2026, 3, 1, 10, 0, 5, tzinfo=dt.UTC)
    stored = "2026-03-01T10:00:05.000123Z"
    assert format_time(parse_time(stored)) == stored


@pytest.mark.parametrize(
    "when",
    [
        dt.datetime(999, 12, 31, tzinfo=dt.UTC),
        dt.datetime(1000, 1, 1, 3, tzinfo=BANGKOK),  # 999-12-31 in UTC
        dt.datetime(2026, 1, 1),  # naive
    ],
)
def test_stored_times_outside_the_bounds_are_refused(when: dt.datetime) -> None:
    with pytest.raises(InvalidTimeError):
        format_time(when)


def test_parse_refuses_what_is_not_a_time() -> None:
    with pytest.raises(ValueError):
        parse_time("yesterday")
    with pytest.raises(InvalidTimeError):
        parse_time("0999-01-01T00:00:00Z")
