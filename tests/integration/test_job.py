"""CheckExpiringPointsJob end to end: real databases, a real SMTP server, the SPEC's rules."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, text

from rewards.config import Settings, load_settings
from rewards.ids import new_id
from rewards.ledger import service
from rewards.models import NotificationJobRun, NotificationLog, PointLedger
from rewards.notifications.job import CheckExpiringPointsJob, JobError
from rewards.notifications.locking import JobAlreadyRunning, job_lock
from rewards.notifications.runs import JobSummary
from tests.smtp_server import Behaviour, SmtpServer

NOW = datetime(2030, 6, 1, 12, 0)  # the real clock in these tests: every run below is in its past
EARNED = datetime(2029, 6, 1, 10, 0)
D = date(2030, 2, 10)  # an expiration date
EXPIRES = datetime(2030, 2, 10, 15, 0)  # an instant on D (UTC)


def clock() -> datetime:
    return NOW


class Programme:
    """Members and ledger entries written through the ledger service."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def member(
        self,
        *,
        email: str | None = "ann@example.com",
        name: str | None = "Ann Lee",
        opted_in: bool = True,
        user_id: str | None = None,
    ) -> str:
        user_id = user_id or new_id()
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    'INSERT INTO "User" ("id", "email", "name", "emailNotifications")'
                    " VALUES (:id, :email, :name, :opt)"
                ),
                {"id": user_id, "email": email, "name": name, "opt": opted_in},
            )
        return user_id

    def account(self, user_id: str) -> str:
        account_id = new_id()
        with self.engine.begin() as conn:
            conn.execute(
                text('INSERT INTO "Account" ("id", "userId") VALUES (:a, :u)'),
                {"a": account_id, "u": user_id},
            )
        return account_id

    def earn(
        self, account_id: str, points: int, expires_at: datetime | None, at: datetime = EARNED
    ) -> None:
        with self.engine.begin() as conn:
            service.earn(conn, account_id, points, as_of=at, expires_at=expires_at)

    def redeem(self, account_id: str, points: int, at: datetime) -> None:
        with self.engine.begin() as conn:
            service.redeem(conn, account_id, points, as_of=at)

    def member_with_points(
        self, points: int = 100, expires_at: datetime = EXPIRES, **kw: Any
    ) -> str:
        user_id = self.member(**kw)
        self.earn(self.account(user_id), points, expires_at)
        return user_id


@pytest.fixture
def programme(engine: Engine) -> Programme:
    return Programme(engine)


@pytest.fixture
def make_settings(database_url: str, smtp_server: SmtpServer) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            **smtp_server.settings_overrides(),
            "smtp_retries": 1,
            "public_url": "http://rewards.test",
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def run(engine: Engine, make_settings: Callable[..., Settings]) -> Callable[..., JobSummary]:
    def run_job(day: date, *, dry_run: bool = False, **overrides: Any) -> JobSummary:
        job = CheckExpiringPointsJob(engine, make_settings(**overrides), clock=clock)
        return job.run(day=day, dry_run=dry_run)

    return run_job


def logs(engine: Engine) -> list[tuple[str, str, date, str, int, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                NotificationLog.userId,
                NotificationLog.notificationType,
                NotificationLog.expirationDate,
                NotificationLog.status,
                NotificationLog.pointsExpiring,
                NotificationLog.failureReason,
            ).order_by(NotificationLog.createdAt, NotificationLog.notificationType)
        )
        return [(u, t, d.date(), s, p, r) for u, t, d, s, p, r in rows]


