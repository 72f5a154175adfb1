"""Which reminders are due: one set-based query for every member at once.

For a run at ``as_of`` (in the programme's time zone, on ``run_date``), each
calendar date from the run date to ``run_date + max(tiers)`` is due exactly one
tier (:func:`rewards.notifications.tiers.tier_due`). The query sums, per member
and date, the *remaining* points expiring that date over all of the member's
accounts, and leaves out keys that already have a live row or have used up
their attempts. Its cost follows the window: one range of the live lots expiring
in it, one range of the log rows of its dates.

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
    Select,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
)

from rewards.clock import local_date, local_midnight_utc
from rewards.db import tune_for_batch
from rewards.ledger.queries import expiring_lots
from rewards.models import LIVE_LOT_SQL, Timestamp
from rewards.notifications.tiers import LIVE_STATUSES, Status, notification_type, tier_due
from rewards.tables import accounts, lots, notification_log, users


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


def _ts(value: datetime) -> ColumnElement[datetime]:
    return literal(value, Timestamp)


def _days_table(days: Sequence[DueDay]) -> Any:
    """The due days as a table (SQLite): one select per day, united."""
    rows = [
        select(
            literal(d.expiration_stamp, Timestamp).label("expirationDate"),
            literal(d.notification_type).label("notificationType"),
            literal(d.days_left).label("daysLeft"),
            literal(d.starts, Timestamp).label("starts"),
            literal(d.ends, Timestamp).label("ends"),
        )
        for d in days
    ]
    return union_all(*rows).cte("due_days")


def _live_status_list() -> str:
    return ", ".join(f"'{s.value}'" for s in LIVE_STATUSES)


PLAN_SQL = f"""
WITH due_days ("expirationDate", "notificationType", "daysLeft") AS (
    SELECT * FROM unnest(
        CAST(:stamps AS timestamp[]), CAST(:types AS text[]), CAST(:days_left AS integer[]))
), sums AS (
    SELECT "userId",
           date_trunc('day', timezone(:zone, timezone('UTC', "expiresAt"))) AS "expirationDate",
           sum("remaining") AS points
    FROM "PointLot"
    WHERE {LIVE_LOT_SQL.text} AND "expiresAt" > :after AND "expiresAt" <= :until
    GROUP BY 1, 2
    HAVING sum("remaining") > 0
), due AS (
    SELECT s."userId", d."expirationDate", d."notificationType", d."daysLeft", s.points
    FROM sums AS s JOIN due_days AS d ON d."expirationDate" = s."expirationDate"
), settled AS (
    SELECT n."userId", n."expirationDate",
           max(CASE WHEN n."status" IN ({_live_status_list()}) THEN 1 ELSE 0 END) AS live,
           sum(CASE WHEN n."status" = '{Status.FAILED.value}' THEN 1 ELSE 0 END) AS failures
    FROM "NotificationLog" AS n
    JOIN due_days AS d
      ON d."expirationDate" = n."expirationDate" AND d."notificationType" = n."notificationType"
    WHERE n."expirationDate" >= :first AND n."expirationDate" <= :last
    GROUP BY 1, 2
)
SELECT due."userId", due."notificationType", due."expirationDate", due."daysLeft", due.points,
       u."email", u."name", u."emailNotifications"
FROM due
LEFT JOIN settled AS s ON s."userId" = due."userId" AND s."expirationDate" = due."expirationDate"
CROSS JOIN LATERAL (
    SELECT "email", "name", "emailNotifications" FROM "User" WHERE "id" = due."userId" LIMIT 1
) AS u
WHERE s."userId" IS NULL OR (s.live = 0 AND s.failures < :max_attempts)
ORDER BY 1, 3
"""
"""The plan on PostgreSQL, as plain SQL with the due days as arrays: built once, where the
same query in the expression language (a union of one select per day) took longer to
build than PostgreSQL takes to answer it.

