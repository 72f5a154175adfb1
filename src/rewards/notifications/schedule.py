"""The job's cron rule: when it fires, and what "as of a date" means."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from rewards.clock import local_midnight_utc, utc_naive


def cron_trigger(expression: str, zone: ZoneInfo) -> CronTrigger:
    """Parse a five-field crontab expression; raises ValueError when it is not one."""
    return CronTrigger.from_crontab(expression, timezone=zone)


def scheduled_time(day: date, expression: str, zone: ZoneInfo) -> datetime:
    """The first time the cron rule fires on ``day`` (in ``zone``), as a naive UTC instant.

    For a rule that does not fire that day, the day's start.
    """
    start = datetime.combine(day, time.min, tzinfo=zone)
    fire = cron_trigger(expression, zone).get_next_fire_time(None, start)
    if fire is None or fire.astimezone(zone).date() != day:
        return local_midnight_utc(day, zone)
    return utc_naive(fire)


def next_run(expression: str, zone: ZoneInfo, after: datetime) -> datetime | None:
    fire = cron_trigger(expression, zone).get_next_fire_time(None, after + timedelta(seconds=1))
    return None if fire is None else utc_naive(fire)
