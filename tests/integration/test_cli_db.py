"""``rewards db …`` as an operator runs it: a real process, real databases, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect

from rewards.db import create_db_engine

REWARDS = str(Path(sys.executable).with_name("rewards"))
"""The console script the README's commands use, as installed next to this interpreter."""


def rewards(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **env}
    return subprocess.run(
        [REWARDS, *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )


def test_upgrade_status_check_history_downgrade_round_trip(empty_database_url: str) -> None:
    env = {"DATABASE_URL": empty_database_url}
    status = rewards("db", "status", **env)
    assert status.returncode == 0, status.stderr
    assert "pending" in status.stdout

    first = rewards("db", "upgrade", **env)
    assert first.returncode == 0, first.stderr
    assert "Upgraded base -> " in first.stdout
    second = rewards("db", "upgrade", **env)
    assert second.returncode == 0
    assert "nothing to apply" in second.stdout

    check = rewards("db", "check", **env)
    assert check.returncode == 0, check.stdout
    assert "matches" in check.stdout
    history = rewards("db", "history", **env)
    assert "add_notification_system" in history.stdout
    assert "add_notification_delivery" in history.stdout

    down = rewards("db", "downgrade", "baseline", **env)
    assert down.returncode == 0, down.stderr
    drift = rewards("db", "check", **env)
    assert drift.returncode == 1


def test_the_readme_rollback_runs_as_typed(empty_database_url: str) -> None:
    """README: `rewards db downgrade add_notification_system`, then `rewards db downgrade -1`."""
    env = {"DATABASE_URL": empty_database_url}
    assert rewards("db", "upgrade", **env).returncode == 0
    to_seed = rewards("db", "downgrade", "add_notification_system", **env)
    assert to_seed.returncode == 0, to_seed.stderr
    one_back = rewards("db", "downgrade", "-1", **env)
    assert one_back.returncode == 0, one_back.stderr
    assert "Downgraded add_notification_system -> baseline." in one_back.stdout
    engine = create_db_engine(empty_database_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert "NotificationLog" not in tables
    assert {"User", "Account", "PointLedger"} <= tables


def test_a_bad_revision_is_one_clear_line(empty_database_url: str) -> None:
    result = rewards("db", "upgrade", "no_such_revision", DATABASE_URL=empty_database_url)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "no_such_revision" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:1/nowhere",
        "sqlite:////proc/no/such/dir/rewards.db",
    ],
)
def test_an_unreachable_database_is_one_clear_line(url: str) -> None:
    result = rewards("db", "status", DATABASE_URL=url)
    assert result.returncode == 1
    assert result.stderr.startswith("error: database unavailable")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_an_invalid_setting_is_one_clear_line() -> None:
    result = rewards("db", "status", REWARDS_NOTIFY_TIERS="thirty")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: invalid setting REWARDS_NOTIFY_TIERS:"
        " must be comma-separated whole days, e.g. 30,7,1"
    ]
