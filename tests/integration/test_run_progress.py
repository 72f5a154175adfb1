"""A running job's record moves: operators watching a long run see what it has done so far."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import Engine, select

from rewards.models import NotificationJobRun
from tests.process_helpers import Shop, rewards_env, started_rewards, wait_until
from tests.smtp_server import Behaviour, SmtpServer

RUN_DAY = date(2025, 5, 12)
DUE = datetime(2025, 5, 19, 15, 0)
EARNED = datetime(2025, 1, 2, 10, 0)


def record(engine: Engine) -> tuple[str, int, int] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(NotificationJobRun.status, NotificationJobRun.planned, NotificationJobRun.sent)
        ).first()
    return None if row is None else (row.status, row.planned, row.sent)


def test_a_running_job_records_its_progress_before_it_ends(
    engine: Engine,
    database_url: str,
    make_smtp_server: Callable[[Behaviour], SmtpServer],
    tmp_path: Path,
) -> None:
    members = Shop(engine).members_with_points(
        [f"m{n:03d}" for n in range(30)], 100, DUE, earned_at=EARNED
    )
    server = make_smtp_server(Behaviour(delay=0.1))
    env = rewards_env(
        database_url, server, REWARDS_SMTP_CONCURRENCY="1", REWARDS_NOTIFY_BATCH_SIZE="10"
    )
    with started_rewards(
        "notify", "run", "--as-of", RUN_DAY.isoformat(), env=env, cwd=tmp_path
    ) as p:

        def moving() -> bool:
            seen = record(engine)
            return seen is not None and seen[0] == "RUNNING" and 0 < seen[2] < len(members)

        assert wait_until(lambda: moving() or p.poll() is not None, timeout=30)
        assert p.poll() is None, "the run ended before its progress could be seen"
        status, planned, sent = record(engine) or ("", 0, 0)
        assert status == "RUNNING"
        assert 0 < sent < len(members)
        assert sent <= planned
        assert p.wait(timeout=60) == 0
    assert record(engine) == ("SUCCEEDED", len(members), len(members))
