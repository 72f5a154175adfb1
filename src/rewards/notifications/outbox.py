"""The outbox: reminders written ``PENDING`` before they are sent, and who is sending them.

A reminder's ``NotificationLog`` row and its ``NotificationDelivery`` row are
written together. While the log row is ``PENDING`` the reminder is in the
outbox; a dispatcher (in the job's process, or a worker anywhere) *claims* it
by taking a lease, sends it, and *settles* it: ``SENT``, or ``FAILED``/``SKIPPED``
with the reason. A lease is exclusive until it runs out, so a chunk delivered
twice, or two workers, never send one row twice while it holds; a row whose
lease ran out (its worker died) or that was never claimed (its task was lost)
is put back by :func:`requeue_stale`. The database is the one source of truth:
a queue that loses its messages loses nothing here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Text,
    and_,
    any_,
    bindparam,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY

from rewards.ledger.projection_store import among
from rewards.models import LIVE_STATUS_SQL, UNSETTLED_SQL, Timestamp
from rewards.notifications.planner import DueKey
from rewards.notifications.tiers import Decision, Status, loggable_points
from rewards.tables import deliveries, job_runs, notification_log, users


@dataclass(frozen=True)
class Written:
    """A log row the planner wrote (``PENDING`` rows are in the outbox)."""

    log_id: str
    key: DueKey
    status: Status
    reason: str | None


@dataclass(frozen=True)
class Claimed:
    """An outbox row a dispatcher now holds, with the member as they are now."""

    log_id: str
    user_id: str
    notification_type: str
    expiration_date: date
    points: int
    email: str | None
    name: str | None
    email_notifications: bool
    tries: int
    """Claims so far, this one included: more than 1 means a re-send."""
    as_of: datetime | None
    """The as-of instant of the run responsible for it: the email speaks from its date."""


@dataclass(frozen=True)
class Settled:
    """How one claimed row ends: ``SENT`` at ``at``, or closed with a reason."""

    log_id: str
    status: Status
    reason: str | None = None
    at: datetime | None = None


def _insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def write_planned(
    conn: Connection,
    planned: Sequence[tuple[str, DueKey, Decision]],
    *,
    run_id: str,
    now: datetime,
) -> list[Written]:
    """Write the log rows of one planned batch and, for each, its delivery row.

    ``planned``: (new log id, key, decision). A key that got a live row meanwhile
    (another writer, a racing run) is left out by the partial unique index; what
    was written is returned. Rows decided ``SKIPPED``/``FAILED`` are settled at once.
    """
    if not planned:
        return []
    if conn.dialect.name == "postgresql":
        return _write_planned_pg(conn, planned, run_id=run_id, now=now)
    keys = {log_id: key for log_id, key, _ in planned}
    rows = [
        {
            "id": log_id,
            "userId": key.user_id,
            "notificationType": key.notification_type,
            "status": decision.status.value,
            "failureReason": decision.reason,
            "expirationDate": key.expiration_stamp,
            "pointsExpiring": loggable_points(key.points),
            "createdAt": now,
        }
        for log_id, key, decision in planned
    ]
    inserted = conn.execute(
        _insert(conn)(notification_log)
        .on_conflict_do_nothing(
            index_elements=["userId", "notificationType", "expirationDate"],
            index_where=LIVE_STATUS_SQL,
        )
        .returning(
            notification_log.c.id, notification_log.c.status, notification_log.c.failureReason
        ),
        rows,
    ).all()
    written = [Written(r.id, keys[r.id], Status(r.status), r.failureReason) for r in inserted]
    if written:
        conn.execute(
            insert(deliveries),
            [
                {
                    "logId": w.log_id,
                    "runId": run_id,
                    "queuedAt": now,
                    "tries": 0,
                    "settledAt": None if w.status is Status.PENDING else now,
                }
                for w in written
            ],
        )
    return written


WRITE_PLANNED_PG = f"""
WITH written AS (
    INSERT INTO "NotificationLog" (id, "userId", "notificationType", status, "failureReason",
                                   "expirationDate", "pointsExpiring", "createdAt")
    SELECT p.*, %(now)b::timestamp
    FROM unnest(%(ids)b::text[], %(users)b::text[], %(types)b::text[], %(statuses)b::text[],
                %(reasons)b::text[], %(dates)b::timestamp[], %(points)b::integer[]) AS p
    ON CONFLICT ("userId", "notificationType", "expirationDate") WHERE {LIVE_STATUS_SQL.text}
    DO NOTHING
    RETURNING id, status
)
INSERT INTO "NotificationDelivery" ("logId", "runId", "queuedAt", tries, "settledAt")
SELECT id, %(run)b::text, %(now)b::timestamp, 0,
       CASE WHEN status = 'PENDING' THEN NULL ELSE %(now)b::timestamp END
