"""Which reminders are due: one set-based query for every member at once.

For a run at ``as_of`` (in the programme's time zone, on ``run_date``), each
calendar date from the run date to ``run_date + max(tiers)`` is due exactly one
tier (:func:`rewards.notifications.tiers.tier_due`). The query sums, per member
and date, the *remaining* points expiring that date over all of the member's
accounts, and leaves out keys that already have a live row or have used up
their attempts.

Dates are turned into UTC ranges here, in Python, so both databases compare
plain timestamps and daylight-saving days have their true length.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Date,
    Select,
    Table,
    and_,
    cast,
    exists,
    func,
    literal,
    select,
    union_all,
)

from rewards.clock import local_date, local_midnight_utc
from rewards.db import tune_for_batch
from rewards.ledger.queries import expiring_lots
from rewards.models import Account, NotificationLog, PointLedger, Timestamp, User
from rewards.notifications.tiers import LIVE_STATUSES, Status, notification_type, tier_due

L: Table = PointLedger.__table__  # type: ignore[assignment]
N: Table = NotificationLog.__table__  # type: ignore[assignment]
U: Table = User.__table__  # type: ignore[assignment]
A: Table = Account.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class DueDay:
    """One calendar date of the window and the tier it is due."""

    day: date
    days_left: int
    notification_type: str
    starts: datetime  # UTC, inclusive
    ends: datetime  # UTC, exclusive

    @property
    def expiration_stamp(self) -> datetime:
        """How the date is stored in ``NotificationLog.expirationDate``: its midnight."""
        return datetime.combine(self.day, time.min)


@dataclass(frozen=True)
class DueKey:
    """A member, a tier and an expiration date with points still to lose."""

    user_id: str
    notification_type: str
    expiration_date: date
    days_left: int
    points: int
    email: str | None
    name: str | None
    email_notifications: bool

    @property
    def expiration_stamp(self) -> datetime:
        return datetime.combine(self.expiration_date, time.min)


def due_days(as_of: datetime, zone: ZoneInfo, tiers: Sequence[int]) -> list[DueDay]:
    """The dates a run at ``as_of`` looks at, each with its tier and UTC bounds."""
    run_date = local_date(as_of, zone)
    days: list[DueDay] = []
    for offset in range(max(tiers) + 1):
        tier = tier_due(offset, tiers)
        if tier is None:
            continue
        day = run_date + timedelta(days=offset)
        starts = max(as_of, local_midnight_utc(day, zone))
        ends = local_midnight_utc(day + timedelta(days=1), zone)
        days.append(DueDay(day, offset, notification_type(tier), starts, ends))
    return days


def _days_table(days: Sequence[DueDay]) -> Any:
    rows = [
        select(
            literal(d.expiration_stamp, Timestamp).label("expirationDate"),
            literal(d.day, Date).label("day"),
            literal(d.notification_type).label("notificationType"),
            literal(d.days_left).label("daysLeft"),
            literal(d.starts, Timestamp).label("starts"),
            literal(d.ends, Timestamp).label("ends"),
        )
        for d in days
    ]
    return union_all(*rows).cte("due_days")


def _on_day(expires_at: Any, days: Any, zone: ZoneInfo, dialect: str) -> ColumnElement[bool]:
    """Which due day an instant falls on.

    PostgreSQL converts the instant to the programme's calendar date (an equality
    the planner can hash); SQLite, which has no time zones, compares with the day's
    UTC bounds.
    """
    if dialect == "postgresql":
        local = func.timezone(zone.key, func.timezone("UTC", expires_at))
        on_day: ColumnElement[bool] = cast(local, Date) == days.c.day
        return on_day
    return and_(expires_at >= days.c.starts, expires_at < days.c.ends)


def net_expiring_per_member(
    as_of: datetime, zone: ZoneInfo, tiers: Sequence[int], dialect: str
) -> Any:
    """A CTE of (userId, expirationDate, notificationType, daysLeft, points) with points > 0."""
    days = due_days(as_of, zone, tiers)
    days_cte = _days_table(days)
    until = days[-1].ends - timedelta(milliseconds=1)
    remaining = expiring_lots(as_of, until).subquery("remaining")
    points = cast(func.sum(remaining.c.remaining), BigInteger)
    return (
        select(
            A.c.userId,
            days_cte.c.expirationDate,
            days_cte.c.notificationType,
            days_cte.c.daysLeft,
            points.label("points"),
        )
        .select_from(remaining)
        .join(A, A.c.id == remaining.c.accountId)
        .join(days_cte, _on_day(remaining.c.expiresAt, days_cte, zone, dialect))
        .group_by(
            A.c.userId,
            days_cte.c.expirationDate,
            days_cte.c.notificationType,
            days_cte.c.daysLeft,
        )
        .having(func.sum(remaining.c.remaining) > 0)
        .cte("per_member")
    )


def plan_query(
    as_of: datetime, zone: ZoneInfo, tiers: Sequence[int], max_attempts: int, dialect: str
) -> Select[Any]:
    """Due keys with the member's contact details, minus what ``NotificationLog`` settles."""
    per_member = net_expiring_per_member(as_of, zone, tiers, dialect)
    same_key = and_(
        N.c.userId == per_member.c.userId,
        N.c.notificationType == per_member.c.notificationType,
        N.c.expirationDate == per_member.c.expirationDate,
    )
    live = exists().where(same_key, N.c.status.in_([s.value for s in LIVE_STATUSES]))
    failures = (
        select(func.count())
        .select_from(N)
        .where(same_key, N.c.status == Status.FAILED.value)
        .scalar_subquery()
    )
    return (
        select(
            per_member.c.userId,
            per_member.c.notificationType,
            per_member.c.expirationDate,
            per_member.c.daysLeft,
            per_member.c.points,
            U.c.email,
            U.c.name,
            U.c.emailNotifications,
        )
        .join(U, U.c.id == per_member.c.userId)
        .where(~live, failures < max_attempts)
        .order_by(per_member.c.userId, per_member.c.expirationDate)
    )