* ``sums``: one range of the live-lot expiry index, whose entries carry the lot's
  member (no join with ``Account``), summed per member and local midnight (the
  calendar date in the programme's time zone, computed by the server);
* ``settled``: one range of the log's rows for the window's dates (an index on
  ``expirationDate``, covering), grouped: whether the key of the tier due now has a
  live row, and how many of its attempts failed; rather than two probes per key;
* the member of each key left, by key: the ``LIMIT`` keeps it a look-up per key (as
  a join, it could be planned as a scan of every member)."""


def _plan_params(
    days: Sequence[DueDay], as_of: datetime, zone: ZoneInfo, max_attempts: int
) -> dict[str, Any]:
    return {
        "stamps": [d.expiration_stamp for d in days],
        "types": [d.notification_type for d in days],
        "days_left": [d.days_left for d in days],
        "zone": zone.key,
        "after": as_of,
        "until": days[-1].ends - timedelta(milliseconds=1),
        "first": days[0].expiration_stamp,
        "last": days[-1].expiration_stamp,
        "max_attempts": max_attempts,
    }


def sqlite_plan_query(days: Sequence[DueDay], as_of: datetime, max_attempts: int) -> Select[Any]:
    """:data:`PLAN_SQL` for SQLite, which has no time zones: each lot is matched with its
    due day by the day's UTC bounds."""
    days_cte = _days_table(days)
    until = days[-1].ends - timedelta(milliseconds=1)
    day_columns = (
        days_cte.c.expirationDate,
        days_cte.c.notificationType,
        days_cte.c.daysLeft,
    )
    due = (
        select(
            lots.c.userId,
            *day_columns,
            cast(func.sum(lots.c.remaining), BigInteger).label("points"),
        )
        .join(
            days_cte,
            and_(lots.c.expiresAt >= days_cte.c.starts, lots.c.expiresAt < days_cte.c.ends),
        )
        .where(LIVE_LOT_SQL, lots.c.expiresAt > _ts(as_of), lots.c.expiresAt <= _ts(until))
        .group_by(lots.c.userId, *day_columns)
        .having(func.sum(lots.c.remaining) > 0)
        .subquery("due")
    )
    log = notification_log
    live = case((log.c.status.in_([s.value for s in LIVE_STATUSES]), 1), else_=0)
    failed = case((log.c.status == Status.FAILED.value, 1), else_=0)
    settled = (
        select(
            log.c.userId,
            log.c.expirationDate,
            func.max(live).label("live"),
            func.sum(failed).label("failures"),
        )
        .join(
            days_cte,
            and_(
                days_cte.c.expirationDate == log.c.expirationDate,
                days_cte.c.notificationType == log.c.notificationType,
            ),
        )
        .where(
            log.c.expirationDate >= _ts(days[0].expiration_stamp),
            log.c.expirationDate <= _ts(days[-1].expiration_stamp),
        )
        .group_by(log.c.userId, log.c.expirationDate)
        .subquery("settled")
    )
    return (
        select(
            due.c.userId,
            due.c.notificationType,
            due.c.expirationDate,
            due.c.daysLeft,
            due.c.points,
            users.c.email,
            users.c.name,
            users.c.emailNotifications,
        )
        .join(users, users.c.id == due.c.userId)
        .outerjoin(
            settled,
            and_(
                settled.c.userId == due.c.userId,
                settled.c.expirationDate == due.c.expirationDate,
            ),
        )
        .where(
            or_(
                settled.c.userId.is_(None),
                and_(settled.c.live == 0, settled.c.failures < max_attempts),
            )
        )
        .order_by(due.c.userId, due.c.expirationDate)
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
    days = due_days(as_of, zone, tiers)
    streamed = {"stream_results": True, "yield_per": batch_size}
    if conn.dialect.name == "postgresql":
        params = _plan_params(days, as_of, zone, max_attempts)
        result = conn.execute(text(PLAN_SQL).execution_options(**streamed), params)
    else:
        query = sqlite_plan_query(days, as_of, max_attempts)
        result = conn.execute(query.execution_options(**streamed))
    # Unpacked by position (both queries select the same columns in the same order):
    # a row's attributes are looked up by name, several times the cost, for every key.
    for partition in result.partitions(batch_size):
        yield [
            DueKey(
                user_id,
                notification_type,
                expiration_date.date(),
                int(days_left),
                int(points),
                email,
                name,
                bool(email_notifications),
            )
            for (
                user_id,
                notification_type,
                expiration_date,
                days_left,
                points,
                email,
                name,
                email_notifications,
            ) in partition
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
        conn.scalars(
            select(accounts.c.id).where(accounts.c.userId.in_(sorted({u for u, _ in wanted})))
        )
    )
    remaining = expiring_lots(as_of, until, sorted(member_accounts)).subquery("remaining")
    rows = conn.execute(
        select(accounts.c.userId, remaining.c.expiresAt, remaining.c.remaining).join(
            accounts, accounts.c.id == remaining.c.accountId
        )
    )
    left: dict[tuple[str, date], int] = defaultdict(int)
    for user_id, expires_at, points in rows:
        key = (user_id, local_date(expires_at, zone))
        if key in wanted:
            left[key] += int(points)
    return dict(left)