FROM written
RETURNING "logId"
"""


def _write_planned_pg(
    conn: Connection,
    planned: Sequence[tuple[str, DueKey, Decision]],
    *,
    run_id: str,
    now: datetime,
) -> list[Written]:
    """:func:`write_planned` in one round trip: the batch as arrays, both rows per reminder
    written by one statement (no per-row work in Python or SQLAlchemy)."""
    params = {
        "ids": [log_id for log_id, _, _ in planned],
        "users": [key.user_id for _, key, _ in planned],
        "types": [key.notification_type for _, key, _ in planned],
        "statuses": [decision.status.value for _, _, decision in planned],
        "reasons": [decision.reason for _, _, decision in planned],
        "dates": [key.expiration_stamp for _, key, _ in planned],
        "points": [loggable_points(key.points) for _, key, _ in planned],
        "run": run_id,
        "now": now,
    }
    written = {log_id for (log_id,) in conn.exec_driver_sql(WRITE_PLANNED_PG, params)}
    return [
        Written(log_id, key, decision.status, decision.reason)
        for log_id, key, decision in planned
        if log_id in written
    ]


class PlannerStatistics:
    """Keeps PostgreSQL's statistics of the outbox in step while a run fills it.

    The planner's picture of the outbox is taken by autovacuum, typically while it
    holds few unsettled rows; a run then writes hundreds of thousands in minutes. With
    that picture, a claim or a settle may scan every unsettled row for each chunk (the
    partial index of unsettled rows looks small), and the cost of a chunk grows with
    the outbox. The run has the tables analysed when it has written ``first_at`` rows
    and each time it has doubled what it had written at the last analysis: a few
    analyses (a sample of fixed size, a fraction of a second each) for a million rows.
    """

    def __init__(self, first_at: int = 5_000) -> None:
        self.written = 0
        self.next_at = first_at

    def wrote(self, engine: Engine, count: int) -> bool:
        """Count rows written to the outbox; analyse it when due. True if it did."""
        self.written += count
        if self.written < self.next_at or engine.dialect.name != "postgresql":
            return False
        with engine.begin() as conn:
            conn.execute(text('ANALYZE "NotificationLog", "NotificationDelivery"'))
        self.next_at = 2 * self.written
        return True


def claim(
    conn: Connection, log_ids: Sequence[str], *, now: datetime, lease_until: datetime, worker: str
) -> list[Claimed]:
    """Take the lease on those of ``log_ids`` no one holds, and read them with their member.

    On PostgreSQL rows another transaction is claiming are skipped, not waited for
    (``FOR UPDATE SKIP LOCKED``): two workers given the same chunk split it, and a
    chunk delivered twice is sent once. Rows settled meanwhile are not claimed.
    """
    if not log_ids:
        return []
    claimable = and_(
        UNSETTLED_SQL,
        or_(deliveries.c.leaseUntil.is_(None), deliveries.c.leaseUntil < now),
    )
    if conn.dialect.name == "postgresql":
        # Locked by id alone, then checked: with ``claimable`` in the locking scan the
        # planner may combine the primary key with the partial index of unsettled rows,
        # and read all of them for each chunk.
        free = (
            select(deliveries.c.logId)
            .where(deliveries.c.logId == any_(bindparam("ids", list(log_ids), ARRAY(Text))))
            .with_for_update(skip_locked=True)
            .cte("free")
        )
        stmt = (
            update(deliveries)
            .where(deliveries.c.logId == free.c.logId, claimable)
            .values(leaseUntil=lease_until, claimedBy=worker, tries=deliveries.c.tries + 1)
            .returning(deliveries.c.logId, deliveries.c.tries, deliveries.c.runId)
        )
    else:
        stmt = (
            update(deliveries)
            .where(deliveries.c.logId.in_(list(log_ids)), claimable)
            .values(leaseUntil=lease_until, claimedBy=worker, tries=deliveries.c.tries + 1)
            .returning(deliveries.c.logId, deliveries.c.tries, deliveries.c.runId)
        )
    held = {r.logId: (int(r.tries), r.runId) for r in conn.execute(stmt)}
    if not held:
        return []
    run_ids = {run_id for _, run_id in held.values() if run_id is not None}
    as_of: dict[str, datetime] = (
        dict(
            conn.execute(
                select(job_runs.c.id, job_runs.c.asOf).where(job_runs.c.id.in_(run_ids))
            ).all()
        )
        if run_ids
        else {}
    )
    # Driven by the ids alone, and the status checked here: a filter on ``status`` would
    # let the planner, misled by statistics taken before the outbox filled, scan every
    # PENDING row for each chunk (the cost of a chunk then grew with the outbox).
    rows = conn.execute(
        select(
            notification_log.c.id,
            notification_log.c.status,
            notification_log.c.userId,
            notification_log.c.notificationType,
            notification_log.c.expirationDate,
            notification_log.c.pointsExpiring,
            users.c.email,
            users.c.name,
            users.c.emailNotifications,
        )
        .join(users, users.c.id == notification_log.c.userId)
        .where(among(notification_log.c.id, held, conn.dialect.name))
        .order_by(notification_log.c.id)
    )
    claimed: list[Claimed] = []
    for r in rows:
        if r.status != Status.PENDING.value:
            continue
        tries, run_id = held[r.id]
        claimed.append(
            Claimed(
                r.id,
                r.userId,
                r.notificationType,
                r.expirationDate.date(),
                r.pointsExpiring,
                r.email,
                r.name,
                bool(r.emailNotifications),
                tries,
                as_of.get(run_id) if run_id is not None else None,
            )
        )
    return claimed


SETTLE_PG = """
WITH outcome AS (
    SELECT * FROM unnest(%(ids)b::text[], %(statuses)b::text[], %(reasons)b::text[],
                         %(ats)b::timestamp[]) AS o(id, status, reason, at)
), logged AS (
    UPDATE "NotificationLog" AS l
    SET status = o.status,
        "sentAt" = CASE WHEN o.status = 'SENT' THEN o.at ELSE l."sentAt" END,
        "failureReason" = CASE WHEN o.status = 'SENT' THEN l."failureReason" ELSE o.reason END
    FROM outcome AS o
    WHERE l.id = o.id AND l.status = 'PENDING'
)
UPDATE "NotificationDelivery" SET "settledAt" = %(now)b::timestamp, "leaseUntil" = NULL
WHERE "logId" = ANY(%(ids)b::text[])
"""


def settle(conn: Connection, outcomes: Sequence[Settled], *, now: datetime) -> None:
    """Close claimed rows: their log row's status (only while still ``PENDING``), and done."""
    if not outcomes:
        return
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            SETTLE_PG,
            {
                "ids": [o.log_id for o in outcomes],
                "statuses": [o.status.value for o in outcomes],
                "reasons": [o.reason for o in outcomes],
                "ats": [o.at or now for o in outcomes],
                "now": now,
            },
        )
        return
    sent = [o for o in outcomes if o.status is Status.SENT]
    closed = [o for o in outcomes if o.status is not Status.SENT]
    pending = notification_log.c.status == Status.PENDING.value
    if sent:
        conn.execute(
            update(notification_log)
            .where(notification_log.c.id == bindparam("log_id"), pending)
            .values(status=Status.SENT.value, sentAt=bindparam("at", type_=Timestamp)),
            [{"log_id": o.log_id, "at": o.at or now} for o in sent],
        )
    if closed:
        conn.execute(
            update(notification_log)
            .where(notification_log.c.id == bindparam("log_id"), pending)
            .values(status=bindparam("new_status"), failureReason=bindparam("reason")),
            [
                {"log_id": o.log_id, "new_status": o.status.value, "reason": o.reason}
                for o in closed
            ],
        )
    conn.execute(
        update(deliveries)
        .where(among(deliveries.c.logId, [o.log_id for o in outcomes], conn.dialect.name))
        .values(settledAt=now, leaseUntil=None)
    )