def text_part(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


# -- tiers across dates ------------------------------------------------------------------


def test_each_tier_is_sent_once_on_its_day(
    programme: Programme, run: Callable[..., JobSummary], smtp_server: SmtpServer, engine: Engine
) -> None:
    user = programme.member_with_points(100)
    sent_on: dict[date, list[str]] = {}
    for offset in range(35, -2, -1):
        day = D - timedelta(days=offset)
        summary = run(day)
        if summary.sent:
            sent_on[day] = [t for t, c in summary.counts_by_type().items() if c.get("SENT")]
    assert sent_on == {
        D - timedelta(days=30): ["EXPIRATION_30_DAYS"],
        D - timedelta(days=7): ["EXPIRATION_7_DAYS"],
        D - timedelta(days=1): ["EXPIRATION_1_DAY"],
    }
    assert {(u, t, d, s, p) for u, t, d, s, p, _ in logs(engine)} == {
        (user, "EXPIRATION_30_DAYS", D, "SENT", 100),
        (user, "EXPIRATION_7_DAYS", D, "SENT", 100),
        (user, "EXPIRATION_1_DAY", D, "SENT", 100),
    }
    assert len(smtp_server.messages) == 3


def test_a_run_called_from_code_that_runs_an_event_loop_delivers(
    programme: Programme, run: Callable[..., JobSummary], smtp_server: SmtpServer, engine: Engine
) -> None:
    """An async application (or test harness) calling the job: its thread already runs a
    loop, where the inline dispatcher cannot start one of its own."""
    user = programme.member_with_points(100)

    async def from_async_code() -> JobSummary:
        return run(D - timedelta(days=7))

    summary = asyncio.run(from_async_code())
    assert summary.sent == 1
    assert len(smtp_server.messages) == 1
    assert [(u, s) for u, _, _, s, _, _ in logs(engine)] == [(user, "SENT")]


def test_a_missed_run_catches_up_with_the_tier_due_now_only(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine
) -> None:
    programme.member_with_points(100)
    summary = run(D - timedelta(days=5))
    assert summary.counts_by_type() == {"EXPIRATION_7_DAYS": {"SENT": 1}}


def test_points_expiring_later_the_same_day_get_the_most_urgent_tier(
    programme: Programme, run: Callable[..., JobSummary]
) -> None:
    programme.member_with_points(
        100, expires_at=datetime.combine(D, datetime.min.time()) + timedelta(hours=20)
    )
    summary = run(D)  # the run is at 09:00; the points go at 20:00
    assert summary.counts_by_type() == {"EXPIRATION_1_DAY": {"SENT": 1}}


def test_custom_tiers(programme: Programme, run: Callable[..., JobSummary]) -> None:
    programme.member_with_points(100)
    summary = run(D - timedelta(days=45), notify_tiers="60,14,3,1")
    assert summary.counts_by_type() == {"EXPIRATION_60_DAYS": {"SENT": 1}}
    summary = run(D - timedelta(days=3), notify_tiers="60,14,3,1")
    assert summary.counts_by_type() == {"EXPIRATION_3_DAYS": {"SENT": 1}}


def test_expiration_dates_are_calendar_dates_in_the_programme_time_zone(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine
) -> None:
    # 23:30 UTC on 9 Feb is already 10 Feb in Paris.
    programme.member_with_points(100, expires_at=datetime(2030, 2, 9, 23, 30))
    run(D - timedelta(days=7), timezone="Europe/Paris")
    assert [(t, d) for _, t, d, *_ in logs(engine)] == [("EXPIRATION_7_DAYS", D)]


# -- amounts ------------------------------------------------------------------------------


BILLION = 1_000_000_000


def test_a_sum_too_large_for_the_log_fails_that_reminder_not_the_run(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine, smtp_server: SmtpServer
) -> None:
    whale = programme.member(email="whale@example.com")
    account = programme.account(whale)
    for _ in range(3):
        programme.earn(account, BILLION, EXPIRES)
    minnow = programme.member_with_points(100, email="minnow@example.com")
    summary = run(D - timedelta(days=7))
    assert summary.error is None
    assert summary.counts_by_type() == {"EXPIRATION_7_DAYS": {"FAILED": 1, "SENT": 1}}
    rows = {u: (s, p, r) for u, _, _, s, p, r in logs(engine)}
    status, points, reason = rows[whale]
    assert (status, points) == ("FAILED", 2**31 - 1)
    assert reason is not None
    assert reason.startswith("too many points: 3,000,000,000 expiring")
    assert rows[minnow][:2] == ("SENT", 100)
    assert [m["To"].addresses[0].addr_spec for m in smtp_server.messages] == ["minnow@example.com"]
    with engine.connect() as conn:
        assert conn.scalar(select(NotificationJobRun.status)) == "SUCCEEDED"


def test_an_expiry_too_large_for_one_entry_does_not_stop_the_run(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine
) -> None:
    whale = programme.member(email="whale@example.com")
    account = programme.account(whale)
    gone = datetime(2030, 1, 5, 12, 0)
    for _ in range(3):
        programme.earn(account, BILLION, gone)
    minnow = programme.member(email="minnow@example.com")
    small = programme.account(minnow)
    programme.earn(small, 40, gone)
    summary = run(D - timedelta(days=7))
    assert summary.error is None
    assert (summary.expired_entries, summary.expired_points) == (1, 40)
    with engine.connect() as conn:
        assert service.balance(conn, account, NOW) == 0
        assert service.balance(conn, small, NOW) == 0
        assert conn.scalar(select(NotificationJobRun.status)) == "SUCCEEDED"


def test_amounts_are_net_of_redemptions_and_summed_over_accounts(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine
) -> None:
    user = programme.member()
    first, second = programme.account(user), programme.account(user)
    programme.earn(first, 100, EXPIRES)
    programme.earn(first, 50, EXPIRES + timedelta(hours=2))  # same date
    programme.earn(first, 500, datetime(2030, 5, 1))  # a later date: not due
    programme.redeem(first, 120, at=datetime(2029, 9, 1))  # spends the earliest-expiring first
    programme.earn(second, 40, EXPIRES)
    run(D - timedelta(days=7))
    assert [(u, p) for u, _, _, _, p, _ in logs(engine)] == [(user, 30 + 40)]


def test_a_member_who_spent_the_points_gets_no_reminder(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine
) -> None:
    user = programme.member()
    account = programme.account(user)
    programme.earn(account, 100, EXPIRES)
    programme.redeem(account, 100, at=datetime(2029, 12, 1))
    assert run(D - timedelta(days=7)).planned == 0
    assert logs(engine) == []


def test_points_already_expired_are_posted_and_not_counted(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine
) -> None:
    user = programme.member()
    account = programme.account(user)
    programme.earn(account, 80, datetime(2030, 1, 20))  # expires before the run
    programme.earn(account, 100, EXPIRES)
    programme.redeem(account, 30, at=datetime(2029, 7, 1))  # from the earlier credit
    summary = run(D - timedelta(days=7))
    assert (summary.expired_entries, summary.expired_points) == (1, 50)
    assert [p for *_, p, _ in logs(engine)] == [100]
    with engine.connect() as conn:
        expire = conn.execute(
            select(PointLedger.debit, PointLedger.expiresAt).where(
                PointLedger.entryType == "EXPIRE"
            )
        ).all()
    assert expire == [(50, datetime(2030, 1, 20))]
    assert run(D - timedelta(days=6)).expired_points == 0  # posted once


# -- decisions and dedup --------------------------------------------------------------------


def test_the_seed_skip_and_failure_reasons(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine, smtp_server: SmtpServer
) -> None:
    ok = programme.member_with_points(email="ok@example.com")
    out = programme.member_with_points(email="out@example.com", opted_in=False)
    none = programme.member_with_points(email=None)
    bad = programme.member_with_points(email="not-an-email")
    summary = run(D - timedelta(days=7))
    assert (summary.sent, summary.failed, summary.skipped) == (1, 2, 1)
    outcome = {u: (s, r) for u, _, _, s, _, r in logs(engine)}
    assert outcome == {
        ok: ("SENT", None),
        out: ("SKIPPED", "user opted out"),
        none: ("FAILED", "missing email"),
        bad: ("FAILED", "invalid format"),
    }
    assert [m["To"].addresses[0].addr_spec for m in smtp_server.messages] == ["ok@example.com"]


def test_rerunning_a_date_sends_nothing_twice(
    programme: Programme, run: Callable[..., JobSummary], smtp_server: SmtpServer
) -> None:
    programme.member_with_points()
    programme.member_with_points(email="out@example.com", opted_in=False)
    assert run(D - timedelta(days=7)).sent == 1
    again = run(D - timedelta(days=7))
    assert (again.planned, again.sent, again.skipped) == (0, 0, 0)
    assert run(D - timedelta(days=6)).planned == 0
    assert len(smtp_server.messages) == 1


def test_failed_keys_are_retried_up_to_the_attempt_cap(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine
) -> None:
    programme.member_with_points(email=None)
    attempts = [run(D - timedelta(days=7 - n), notify_max_attempts=2).failed for n in range(4)]
    assert attempts == [1, 1, 0, 0]
    assert [s for *_, s, _, _ in logs(engine)] == ["FAILED", "FAILED"]


# -- delivery -------------------------------------------------------------------------------


def test_the_email_says_what_the_spec_says(
    programme: Programme, run: Callable[..., JobSummary], smtp_server: SmtpServer, engine: Engine
) -> None:
    programme.member_with_points(1250, name="Ann Lee", email="ann@example.com")
    run(D - timedelta(days=1))
    [message] = smtp_server.messages
    body = text_part(message)
    assert "Ann Lee" in body
    assert "1,250 points" in body
    assert "tomorrow" in body
    assert "10 February 2030" in body
    assert "http://rewards.test/unsubscribe?token=" in body
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "<http://rewards.test/unsubscribe?token=" in message["List-Unsubscribe"]
    assert "mailto:" not in message["List-Unsubscribe"]
    assert message.get_body(("html",)) is not None
    with engine.connect() as conn:
        log_id, sent_at = conn.execute(select(NotificationLog.id, NotificationLog.sentAt)).one()
    assert message["Message-ID"].startswith(f"<{log_id}@")
    assert sent_at == NOW


def test_a_dead_smtp_server_fails_rows_with_reasons_and_the_next_run_retries(
    programme: Programme,
    run: Callable[..., JobSummary],
    engine: Engine,
    unused_port: int,
    smtp_server: SmtpServer,
) -> None:
    user = programme.member_with_points()
    dead = run(D - timedelta(days=7), smtp_port=unused_port, smtp_retries=0)
    assert (dead.sent, dead.failed) == (0, 1)
    [(_, _, _, status, _, reason)] = logs(engine)
    assert status == "FAILED"
    assert reason
    assert "refused" in reason.lower() or "connect" in reason.lower()
    alive = run(D - timedelta(days=6))
    assert (alive.sent, alive.failed) == (1, 0)
    assert sorted((u, s) for u, _, _, s, _, _ in logs(engine)) == [(user, "FAILED"), (user, "SENT")]


@pytest.mark.parametrize(
    ("behaviour", "reason_start"),
    [
        (Behaviour(at="RCPT", reply="550 5.1.1 mailbox unavailable"), "550"),
        (Behaviour(at="DATA", reply="451 4.3.0 try again later"), "451"),
    ],
)
def test_smtp_refusals_are_logged_with_code_and_text(
    programme: Programme,
    engine: Engine,
    make_settings: Callable[..., Settings],
    make_smtp_server: Callable[[Behaviour], SmtpServer],
    behaviour: Behaviour,
    reason_start: str,
) -> None:
    programme.member_with_points()
    server = make_smtp_server(behaviour)
    settings = make_settings(**server.settings_overrides(), smtp_retries=1)
    summary = CheckExpiringPointsJob(engine, settings, clock=clock).run(day=D - timedelta(days=7))
    assert summary.failed == 1
    [(*_, reason)] = logs(engine)
    assert reason is not None
    assert reason.startswith(reason_start)


# -- runs, dry runs, recovery ------------------------------------------------------------------


def test_a_dry_run_writes_and_sends_nothing(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine, smtp_server: SmtpServer
) -> None:
    user = programme.member()
    account = programme.account(user)
    programme.earn(account, 10, datetime(2030, 1, 1))
    programme.earn(account, 100, EXPIRES)
    preview = run(D - timedelta(days=7), dry_run=True)
    assert (preview.planned, preview.sent, preview.expired_points) == (1, 1, 10)
    assert logs(engine) == []
    assert smtp_server.messages == []
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(NotificationJobRun)) == 0
        assert conn.scalar(select(func.count()).where(PointLedger.entryType == "EXPIRE")) == 0


