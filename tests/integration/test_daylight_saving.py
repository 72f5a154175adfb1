"""A programme time zone with daylight-saving time, on the days the clocks change.

America/New_York and Europe/Berlin, spring forward and fall back in 2026: points
expiring on those days (at the first instant of the day, just after the change,
around the run's time, at the day's last millisecond) and on the days either side
are reminded on the right *local* calendar date, with the right tier; the
``expirationDate`` stored is that date's midnight and the email names that date.
The run's as-of is the cron's local time (``0 9 * * *``) on its day, whatever the
UTC offset that day.

The real job, a real SMTP server, a fixed clock (every run is in its past), and
credits only (no redemptions), so the amounts hold under any spending rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, insert, select

from rewards.config import load_settings
from rewards.models import Account, NotificationJobRun, NotificationLog, PointLedger, User
from rewards.notifications.job import CheckExpiringPointsJob
from rewards.notifications.runs import JobSummary
from tests.smtp_server import SmtpServer

NOW = datetime(2030, 6, 1, 12, 0)  # the job's clock: every run below is in its past
EARNED = datetime(2025, 6, 1, 10, 0)  # when every credit was earned
LAST_MS = time(23, 59, 59, 999000)


@dataclass(frozen=True)
class Change:
    """A day the clocks change, with the facts a reader can check against a calendar."""

    zone: str
    day: date
    change_utc: datetime  # the instant the clocks jump
    as_of_utc: dict[int, datetime]  # 09:00 local on day + offset, in UTC
    date_text: dict[int, str]  # how the email writes day + offset

    @property
    def id(self) -> str:
        return f"{self.zone.split('/')[1]}-{self.day.isoformat()}"


CHANGES = [
    Change(  # 02:00 EST -> 03:00 EDT: a 23-hour day
        "America/New_York",
        date(2026, 3, 8),
        datetime(2026, 3, 8, 7, 0),
        {
            -7: datetime(2026, 3, 1, 14, 0),
            -1: datetime(2026, 3, 7, 14, 0),
            0: datetime(2026, 3, 8, 13, 0),
        },
        {-1: "Saturday 7 March 2026", 0: "Sunday 8 March 2026", 1: "Monday 9 March 2026"},
    ),
    Change(  # 02:00 EDT -> 01:00 EST: a 25-hour day
        "America/New_York",
        date(2026, 11, 1),
        datetime(2026, 11, 1, 6, 0),
        {
            -7: datetime(2026, 10, 25, 13, 0),
            -1: datetime(2026, 10, 31, 13, 0),
            0: datetime(2026, 11, 1, 14, 0),
        },
        {-1: "Saturday 31 October 2026", 0: "Sunday 1 November 2026", 1: "Monday 2 November 2026"},
    ),
    Change(  # 02:00 CET -> 03:00 CEST: a 23-hour day
        "Europe/Berlin",
        date(2026, 3, 29),
        datetime(2026, 3, 29, 1, 0),
        {
            -7: datetime(2026, 3, 22, 8, 0),
            -1: datetime(2026, 3, 28, 8, 0),
            0: datetime(2026, 3, 29, 7, 0),
        },
        {-1: "Saturday 28 March 2026", 0: "Sunday 29 March 2026", 1: "Monday 30 March 2026"},
    ),
    Change(  # 03:00 CEST -> 02:00 CET: a 25-hour day
        "Europe/Berlin",
        date(2026, 10, 25),
        datetime(2026, 10, 25, 1, 0),
        {
            -7: datetime(2026, 10, 18, 7, 0),
            -1: datetime(2026, 10, 24, 7, 0),
            0: datetime(2026, 10, 25, 8, 0),
        },
        {-1: "Saturday 24 October 2026", 0: "Sunday 25 October 2026", 1: "Monday 26 October 2026"},
    ),
]


@dataclass(frozen=True)
class Member:
    """One member with one credit, expiring at local ``at`` on ``change.day + day_offset``."""

    name: str
    points: int
    day_offset: int
    at: time | None  # None: a minute after the clocks jump

    def expires_at(self, change: Change) -> datetime:
        """The credit's expiry, naive UTC."""
        if self.at is None:
            return change.change_utc + timedelta(minutes=1)
        local = datetime.combine(change.day + timedelta(days=self.day_offset), self.at)
        return local.replace(tzinfo=ZoneInfo(change.zone)).astimezone(UTC).replace(tzinfo=None)


MEMBERS = [
    Member("eve", 10, -1, LAST_MS),  # the last millisecond of the day before
    Member("dawn", 20, 0, time(0, 0)),  # local midnight, the day's first instant
    Member("after_change", 30, 0, None),  # a minute after the clocks jump
    Member("nine", 40, 0, time(9, 0)),  # the run's own time on the day of the change
    Member("half_nine", 50, 0, time(9, 30)),  # half an hour after it
    Member("dusk", 60, 0, LAST_MS),  # the last millisecond of the day
    Member("next", 70, 1, time(0, 0)),  # local midnight of the day after
]
ON_THE_DAY = ("dawn", "after_change", "nine", "half_nine", "dusk")

