"""Run ``rewards`` as an operator does (a real process), and fill a database as a shop does.

- :func:`rewards_env` builds the environment of one invocation: ``DATABASE_URL``,
  the SMTP test server, and any ``REWARDS_*`` override; the test process's own
  ``REWARDS_*`` variables are left out so nothing leaks in.
- :func:`run_rewards` runs a command to the end (bounded); :func:`started_rewards`
  starts one in the background and always kills it on the way out.
- :class:`Shop` writes ``User``, ``Account`` and ``PointLedger`` rows with plain SQL,
  omitting the columns the database defaults, the way another application would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from tests.smtp_server import SmtpServer

RUN_TIMEOUT = 60.0
"""Seconds a ``rewards`` command may take before the test gives up on it."""

SECRET_KEY = "process-tests-secret-key"

EARN_SQL = """INSERT INTO "PointLedger" ("id", "accountId", "entryType", "credit", "expiresAt")
VALUES (:id, :account, 'EARN', :credit, :expires)"""
EARN_AT_SQL = """INSERT INTO "PointLedger"
("id", "accountId", "entryType", "credit", "createdAt", "expiresAt")
VALUES (:id, :account, 'EARN', :credit, :created, :expires)"""


def rewards_env(
    database_url: str, smtp: SmtpServer | None = None, **overrides: str
) -> dict[str, str]:
    """The environment of one ``rewards`` process: the test's database and SMTP server."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("REWARDS_") and k != "DATABASE_URL"
    }
    env.update(
        {
            "DATABASE_URL": database_url,
            "COLUMNS": "200",  # rich tables and usage errors on one line each
            "PYTHONUNBUFFERED": "1",
            "REWARDS_SECRET_KEY": SECRET_KEY,
            "REWARDS_PUBLIC_URL": "http://rewards.test",
        }
    )
    if smtp is not None:
        env.update(
            {
                "REWARDS_EMAIL_BACKEND": "smtp",
                "REWARDS_SMTP_HOST": smtp.host,
                "REWARDS_SMTP_PORT": str(smtp.port),
                "REWARDS_SMTP_SECURITY": "none",
                "REWARDS_SMTP_TIMEOUT": "10",
                "REWARDS_SMTP_RETRIES": "0",
            }
        )
    env.update(overrides)
    return env


def rewards_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rewards", *args]


def run_rewards(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``rewards ARGS`` to the end; ``subprocess.run`` kills it if it overruns."""
    return subprocess.run(
        rewards_command(*args),
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


@contextmanager
def started_rewards(*args: str, env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """Start ``rewards ARGS`` in the background; it and any process it started are killed
    (if still alive) on exit, so no child is left holding the pipes open."""
    process = subprocess.Popen(
        rewards_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,  # its own process group: children it starts go with it
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=RUN_TIMEOUT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def json_output(stdout: str) -> dict[str, Any]:
    """The one JSON object a ``--json`` command printed; fails if there is anything else."""
    assert stdout.endswith("\n"), repr(stdout)
    assert stdout.count("\n") == 1, f"more than one line on stdout: {stdout!r}"
    value = json.loads(stdout)
    assert isinstance(value, dict), value
    return value


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; say which."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


class LineReader:
    """Collects a text stream's lines in a thread, so a test can wait for one."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        try:
            for line in stream:
                with self._lock:
                    self.lines.append(line)
        except (ValueError, OSError):  # the stream was closed under us: the process is gone
            return

    def text(self) -> str:
        with self._lock:
            return "".join(self.lines)

    def wait_for(self, fragment: str, timeout: float) -> bool:
        return wait_until(lambda: fragment in self.text(), timeout, interval=0.02)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def sql_timestamp(moment: datetime) -> str:
    """A timestamp as an operator writes it in SQL: ``2025-03-10 15:00:00``."""
    return moment.strftime("%Y-%m-%d %H:%M:%S")


class Shop:
    """A client application writing members and points straight into the database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._accounts = 0

    def member(
        self,
        user_id: str,
        *,
        email: str | None = None,
        name: str | None = None,
        opted_in: bool = True,
    ) -> str:
        with self.engine.begin() as conn:
            if opted_in:
                conn.execute(
                    text('INSERT INTO "User" ("id", "email", "name") VALUES (:id, :email, :name)'),
                    {"id": user_id, "email": email, "name": name},
                )
            else:
                conn.execute(
                    text(
                        'INSERT INTO "User" ("id", "email", "name", "emailNotifications")'
                        " VALUES (:id, :email, :name, false)"
                    ),
                    {"id": user_id, "email": email, "name": name},
                )
        return user_id

    def earn(
        self,
        user_id: str,
        points: int,
        expires_at: datetime | None,
        *,
        earned_at: datetime | None = None,
    ) -> str:
        """A new account for ``user_id`` credited with ``points``; returns the account id.

        The credit's ``createdAt`` is the database's default (now) unless ``earned_at``.
        """
        self._accounts += 1
        account_id = f"{user_id}-acct-{self._accounts}"
        values = {
            "id": f"{account_id}-earn",
            "account": account_id,
            "credit": points,
            "expires": None if expires_at is None else sql_timestamp(expires_at),
        }
        with self.engine.begin() as conn:
            conn.execute(
                text('INSERT INTO "Account" ("id", "userId") VALUES (:id, :user)'),
                {"id": account_id, "user": user_id},
            )
            if earned_at is None:
                conn.execute(text(EARN_SQL), values)
            else:
                conn.execute(text(EARN_AT_SQL), {**values, "created": sql_timestamp(earned_at)})
        return account_id

    def members_with_points(
        self,
        user_ids: Sequence[str],
        points: int,
        expires_at: datetime,
        *,
        earned_at: datetime | None = None,
    ) -> list[str]:
        """Many members, each with one account and one credit; their email is ``{id}@example.com``.

        One statement per table (executemany), as a bulk import would do it. The
        credits' ``createdAt`` is the database's default (now) unless ``earned_at``.
        """
        users = [{"id": u, "email": email_of(u), "name": f"Member {u}"} for u in user_ids]
        accounts = [{"id": f"{u}-acct", "user": u} for u in user_ids]
        expires = sql_timestamp(expires_at)
        created = {} if earned_at is None else {"created": sql_timestamp(earned_at)}
        credits = [
            {
                "id": f"{u}-earn",
                "account": f"{u}-acct",
                "credit": points,
                "expires": expires,
                **created,
            }
            for u in user_ids
        ]
        with self.engine.begin() as conn:
            conn.execute(
                text('INSERT INTO "User" ("id", "email", "name") VALUES (:id, :email, :name)'),
                users,
            )
            conn.execute(
                text('INSERT INTO "Account" ("id", "userId") VALUES (:id, :user)'), accounts
            )
            conn.execute(text(EARN_SQL if earned_at is None else EARN_AT_SQL), credits)
        return list(user_ids)


def email_of(user_id: str) -> str:
    return f"{user_id}@example.com"
