"""The delivery guarantee under racing writers, and a run killed mid-send.

At least once, no duplicates in normal operation: two ``rewards notify run``
started together send each reminder once (the job lock), and a run killed with
SIGKILL while sending is finished by the next run, re-sending only what was in
flight, with the same ``Message-ID``.

Behind the lock stands the partial unique index on live rows with
``ON CONFLICT DO NOTHING``: when writers do race on the same keys (another
instance wrote a key between this run's planning and writing, or two runs got
past the lock), one live row per key is written and each reminder is sent once.
Those races are staged in-process, at the moment a run writes its rows, on both
databases (SQLite has one writer at a time: the second waits, then finds the rows).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from datetime import date, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text

from rewards.config import Settings, load_settings
from rewards.models import NotificationJobRun, NotificationLog
from rewards.notifications import job as job_module
from rewards.notifications.job import CheckExpiringPointsJob
from rewards.notifications.runs import JobSummary
from rewards.tables import deliveries
from tests.process_helpers import (
    RUN_TIMEOUT,
    Shop,
    email_of,
    json_output,
    rewards_env,
    run_rewards,
    sql_timestamp,
    started_rewards,
    wait_until,
)
from tests.smtp_server import Behaviour, SmtpServer

RUN_DAY = date(2025, 5, 12)
AS_OF = RUN_DAY.isoformat()
DUE = datetime(2025, 5, 19, 15, 0)  # seven days after RUN_DAY: every member is due one reminder
DUE_DATE = "2025-05-19 00:00:00"  # its expirationDate
EARNED = datetime(2025, 1, 6, 10, 0)  # every credit was earned before every run
BATCH_SIZE = 20
NOW = datetime(2030, 6, 1, 12, 0)  # the in-process runs' clock: RUN_DAY is in its past


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


def claimed_unsettled(engine: Engine) -> int:
    """Outbox rows a sender claimed and did not settle."""
    with engine.connect() as conn:
        return int(
            conn.scalar(
                select(func.count())
                .select_from(deliveries)
                .where(deliveries.c.tries > 0, deliveries.c.settledAt.is_(None))
            )
            or 0
        )


def sent_row_ids(engine: Engine) -> dict[str, str]:
    """The SENT row of each member, by the member's email address."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(NotificationLog.userId, NotificationLog.id).where(
                NotificationLog.status == "SENT"
            )
        ).all()
    return {email_of(user): row_id for user, row_id in rows}