def test_a_future_date_needs_a_dry_run(
    programme: Programme, run: Callable[..., JobSummary]
) -> None:
    programme.member_with_points()
    with pytest.raises(JobError, match="dry-run"):
        run(NOW.date() + timedelta(days=1))
    assert run(NOW.date() + timedelta(days=1), dry_run=True).dry_run


def test_every_run_is_recorded(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine
) -> None:
    programme.member_with_points()
    summary = run(D - timedelta(days=7))
    with engine.connect() as conn:
        record = conn.execute(select(NotificationJobRun.__table__)).one()
    assert record.id == summary.run_id
    assert record.status == "SUCCEEDED"
    assert record.asOf == datetime.combine(D - timedelta(days=7), datetime.min.time()) + timedelta(
        hours=9
    )
    assert (record.planned, record.sent) == (1, 1)
    assert record.countsByType == {"EXPIRATION_7_DAYS": {"SENT": 1}}
    assert record.finishedAt is not None


def test_stale_pending_rows_are_resent_with_the_same_message_id(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine, smtp_server: SmtpServer
) -> None:
    user = programme.member_with_points()
    fresh_user = programme.member_with_points(email="fresh@example.com")
    stale_id, fresh_id = new_id(), new_id()
    with engine.begin() as conn:
        for row_id, owner, created in (
            (stale_id, user, NOW - timedelta(hours=2)),
            (fresh_id, fresh_user, NOW - timedelta(seconds=10)),
        ):
            conn.execute(
                insert(NotificationLog).values(
                    id=row_id,
                    userId=owner,
                    notificationType="EXPIRATION_7_DAYS",
                    status="PENDING",
                    expirationDate=datetime(2030, 2, 10),
                    pointsExpiring=100,
                    createdAt=created,
                )
            )
    summary = run(D - timedelta(days=7))
    assert summary.resent == 1
    assert summary.planned == 0  # both keys already have a live row
    [message] = smtp_server.messages
    assert message["Message-ID"].startswith(f"<{stale_id}@")
    status = {u: s for u, _, _, s, _, _ in logs(engine)}
    assert status == {user: "SENT", fresh_user: "PENDING"}


