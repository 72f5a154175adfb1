"""``rewards ledger sync`` and ``rewards ledger check`` as an operator runs them, after an upgrade.

A database that had a ledger before the lots existed is upgraded, synced, checked
and tampered with; the console script runs as the README types it.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url

from rewards import migrate
from rewards.clock import utcnow
from rewards.ledger.projection import count_pending, sync_all
from rewards.models import LedgerChange, PointLot
from tests.integration.test_cli_db import REWARDS, rewards

NOW = utcnow()
ACCOUNTS = 30


def fill_old_ledger(engine: Engine, accounts: int = ACCOUNTS) -> None:
    """A ledger written before the lots existed: credits, a redemption, an overspend."""
    with engine.begin() as conn:
        for n in range(accounts):
            conn.execute(text('INSERT INTO "User" ("id") VALUES (:u)'), {"u": f"u{n}"})
            conn.execute(
                text('INSERT INTO "Account" ("id", "userId") VALUES (:a, :u)'),
                {"a": f"a{n:03d}", "u": f"u{n}"},
            )
            for k, (days_ago, expires_in, points) in enumerate(
                [(60, 30, 100), (20, 200, 50), (5, None, 10)]
            ):
                conn.execute(
                    text(
                        'INSERT INTO "PointLedger" ("id", "accountId", "entryType", "credit",'
                        ' "createdAt", "expiresAt") VALUES (:id, :a, \'EARN\', :c, :t, :e)'
                    ),
                    {
                        "id": f"e{n:03d}{k}",
                        "a": f"a{n:03d}",
                        "c": points,
                        "t": NOW - timedelta(days=days_ago),
                        "e": None if expires_in is None else NOW + timedelta(days=expires_in),
                    },
                )
            conn.execute(
                text(
                    'INSERT INTO "PointLedger" ("id", "accountId", "entryType", "debit",'
                    " \"createdAt\") VALUES (:id, :a, 'REDEEM', :d, :t)"
                ),
                {"id": f"r{n:03d}", "a": f"a{n:03d}", "d": 120 if n else 400, "t": NOW},
            )


@pytest.fixture
def upgraded(empty_database_url: str, make_engine: Callable[[str], Engine]) -> tuple[str, Engine]:
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine, "record_abandoned_runs")
    fill_old_ledger(engine)
    result = rewards("db", "upgrade", DATABASE_URL=empty_database_url)
    assert result.returncode == 0, result.stderr
    return empty_database_url, engine


def lot_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(PointLot)) or 0)


def test_the_upgrade_leaves_every_account_ready_for_sync(upgraded: tuple[str, Engine]) -> None:
    _, engine = upgraded
    with engine.connect() as conn:
        assert count_pending(conn) == ACCOUNTS
    assert lot_count(engine) == 0


def test_sync_builds_the_lots_once_and_check_agrees(upgraded: tuple[str, Engine]) -> None:
    url, engine = upgraded
    first = rewards("ledger", "sync", DATABASE_URL=url)
    assert first.returncode == 0, first.stderr
    assert f"Brought {ACCOUNTS} accounts up to date" in first.stdout
    assert lot_count(engine) == 3 * ACCOUNTS
    again = rewards("ledger", "sync", DATABASE_URL=url)
    assert again.returncode == 0, again.stderr
    assert "up to date: no changes to apply" in again.stdout
    assert lot_count(engine) == 3 * ACCOUNTS

    check = rewards("ledger", "check", DATABASE_URL=url)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"Checked {ACCOUNTS} accounts: 0 mismatches" in check.stdout
    # Account 0 redeemed 400 with 160 available: the shortfall is reported.
    assert "Ledger anomalies" in check.stdout
    assert "SHORTFALL" in check.stdout
    sample = rewards("ledger", "check", "--sample", "5", DATABASE_URL=url)
    assert sample.returncode == 0
    assert "Checked 5 accounts: 0 mismatches" in sample.stdout


def test_check_finds_a_projection_that_disagrees_with_the_ledger(
    upgraded: tuple[str, Engine],
) -> None:
    url, engine = upgraded
    assert rewards("ledger", "sync", DATABASE_URL=url).returncode == 0
    with engine.begin() as conn:
        conn.execute(
            text('UPDATE "PointLot" SET "remaining" = "remaining" + 1 WHERE "id" = \'e0051\'')
        )
    check = rewards("ledger", "check", DATABASE_URL=url)
    assert check.returncode == 1
    assert "1 mismatches" in check.stdout
    assert "a005: lot e0051" in check.stdout


def test_a_sync_stopped_half_way_finishes_on_the_next_run(upgraded: tuple[str, Engine]) -> None:
    url, engine = upgraded

    class Stop(Exception):
        pass

    def stop_after_first_batch(_: object) -> None:
        raise Stop

    with pytest.raises(Stop):
        sync_all(engine, utcnow(), batch_accounts=10, progress=stop_after_first_batch)
    assert lot_count(engine) == 3 * 10  # the first batch committed
    with engine.connect() as conn:
        assert count_pending(conn) == ACCOUNTS - 10
    result = rewards("ledger", "sync", DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    assert f"Brought {ACCOUNTS - 10} accounts up to date" in result.stdout
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(LedgerChange)) == 0
    assert rewards("ledger", "check", DATABASE_URL=url).returncode == 0


def test_ledger_commands_need_a_migrated_database(empty_database_url: str) -> None:
    result = rewards("ledger", "sync", DATABASE_URL=empty_database_url)
    assert result.returncode == 1
    assert "rewards db upgrade" in result.stderr


def test_a_large_sync_runs_batches_side_by_side_and_leaves_nothing_out(
    upgraded: tuple[str, Engine],
) -> None:
    # Ten batches or more: on PostgreSQL, two transactions at a time, each on its own
    # worker process; on SQLite, one after another. Every account is built all the same.
    url, engine = upgraded
    seen: list[int] = []
    total = sync_all(engine, utcnow(), batch_accounts=3, progress=lambda s: seen.append(s.accounts))
    assert total.accounts == ACCOUNTS == sum(seen)
    assert lot_count(engine) == 3 * ACCOUNTS
    with engine.connect() as conn:
        assert count_pending(conn) == 0
    check = rewards("ledger", "check", DATABASE_URL=url)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_sync_stopped_with_ctrl_c_says_so_and_the_next_run_finishes(
    upgraded: tuple[str, Engine],
) -> None:
    url, engine = upgraded
    if engine.dialect.name != "postgresql":
        pytest.skip("holds a row lock to catch the sync half-way; SQLite locks the whole file")
    with engine.connect() as holder, holder.begin():
        # The sync waits on this account's lock, half-way through its first batch.
        holder.execute(text('SELECT 1 FROM "Account" WHERE "id" = \'a007\' FOR UPDATE'))
        sync = subprocess.Popen(
            [REWARDS, "ledger", "sync"],
            env={**os.environ, "COLUMNS": "200", "DATABASE_URL": url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until_waiting_on_a_lock(engine, url)
            sync.send_signal(signal.SIGINT)
            stdout, stderr = sync.communicate(timeout=30)
        finally:
            if sync.poll() is None:
                sync.kill()
    assert sync.returncode == 130, stdout + stderr
    assert f"Stopped: 0 of {ACCOUNTS} accounts brought up to date" in stderr
    assert "rewards ledger sync` again to finish" in stderr
    assert "Traceback" not in stderr
    with engine.connect() as conn:
        assert count_pending(conn) == ACCOUNTS  # the batch in flight was rolled back
    again = rewards("ledger", "sync", DATABASE_URL=url)
    assert again.returncode == 0, again.stderr
    assert f"Brought {ACCOUNTS} accounts up to date" in again.stdout
    assert rewards("ledger", "check", DATABASE_URL=url).returncode == 0


def wait_until_waiting_on_a_lock(engine: Engine, url: str, timeout: float = 30) -> None:
    database = make_url(url).database
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            waiting = conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = :db"
                    " AND application_name = 'rewards' AND wait_event_type = 'Lock'"
                ),
                {"db": database},
            )
        if waiting:
            return
        time.sleep(0.05)
    raise AssertionError("the sync never reached the locked account")


def test_a_sync_runs_with_the_cyclic_collector_paused_and_restores_it(
    upgraded: tuple[str, Engine],
) -> None:
    _, engine = upgraded
    assert gc.isenabled()
    during: list[bool] = []
    total = sync_all(
        engine, utcnow(), batch_accounts=10, progress=lambda _: during.append(gc.isenabled())
    )
    assert total.accounts == ACCOUNTS
    assert during
    assert not any(during)
    assert gc.isenabled()
