"""CheckExpiringPointsJob: sync -> expire -> plan into the outbox -> dispatch -> record.

The run itself: what happens, in which order, and what it reports. The pieces
live beside it: the outbox (:mod:`~rewards.notifications.outbox`: writing,
claiming, settling, sweeping rows), the dispatchers
(:mod:`~rewards.notifications.dispatch`: who sends), the recovery rule for rows
a dead sender left (:func:`~rewards.notifications.tiers.recovery_decision`,
applied when such a row is claimed again) and the run records
(:mod:`~rewards.notifications.runs`).

Delivery is at least once, with no duplicates in normal operation: a reminder's
row is committed ``PENDING`` (in the outbox) before its message leaves and
settled within 50 messages or a second after. The partial unique index on live
rows keeps two racing runs from both writing a key; the job lock keeps them from
racing at all. Work goes in batches of ``REWARDS_NOTIFY_BATCH_SIZE`` keys, so
memory stays bounded whatever the size of the programme.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import date, datetime

from sqlalchemy import Connection, Engine

from rewards.clock import local_date, utcnow
from rewards.config import Settings, require_own_secret_to_send
from rewards.ids import new_id
from rewards.ledger.projection import projection_writes, sync_all, sync_all_in
from rewards.ledger.queries import post_due_expirations
from rewards.notifications.dispatch import create_dispatcher
from rewards.notifications.locking import job_lock
from rewards.notifications.outbox import (
    PlannerStatistics,
    adopt_orphans,
    requeue_stale,
    run_counts,
    write_planned,
)
from rewards.notifications.planner import DueKey, plan_due_notifications
from rewards.notifications.runs import (
    JobSummary,
    RunStatus,
    describe_error,
    finish_run,
    record_progress,
    start_run,
)
from rewards.notifications.schedule import scheduled_time
from rewards.notifications.tiers import Status, decide

log = logging.getLogger("rewards.notifications.job")

PROGRESS_EVERY = 1.0
"""Seconds between two writes of a running job's progress into its record."""
PROGRESS_COST_RATIO = 20
"""Progress costs at most a twentieth of the run's time: the wait after a count is at
least twenty times what the count took."""

LAST_DAY = date(9000, 12, 31)
"""The latest as-of date: later ones would look past the end of the calendar."""


class JobError(Exception):
    """The job was asked for something it must not do (e.g. a future run that writes)."""


