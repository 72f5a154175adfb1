"""The job's cron rule: when it fires, and what "as of a date" means.

Expressions are standard five-field crontab. APScheduler numbers weekdays from
Monday = 0, crontab from Sunday = 0 (and 7); :func:`cron_trigger` translates the
day-of-week field so ``1-5`` means Monday to Friday, as an operator expects.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from rewards.clock import local_midnight_utc, utc_naive

# Crontab's numbering: 0 and 7 are Sunday.
_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _weekday_number(token: str) -> int:
    token = token.strip().lower()
    if token in _NAMES:
        return _NAMES.index(token)
    value = int(token)  # ValueError for anything else
    if not 0 <= value <= 7:
        raise ValueError(f"day of week {value} is out of range 0-7")
    return value % 7


def crontab_weekdays(field: str) -> str:
    """A crontab day-of-week field as APScheduler day names: ``"1-5"`` -> ``"mon,...,fri"``."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError("a step must be positive")
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            low, high = base.split("-", 1)
            first = _weekday_number(low)
            last = 7 if high.strip() == "7" else _weekday_number(high)  # "5-7": Friday to Sunday
        else:
            first = last = _weekday_number(base)
        if last < first:
            raise ValueError(f"day-of-week range {base} runs backwards")
        days.update(d % 7 for d in range(first, last + 1, step))
    return ",".join(_NAMES[d] for d in sorted(days, key=lambda d: (d + 6) % 7))


def cron_trigger(expression: str, zone: ZoneInfo | None = None) -> CronTrigger:
    """Parse a five-field crontab expression; raises ValueError when it is not one."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields, got {len(fields)}")
    minute, hour, day, month, weekday = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=crontab_weekdays(weekday),
        timezone=zone,
    )


def fire_time_on(day: date, expression: str, zone: ZoneInfo) -> datetime | None:
    """When the rule first fires on ``day`` (in ``zone``), as a naive UTC instant, or None."""
    start = datetime.combine(day, time.min, tzinfo=zone)
    fire = cron_trigger(expression, zone).get_next_fire_time(None, start)
    if fire is None or fire.astimezone(zone).date() != day:
        return None
    return utc_naive(fire)


def scheduled_time(day: date, expression: str, zone: ZoneInfo) -> datetime:
    """The job's clock for a run as of ``day``: its fire time, or the day's start if none."""
    return fire_time_on(day, expression, zone) or local_midnight_utc(day, zone)


_LOOK_BACK = (timedelta(days=1), timedelta(days=8), timedelta(days=32), timedelta(days=367))


def latest_fire(now: datetime, expression: str, zone: ZoneInfo) -> datetime | None:
    """The rule's last fire time at or before ``now`` (naive UTC in, naive UTC out).

    This is the fire a scheduler is running when it runs late, so a run delayed past
    midnight is still the run of the day it was scheduled for, not of the next one.
    Looks back up to a year (the longest a five-field rule can wait between fires).
    """
    trigger = cron_trigger(expression, zone)
    until = now.replace(tzinfo=UTC)
    for span in _LOOK_BACK:
        latest: datetime | None = None
        fire = trigger.get_next_fire_time(None, until - span)
        while fire is not None and fire <= until:
            latest = fire
            fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
        if latest is not None:
            return utc_naive(latest)
    return None
