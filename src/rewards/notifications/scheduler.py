"""Runs CheckExpiringPointsJob on ``REWARDS_NOTIFY_CRON`` in the programme's time zone, and
applies other applications' ledger changes every ``REWARDS_LEDGER_SYNC_SECONDS``.

Coalescing folds a backlog of missed fires into one run, and a run missed while
no process was up (say the process starts at 09:30 for a 09:00 job) is caught
up at start, as long as no run has succeeded for that day yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, select

from rewards.clock import local_date, utcnow
from rewards.config import Settings
from rewards.ledger.projection import SyncStats, sync_waiting
from rewards.models import NotificationJobRun
from rewards.notifications.job import CheckExpiringPointsJob
from rewards.notifications.locking import JobAlreadyRunning
from rewards.notifications.runs import RunStatus
from rewards.notifications.schedule import cron_trigger, fire_time_on, latest_fire

log = logging.getLogger("rewards.notifications.scheduler")

JOB_ID = "CheckExpiringPointsJob"
MISFIRE_GRACE_SECONDS = 6 * 3600
LEDGER_SYNC_ID = "LedgerSync"


def run_scheduled(
    engine: Engine, settings: Settings, clock: Callable[[], datetime] = utcnow
) -> None:
    """One scheduled run, as of the fire it runs for; a concurrent run elsewhere is fine.

    A fire that runs late (a busy machine, a process paused over midnight) is still
    the run of its own scheduled time, the rule's latest fire at or before now.
    """
    now = clock()
    fire = latest_fire(now, settings.notify_cron, settings.zone) or now
    try:
        CheckExpiringPointsJob(engine, settings, clock=clock).run_at(fire, trigger="scheduler")
    except JobAlreadyRunning as exc:
        log.info("[%s] %s", JOB_ID, exc)
    except Exception:
        log.exception("[%s] scheduled run failed", JOB_ID)


def run_ledger_sync(engine: Engine, clock: Callable[[], datetime] = utcnow) -> SyncStats:
    """One pass of the ledger sync; a failure is logged, and the next pass tries again."""
    try:
        stats = sync_waiting(engine, clock())
    except Exception:
        log.exception("[%s] applying other applications' ledger changes failed", LEDGER_SYNC_ID)
        return SyncStats()
    if stats.accounts:
        log.info(
            "[%s] brought %d accounts up to date (%d ledger rows read, %d anomalies)",
            LEDGER_SYNC_ID,
            stats.accounts,
            stats.rows,
            stats.shortfalls,
        )
    return stats


def missed_today(engine: Engine, settings: Settings, now: datetime) -> bool:
    """Has today's scheduled time passed with no successful run as of it?"""
    due = fire_time_on(local_date(now, settings.zone), settings.notify_cron, settings.zone)
    if due is None or due > now:  # not a day the job runs, or not yet time
        return False
    with engine.connect() as conn:
        done = conn.execute(
            select(NotificationJobRun.id)
            .where(
                NotificationJobRun.status == RunStatus.SUCCEEDED.value,
                NotificationJobRun.asOf >= due,
            )
            .limit(1)
        ).first()
    return done is None


def build_scheduler(
    engine: Engine, settings: Settings, *, catch_up: bool = True
) -> BackgroundScheduler:
    """A scheduler running in a background thread; the caller starts and stops it.

    A missed run of today is caught up by the cron job itself, fired once at start
    (its next run is then the rule's): no one-off job whose removal could race a stop.
    """
    scheduler = BackgroundScheduler(timezone=settings.zone)
    options: dict[str, Any] = {}
    if catch_up and missed_today(engine, settings, utcnow()):
        log.info("[%s] today's run was missed; running it now", JOB_ID)
        options["next_run_time"] = datetime.now(settings.zone)
    scheduler.add_job(
        run_scheduled,
        cron_trigger(settings.notify_cron, settings.zone),
        args=(engine, settings),
        id=JOB_ID,
        name=JOB_ID,
        coalesce=True,
        max_instances=1,
        misfire_grace_time=MISFIRE_GRACE_SECONDS,
        **options,
    )
    log.info("[%s] scheduled for %s", JOB_ID, settings.notify_cron)
    if settings.ledger_sync_seconds:
        scheduler.add_job(
            run_ledger_sync,
            IntervalTrigger(seconds=settings.ledger_sync_seconds),
            args=(engine,),
            id=LEDGER_SYNC_ID,
            name=LEDGER_SYNC_ID,
            coalesce=True,
            max_instances=1,
        )
        log.info("[%s] every %d s", LEDGER_SYNC_ID, settings.ledger_sync_seconds)
    return scheduler
