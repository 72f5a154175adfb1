"""When the daily job runs: its cron rule in the programme's time zone, and catching up.

``scheduled_time`` turns "as of a date" into an instant; ``missed_today`` decides
whether a process starting late must run the day's job at once; ``build_scheduler``
wires both into APScheduler. Every clock here is explicit, except where
``build_scheduler`` reads the real one, and those tests choose a cron whose time
has always passed (or not) whatever the hour the suite runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine, insert, select

from rewards.clock import utcnow
from rewards.config import Settings, load_settings
from rewards.ids import new_id
from rewards.ledger import service
from rewards.models import Account, NotificationJobRun, NotificationLog, User
from rewards.notifications.job import CheckExpiringPointsJob
from rewards.notifications.schedule import latest_fire, scheduled_time
from rewards.notifications.scheduler import (
    JOB_ID,
    LEDGER_SYNC_ID,
    MISFIRE_GRACE_SECONDS,
    build_scheduler,
    missed_today,
    run_scheduled,
)
from tests.process_helpers import wait_until

PARIS = ZoneInfo("Europe/Paris")
DAY = date(2025, 3, 3)
NINE_UTC = datetime(2025, 3, 3, 9, 0)


def settings_for(database_url: str, cron: str = "0 9 * * *", zone: str = "UTC") -> Settings:
    return load_settings(
        database_url=database_url, notify_cron=cron, timezone=zone, email_backend="console"
    )


def record_run(engine: Engine, as_of: datetime, status: str) -> None:
    """A finished run in the job's own table, as an earlier process left it."""
    with engine.begin() as conn:
        conn.execute(
            insert(NotificationJobRun).values(
                id=new_id(), asOf=as_of, startedAt=as_of, finishedAt=as_of, status=status
            )
        )


# -- scheduled_time -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2025, 1, 15), datetime(2025, 1, 15, 8, 0)),  # winter: UTC+1
        (date(2025, 7, 15), datetime(2025, 7, 15, 7, 0)),  # summer: UTC+2
        (date(2025, 3, 30), datetime(2025, 3, 30, 7, 0)),  # the clocks went forward at 02:00
        (date(2025, 10, 26), datetime(2025, 10, 26, 8, 0)),  # the clocks went back at 03:00
    ],
)
def test_scheduled_time_is_the_local_cron_time_as_naive_utc(day: date, expected: datetime) -> None:
    assert scheduled_time(day, "0 9 * * *", PARIS) == expected


def test_scheduled_time_on_a_day_the_cron_does_not_fire_is_the_start_of_that_day() -> None:
    # The cron fires on the 1st only; 15 January starts at 23:00 UTC the day before in Paris.
    assert scheduled_time(date(2025, 1, 15), "0 9 1 * *", PARIS) == datetime(2025, 1, 14, 23, 0)


@pytest.mark.parametrize(
    ("cron", "day", "fires"),
    [
        ("0 9 * * 1-5", date(2025, 1, 6), True),  # a Monday
        ("0 9 * * 1-5", date(2025, 1, 4), False),  # a Saturday
        ("0 9 * * 0", date(2025, 1, 5), True),  # a Sunday
    ],
    ids=["monday-in-1-5", "saturday-not-in-1-5", "sunday-is-0"],
)
def test_weekday_numbers_in_the_cron_mean_what_they_mean_in_crontab(
    cron: str, day: date, fires: bool
) -> None:
    at_nine = datetime.combine(day, datetime.min.time()) + timedelta(hours=9)
    expected = at_nine if fires else datetime.combine(day, datetime.min.time())
    assert scheduled_time(day, cron, ZoneInfo("UTC")) == expected


# -- missed_today -------------------------------------------------------------------------


def test_today_is_missed_once_the_scheduled_time_passed_without_a_run(
    engine: Engine, database_url: str
) -> None:
    assert missed_today(engine, settings_for(database_url), NINE_UTC + timedelta(hours=1))


def test_today_is_not_missed_before_the_scheduled_time(engine: Engine, database_url: str) -> None:
    assert not missed_today(engine, settings_for(database_url), NINE_UTC - timedelta(minutes=1))


def test_today_is_not_missed_after_a_successful_run(engine: Engine, database_url: str) -> None:
    settings = settings_for(database_url)
    now = NINE_UTC + timedelta(hours=1)
    CheckExpiringPointsJob(engine, settings, clock=lambda: now).run(day=DAY)
    assert not missed_today(engine, settings, now)


