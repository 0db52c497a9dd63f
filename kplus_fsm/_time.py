"""
Times, in one place: the stored form (UTC, microseconds, ``Z``: it sorts as
text, because the year always has four digits), reading ISO-8601, and the
default clock.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from .exceptions import InvalidTimeError


def utc_now() -> dt.datetime:
    """The default clock: the system's UTC time."""
    return dt.datetime.now(dt.UTC)


#: The earliest and latest times kplus_fsm stores (UTC): four-digit years, so
#: that the stored text sorts as the times do.
MIN_YEAR: Final = 1000
MAX_YEAR: Final = 9999
_RANGE_TEXT: Final = "from 1000-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z (UTC)"


def _in_range(when: dt.datetime) -> dt.datetime:
    """``when`` in UTC; :class:`InvalidTimeError` if naive or outside the stored years."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidTimeError("times must be timezone-aware (the clock returned a naive datetime)")
    try:
        utc = when.astimezone(dt.UTC)
    except OverflowError:
        utc = None
    if utc is None or utc.year < MIN_YEAR:
        raise InvalidTimeError(
            f"{when.isoformat()} is outside the times kplus_fsm stores: {_RANGE_TEXT}"
        )
    return utc


def format_time(when: dt.datetime) -> str:
    """
    The stored time format: UTC, microseconds, ``Z`` (sorts as text: the year
    always has four digits).

    Raises:
        InvalidTimeError: ``when`` is naive, or before the year 1000 (or past
            9999) in UTC. A ``ValueError``.
    """
    utc = _in_range(when)
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"  # ~10x strftime


def parse_time(text: str | dt.datetime) -> dt.datetime:
    """
    Parse an ISO-8601 time (``Z`` allowed); naive times are taken as UTC.

    Raises:
        ValueError: not ISO-8601; :class:`InvalidTimeError` (a ``ValueError``)
            for a time before the year 1000 or past 9999 in UTC.
    """
    when = text if isinstance(text, dt.datetime) else dt.datetime.fromisoformat(text)
    when = when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
    _in_range(when)
    return when


def omise_time(when: dt.datetime) -> str:
    """
    Omise's time format, as its API writes ``created_at`` and ``expires_at``
    and takes ``from``/``to``: UTC to the second, ``Z``
    (``2024-03-19T09:35:06Z``). A naive time is taken as UTC.
    """
    utc = when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
    return utc.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["MAX_YEAR", "MIN_YEAR", "format_time", "omise_time", "parse_time", "utc_now"]