def plan_due_notifications(
    conn: Connection,
    *,
    as_of: datetime,
    zone: ZoneInfo,
    tiers: Sequence[int],
    max_attempts: int,
    batch_size: int = 1000,
) -> Iterator[list[DueKey]]:
    """Stream the due keys in batches (memory stays bounded at any size)."""
    tune_for_batch(conn)
    query = plan_query(as_of, zone, tiers, max_attempts, conn.dialect.name)
    result = conn.execute(query.execution_options(stream_results=True, yield_per=batch_size))
    for partition in result.partitions():
        yield [
            DueKey(
                user_id=row.userId,
                notification_type=row.notificationType,
                expiration_date=row.expirationDate.date(),
                days_left=int(row.daysLeft),
                points=int(row.points),
                email=row.email,
                name=row.name,
                email_notifications=bool(row.emailNotifications),
            )
            for row in partition
        ]


def points_left_on_dates(
    conn: Connection, keys: Iterable[tuple[str, date]], *, as_of: datetime, zone: ZoneInfo
) -> dict[tuple[str, date], int]:
    """What is still to expire after ``as_of`` for each (member, calendar date) asked about.

    One query for all the keys: the remainders of the members' credits expiring
    between ``as_of`` and the end of the latest date, summed per member and date.
    """
    wanted = set(keys)
    if not wanted:
        return {}
    until = local_midnight_utc(max(day for _, day in wanted) + timedelta(days=1), zone)
    until -= timedelta(milliseconds=1)
    if until <= as_of:
        return {}
    member_accounts = set(
        conn.scalars(select(A.c.id).where(A.c.userId.in_(sorted({u for u, _ in wanted}))))
    )
    remaining = expiring_lots(as_of, until, sorted(member_accounts)).subquery("remaining")
    rows = conn.execute(
        select(A.c.userId, remaining.c.expiresAt, remaining.c.remaining).join(
            A, A.c.id == remaining.c.accountId
        )
    )
    left: dict[tuple[str, date], int] = defaultdict(int)
    for user_id, expires_at, points in rows:
        key = (user_id, local_date(expires_at, zone))
        if key in wanted:
            left[key] += int(points)
    return dict(left)