def test_two_runs_started_together_send_each_reminder_exactly_once(
    engine: Engine,
    database_url: str,
    make_smtp_server: Callable[[Behaviour], SmtpServer],
    tmp_path: Path,
) -> None:
    members = Shop(engine).members_with_points(
        [f"m{n:03d}" for n in range(200)], 100, DUE, earned_at=EARNED
    )
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
    members = Shop(engine).members_with_points(
        [f"k{n:03d}" for n in range(100)], 100, DUE, earned_at=EARNED
    )
    server = make_smtp_server(Behaviour(delay=0.05))
    env = rewards_env(
        database_url,
        server,
        REWARDS_NOTIFY_BATCH_SIZE=str(BATCH_SIZE),
        REWARDS_SMTP_CONCURRENCY="2",
        # The lease a sender takes on what it sends: once it runs out, what a dead
        # sender held is anyone's to finish.
        REWARDS_NOTIFY_LEASE_SECONDS="1",
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
    # Claimed by the dead run and not settled: what it may have sent (the next batches,
    # written while it sent, were not claimed yet and are simply sent by the next run).
    in_flight = claimed_unsettled(engine)
    assert 0 < in_flight <= BATCH_SIZE, left
    assert in_flight <= left["PENDING"]

    time.sleep(max(0.0, killed_at + 1.1 - time.monotonic()))  # past the 1-second lease
    result = run_rewards(
        "notify",
        "run",
        "--as-of",
        AS_OF,
        "--json",
        env={**env, "REWARDS_SMTP_CONCURRENCY": "8"},
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


# -- writers racing on the same keys, past the lock ------------------------------------------


def clock() -> datetime:
    return NOW


def is_log_insert(statement: str) -> bool:
    return 'INSERT INTO "NOTIFICATIONLOG"' in statement.upper()


@contextmanager
def before_writing_logs(engine: Engine, action: Callable[[], object]) -> Iterator[None]:
    """Call ``action`` once, in the run's thread, just before it first writes log rows.

    By then the run has planned its keys, and its write transaction has begun.
    """
    done = threading.Event()

    def hook(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if is_log_insert(statement) and not done.is_set():
            done.set()
            action()

    event.listen(engine, "before_cursor_execute", hook)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", hook)
    assert done.is_set(), "the run wrote no log rows"


@pytest.fixture
def job_settings(database_url: str, smtp_server: SmtpServer) -> Settings:
    return load_settings(
        database_url=database_url,
        **smtp_server.settings_overrides(),
        smtp_retries=0,
        public_url="http://rewards.test",
    )


def due_members(engine: Engine, prefix: str, count: int) -> list[str]:
    return Shop(engine).members_with_points(
        [f"{prefix}{n:02d}" for n in range(count)], 100, DUE, earned_at=EARNED
    )


def log_rows(engine: Engine) -> dict[str, list[tuple[str, str]]]:
    """Each member's rows as (id, status)."""
    rows: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with engine.connect() as conn:
        for user, row_id, status in conn.execute(
            select(NotificationLog.userId, NotificationLog.id, NotificationLog.status)
        ):
            rows[user].append((row_id, status))
    return dict(rows)


def test_a_key_written_by_another_writer_between_planning_and_writing_is_not_sent_again(
    engine: Engine,
    make_engine: Callable[[str], Engine],
    database_url: str,
    job_settings: Settings,
    smtp_server: SmtpServer,
) -> None:
    members = due_members(engine, "p", 10)
    sent_elsewhere, in_flight_elsewhere = members[3], members[7]
    other_writer = make_engine(database_url)  # another instance, on its own connection
    same_key = {"day": DUE_DATE, "at": sql_timestamp(NOW)}

    def write_the_same_keys() -> None:
        with other_writer.begin() as conn:
            conn.execute(
                text(
                    'INSERT INTO "NotificationLog" ("id", "userId", "notificationType",'
                    ' "status", "expirationDate", "pointsExpiring", "createdAt")'
                    " VALUES (:id, :user, 'EXPIRATION_7_DAYS', :status, :day, 100, :at)"
                ),
                [
                    {"id": "other-1", "user": sent_elsewhere, "status": "SENT", **same_key},
                    {"id": "other-2", "user": in_flight_elsewhere, "status": "PENDING", **same_key},
                ],
            )

    with before_writing_logs(engine, write_the_same_keys):
        summary = CheckExpiringPointsJob(engine, job_settings, clock=clock).run(day=RUN_DAY)

    assert summary.planned == len(members)  # the run did plan the two keys
    assert summary.counts_by_type() == {"EXPIRATION_7_DAYS": {"SENT": len(members) - 2}}
    expected = {email_of(u) for u in members} - {
        email_of(sent_elsewhere),
        email_of(in_flight_elsewhere),
    }
    assert Counter(recipient(m) for m in smtp_server.messages) == Counter(
        dict.fromkeys(expected, 1)
    )
    assert live_rows_per_key(engine) == Counter({1: len(members)})
    rows = log_rows(engine)
    assert rows[sent_elsewhere] == [("other-1", "SENT")]
    assert rows[in_flight_elsewhere] == [("other-2", "PENDING")]


def test_two_runs_past_the_lock_writing_the_same_keys_at_once_send_each_reminder_once(
    make_engine: Callable[[str], Engine],
    engine: Engine,
    database_url: str,
    job_settings: Settings,
    smtp_server: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two instances, the lock out of the way, each planning every key before either writes."""
    members = due_members(engine, "r", 30)
    monkeypatch.setattr(job_module, "job_lock", lambda _engine: nullcontext())
    both_planned = threading.Barrier(2, timeout=20)
    summaries: list[JobSummary] = []
    errors: list[BaseException] = []

    def run_instance() -> None:
        instance = make_engine(database_url)  # each instance with its own engine and pool
        try:
            with before_writing_logs(instance, both_planned.wait):
                job = CheckExpiringPointsJob(instance, job_settings, clock=clock)
                summaries.append(job.run(day=RUN_DAY))
        except BaseException as exc:  # reported below, with the other run's outcome
            both_planned.abort()
            errors.append(exc)

    threads = [threading.Thread(target=run_instance) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == [], errors

    # Both planned every key, so both wrote every key; the index let one row each through.
    assert [s.planned for s in summaries] == [len(members), len(members)]
    assert sum(s.sent for s in summaries) == len(members)
    assert sum(s.failed + s.skipped for s in summaries) == 0
    assert Counter(recipient(m) for m in smtp_server.messages) == Counter(
        {email_of(u): 1 for u in members}
    )
    assert len(set(smtp_server.message_ids())) == len(members)
    assert statuses(engine) == Counter({"SENT": len(members)})
    assert live_rows_per_key(engine) == Counter({1: len(members)})
    with engine.connect() as conn:
        runs = conn.execute(select(NotificationJobRun.status)).scalars().all()
    assert runs == ["SUCCEEDED", "SUCCEEDED"]