def interrupted(engine: Engine, user: str, notification_type: str, day: date) -> str:
    """A PENDING row a crashed run left behind two hours ago (the lease has run out)."""
    row_id = new_id()
    with engine.begin() as conn:
        conn.execute(
            insert(NotificationLog).values(
                id=row_id,
                userId=user,
                notificationType=notification_type,
                status="PENDING",
                expirationDate=datetime.combine(day, datetime.min.time()),
                pointsExpiring=100,
                createdAt=NOW - timedelta(hours=2),
            )
        )
    return row_id


def settled(engine: Engine, row_id: str) -> tuple[str, str | None]:
    with engine.connect() as conn:
        row = conn.execute(
            select(NotificationLog.status, NotificationLog.failureReason).where(
                NotificationLog.id == row_id
            )
        ).one()
    return row.status, row.failureReason


def test_an_interrupted_reminder_is_not_resent_once_its_points_expired(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine, smtp_server: SmtpServer
) -> None:
    # The 1-day reminder for D was interrupted; the points went at 05:00 on D, and the
    # next run is at 09:00 that day: "your points expire today" would be a lie.
    user = programme.member_with_points(
        expires_at=datetime.combine(D, datetime.min.time()) + timedelta(hours=5)
    )
    row_id = interrupted(engine, user, "EXPIRATION_1_DAY", D)
    summary = run(D)
    assert summary.resent == 0
    assert smtp_server.messages == []
    assert settled(engine, row_id) == ("FAILED", "points expired before the reminder could be sent")


