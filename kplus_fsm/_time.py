"""
Times, in one place: the stored form (UTC, microseconds, ``Z``: it sorts as
text), reading ISO-8601, and the default clock.
"""

from __future__ import annotations

import datetime as dt


def utc_now() -> dt.datetime:
    """The default clock: the system's UTC time."""
    return dt.datetime.now(dt.UTC)


def format_time(when: dt.datetime) -> str:
    """
    The stored time format: UTC, microseconds, ``Z`` (sorts as text).

    Raises:
        ValueError: ``when`` is naive.
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("times must be timezone-aware (the clock returned a naive datetime)")
    utc = when.astimezone(dt.UTC)
    if utc.year < 1000:  # isoformat pads the year; keep strftime's form for these
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"  # ~10x strftime


def parse_time(text: str | dt.datetime) -> dt.datetime:
    """Parse an ISO-8601 time (``Z`` allowed); naive times are taken as UTC."""
    when = text if isinstance(text, dt.datetime) else dt.datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


__all__ = ["format_time", "parse_time", "utc_now"]