@pytest.mark.parametrize(
    ("as_of", "status"),
    [
        (NINE_UTC, "FAILED"),  # today's run failed
        (NINE_UTC - timedelta(days=1), "SUCCEEDED"),  # yesterday's run
    ],
)
def test_only_a_successful_run_as_of_today_counts(
    engine: Engine, database_url: str, as_of: datetime, status: str
) -> None:
    record_run(engine, as_of, status)
    assert missed_today(engine, settings_for(database_url), NINE_UTC + timedelta(hours=1))


@pytest.mark.parametrize(
    ("now", "missed"),
    [
        (datetime(2025, 3, 3, 7, 30), False),  # 08:30 in Paris
        (datetime(2025, 3, 3, 8, 30), True),  # 09:30 in Paris
    ],
)
def test_the_scheduled_time_is_read_in_the_programme_time_zone(
    engine: Engine, database_url: str, now: datetime, missed: bool
) -> None:
    assert missed_today(engine, settings_for(database_url, zone="Europe/Paris"), now) is missed


def test_a_day_the_cron_does_not_fire_is_never_missed(engine: Engine, database_url: str) -> None:
    settings = settings_for(database_url, cron="0 9 1 * *")  # the 1st of the month only
    assert not missed_today(engine, settings, datetime(2025, 3, 15, 10, 0))


# -- build_scheduler ------------------------------------------------------------------------


@contextmanager
def started_paused(engine: Engine, settings: Settings) -> Iterator[Any]:
    """A background scheduler started paused (nothing runs), shut down on exit."""
    scheduler = build_scheduler(engine, settings)
    assert isinstance(scheduler, BackgroundScheduler)
    scheduler.start(paused=True)
    try:
        yield scheduler
    finally:
        scheduler.shutdown(wait=False)


def jobs_by_id(scheduler: Any) -> dict[str, Any]:
    return {job.id: job for job in scheduler.get_jobs()}


def test_the_scheduler_runs_the_job_on_the_cron_in_the_programme_time_zone(
    engine: Engine, database_url: str
) -> None:
    settings = settings_for(database_url, cron="59 23 * * *", zone="Europe/Paris")
    with started_paused(engine, settings) as scheduler:
        job = jobs_by_id(scheduler)[JOB_ID]
    trigger = job.trigger
    assert isinstance(trigger, CronTrigger)
    assert trigger.timezone == PARIS
    fields = {f.name: str(f) for f in trigger.fields}
    assert (fields["minute"], fields["hour"], fields["day"], fields["day_of_week"]) == (
        "59",
        "23",
        "*",
        "*",
    )
    assert job.coalesce is True
    assert job.max_instances == 1
    assert job.misfire_grace_time == MISFIRE_GRACE_SECONDS > 0
    next_run = job.next_run_time
    assert next_run.tzinfo == PARIS
    assert (next_run.hour, next_run.minute) == (23, 59)
    now_in_paris = datetime.now(PARIS)
    assert now_in_paris < next_run <= now_in_paris + timedelta(days=1)


def scheduler_runs(engine: Engine) -> list[tuple[str, datetime]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(NotificationJobRun.status, NotificationJobRun.asOf).where(
                NotificationJobRun.trigger == "scheduler"
            )
        ).all()
    return [(r.status, r.asOf) for r in rows]