class CheckExpiringPointsJob:
    """The daily job. Build one per run; dependencies are passed in, clock included."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock

    # -- entry points -----------------------------------------------------------------

    def as_of_for(self, day: date | None) -> datetime:
        """The job's clock: now, or ``day``'s scheduled time (refused in the future)."""
        now = self.clock()
        if day is None:
            return now
        return scheduled_time(day, self.settings.notify_cron, self.settings.zone)

    def run(
        self,
        *,
        day: date | None = None,
        dry_run: bool = False,
        trigger: str = "cli",
        wait: bool = True,
    ) -> JobSummary:
        if day is not None and day > LAST_DAY:
            raise JobError(f"--as-of {day} is too far in the future (the last is {LAST_DAY})")
        as_of = self.as_of_for(day)
        today = local_date(self.clock(), self.settings.zone)
        if day is not None and day > today and not dry_run:
            raise JobError(
                f"--as-of {day} is after today ({today}): preview it with --dry-run;"
                " a real run would expire points early"
            )
        if dry_run:
            return self._preview(as_of)
        return self.run_at(as_of, trigger=trigger, wait=wait)

    def run_at(self, as_of: datetime, *, trigger: str, wait: bool = True) -> JobSummary:
        """The real run as of the instant ``as_of``: now, a scheduled fire time, or a day's.

        Expiry never runs ahead of the real clock, whatever ``as_of`` says. With
        ``wait=False`` (Celery workers deliver) it returns once the outbox is written.
        """
        require_own_secret_to_send(self.settings)
        with job_lock(self.engine):
            return self._run(as_of, trigger, wait=wait)

    # -- the real run -----------------------------------------------------------------

    def _run(self, as_of: datetime, trigger: str, *, wait: bool) -> JobSummary:
        started = time.perf_counter()
        summary = JobSummary(as_of=as_of, dry_run=False)
        run_id = start_run(self.engine, summary, trigger, self.clock())
        try:
            with summary.timed("sync"):
                self._sync(summary)
            with summary.timed("expire"):
                self._expire(summary)
            with (
                summary.timed("send"),
                create_dispatcher(self.engine, self.settings, clock=self.clock) as dispatcher,
            ):
                progress = self._progress(summary)
                dispatcher.dispatch(self._requeue_stale(run_id))
                for planned, pending in self._write_outbox(run_id, as_of):
                    summary.planned += planned
                    dispatcher.dispatch(pending)
                    progress()
                if wait:
                    dispatcher.wait(run_id, progress=progress)
            self._count(summary, run_id)
        except Exception as exc:
            summary.error = describe_error(exc)
            summary.duration_seconds = time.perf_counter() - started
            self._count(summary, run_id, quietly=True)
            finish_run(self.engine, summary, RunStatus.FAILED, self.clock())
            log.error("[CheckExpiringPointsJob] run %s failed: %s", run_id, summary.error)
            raise
        summary.duration_seconds = time.perf_counter() - started
        finish_run(self.engine, summary, RunStatus.SUCCEEDED, self.clock())
        log.info(
            "[CheckExpiringPointsJob] as of %s: expired %d points in %d entries; planned %d,"
            " sent %d, failed %d, skipped %d, re-sent %d in %.2fs",
            as_of.isoformat(),
            summary.expired_points,
            summary.expired_entries,
            summary.planned,
            summary.sent,
            summary.failed,
            summary.skipped,
            summary.resent,
            summary.duration_seconds,
        )
        return summary

    def _sync(self, summary: JobSummary) -> None:
        """Apply what other applications wrote to the ledger, so the plan is exact."""
        stats = sync_all(self.engine, self.clock())
        summary.synced_accounts, summary.ledger_anomalies = stats.accounts, stats.shortfalls
        if stats.shortfalls:
            log.warning(
                "[CheckExpiringPointsJob] %d debit(s) written by other applications are larger"
                " than what their account had at their instant; recorded as ledger anomalies"
                " (see `rewards ledger check`)",
                stats.shortfalls,
            )

    def _expire(self, summary: JobSummary) -> None:
        # Never expire ahead of the real clock, even for an as-of later today.
        until = min(summary.as_of, self.clock())
        with self.engine.begin() as conn, projection_writes(conn):
            summary.expired_entries, summary.expired_points = post_due_expirations(conn, until)

    def _requeue_stale(self, run_id: str) -> list[str]:
        """What an earlier sender left in the outbox and no one holds: this run's to finish.

        Each is re-sent only while still true (checked when it is claimed again).
        """
        with self.engine.begin() as conn:
            adopt_orphans(conn)
        requeued: list[str] = []
        while True:
            with self.engine.begin() as conn:
                batch = requeue_stale(
                    conn,
                    now=self.clock(),
                    lease_seconds=self.settings.notify_lease_seconds,
                    run_id=run_id,
                    limit=self.settings.notify_batch_size,
                )
            requeued += batch
            if len(batch) < self.settings.notify_batch_size:
                return requeued

    def _write_outbox(self, run_id: str, as_of: datetime) -> Iterable[tuple[int, list[str]]]:
        """Plan on one connection (a stable snapshot), write each batch on another; per batch,
        yield how many keys were planned and the ids of the rows written ``PENDING`` (the
        rest are settled as decided)."""
        statistics = PlannerStatistics()
        with self.engine.connect() as reader:
            if reader.dialect.name == "postgresql":
                reader.execution_options(isolation_level="REPEATABLE READ")
            for batch in self._plan(reader, as_of):
                planned = [
                    (new_id(), key, decide(key.email, key.email_notifications, key.points))
                    for key in batch
                ]
                with self.engine.begin() as conn:
                    written = write_planned(conn, planned, run_id=run_id, now=self.clock())
                statistics.wrote(self.engine, len(written))
                for w in written:
                    if w.status is Status.FAILED:
                        log.warning(
                            "[CheckExpiringPointsJob] not sent: user=%s type=%s date=%s reason=%s",
                            w.key.user_id,
                            w.key.notification_type,
                            w.key.expiration_date,
                            w.reason,
                        )
                yield len(batch), [w.log_id for w in written if w.status is Status.PENDING]

    def _plan(self, conn: Connection, as_of: datetime) -> Iterable[list[DueKey]]:
        return plan_due_notifications(
            conn,
            as_of=as_of,
            zone=self.settings.zone,
            tiers=self.settings.notify_tiers,
            max_attempts=self.settings.notify_max_attempts,
            batch_size=self.settings.notify_batch_size,
        )

    def _progress(self, summary: JobSummary) -> Callable[[], None]:
        """A callback that writes the run's counts so far into its record, once a second
        at most: an operator watching a long run sees it move."""
        next_at = time.monotonic() + PROGRESS_EVERY

        def progress() -> None:
            nonlocal next_at
            started = time.monotonic()
            if started < next_at:
                return
            assert summary.run_id is not None
            self._count(summary, summary.run_id, quietly=True)
            record_progress(self.engine, summary)
            # Counting reads every row of the run: with hundreds of thousands it takes a
            # while, and must not take the database from the sending it reports on.
            spent = time.monotonic() - started
            next_at = time.monotonic() + max(PROGRESS_EVERY, PROGRESS_COST_RATIO * spent)

        return progress

    def _count(self, summary: JobSummary, run_id: str, *, quietly: bool = False) -> None:
        """The run's outcome by tier and status, as the outbox recorded it."""
        try:
            with self.engine.connect() as conn:
                counts = run_counts(conn, run_id)
        except Exception:
            if not quietly:
                raise
            return
        summary.by_type = counts.by_type
        summary.failures = counts.failures
        summary.resent = counts.resent

    # -- dry run --------------------------------------------------------------------------

    def _preview(self, as_of: datetime) -> JobSummary:
        """What a run would do, exactly: the same sync, expiry and plan, in one transaction
        that is rolled back, so nothing is left written and nothing is sent."""
        started = time.perf_counter()
        summary = JobSummary(as_of=as_of, dry_run=True)
        with self.engine.connect() as conn, conn.begin() as preview:
            with summary.timed("sync"):
                stats = sync_all_in(conn, self.clock())
                summary.synced_accounts, summary.ledger_anomalies = stats.accounts, stats.shortfalls
            with summary.timed("expire"), projection_writes(conn):
                summary.expired_entries, summary.expired_points = post_due_expirations(conn, as_of)
            with summary.timed("plan"):
                for batch in self._plan(conn, as_of):
                    summary.planned += len(batch)
                    for key in batch:
                        decision = decide(key.email, key.email_notifications, key.points)
                        status = Status.SENT if decision.send else decision.status
                        summary.record(key.notification_type, status, decision.reason)
            preview.rollback()
        summary.duration_seconds = time.perf_counter() - started
        return summary