def adopt_orphans(conn: Connection) -> int:
    """Give a delivery row to ``PENDING`` log rows that have none (written by an earlier
    version, or by hand), as queued when they were written and already tried once: the
    sweep then treats them as any other row a sender left behind."""
    orphans = (
        select(notification_log.c.id, notification_log.c.createdAt, literal(1))
        .where(notification_log.c.status == Status.PENDING.value)
        .where(~exists().where(deliveries.c.logId == notification_log.c.id))
    )
    result = conn.execute(
        insert(deliveries).from_select(["logId", "queuedAt", "tries"], orphans),
        # An INSERT's row count is not kept by default (psycopg would report -1).
        execution_options={"preserve_rowcount": True},
    )
    return result.rowcount


def requeue_stale(
    conn: Connection,
    *,
    now: datetime,
    lease_seconds: int,
    run_id: str | None = None,
    limit: int = 10_000,
) -> list[str]:
    """Put back in the queue what no live dispatcher holds: leases run out, or never claimed.

    A row claimed by a worker that died has an expired lease; a row whose task was
    lost (a broker that lost its queue) was queued more than a lease ago and never
    claimed. They are marked queued now (so two sweepers do not both take them)
    and, with ``run_id``, handed to that run. Returns their ids.
    """
    stale = and_(
        UNSETTLED_SQL,
        or_(
            deliveries.c.leaseUntil < now,
            and_(
                deliveries.c.leaseUntil.is_(None),
                deliveries.c.queuedAt < now - timedelta(seconds=lease_seconds),
            ),
        ),
    )
    chosen = select(deliveries.c.logId).where(stale).order_by(deliveries.c.queuedAt).limit(limit)
    if conn.dialect.name == "postgresql":
        chosen = chosen.with_for_update(skip_locked=True)
    values: dict[str, Any] = {"queuedAt": now, "leaseUntil": None}
    if run_id is not None:
        values["runId"] = run_id
    picked = chosen.cte("picked")
    rows = conn.execute(
        update(deliveries)
        .where(deliveries.c.logId.in_(select(picked.c.logId)))
        .values(**values)
        .returning(deliveries.c.logId)
    ).all()
    return [r.logId for r in rows]


