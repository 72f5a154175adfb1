"""``rewards notify …`` and ``rewards scheduler`` as an operator runs them.

Real processes, real databases filled with plain SQL the way a shop's own
application writes them, and a real SMTP server. Every ``--as-of`` is in 2025,
so in the past whatever the day the suite runs. Where a test only needs a run to
have happened (stats) or looks at the planner's arithmetic (midnight), the job
runs in-process: a process costs a second of start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from email.headerregistry import Address
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from rewards.config import load_settings
from rewards.models import NotificationJobRun, NotificationLog, PointLedger
from rewards.notifications.job import CheckExpiringPointsJob
from rewards.notifications.locking import job_lock
from tests.process_helpers import (
    LineReader,
    Shop,
    json_output,
    rewards_env,
    run_rewards,
    started_rewards,
    wait_until,
)
from tests.smtp_server import Behaviour, SmtpServer

RUN_DAY = date(2025, 3, 3)
AS_OF = RUN_DAY.isoformat()
SUMMARY_KEYS = {
    "asOf",
    "dryRun",
    "expiredPoints",
    "planned",
    "sent",
    "failed",
    "skipped",
    "byType",
    "durationSeconds",
}


def at(day: date, hour: int = 15) -> datetime:
    return datetime.combine(day, datetime.min.time()) + timedelta(hours=hour)


def fill_small_programme(shop: Shop) -> None:
    """Four members, one of each fate, and 40 points already past their expiry.

    As of ``RUN_DAY``: Ann is due the 7-day reminder, Dee the 30-day one, Bob (opted
    out) is skipped, Cy (no email) fails; Dee's 40 points expired 11 days earlier.
    """
    shop.member("ann", email="ann@example.com", name="Ann Lee")
    shop.earn("ann", 100, at(RUN_DAY + timedelta(days=7)))
    shop.member("bob", email="bob@example.com", name="Bob Roy", opted_in=False)
    shop.earn("bob", 50, at(RUN_DAY + timedelta(days=30)))
    shop.member("cy", email=None, name="Cy Doe")
    shop.earn("cy", 70, at(RUN_DAY + timedelta(days=1)))
    shop.member("dee", email="dee@example.com", name="Dee Park")
    shop.earn("dee", 40, at(RUN_DAY - timedelta(days=11)))
    shop.earn("dee", 60, at(RUN_DAY + timedelta(days=30)))


@pytest.fixture
def shop(engine: Engine) -> Shop:
    return Shop(engine)


@pytest.fixture
def env(database_url: str, smtp_server: SmtpServer) -> dict[str, str]:
    return rewards_env(database_url, smtp_server)


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def nothing_written(engine: Engine) -> bool:
    return (
        count(engine, NotificationLog) == 0
        and count(engine, NotificationJobRun) == 0
        and count(engine, PointLedger, PointLedger.entryType == "EXPIRE") == 0
    )


def log_counts(engine: Engine) -> dict[str, dict[str, int]]:
    """``NotificationLog`` rows by tier and status, as the database holds them."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(NotificationLog.notificationType, NotificationLog.status, func.count())
            .group_by(NotificationLog.notificationType, NotificationLog.status)
            .order_by(NotificationLog.notificationType, NotificationLog.status)
        ).all()
    counts: dict[str, dict[str, int]] = {}
    for notification_type, status, n in rows:
        counts.setdefault(notification_type, {})[status] = n
    return counts


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


def run_in_process(engine: Engine, database_url: str, smtp_server: SmtpServer) -> None:
    settings = load_settings(
        database_url=database_url, **smtp_server.settings_overrides(), smtp_retries=0
    )
    CheckExpiringPointsJob(engine, settings).run(day=RUN_DAY)


# -- notify run ---------------------------------------------------------------------------


