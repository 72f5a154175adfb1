"""Time rules shared by every layer: instants are naive UTC with millisecond precision."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


def utc_naive(moment: datetime) -> datetime:
    """Convert to the stored form: naive UTC, truncated to milliseconds.

    A naive input is taken to be UTC already.
    """
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)


def utcnow() -> datetime:
    return utc_naive(datetime.now(UTC))


def local_midnight_utc(day: date, zone: ZoneInfo) -> datetime:
    """The UTC instant at which ``day`` begins in ``zone``."""
    return utc_naive(datetime.combine(day, time.min, tzinfo=zone))


def local_date(moment: datetime, zone: ZoneInfo) -> date:
    """The calendar date, in ``zone``, of a stored (naive UTC) instant."""
    return moment.replace(tzinfo=UTC).astimezone(zone).date()


def days_between(start: date, end: date) -> int:
    return (end - start) // timedelta(days=1)