def unsettled(conn: Connection, run_id: str) -> int:
    """How many of the run's reminders are not settled yet."""
    return int(
        conn.scalar(
            select(func.count())
            .select_from(deliveries)
            .where(deliveries.c.runId == run_id, UNSETTLED_SQL)
        )
        or 0
    )


@dataclass
class RunCounts:
    by_type: dict[str, Counter[str]]
    failures: Counter[str]
    resent: int
    """Rows an earlier sender left unsettled that this run sent."""


def run_counts(conn: Connection, run_id: str) -> RunCounts:
    """The run's reminders by tier and status, and its failures by reason (before a colon)."""
    resend = deliveries.c.tries > 1
    rows = conn.execute(
        select(
            notification_log.c.notificationType,
            notification_log.c.status,
            notification_log.c.failureReason,
            resend.label("resend"),
            func.count(),
        )
        .join(deliveries, deliveries.c.logId == notification_log.c.id)
        .where(deliveries.c.runId == run_id)
        .group_by(
            notification_log.c.notificationType,
            notification_log.c.status,
            notification_log.c.failureReason,
            resend,
        )
    )
    by_type: dict[str, Counter[str]] = defaultdict(Counter)
    failures: Counter[str] = Counter()
    resent = 0
    for notification_type, status, reason, resend_row, count in rows:
        by_type[notification_type][status] += count
        if status == Status.FAILED.value and reason:
            failures[reason.split(":", 1)[0]] += count
        if resend_row and status == Status.SENT.value:
            resent += count
    return RunCounts(dict(by_type), failures, resent)
