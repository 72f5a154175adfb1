"""The scheduler applies other applications' ledger changes as they come, never waiting.

Rows written with plain SQL are taken into account before any result depends on them
(SPEC, "Ledger semantics") whether or not this runs; it makes the lots current between
results, so reads, redemptions and the daily job have nothing left to apply.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, func, select, text

from rewards.clock import utcnow
from rewards.config import Settings, load_settings
from rewards.db import create_db_engine
from rewards.ledger.projection import SyncStats, sync_waiting
from rewards.notifications.scheduler import LEDGER_SYNC_ID, build_scheduler, run_ledger_sync
from rewards.tables import changes, lots
from tests.integration.test_ledger_service import new_account, raw_insert
from tests.integration.test_scheduler import started_paused
from tests.smtp_server import free_port


def settings_for(database_url: str, **overrides: object) -> Settings:
    return load_settings(database_url=database_url, email_backend="console", **overrides)


def waiting(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(changes)) or 0)


def lots_left(engine: Engine, account_id: str) -> int:
    with engine.connect() as conn:
        query = select(func.coalesce(func.sum(lots.c.remaining), 0)).where(
            lots.c.accountId == account_id
        )
        return int(conn.scalar(query) or 0)


def earned_by_another_application(engine: Engine, points: int) -> str:
    account = new_account(engine)
    now = utcnow().replace(tzinfo=None)
    raw_insert(
        engine,
        account,
        "EARN",
        credit=points,
        created_at=now - timedelta(hours=1),
        expires_at=now + timedelta(days=90),
    )
    return account


@contextmanager
def running(scheduler: BackgroundScheduler) -> Iterator[BackgroundScheduler]:
    scheduler.start()
    try:
        yield scheduler
    finally:
        scheduler.shutdown(wait=True)


def test_the_ledger_sync_runs_every_rewards_ledger_sync_seconds(
    engine: Engine, database_url: str
) -> None:
    settings = settings_for(database_url, ledger_sync_seconds=45)
    with started_paused(engine, settings) as scheduler:
        job = scheduler.get_job(LEDGER_SYNC_ID)
    assert job is not None
    assert isinstance(job.trigger, IntervalTrigger)
    assert job.trigger.interval == timedelta(seconds=45)
    assert job.coalesce is True
    assert job.max_instances == 1


def test_zero_seconds_leaves_the_ledger_to_be_applied_on_demand(
    engine: Engine, database_url: str
) -> None:
    with started_paused(engine, settings_for(database_url, ledger_sync_seconds=0)) as scheduler:
        assert scheduler.get_job(LEDGER_SYNC_ID) is None


def test_the_scheduler_applies_rows_another_application_wrote(
    engine: Engine, database_url: str
) -> None:
    account = earned_by_another_application(engine, 120)
    assert waiting(engine) == 1
    assert lots_left(engine, account) == 0
    settings = settings_for(database_url, ledger_sync_seconds=1, notify_cron="0 9 1 1 *")
    with running(build_scheduler(engine, settings, catch_up=False)):
        deadline = time.monotonic() + 15
        while waiting(engine) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert waiting(engine) == 0
    assert lots_left(engine, account) == 120


def test_a_pass_takes_every_waiting_account_a_batch_at_a_time(engine: Engine) -> None:
    accounts = [earned_by_another_application(engine, 10 + n) for n in range(7)]
    stats = sync_waiting(engine, utcnow(), batch_accounts=3)
    assert stats.accounts == 7
    assert waiting(engine) == 0
    assert [lots_left(engine, a) for a in accounts] == [10 + n for n in range(7)]


def test_a_pass_leaves_an_account_someone_holds_and_does_not_wait(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("holds one account's row lock; SQLite has one writer for the whole file")
    held = earned_by_another_application(engine, 40)
    free = earned_by_another_application(engine, 60)
    passes: list[SyncStats] = []
    with engine.connect() as holder, holder.begin():
        holder.execute(text('SELECT 1 FROM "Account" WHERE "id" = :a FOR UPDATE'), {"a": held})
        one_pass = threading.Thread(target=lambda: passes.append(sync_waiting(engine, utcnow())))
        one_pass.start()
        one_pass.join(10)
        finished_while_held = not one_pass.is_alive()
    one_pass.join(10)  # released: a pass that waited finishes now
    assert finished_while_held, "the pass waited for the lock"
    assert passes[0].accounts == 1
    assert (lots_left(engine, free), lots_left(engine, held)) == (60, 0)
    assert waiting(engine) == 1  # the held account's changes stay for the next pass

    assert sync_waiting(engine, utcnow()).accounts == 1
    assert (lots_left(engine, held), waiting(engine)) == (40, 0)


def test_a_failed_pass_is_logged_and_raises_nothing(caplog: pytest.LogCaptureFixture) -> None:
    gone = create_db_engine(f"postgresql://nobody@127.0.0.1:{free_port()}/rewards")
    try:
        with caplog.at_level(logging.ERROR, logger="rewards.notifications.scheduler"):
            stats = run_ledger_sync(gone, clock=lambda: datetime(2030, 1, 1))
    finally:
        gone.dispose()
    assert stats.accounts == 0
    [record] = [r for r in caplog.records if LEDGER_SYNC_ID in r.getMessage()]
    assert "ledger changes failed" in record.getMessage()
    assert record.exc_info is not None
