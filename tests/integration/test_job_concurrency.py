"""The delivery guarantee under real processes: racing runs, and a run killed mid-send.

At least once, no duplicates in normal operation: two ``rewards notify run``
started together send each reminder once (the job lock, backed by the unique
index on live rows), and a run killed with SIGKILL while sending is finished by
the next run, re-sending only what was in flight, with the same ``Message-ID``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from datetime import date, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from rewards.models import NotificationJobRun, NotificationLog
from tests.process_helpers import (
    RUN_TIMEOUT,
    Shop,
    email_of,
    json_output,
    rewards_env,
    run_rewards,
    started_rewards,
    wait_until,
)
from tests.smtp_server import Behaviour, SmtpServer

RUN_DAY = date(2025, 5, 12)
AS_OF = RUN_DAY.isoformat()
DUE = datetime(2025, 5, 19, 15, 0)  # seven days after RUN_DAY: every member is due one reminder
BATCH_SIZE = 20


def recipient(message: EmailMessage) -> str:
    [address] = message["To"].addresses
    return str(address.addr_spec)


def finish(process: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait for a ``--json`` run and return what it printed."""
    stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    return json_output(stdout)


def live_rows_per_key(engine: Engine) -> Counter[int]:
    """How many keys have 0, 1, 2… live (PENDING, SENT or SKIPPED) rows."""
    with engine.connect() as conn:
        per_key = conn.execute(
            select(func.count())
            .where(NotificationLog.status.in_(("PENDING", "SENT", "SKIPPED")))
            .group_by(
                NotificationLog.userId,
                NotificationLog.notificationType,
                NotificationLog.expirationDate,
            )
        ).scalars()
        return Counter(per_key)


def statuses(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(conn.execute(select(NotificationLog.status)).scalars())


def sent_row_ids(engine: Engine) -> dict[str, str]:
    """The SENT row of each member, by the member's email address."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(NotificationLog.userId, NotificationLog.id).where(
                NotificationLog.status == "SENT"
            )
        ).all()
    return {email_of(user): row_id for user, row_id in rows}


@pytest.mark.postgres_only
def test_two_runs_started_together_send_each_reminder_exactly_once(
    engine: Engine,
    database_url: str,
    make_smtp_server: Callable[[Behaviour], SmtpServer],
    tmp_path: Path,
) -> None:
    members = Shop(engine).members_with_points([f"m{n:03d}" for n in range(200)], 100, DUE)
    server = make_smtp_server(Behaviour(delay=0.01))
    env = rewards_env(database_url, server)
    command = ("notify", "run", "--as-of", AS_OF, "--json")
    with ExitStack() as stack:
        processes = [
            stack.enter_context(started_rewards(*command, env=env, cwd=tmp_path)) for _ in range(2)
        ]
        outputs = [finish(process) for process in processes]

    reports = [out for out in outputs if not out.get("alreadyRunning")]
    assert reports, outputs
    assert sum(out["sent"] for out in reports) == len(members)
    assert sum(out["failed"] for out in reports) == 0
    assert Counter(recipient(m) for m in server.messages) == Counter(
        {email_of(u): 1 for u in members}
    )
    assert len(set(server.message_ids())) == len(members)
    assert statuses(engine) == Counter({"SENT": len(members)})
    assert live_rows_per_key(engine) == Counter({1: len(members)})
    with engine.connect() as conn:
        runs = conn.execute(select(NotificationJobRun.status)).scalars().all()
    assert runs == ["SUCCEEDED"] * len(reports)


def test_a_run_killed_mid_send_is_finished_by_the_next_run_with_the_same_message_ids(
    engine: Engine,
    database_url: str,
    make_smtp_server: Callable[[Behaviour], SmtpServer],
    tmp_path: Path,
) -> None:
    members = Shop(engine).members_with_points([f"k{n:03d}" for n in range(100)], 100, DUE)
    server = make_smtp_server(Behaviour(delay=0.05))
    env = rewards_env(
        database_url,
        server,
        REWARDS_NOTIFY_BATCH_SIZE=str(BATCH_SIZE),
        REWARDS_SMTP_CONCURRENCY="2",
    )

    with started_rewards("notify", "run", "--as-of", AS_OF, env=env, cwd=tmp_path) as process:
        # Into the second batch: the first is settled, the second is in flight.
        assert wait_until(
            lambda: len(server.messages) >= BATCH_SIZE + 5 or process.poll() is not None,
            timeout=30,
        )
        assert process.poll() is None, "the run finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert process.wait(timeout=10) == -signal.SIGKILL
    received_before = len(server.messages)
    assert BATCH_SIZE < received_before < len(members)
    left = statuses(engine)
    in_flight = left["PENDING"]
    assert 0 < in_flight <= BATCH_SIZE, left

    time.sleep(max(0.0, killed_at + 1.1 - time.monotonic()))  # past the 1-second lease below
    result = run_rewards(
        "notify",
        "run",
        "--as-of",
        AS_OF,
        "--json",
        env={**env, "REWARDS_NOTIFY_LEASE_SECONDS": "1", "REWARDS_SMTP_CONCURRENCY": "8"},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json_output(result.stdout)
    assert summary["resent"] == in_flight
    assert summary["sent"] == len(members) - left["SENT"]

    message_ids: dict[str, list[str]] = defaultdict(list)
    for message in server.messages:
        message_ids[recipient(message)].append(str(message["Message-ID"]))
    assert set(message_ids) == {email_of(u) for u in members}  # nobody lost
    duplicates = len(server.messages) - len(members)
    assert duplicates <= in_flight  # only what was in flight at the kill went twice
    sent_rows = sent_row_ids(engine)
    for address, ids in message_ids.items():
        assert set(ids) == {ids[0]}, f"{address} got different Message-IDs: {ids}"
        assert ids[0].startswith(f"<{sent_rows[address]}@")
    assert statuses(engine) == Counter({"SENT": len(members)})  # nothing left PENDING
    assert live_rows_per_key(engine) == Counter({1: len(members)})
