"""Real email is never signed with the public default ``REWARDS_SECRET_KEY``.

Anyone can read the default key in the source, so links signed with it could be
forged. Every command that sends through SMTP refuses to start with it; the
local backends and the demo, which send nothing, keep working without one.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from rewards.models import NotificationJobRun, NotificationLog
from tests.process_helpers import Shop, rewards_env, run_rewards
from tests.smtp_server import SmtpServer

SOON = datetime.now(UTC).replace(tzinfo=None, microsecond=0) + timedelta(days=7)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def due_member(engine: Engine) -> str:
    shop = Shop(engine)
    shop.member("ann", email="ann@example.com", name="Ann Lee")
    shop.earn("ann", 100, SOON)
    return "ann"


def smtp_env_with_default_secret(database_url: str, smtp: SmtpServer) -> dict[str, str]:
    env = rewards_env(database_url, smtp)
    del env["REWARDS_SECRET_KEY"]
    return env


def rows(engine: Engine, table: type[NotificationLog] | type[NotificationJobRun]) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table)) or 0)


@pytest.mark.parametrize(
    "command",
    [("notify", "run"), ("scheduler",), ("serve", "--port", str(free_port()))],
    ids=["notify-run", "scheduler", "serve"],
)
def test_commands_that_send_through_smtp_refuse_the_default_secret(
    command: tuple[str, ...],
    database_url: str,
    engine: Engine,
    smtp_server: SmtpServer,
    due_member: str,
    tmp_path: Path,
) -> None:
    env = smtp_env_with_default_secret(database_url, smtp_server)
    result = run_rewards(*command, env=env, cwd=tmp_path, timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: invalid setting REWARDS_SECRET_KEY:")
    assert "Traceback" not in result.stderr
    assert smtp_server.messages == []
    assert rows(engine, NotificationLog) == 0
    assert rows(engine, NotificationJobRun) == 0


def test_a_dry_run_through_smtp_needs_no_secret(
    database_url: str, engine: Engine, smtp_server: SmtpServer, due_member: str, tmp_path: Path
) -> None:
    env = smtp_env_with_default_secret(database_url, smtp_server)
    result = run_rewards("notify", "run", "--dry-run", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert '"planned": 1' in result.stdout
    assert smtp_server.messages == []


def test_the_file_backend_sends_with_the_default_secret(
    database_url: str, engine: Engine, due_member: str, tmp_path: Path
) -> None:
    env = rewards_env(database_url, REWARDS_EMAIL_BACKEND="file", REWARDS_OUTBOX_DIR="outbox")
    del env["REWARDS_SECRET_KEY"]
    result = run_rewards("notify", "run", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1
    assert rows(engine, NotificationLog) == 1