def test_an_interrupted_reminder_of_an_earlier_tier_gives_way_to_the_tier_due_now(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine, smtp_server: SmtpServer
) -> None:
    user = programme.member_with_points()
    row_id = interrupted(engine, user, "EXPIRATION_7_DAYS", D)
    summary = run(D - timedelta(days=1))
    assert summary.resent == 0
    assert settled(engine, row_id) == ("SKIPPED", "superseded by EXPIRATION_1_DAY")
    [message] = smtp_server.messages  # one reminder, not two
    assert "expire tomorrow" in text_part(message)
    assert summary.counts_by_type() == {
        "EXPIRATION_1_DAY": {"SENT": 1},
        "EXPIRATION_7_DAYS": {"SKIPPED": 1},
    }


def test_an_interrupted_reminder_is_not_resent_once_its_points_were_spent(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine, smtp_server: SmtpServer
) -> None:
    user = programme.member(email="ann@example.com")
    account = programme.account(user)
    programme.earn(account, 100, EXPIRES)
    programme.redeem(account, 100, at=datetime(2030, 2, 1, 12, 0))
    row_id = interrupted(engine, user, "EXPIRATION_7_DAYS", D)
    summary = run(D - timedelta(days=7))
    assert summary.resent == 0
    assert smtp_server.messages == []
    assert settled(engine, row_id) == ("SKIPPED", "no points left to expire")


