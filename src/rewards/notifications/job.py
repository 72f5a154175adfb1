"""CheckExpiringPointsJob: expire -> plan -> write -> send -> settle -> record.

Delivery is at least once, with no duplicates in normal operation: a reminder's
row is committed as ``PENDING`` before its message leaves and settled after. A
crash in between leaves a ``PENDING`` row that a later run (once the lease has
passed) sends again with the same ``Message-ID``. The partial unique index on
live rows keeps two racing runs from both writing a key; the job lock keeps
them from racing at all.

Work goes in batches of ``REWARDS_NOTIFY_BATCH_SIZE`` keys, so memory stays
bounded whatever the size of the programme.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from email.message import EmailMessage
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from rewards.clock import local_date, utc_naive, utcnow
from rewards.config import Settings, require_own_secret_to_send
from rewards.ids import new_id
from rewards.ledger.projection import projection_writes, sync_all, sync_all_in
from rewards.ledger.queries import post_due_expirations
from rewards.metrics import observe_send
from rewards.models import LIVE_STATUS_SQL, NotificationJobRun, NotificationLog, User
from rewards.notifications.delivery import create_sender
from rewards.notifications.delivery.base import Outcome, Sender
from rewards.notifications.locking import job_lock
from rewards.notifications.messages import InvalidRecipient, MessageBuilder, Reminder
from rewards.notifications.planner import DueKey, plan_due_notifications, points_left_on_dates
from rewards.notifications.runs import (
    JobSummary,
    RunStatus,
    describe_error,
    finish_run,
    start_run,
)
from rewards.notifications.schedule import scheduled_time
from rewards.notifications.tiers import (
    INVALID_FORMAT,
    Decision,
    Status,
    decide,
    loggable_points,
    recovery_decision,
)

log = logging.getLogger("rewards.notifications.job")

N: Table = NotificationLog.__table__  # type: ignore[assignment]
U: Table = User.__table__  # type: ignore[assignment]
R: Table = NotificationJobRun.__table__  # type: ignore[assignment]

LAST_DAY = date(9000, 12, 31)
"""The latest as-of date: later ones would look past the end of the calendar."""


class JobError(Exception):
    """The job was asked for something it must not do (e.g. a future run that writes)."""


@dataclass(frozen=True)
class _Row:
    """A ``NotificationLog`` row the job is about to send or settle."""

    id: str
    key: DueKey


class CheckExpiringPointsJob:
    """The daily job. Build one per run; dependencies are passed in, clock included."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        sender_factory: Callable[[Settings], Sender] = create_sender,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.sender_factory = sender_factory
        self.clock = clock
        self.builder = MessageBuilder(settings, clock=clock)

    # -- entry points -----------------------------------------------------------------

    def as_of_for(self, day: date | None) -> datetime:
        """The job's clock: now, or ``day``'s scheduled time (refused in the future)."""
        now = self.clock()
        if day is None:
            return now
        return scheduled_time(day, self.settings.notify_cron, self.settings.zone)

    def run(
        self, *, day: date | None = None, dry_run: bool = False, trigger: str = "cli"
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
        return self.run_at(as_of, trigger=trigger)

    def run_at(self, as_of: datetime, *, trigger: str) -> JobSummary:
        """The real run as of the instant ``as_of``: now, a scheduled fire time, or a day's.

        Expiry never runs ahead of the real clock, whatever ``as_of`` says.
        """
        require_own_secret_to_send(self.settings)
        with job_lock(self.engine):
            return self._run(as_of, trigger)

    # -- the real run -----------------------------------------------------------------

    def _run(self, as_of: datetime, trigger: str) -> JobSummary:
        started = time.perf_counter()
        summary = JobSummary(as_of=as_of, dry_run=False)
        start_run(self.engine, summary, trigger, self.clock())
        try:
            with summary.timed("sync"):
                self._sync(summary)
            with summary.timed("expire"):
                self._expire(summary)
            with asyncio.Runner() as loop, summary.timed("send"):
                sender = self.sender_factory(self.settings)
                loop.run(sender.__aenter__())
                try:
                    self._resend_stale(summary, sender, loop)
                    self._send_due(summary, sender, loop)
                finally:
                    loop.run(sender.__aexit__(None, None, None))
        except Exception as exc:
            summary.error = describe_error(exc)
            summary.duration_seconds = time.perf_counter() - started
            finish_run(self.engine, summary, RunStatus.FAILED, self.clock())
            log.error("[CheckExpiringPointsJob] run %s failed: %s", summary.run_id, summary.error)
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

    def _send_due(self, summary: JobSummary, sender: Sender, loop: asyncio.Runner) -> None:
        """Plan on one connection (a stable snapshot), write and settle on another."""
        with self.engine.connect() as reader:
            if reader.dialect.name == "postgresql":
                reader.execution_options(isolation_level="REPEATABLE READ")
            for batch in self._plan(reader, summary.as_of):
                summary.planned += len(batch)
                to_send = self._write_decisions(summary, batch)
                self._deliver(summary, to_send, sender, loop)

    def _plan(self, conn: Connection, as_of: datetime) -> Iterable[list[DueKey]]:
        return plan_due_notifications(
            conn,
            as_of=as_of,
            zone=self.settings.zone,
            tiers=self.settings.notify_tiers,
            max_attempts=self.settings.notify_max_attempts,
            batch_size=self.settings.notify_batch_size,
        )

    def _write_decisions(self, summary: JobSummary, batch: Sequence[DueKey]) -> list[_Row]:
        """Insert one row per key: PENDING to send, SKIPPED or FAILED as decided."""
        now = self.clock()
        rows: list[dict[str, Any]] = []
        keys: dict[str, DueKey] = {}
        for key in batch:
            decision = decide(key.email, key.email_notifications, key.points)
            row_id = new_id()
            keys[row_id] = key
            rows.append(_log_values(row_id, key, decision, now))
        with self.engine.begin() as conn:
            inserted = _insert_logs(conn, rows)
        to_send: list[_Row] = []
        for row_id, status, reason in inserted:
            key = keys[row_id]
            if status == Status.PENDING.value:
                to_send.append(_Row(row_id, key))
            else:
                summary.record(key.notification_type, Status(status), reason)
                if status == Status.FAILED.value:
                    log.warning(
                        "[CheckExpiringPointsJob] not sent: user=%s type=%s date=%s reason=%s",
                        key.user_id,
                        key.notification_type,
                        key.expiration_date,
                        reason,
                    )
        return to_send

    def _deliver(
        self, summary: JobSummary, rows: Sequence[_Row], sender: Sender, loop: asyncio.Runner
    ) -> None:
        """Build, send and settle ``rows`` (all PENDING and committed)."""
        if not rows:
            return
        messages: list[EmailMessage] = []
        sendable: list[_Row] = []
        settled: list[tuple[_Row, Outcome]] = []
        for row in rows:
            try:
                messages.append(self.builder.build(_reminder(row, summary.as_of, self.settings)))
                sendable.append(row)
            except InvalidRecipient:
                settled.append((row, Outcome(False, INVALID_FORMAT)))
        outcomes = loop.run(sender.send_many(messages)) if messages else []
        for outcome in outcomes:
            if outcome.delivered:
                observe_send(outcome.seconds)
        settled.extend(zip(sendable, outcomes, strict=True))
        self._settle(summary, settled)

    def _settle(self, summary: JobSummary, settled: Sequence[tuple[_Row, Outcome]]) -> None:
        now = self.clock()
        sent = [row.id for row, outcome in settled if outcome.delivered]
        failed = [
            {
                "b_id": row.id,
                "b_status": Status.FAILED.value,
                "b_reason": outcome.detail or "delivery failed",
            }
            for row, outcome in settled
            if not outcome.delivered
        ]
        with self.engine.begin() as conn:
            settle_sent(conn, sent, now)
            settle_unsent(conn, failed)
        for row, outcome in settled:
            status = Status.SENT if outcome.delivered else Status.FAILED
            summary.record(row.key.notification_type, status, outcome.detail)
            if not outcome.delivered:
                log.warning(
                    "[CheckExpiringPointsJob] delivery failed: user=%s type=%s date=%s reason=%s",
                    row.key.user_id,
                    row.key.notification_type,
                    row.key.expiration_date,
                    outcome.detail,
                )

    # -- crash recovery -----------------------------------------------------------------

    def _resend_stale(self, summary: JobSummary, sender: Sender, loop: asyncio.Runner) -> None:
        """Send again the PENDING rows a crashed run left behind (same row, same Message-ID)."""
        cutoff = self.clock() - timedelta(seconds=self.settings.notify_lease_seconds)
        run_date = local_date(summary.as_of, self.settings.zone)
        after = ""
        while True:
            with self.engine.connect() as conn:
                batch = conn.execute(
                    select(
                        N.c.id,
                        N.c.userId,
                        N.c.notificationType,
                        N.c.expirationDate,
                        N.c.pointsExpiring,
                        U.c.email,
                        U.c.name,
                        U.c.emailNotifications,
                    )
                    .join(U, U.c.id == N.c.userId)
                    .where(
                        N.c.status == Status.PENDING.value,
                        N.c.createdAt < cutoff,
                        N.c.id > after,
                    )
                    .order_by(N.c.id)
                    .limit(self.settings.notify_batch_size)
                ).all()
            if not batch:
                return
            after = batch[-1].id
            with self.engine.connect() as conn:
                left = points_left_on_dates(
                    conn,
                    ((r.userId, r.expirationDate.date()) for r in batch),
                    as_of=summary.as_of,
                    zone=self.settings.zone,
                )
            resend: list[_Row] = []
            closed: list[tuple[_Row, Decision]] = []
            for r in batch:
                day = r.expirationDate.date()
                row = _Row(
                    r.id,
                    DueKey(
                        user_id=r.userId,
                        notification_type=r.notificationType,
                        expiration_date=day,
                        days_left=(day - run_date).days,
                        points=r.pointsExpiring,
                        email=r.email,
                        name=r.name,
                        email_notifications=bool(r.emailNotifications),
                    ),
                )
                decision = decide(r.email, bool(r.emailNotifications), r.pointsExpiring)
                if decision.send:
                    decision = (
                        recovery_decision(
                            r.notificationType,
                            row.key.days_left,
                            self.settings.notify_tiers,
                            left.get((r.userId, day), 0),
                        )
                        or decision
                    )
                if decision.send:
                    resend.append(row)
                else:
                    closed.append((row, decision))
            summary.resent += len(resend)
            self._close_pending(summary, closed)
            self._deliver(summary, resend, sender, loop)

    def _close_pending(self, summary: JobSummary, decided: Sequence[tuple[_Row, Decision]]) -> None:
        """Settle unsent the interrupted rows that no longer fit sending, with the reason."""
        rows = [
            {"b_id": row.id, "b_status": d.status.value, "b_reason": d.reason} for row, d in decided
        ]
        with self.engine.begin() as conn:
            settle_unsent(conn, rows)
        for row, d in decided:
            summary.record(row.key.notification_type, d.status, d.reason)

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


# -- set-based writes, shared with the stale-row recovery -------------------------------


def _log_values(row_id: str, key: DueKey, decision: Decision, now: datetime) -> dict[str, Any]:
    return {
        "id": row_id,
        "userId": key.user_id,
        "notificationType": key.notification_type,
        "status": decision.status.value,
        "failureReason": decision.reason,
        "expirationDate": key.expiration_stamp,
        "pointsExpiring": loggable_points(key.points),
        "createdAt": now,
    }


def _insert_logs(conn: Connection, rows: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    """Bulk insert; a key that got a live row meanwhile is left out (unique index)."""
    if not rows:
        return []
    insert_fn = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = (
        insert_fn(N)
        .on_conflict_do_nothing(
            index_elements=["userId", "notificationType", "expirationDate"],
            index_where=LIVE_STATUS_SQL,
        )
        .returning(N.c.id, N.c.status, N.c.failureReason)
    )
    result = conn.execute(stmt, rows)
    return [(r.id, r.status, r.failureReason) for r in result]


def settle_sent(conn: Connection, ids: Sequence[str], at: datetime) -> None:
    if ids:
        conn.execute(
            update(N)
            .where(N.c.id.in_(list(ids)), N.c.status == Status.PENDING.value)
            .values(status=Status.SENT.value, sentAt=utc_naive(at))
        )


def settle_unsent(conn: Connection, rows: Sequence[Mapping[str, str | None]]) -> None:
    """Close PENDING rows that were not sent: ``b_id``, ``b_status``, ``b_reason`` each."""
    if rows:
        conn.execute(
            update(N)
            .where(N.c.id == bindparam("b_id"), N.c.status == Status.PENDING.value)
            .values(status=bindparam("b_status"), failureReason=bindparam("b_reason")),
            list(rows),
        )


def _reminder(row: _Row, as_of: datetime, settings: Settings) -> Reminder:
    key = row.key
    assert key.email is not None
    run_date = local_date(as_of, settings.zone)
    return Reminder(
        log_id=row.id,
        user_id=key.user_id,
        email=key.email.strip(),
        name=key.name,
        points=key.points,
        expiration_date=key.expiration_date,
        notification_type=key.notification_type,
        days_left=(key.expiration_date - run_date).days,
    )
