"""What the console's pages read: each a bounded, indexed query, never a scan of the log.

``NotificationLog`` grows by every reminder ever decided, so the console never
counts it whole. Counts per day read a range of ``NotificationLog_createdAt_idx``
(index-only on PostgreSQL: it carries the tier and the status); failures read a
range of ``NotificationLog_status_createdAt_idx``; pages of reminders are keyset
pages on (``createdAt``, ``id``) that stop after one page; runs come from their
own small table. ``bench/console.py`` times every page on a 1M-row database and,
with ``--check``, asks PostgreSQL to confirm that no statement needs a scan.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, func, select

from rewards.clock import local_date, local_midnight_utc
from rewards.notifications.outbox import run_counts
from rewards.notifications.tiers import Status, notification_type
from rewards.paging import newest_first_page
from rewards.tables import (
    accounts,
    deliveries,
    job_runs,
    notification_log,
    users,
)

N = notification_log
STATUSES = (Status.SENT.value, Status.FAILED.value, Status.SKIPPED.value, Status.PENDING.value)


def failure_kind(reason: str | None) -> str:
    """A failure's reason without its details: ``550 5.1.1 …: user unknown`` → ``550 5.1.1 …``.

    The same grouping as the run records' ``failuresByReason``: the text before a colon.
    """
    return (reason or "unknown").split(":", 1)[0]


# -- the overview -----------------------------------------------------------------------------


@dataclass
class DayCounts:
    """Reminders decided on one calendar date (programme's zone): by tier, then status."""

    day: date
    by_type: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def total(self, status: str | None = None) -> int:
        return sum((c[status] if status else sum(c.values())) for c in self.by_type.values())


@dataclass
class Totals:
    """Counts by tier and status over some days, with their totals."""

    by_type: dict[str, Counter[str]]

    @property
    def by_status(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counts in self.by_type.values():
            total.update(counts)
        return total

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


def totals(days: Sequence[DayCounts]) -> Totals:
    by_type: dict[str, Counter[str]] = defaultdict(Counter)
    for day in days:
        for tier, counts in day.by_type.items():
            by_type[tier].update(counts)
    return Totals(dict(sorted(by_type.items())))


def reminders_per_day(
    conn: Connection, *, today: date, days: int, zone: ZoneInfo
) -> list[DayCounts]:
    """The reminders decided on each of the ``days`` dates up to ``today``, oldest first.

    One range of ``NotificationLog_createdAt_idx``. PostgreSQL groups by the local
    date itself; SQLite (no time zones) groups by minute, and the dates are taken here.
    """
    first = today - timedelta(days=days - 1)
    start = local_midnight_utc(first, zone)
    end = local_midnight_utc(today + timedelta(days=1), zone)
    series = {first + timedelta(days=i): DayCounts(first + timedelta(days=i)) for i in range(days)}
    if conn.dialect.name == "postgresql":
        bucket: Any = func.date(func.timezone(zone.key, func.timezone("UTC", N.c.createdAt))).label(
            "bucket"
        )
    else:
        bucket = func.strftime("%Y-%m-%d %H:%M", N.c.createdAt).label("bucket")
    rows = conn.execute(
        select(bucket, N.c.notificationType, N.c.status, func.count())
        .where(N.c.createdAt >= start, N.c.createdAt < end)
        .group_by(bucket, N.c.notificationType, N.c.status)
    )
    for moment, tier, status, count in rows:
        if isinstance(moment, str):
            moment = local_date(datetime.strptime(moment, "%Y-%m-%d %H:%M"), zone)
        if moment in series:
            series[moment].by_type[tier][status] += count
    return list(series.values())


@dataclass(frozen=True)
class FailureGroup:
    kind: str
    count: int
    example: str


def failures_by_reason(conn: Connection, *, since: datetime, limit: int = 12) -> list[FailureGroup]:
    """Why reminders failed since ``since``, most frequent first (one range of the
    ``status, createdAt`` index), grouped by the reason's text before a colon."""
    rows = conn.execute(
        select(N.c.failureReason, func.count())
        .where(N.c.status == Status.FAILED.value, N.c.createdAt >= since)
        .group_by(N.c.failureReason)
    )
    counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for reason, count in rows:
        kind = failure_kind(reason)
        counts[kind] += count
        examples.setdefault(kind, reason or "")
    return [FailureGroup(k, c, examples[k]) for k, c in counts.most_common(limit)]


def outbox_waiting(conn: Connection) -> int:
    """Reminders written but not yet settled (the outbox's partial index)."""
    return int(
        conn.scalar(
            select(func.count()).select_from(deliveries).where(deliveries.c.settledAt.is_(None))
        )
        or 0
    )


# -- runs ---------------------------------------------------------------------------------


def latest_runs(conn: Connection, limit: int, *, before: datetime | None = None) -> list[Any]:
    """Runs newest first (by start), ``limit`` of them, started before ``before`` if given."""
    query = select(job_runs)
    if before is not None:
        query = query.where(job_runs.c.startedAt < before)
    return list(
        conn.execute(query.order_by(job_runs.c.startedAt.desc(), job_runs.c.id.desc()).limit(limit))
    )


def run_by_id(conn: Connection, run_id: str) -> Any | None:
    return conn.execute(select(job_runs).where(job_runs.c.id == run_id)).one_or_none()


def latest_run_of_day(conn: Connection, day: date, zone: ZoneInfo) -> Any | None:
    """The latest run as of ``day`` (its as-of date in the programme's zone)."""
    start = local_midnight_utc(day, zone)
    end = local_midnight_utc(day + timedelta(days=1), zone)
    return conn.execute(
        select(job_runs)
        .where(job_runs.c.startedAt >= start - timedelta(days=2))
        .where(job_runs.c.asOf >= start, job_runs.c.asOf < end)
        .order_by(job_runs.c.startedAt.desc())
        .limit(1)
    ).one_or_none()


def console_run_since(conn: Connection, since: datetime) -> str | None:
    """The id of the first run started from the console at or after ``since``."""
    found: str | None = conn.scalar(
        select(job_runs.c.id)
        .where(job_runs.c.startedAt >= since, job_runs.c.trigger == "console")
        .order_by(job_runs.c.startedAt)
        .limit(1)
    )
    return found


def run_failures(conn: Connection, run_id: str) -> Counter[str]:
    """The run's failures by reason, from its outbox rows (``NotificationDelivery_runId_idx``)."""
    return run_counts(conn, run_id).failures


# -- reminders ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReminderFilter:
    member: str | None = None
    """A member id, or an email address (any case; every member with it)."""
    status: str | None = None
    notification_type: str | None = None
    created_from: date | None = None
    """First local date (programme's zone) on which the reminder was decided."""
    created_to: date | None = None
    """Last local date, included."""
    run_id: str | None = None


def member_ids_for(conn: Connection, member: str) -> list[str]:
    """The members ``member`` names: an id, or every member with that email address."""
    if conn.scalar(select(users.c.id).where(users.c.id == member)) is not None:
        return [member]
    if "@" not in member:
        return []
    return list(
        conn.scalars(
            select(users.c.id).where(func.lower(users.c.email) == member.strip().lower()).limit(50)
        )
    )


def search_reminders(
    conn: Connection,
    filters: ReminderFilter,
    zone: ZoneInfo,
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[Any], str | None]:
    """One page of reminders matching ``filters``, newest first, and the next page's cursor."""
    query = select(*N.c, users.c.email, users.c.name).join(users, users.c.id == N.c.userId)
    if filters.member:
        ids = member_ids_for(conn, filters.member)
        if not ids:
            return [], None
        query = query.where(N.c.userId.in_(ids))
    if filters.status:
        query = query.where(N.c.status == filters.status)
    if filters.notification_type:
        query = query.where(N.c.notificationType == filters.notification_type)
    if filters.created_from:
        query = query.where(N.c.createdAt >= local_midnight_utc(filters.created_from, zone))
    if filters.created_to:
        end = local_midnight_utc(filters.created_to + timedelta(days=1), zone)
        query = query.where(N.c.createdAt < end)
    if filters.run_id:
        query = query.where(
            N.c.id.in_(select(deliveries.c.logId).where(deliveries.c.runId == filters.run_id))
        )
    return newest_first_page(conn, query, N.c.createdAt, N.c.id, limit=limit, cursor=cursor)


@dataclass(frozen=True)
class ReminderDetail:
    row: Any
    """The log row, with the member's email and name as they are now."""
    delivery: Any | None
    """Its outbox bookkeeping (run, tries, lease, settled), if it has any."""
    run_as_of: datetime | None
    """The as-of instant of the run responsible for it."""
    key_rows: list[Any]
    """Every row of the same key (member, tier, date), newest first: the attempts."""


def reminder_detail(conn: Connection, log_id: str) -> ReminderDetail | None:
    row = conn.execute(
        select(*N.c, users.c.email, users.c.name, users.c.emailNotifications)
        .join(users, users.c.id == N.c.userId)
        .where(N.c.id == log_id)
    ).one_or_none()
    if row is None:
        return None
    delivery = conn.execute(
        select(deliveries, job_runs.c.asOf)
        .outerjoin(job_runs, job_runs.c.id == deliveries.c.runId)
        .where(deliveries.c.logId == log_id)
    ).one_or_none()
    key_rows = list(
        conn.execute(
            select(N.c.id, N.c.status, N.c.failureReason, N.c.createdAt, N.c.sentAt)
            .where(
                N.c.userId == row.userId,
                N.c.notificationType == row.notificationType,
                N.c.expirationDate == row.expirationDate,
            )
            .order_by(N.c.createdAt.desc(), N.c.id.desc())
        )
    )
    return ReminderDetail(row, delivery, delivery.asOf if delivery else None, key_rows)


def notification_types(tiers: Sequence[int]) -> list[str]:
    """The tiers' names, most urgent last, as the settings name them."""
    return [notification_type(t) for t in tiers]


# -- members ------------------------------------------------------------------------------


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def find_members(conn: Connection, query: str, *, limit: int = 50) -> list[Any]:
    """Members whose id is ``query``, or whose email or name starts with it (any case).

    Each part reads an index (the primary key; on PostgreSQL ``lower(email)`` and
    ``lower(name)`` with ``text_pattern_ops``), and stops after ``limit`` rows.
    """
    text = query.strip()
    if not text:
        return []
    columns = (
        users.c.id,
        users.c.email,
        users.c.name,
        users.c.emailNotifications,
        users.c.createdAt,
    )
    pattern = _like_prefix(text.lower())
    parts = [
        select(*columns).where(users.c.id == text),
        select(*columns)
        .where(func.lower(users.c.email).like(pattern, escape="\\"))
        .order_by(func.lower(users.c.email))
        .limit(limit),
        select(*columns)
        .where(func.lower(users.c.name).like(pattern, escape="\\"))
        .order_by(func.lower(users.c.name))
        .limit(limit),
    ]
    found: dict[str, Any] = {}
    for part in parts:
        for row in conn.execute(part):
            found.setdefault(row.id, row)
    return list(found.values())[:limit]


def accounts_of(conn: Connection, member_id: str) -> list[Any]:
    return list(
        conn.execute(
            select(accounts.c.id, accounts.c.createdAt)
            .where(accounts.c.userId == member_id)
            .order_by(accounts.c.createdAt, accounts.c.id)
        )
    )


def member_reminders(
    conn: Connection, member_id: str, *, limit: int, cursor: str | None = None
) -> tuple[list[Any], str | None]:
    query = select(*N.c).where(N.c.userId == member_id)
    return newest_first_page(conn, query, N.c.createdAt, N.c.id, limit=limit, cursor=cursor)