def test_when_the_cron_fires_the_job_runs_as_of_that_fire(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    settings = load_settings(
        database_url=database_url,
        notify_cron="0 0 * * *",
        timezone="Europe/Paris",
        email_backend="file",
        outbox_dir=tmp_path / "outbox",
    )
    scheduler = build_scheduler(engine, settings, catch_up=False)
    scheduler.start()
    try:
        # Bring the next fire forward: the scheduler itself runs the job it was given.
        scheduler.get_job(JOB_ID).modify(next_run_time=datetime.now(PARIS) + timedelta(seconds=0.2))
        assert wait_until(lambda: bool(scheduler_runs(engine)), timeout=20)
    finally:
        scheduler.shutdown(wait=True)
    [(status, as_of)] = scheduler_runs(engine)
    assert status == "SUCCEEDED"
    assert as_of == latest_fire(utcnow(), "0 0 * * *", PARIS)  # the latest midnight in Paris


def test_a_fire_delayed_past_midnight_runs_as_of_its_own_scheduled_time(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    # Fired for 23:30 on 3 March, run at 00:10 on 4 March: still 3 March's run. Points
    # expiring at 15:00 on 4 March are due their 1-day reminder in that run; a run as of
    # 4 March's own 23:30 would count them as gone and the reminder would be lost.
    settings = load_settings(
        database_url=database_url,
        notify_cron="30 23 * * *",
        email_backend="file",
        outbox_dir=tmp_path / "outbox",
    )
    with engine.begin() as conn:
        conn.execute(insert(User).values(id="ann", email="ann@example.com", name="Ann"))
        conn.execute(insert(Account).values(id="ann-1", userId="ann"))
        service.earn(
            conn, "ann-1", 100, as_of=datetime(2025, 2, 1), expires_at=datetime(2025, 3, 4, 15)
        )
    run_scheduled(engine, settings, clock=lambda: datetime(2025, 3, 4, 0, 10))
    assert scheduler_runs(engine) == [("SUCCEEDED", datetime(2025, 3, 3, 23, 30))]
    with engine.connect() as conn:
        logged = conn.execute(
            select(NotificationLog.notificationType, NotificationLog.status)
        ).all()
    assert [tuple(r) for r in logged] == [("EXPIRATION_1_DAY", "SENT")]
    [email] = (tmp_path / "outbox").glob("*.eml")
    assert "expire tomorrow" in email.read_text()


def test_the_scheduler_catches_up_when_todays_run_was_missed(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    # Midnight has always passed; no run is recorded: the cron job fires once at start.
    settings = load_settings(
        database_url=database_url,
        notify_cron="0 0 * * *",
        email_backend="file",
        outbox_dir=tmp_path / "outbox",
    )
    scheduler = build_scheduler(engine, settings)
    assert set(jobs_by_id(scheduler)) == {JOB_ID, LEDGER_SYNC_ID}  # no one-off catch-up job
    scheduler.start()
    try:
        assert wait_until(lambda: bool(scheduler_runs(engine)), timeout=20)
        next_run = scheduler.get_job(JOB_ID).next_run_time
    finally:
        scheduler.shutdown(wait=True)
    midnight = datetime.combine(utcnow().date(), datetime.min.time())
    assert scheduler_runs(engine) == [("SUCCEEDED", midnight)]
    assert next_run == datetime.combine(
        midnight.date() + timedelta(days=1), datetime.min.time(), UTC
    )


def test_the_scheduler_does_not_catch_up_when_today_already_ran(
    engine: Engine, database_url: str
) -> None:
    record_run(engine, utcnow(), "SUCCEEDED")
    with started_paused(engine, settings_for(database_url, cron="0 0 * * *")) as scheduler:
        jobs = jobs_by_id(scheduler)
    assert set(jobs) == {JOB_ID, LEDGER_SYNC_ID}
    assert jobs[JOB_ID].next_run_time > datetime.now(UTC)  # the next midnight, not now


@pytest.mark.parametrize(
    ("now", "cron", "zone", "expected"),
    [
        (datetime(2025, 3, 4, 0, 10), "30 23 * * *", "UTC", datetime(2025, 3, 3, 23, 30)),
        (datetime(2025, 3, 3, 9, 0), "0 9 * * *", "UTC", datetime(2025, 3, 3, 9, 0)),
        (datetime(2025, 3, 3, 8, 59), "0 9 * * *", "UTC", datetime(2025, 3, 2, 9, 0)),
        # Monday 3 March 2025, before nine: the last weekday fire was Friday's.
        (datetime(2025, 3, 3, 8, 0), "0 9 * * 1-5", "UTC", datetime(2025, 2, 28, 9, 0)),
        (datetime(2025, 3, 3, 8, 0), "0 9 1 1 *", "UTC", datetime(2025, 1, 1, 9, 0)),
        # The night Paris moves its clocks forward (30 March 2025), 09:00 local is 07:00 UTC.
        (datetime(2025, 3, 30, 7, 30), "0 9 * * *", "Europe/Paris", datetime(2025, 3, 30, 7, 0)),
        (datetime(2025, 3, 30, 6, 30), "0 9 * * *", "Europe/Paris", datetime(2025, 3, 29, 8, 0)),
    ],
)
def test_the_latest_fire_is_the_rules_last_fire_at_or_before_now(
    now: datetime, cron: str, zone: str, expected: datetime
) -> None:
    assert latest_fire(now, cron, ZoneInfo(zone)) == expected