def test_run_json_prints_one_object_that_matches_the_database_and_the_mailbox(
    engine: Engine, shop: Shop, env: dict[str, str], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    fill_small_programme(shop)
    result = run_rewards("notify", "run", "--as-of", AS_OF, "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json_output(result.stdout)
    assert "[CheckExpiringPointsJob] as of 2025-03-03" in result.stderr  # logs go to stderr

    assert summary.keys() >= SUMMARY_KEYS
    assert summary["asOf"] == "2025-03-03T09:00:00Z"
    assert summary["dryRun"] is False
    assert isinstance(summary["durationSeconds"], float)
    assert summary["durationSeconds"] >= 0
    counts = {key: summary[key] for key in ("planned", "sent", "failed", "skipped")}
    assert counts == {"planned": 4, "sent": 2, "failed": 1, "skipped": 1}
    assert summary["expiredPoints"] == 40

    assert summary["byType"] == log_counts(engine)
    assert summary["planned"] == count(engine, NotificationLog)
    for status in ("sent", "failed", "skipped"):
        assert summary[status] == count(
            engine, NotificationLog, NotificationLog.status == status.upper()
        )
    with engine.connect() as conn:
        expired = conn.scalar(
            select(func.sum(PointLedger.debit)).where(PointLedger.entryType == "EXPIRE")
        )
        run_id, run_status = conn.execute(
            select(NotificationJobRun.id, NotificationJobRun.status)
        ).one()
    assert summary["expiredPoints"] == expired
    assert (summary["runId"], run_status) == (run_id, "SUCCEEDED")
    recipients = sorted(a.addr_spec for m in smtp_server.messages for a in m["To"].addresses)
    assert recipients == ["ann@example.com", "dee@example.com"]
    assert summary["sent"] == len(smtp_server.messages)


def test_run_without_json_prints_a_table_by_tier(
    engine: Engine, shop: Shop, env: dict[str, str], tmp_path: Path
) -> None:
    fill_small_programme(shop)
    result = run_rewards("notify", "run", "--as-of", AS_OF, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not result.stdout.lstrip().startswith("{")
    for word in ("EXPIRATION_7_DAYS", "EXPIRATION_30_DAYS", "EXPIRATION_1_DAY", "sent", "total"):
        assert word in result.stdout
    assert "expired 40 points" in result.stdout
    assert "failed: missing email x1" in result.stdout


def future_programme(shop: Shop) -> date:
    """Data a real run on the returned (future) date would write to; returns that date."""
    future = datetime.now(UTC).date() + timedelta(days=10)
    shop.member("eve", email="eve@example.com", name="Eve Moss")
    shop.earn("eve", 30, at(future - timedelta(days=5)))  # expired by then
    shop.earn("eve", 90, at(future + timedelta(days=7)))  # due its 7-day reminder then
    return future


def test_a_future_as_of_without_dry_run_is_refused_and_writes_nothing(
    engine: Engine, shop: Shop, env: dict[str, str], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    future = future_programme(shop)
    result = run_rewards("notify", "run", "--as-of", future.isoformat(), env=env, cwd=tmp_path)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "--dry-run" in line
    assert future.isoformat() in line
    assert result.stdout == ""
    assert nothing_written(engine)
    assert smtp_server.messages == []


def test_a_future_as_of_with_dry_run_previews_without_writing_or_sending(
    engine: Engine, shop: Shop, env: dict[str, str], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    future = future_programme(shop)
    result = run_rewards(
        "notify", "run", "--as-of", future.isoformat(), "--dry-run", "--json", env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    preview = json_output(result.stdout)
    assert preview["dryRun"] is True
    assert preview["asOf"] == f"{future.isoformat()}T09:00:00Z"
    assert (preview["expiredPoints"], preview["planned"], preview["sent"]) == (30, 1, 1)
    assert preview["byType"] == {"EXPIRATION_7_DAYS": {"SENT": 1}}
    assert nothing_written(engine)
    assert smtp_server.messages == []


def test_a_malformed_as_of_is_a_usage_error_without_traceback(tmp_path: Path) -> None:
    env = rewards_env(f"sqlite:///{tmp_path / 'rewards.db'}")
    result = run_rewards("notify", "run", "--as-of", "2025-13-40", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "Invalid value for '--as-of'" in result.stderr
    assert "'2025-13-40' does not match" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_run_on_a_database_that_is_not_migrated_says_to_upgrade(
    empty_database_url: str, tmp_path: Path
) -> None:
    result = run_rewards(
        "notify", "run", "--as-of", AS_OF, env=rewards_env(empty_database_url), cwd=tmp_path
    )
    assert result.returncode == 1
    assert "run `rewards db upgrade`" in one_error_line(result.stderr)


def test_a_run_while_another_process_holds_the_lock_says_so_and_exits_0(
    engine: Engine, shop: Shop, env: dict[str, str], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    fill_small_programme(shop)
    with job_lock(engine):
        result = run_rewards("notify", "run", "--as-of", AS_OF, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stderr
    assert "Traceback" not in result.stderr
    assert nothing_written(engine)
    assert smtp_server.messages == []


def test_a_json_run_while_the_lock_is_held_prints_already_running(
    engine: Engine, shop: Shop, env: dict[str, str], tmp_path: Path
) -> None:
    fill_small_programme(shop)
    with job_lock(engine):
        result = run_rewards("notify", "run", "--as-of", AS_OF, "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    answer = json_output(result.stdout)
    assert answer["alreadyRunning"] is True
    assert "already running" in answer["message"]
    assert nothing_written(engine)


def test_points_expiring_at_midnight_are_reminded_for_that_calendar_date(
    engine: Engine,
    shop: Shop,
    database_url: str,
    smtp_server: SmtpServer,
) -> None:
    """Midnight, as a shop writes it in SQL, is the first instant of its date (run in-process)."""
    shop.member("ann", email="ann@example.com")
    shop.earn("ann", 100, at(RUN_DAY + timedelta(days=7), hour=0))
    run_in_process(engine, database_url, smtp_server)
    with engine.connect() as conn:
        keys = conn.execute(
            select(NotificationLog.notificationType, NotificationLog.expirationDate)
        ).all()
    assert [(t, d.date()) for t, d in keys] == [("EXPIRATION_7_DAYS", RUN_DAY + timedelta(days=7))]


# -- notify stats ---------------------------------------------------------------------------


def test_stats_json_matches_the_database_after_a_run(
    engine: Engine,
    shop: Shop,
    database_url: str,
    smtp_server: SmtpServer,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    fill_small_programme(shop)
    run_in_process(engine, database_url, smtp_server)
    result = run_rewards("notify", "stats", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    stats = json_output(result.stdout)
    assert stats["byStatus"] == {"FAILED": 1, "SENT": 2, "SKIPPED": 1}
    assert stats["byTypeAndStatus"] == log_counts(engine)
    assert stats["failuresByReason"] == {"missing email": 1}
    with engine.connect() as conn:
        run = conn.execute(select(NotificationJobRun.__table__)).one()
    [recent] = stats["recentRuns"]
    assert recent["id"] == run.id
    assert recent["status"] == "SUCCEEDED"
    assert recent["asOf"] == "2025-03-03T09:00:00Z"
    assert (recent["sent"], recent["failed"], recent["skipped"]) == (2, 1, 1)
    assert recent["expiredPoints"] == 40
    assert recent["byType"] == log_counts(engine)


def test_stats_table_shows_tiers_reasons_and_runs(
    engine: Engine,
    shop: Shop,
    database_url: str,
    smtp_server: SmtpServer,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    fill_small_programme(shop)
    run_in_process(engine, database_url, smtp_server)
    result = run_rewards("notify", "stats", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for words in ("EXPIRATION_30_DAYS", "missing email", "Recent runs", "SUCCEEDED"):
        assert words in result.stdout


# -- the scheduler ---------------------------------------------------------------------------


@pytest.mark.parametrize("cron", [None, "30 6 * * 1-5"])
def test_the_scheduler_logs_its_cron_at_start_and_exits_on_sigterm(
    engine: Engine, database_url: str, tmp_path: Path, cron: str | None
) -> None:
    overrides = {"REWARDS_EMAIL_BACKEND": "file", "REWARDS_OUTBOX_DIR": str(tmp_path / "outbox")}
    if cron is not None:
        overrides["REWARDS_NOTIFY_CRON"] = cron
    expected = f"[CheckExpiringPointsJob] scheduled for {cron or '0 9 * * *'}"
    env = rewards_env(database_url)
    env.update(overrides)
    with started_rewards("scheduler", env=env, cwd=tmp_path) as process:
        assert process.stderr is not None
        stderr = LineReader(process.stderr)
        assert stderr.wait_for(expected, timeout=20), stderr.text()
        assert process.poll() is None, stderr.text()  # it keeps running, waiting for its time
        process.terminate()
        # A graceful stop: the signal is handled and the process exits 0, not killed by it.
        assert process.wait(timeout=20) == 0, (process.returncode, stderr.text())
        stderr.join(timeout=5)
        assert "Traceback" not in stderr.text(), stderr.text()


def test_on_sigterm_the_scheduler_lets_the_run_in_progress_finish_and_exits_0(
    engine: Engine,
    database_url: str,
    make_smtp_server: Callable[[Behaviour], SmtpServer],
    tmp_path: Path,
) -> None:
    """SIGTERM while a reminder is on the wire: it is delivered, settled SENT, the run recorded.

    The cron's time today (midnight UTC) has passed with no run, so the scheduler runs the
    job at once; the SMTP server takes ``DELAY`` seconds to accept the message, and the
    signal arrives in between.
    """
    delay = 2.0
    now = datetime.now(UTC).replace(tzinfo=None)
    shop = Shop(engine)
    shop.member("eve", email="eve@example.com", name="Eve Stone")
    shop.earn("eve", 100, now + timedelta(days=3), earned_at=now - timedelta(days=1))
    server = make_smtp_server(Behaviour(delay=delay))
    env = rewards_env(database_url, server, REWARDS_NOTIFY_CRON="0 0 * * *")
    with started_rewards("scheduler", env=env, cwd=tmp_path) as process:
        assert process.stderr is not None
        stderr = LineReader(process.stderr)
        # MAIL FROM seen: the row is PENDING and the message on its way, not yet accepted.
        assert wait_until(lambda: server.attempts > 0 or process.poll() is not None, 20)
        assert process.poll() is None, stderr.text()
        assert server.messages == []
        process.terminate()
        assert process.wait(timeout=20) == 0, (process.returncode, stderr.text())
        stderr.join(timeout=5)
    assert "today's run was missed; running it now" in stderr.text()
    assert "Traceback" not in stderr.text()
    assert [recipient for m in server.messages for recipient in m["To"].addresses] == [
        Address("Eve Stone", addr_spec="eve@example.com")
    ]
    assert log_counts(engine) == {"EXPIRATION_7_DAYS": {"SENT": 1}}
    with engine.connect() as conn:
        runs = conn.execute(select(NotificationJobRun.status, NotificationJobRun.sent)).all()
    assert runs == [("SUCCEEDED", 1)]