# What a run on ``change.day + offset`` sends: member -> (tier, day offset, "when").
# Members not listed get nothing; on the day itself, the ones whose points went
# before 09:00 local have expired.
EXPECTED: dict[int, dict[str, tuple[str, int, str]]] = {
    -7: {
        "eve": ("EXPIRATION_7_DAYS", -1, "in 6 days"),
        **dict.fromkeys(ON_THE_DAY, ("EXPIRATION_7_DAYS", 0, "in 7 days")),
        "next": ("EXPIRATION_30_DAYS", 1, "in 8 days"),
    },
    -1: {
        "eve": ("EXPIRATION_1_DAY", -1, "today"),
        **dict.fromkeys(ON_THE_DAY, ("EXPIRATION_1_DAY", 0, "tomorrow")),
        "next": ("EXPIRATION_7_DAYS", 1, "in 2 days"),
    },
    0: {
        "half_nine": ("EXPIRATION_1_DAY", 0, "today"),
        "dusk": ("EXPIRATION_1_DAY", 0, "today"),
        "next": ("EXPIRATION_1_DAY", 1, "tomorrow"),
    },
}
EXPIRED_BY_THE_RUN: dict[int, set[str]] = {
    -7: set(),
    -1: set(),
    0: {"eve", "dawn", "after_change", "nine"},
}


def email_of(name: str) -> str:
    return f"{name}@example.com"


def fill(engine: Engine, change: Change) -> None:
    users = [
        {"id": m.name, "email": email_of(m.name), "name": m.name.title(), "createdAt": EARNED}
        for m in MEMBERS
    ]
    accounts = [{"id": f"{m.name}-acct", "userId": m.name, "createdAt": EARNED} for m in MEMBERS]
    credits = [
        {
            "id": f"{m.name}-earn",
            "accountId": f"{m.name}-acct",
            "entryType": "EARN",
            "credit": m.points,
            "debit": 0,
            "createdAt": EARNED,
            "expiresAt": m.expires_at(change),
        }
        for m in MEMBERS
    ]
    with engine.begin() as conn:
        conn.execute(insert(User), users)
        conn.execute(insert(Account), accounts)
        conn.execute(insert(PointLedger), credits)


def text_part(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return " ".join(str(body.get_content()).split())


@pytest.fixture
def run(
    engine: Engine, database_url: str, smtp_server: SmtpServer
) -> Callable[[Change, int], JobSummary]:
    def run_on(change: Change, offset: int) -> JobSummary:
        settings = load_settings(
            database_url=database_url,
            **smtp_server.settings_overrides(),
            smtp_retries=0,
            timezone=change.zone,
            public_url="http://rewards.test",
        )
        job = CheckExpiringPointsJob(engine, settings, clock=lambda: NOW)
        return job.run(day=change.day + timedelta(days=offset))

    return run_on


def test_the_credit_instants_are_where_the_table_says() -> None:
    """The fixtures themselves: each instant falls on the local day and side of the change."""
    for change in CHANGES:
        zone = ZoneInfo(change.zone)
        for m in MEMBERS:
            local = m.expires_at(change).replace(tzinfo=UTC).astimezone(zone)
            assert local.date() == change.day + timedelta(days=m.day_offset), (change.id, m)
        before = (change.change_utc - timedelta(minutes=1)).replace(tzinfo=UTC).astimezone(zone)
        after = (change.change_utc + timedelta(minutes=1)).replace(tzinfo=UTC).astimezone(zone)
        assert before.utcoffset() != after.utcoffset(), change.id
        for offset, as_of in change.as_of_utc.items():
            local = as_of.replace(tzinfo=UTC).astimezone(zone)
            assert (local.date(), local.time()) == (change.day + timedelta(days=offset), time(9))


@pytest.mark.parametrize("offset", [-7, -1, 0], ids=["week-before", "day-before", "on-the-day"])
@pytest.mark.parametrize("change", CHANGES, ids=[c.id for c in CHANGES])
def test_reminders_are_planned_on_the_local_date_with_the_right_tier(
    engine: Engine,
    smtp_server: SmtpServer,
    run: Callable[[Change, int], JobSummary],
    change: Change,
    offset: int,
) -> None:
    fill(engine, change)
    summary = run(change, offset)
    expected = EXPECTED[offset]
    points = {m.name: m.points for m in MEMBERS}

    # The run: as of 09:00 local on its day, whatever that day's UTC offset.
    assert summary.as_of == change.as_of_utc[offset]
    with engine.connect() as conn:
        assert conn.execute(select(NotificationJobRun.asOf)).scalars().all() == [
            change.as_of_utc[offset]
        ]

    # The log: one row per member due, on the right date (stored as its midnight) and tier.
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                NotificationLog.userId,
                NotificationLog.notificationType,
                NotificationLog.expirationDate,
                NotificationLog.status,
                NotificationLog.pointsExpiring,
            )
        ).all()
    assert {user: (tier, day, status, pts) for user, tier, day, status, pts in rows} == {
        name: (
            tier,
            datetime.combine(change.day + timedelta(days=day_offset), time.min),
            "SENT",
            points[name],
        )
        for name, (tier, day_offset, _) in expected.items()
    }
    assert len(rows) == len(expected)

    # The points that went before the run were expired by it, and got no reminder.
    expired = EXPIRED_BY_THE_RUN[offset]
    assert summary.expired_points == sum(points[name] for name in expired)
    with engine.connect() as conn:
        expire_rows = conn.execute(
            select(PointLedger.accountId, PointLedger.debit).where(
                PointLedger.entryType == "EXPIRE"
            )
        ).all()
    assert sorted(expire_rows) == sorted((f"{name}-acct", points[name]) for name in expired)

    # The emails: the local date, in words, and when it is from the run's day.
    by_recipient = {str(m["To"].addresses[0].addr_spec): m for m in smtp_server.messages}
    assert set(by_recipient) == {email_of(name) for name in expected}
    for name, (_, day_offset, when) in expected.items():
        message = by_recipient[email_of(name)]
        body = text_part(message)
        assert change.date_text[day_offset] in body, (name, body)
        assert when in body, (name, body)
        assert f"{points[name]} points" in body, (name, body)
        assert when in str(message["Subject"]), (name, message["Subject"])