def test_a_second_run_while_one_holds_the_lock_says_so(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine
) -> None:
    programme.member_with_points()
    with job_lock(engine), pytest.raises(JobAlreadyRunning):
        run(D - timedelta(days=7))
    assert logs(engine) == []


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ("opted_out", "SKIPPED", "user opted out"),
        ("email_removed", "FAILED", "missing email"),
        ("expired", "FAILED", "points expired before the reminder could be sent"),
    ],
)
def test_stale_pending_rows_are_settled_unsent_when_sending_no_longer_fits(
    programme: Programme,
    run: Callable[..., JobSummary],
    engine: Engine,
    smtp_server: SmtpServer,
    change: str,
    status: str,
    reason: str,
) -> None:
    user = programme.member_with_points()
    expiration = datetime(2030, 2, 10) if change != "expired" else datetime(2030, 1, 1)
    stale_id = new_id()
    with engine.begin() as conn:
        conn.execute(
            insert(NotificationLog).values(
                id=stale_id,
                userId=user,
                notificationType="EXPIRATION_7_DAYS",
                status="PENDING",
                expirationDate=expiration,
                pointsExpiring=100,
                createdAt=NOW - timedelta(hours=2),
            )
        )
        if change == "opted_out":
            conn.execute(text('UPDATE "User" SET "emailNotifications" = false'))
        elif change == "email_removed":
            conn.execute(text('UPDATE "User" SET "email" = NULL'))
    summary = run(D - timedelta(days=7))
    assert summary.resent == 0
    assert not any(m["Message-ID"].startswith(f"<{stale_id}@") for m in smtp_server.messages)
    with engine.connect() as conn:
        settled = conn.execute(
            select(NotificationLog.status, NotificationLog.failureReason).where(
                NotificationLog.id == stale_id
            )
        ).one()
    assert tuple(settled) == (status, reason)
