"""Date/time strings in the shapes Optimove expects."""

from __future__ import annotations

from datetime import UTC, datetime


def _as_utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        # A naive datetime has no defined instant; guessing a zone would shift events silently.
        raise ValueError("Optimove timestamps need a timezone-aware datetime, got a naive one")
    return dt.astimezone(UTC)


def timestamp_for_optimove(dt: datetime) -> str:
    """Format an aware datetime as a server-side event ``timestamp``.

    Example: ``2024-05-27 10:30:00.000000 UTC``.

    Raises:
        ValueError: if ``dt`` is naive.
    """
    return _as_utc(dt).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def batch_datetime(dt: datetime) -> str:
    """Format an aware datetime as a batch/REST datetime ``yyyy-MM-dd HH:mm:ss`` in UTC.

    Raises:
        ValueError: if ``dt`` is naive.
    """
    return _as_utc(dt).strftime("%Y-%m-%d %H:%M:%S")
