"""Delivery by Celery workers on RabbitMQ when things go wrong, with the real parts.

RabbitMQ (a virtual host per session, :mod:`tests.broker`), PostgreSQL, an SMTP
server that records what it accepts (:mod:`tests.smtp_server`) and real
``rewards worker`` and ``rewards notify run`` processes. Each test breaks one
thing — a worker killed mid-chunk, the broker restarted, its queue lost, SMTP
down or refusing, a member changing their mind mid-run, two runs at once — and
checks the delivery guarantee at its end:

- every due member gets the email, and no one else;
- duplicates stay within the bound the design promises: none in normal operation;
  after a worker dies, at most what it had in flight plus one settle window (50
  messages), each re-sent with the ``Message-ID`` of the first;
- no row is left ``PENDING`` or held once its lease has run out, and the run's
  summary says what the database says.

PostgreSQL only: several worker processes writing one SQLite file is not a
configuration we support with Celery (SQLite has one writer at a time and no
``SKIP LOCKED``), so these tests are marked ``postgres_only``; the outbox's own
rules are tested on both databases in ``test_outbox.py``.

Another session (``pytest -n 2``) may restart RabbitMQ while these tests run.
Each test survives that as production would: leases are short
(:data:`LEASE_SECONDS`), so what a broker blip interrupted is swept back into the
queue within seconds, and the helpers wait for the broker to come back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import Engine, func, select, update

from rewards.notifications.tiers import MISSING_EMAIL, OPTED_OUT
from rewards.tables import deliveries, job_runs, notification_log, users
from tests.process_helpers import (
    Shop,
    email_of,
    json_output,
    rewards_command,
    rewards_env,
    run_rewards,
    wait_until,
)
from tests.smtp_server import ACCEPT, Behaviour, SmtpServer, running_smtp_server

if TYPE_CHECKING:
    from tests.broker import Broker, Worker

pytest_plugins = ["tests.broker"]
pytestmark = pytest.mark.postgres_only

RUN_DAY = date(2025, 5, 12)
AS_OF = RUN_DAY.isoformat()
DUE = datetime(2025, 5, 19, 15, 0)  # seven days after RUN_DAY: every member is due one reminder
EARNED = datetime(2025, 1, 6, 10, 0)
LEASE_SECONDS = 2
"""Short, so what a dead worker (or a broker blip) left is swept back within seconds (the
sweep looks every second); each test keeps a chunk's sending well under it, or a live
worker's rows would be swept too."""
IN_FLIGHT = 4
"""``REWARDS_SMTP_CONCURRENCY``: messages a worker has on the wire at once."""
SETTLE_WINDOW = 50
"""The design's promise: outcomes are recorded at least every 50 messages (or second).
Stated here, not imported from the code that keeps it, so that changing it is seen."""
JOB_TIMEOUT = 60.0

StartWorker = Callable[..., "Worker"]
MakeServer = Callable[[Behaviour], SmtpServer]
MakeEnv = Callable[..., dict[str, str]]


# -- setting up --------------------------------------------------------------------------------


def due_members(engine: Engine, count: int, prefix: str = "m") -> list[str]:
    """``count`` members, each due one 7-day reminder on RUN_DAY."""
    return Shop(engine).members_with_points(
        [f"{prefix}{n:04d}" for n in range(count)], 100, DUE, earned_at=EARNED
    )


@pytest.fixture
def celery_env(database_url: str, broker: Broker) -> MakeEnv:
    """The environment of a worker or a run delivering through Celery to ``smtp``."""

    def make(smtp: SmtpServer, **overrides: str) -> dict[str, str]:
        return rewards_env(
            database_url,
            smtp,
            **{
                "REWARDS_DISPATCH": "celery",
                "REWARDS_BROKER_URL": broker.url,
                "REWARDS_NOTIFY_LEASE_SECONDS": str(LEASE_SECONDS),
                "REWARDS_SMTP_CONCURRENCY": str(IN_FLIGHT),
                **overrides,
            },
        )

    return make


def start_workers(start_worker: StartWorker, env: dict[str, str], count: int = 1) -> list[Worker]:
    """``count`` workers of one pool process each (starting: see :meth:`Worker.wait_ready`)."""
    return [start_worker(env, "--concurrency", "1") for _ in range(count)]


def run_job(env: dict[str, str], cwd: Path, *args: str) -> dict[str, Any]:
    """``rewards notify run --json`` to the end; its summary."""
    result = run_rewards(
        "notify", "run", "--as-of", AS_OF, "--json", *args, env=env, cwd=cwd, timeout=JOB_TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return json_output(result.stdout)


@contextmanager
def started_job(env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """``rewards notify run --json`` in the background (killed on the way out if still alive)."""
    process = subprocess.Popen(
        rewards_command("notify", "run", "--as-of", AS_OF, "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=JOB_TIMEOUT)


def finish(process: subprocess.Popen[str]) -> tuple[dict[str, Any], str]:
    """Wait for a background run; its summary and its log."""
    stdout, stderr = process.communicate(timeout=JOB_TIMEOUT)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    return json_output(stdout), stderr


# -- what the database says ------------------------------------------------------------------


def statuses(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(conn.execute(select(notification_log.c.status)).scalars())


def reasons(engine: Engine) -> dict[str, list[str | None]]:
    """Each member's failure reasons, oldest first (None for a row that did not fail)."""
    found: dict[str, list[str | None]] = defaultdict(list)
    with engine.connect() as conn:
        for user, reason in conn.execute(
            select(notification_log.c.userId, notification_log.c.failureReason).order_by(
                notification_log.c.createdAt, notification_log.c.id
            )
        ):
            found[user].append(reason)
    return dict(found)


def lease_holder(engine: Engine) -> str | None:
    """The pool process (``host:pid``) holding a lease on a row it has not settled."""
    with engine.connect() as conn:
        holder: str | None = conn.scalar(
            select(deliveries.c.claimedBy)
            .where(deliveries.c.settledAt.is_(None), deliveries.c.leaseUntil.is_not(None))
            .limit(1)
        )
    return holder


def pid_of(holder: str) -> int:
    return int(holder.rsplit(":", 1)[1])


def received_unsettled(engine: Engine, server: SmtpServer, holder: str) -> int:
    """Messages the server accepted whose rows ``holder`` had not settled: what a re-send of
    its rows would send twice."""
    with engine.connect() as conn:
        unsettled = set(
            conn.execute(
                select(users.c.email)
                .join(notification_log, notification_log.c.userId == users.c.id)
                .join(deliveries, deliveries.c.logId == notification_log.c.id)
                .where(deliveries.c.claimedBy == holder, deliveries.c.settledAt.is_(None))
            ).scalars()
        )
    return len(unsettled & set(recipients(server)))


def recipient(message: EmailMessage) -> str:
    [address] = message["To"].addresses
    return str(address.addr_spec)


def recipients(server: SmtpServer) -> Counter[str]:
    return Counter(recipient(m) for m in server.messages)


# -- the guarantee -----------------------------------------------------------------------------


def assert_settled_as_summarised(engine: Engine, summary: dict[str, Any]) -> None:
    """No row left ``PENDING`` or held, and the run's summary and record say what its rows say."""
    with engine.connect() as conn:
        held = conn.scalar(
            select(func.count())
            .select_from(deliveries)
            .where(deliveries.c.settledAt.is_(None) | deliveries.c.leaseUntil.is_not(None))
        )
        by_type: dict[str, dict[str, int]] = defaultdict(dict)
        for notification_type, status, count in conn.execute(
            select(notification_log.c.notificationType, notification_log.c.status, func.count())
            .join(deliveries, deliveries.c.logId == notification_log.c.id)
            .where(deliveries.c.runId == summary["runId"])
            .group_by(notification_log.c.notificationType, notification_log.c.status)
        ):
            by_type[notification_type][status] = count
        record = conn.execute(
            select(job_runs.c.status, job_runs.c.sent, job_runs.c.failed, job_runs.c.skipped).where(
                job_runs.c.id == summary["runId"]
            )
        ).one()
    assert statuses(engine)["PENDING"] == 0
    assert held == 0
    assert summary["byType"] == {t: dict(sorted(c.items())) for t, c in sorted(by_type.items())}
    assert tuple(record) == ("SUCCEEDED", summary["sent"], summary["failed"], summary["skipped"])


def assert_delivered(
    engine: Engine,
    server: SmtpServer,
    members: list[str],
    summary: dict[str, Any] | None = None,
    *,
    duplicates_at_most: int = 0,
) -> int:
    """Every member got the email (no one else did), within ``duplicates_at_most`` duplicates,
    each duplicate with the first's ``Message-ID`` (that of the member's ``SENT`` row).
    Returns the number of duplicates."""
    received = recipients(server)
    assert set(received) == {email_of(u) for u in members}
    duplicates = sum(received.values()) - len(received)
    assert duplicates <= duplicates_at_most, received.most_common(5)

    message_ids: dict[str, set[str]] = defaultdict(set)
    for message in server.messages:
        message_ids[recipient(message)].add(str(message["Message-ID"]))
    with engine.connect() as conn:
        sent_rows = dict(
            conn.execute(
                select(users.c.email, notification_log.c.id)
                .join(users, users.c.id == notification_log.c.userId)
                .where(notification_log.c.status == "SENT")
            ).all()
        )
    for address, ids in message_ids.items():
        [message_id] = ids  # a re-send carries the first's Message-ID
        assert message_id.startswith(f"<{sent_rows[address]}@"), (address, message_id)

    if summary is not None:
        assert_settled_as_summarised(engine, summary)
    return duplicates


# -- a worker dies -----------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["worker", "pool process"])
def test_a_worker_killed_mid_chunk_loses_nothing(
    target: str,
    engine: Engine,
    celery_env: MakeEnv,
    make_smtp_server: MakeServer,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    """SIGKILL the worker (main process and pool: a lost machine) or only the pool process
    running the chunk. Either way its task comes back (``acks_late``: the broker sees the
    connection close, or the worker rejects the task of a lost pool process), but its rows
    are leased, so the task comes back empty; once the lease runs out the sweep puts them
    back in the queue, and the other worker sends them."""
    members = due_members(engine, 300)  # two chunks, one per worker
    server = make_smtp_server(Behaviour(delay=0.01))  # a chunk takes about half a second
    env = celery_env(server)
    workers = start_workers(start_worker, env, 2)

    with started_job(env, tmp_path) as job:
        for worker in workers:
            worker.wait_ready()
        assert wait_until(lambda: len(server.messages) >= 60, timeout=30)
        holder = lease_holder(engine)
        assert holder is not None, "no chunk in hand"
        [victim] = [w for w in workers if pid_of(holder) in w.pool_pids()]
        if target == "worker":
            victim.kill()
        else:
            os.kill(pid_of(holder), signal.SIGKILL)
        time.sleep(0.2)  # what the server was still receiving from the dead process
        at_risk = received_unsettled(engine, server, holder)
        summary, _ = finish(job)

    assert summary["resent"] > 0  # the dead worker's rows went out again, from the sweep
    assert summary["sent"] == len(members)
    duplicates = assert_delivered(
        engine, server, members, summary, duplicates_at_most=IN_FLIGHT + SETTLE_WINDOW
    )
    assert duplicates <= at_risk


def test_a_killed_worker_resends_at_most_what_was_in_flight_and_one_settle_window(
    engine: Engine,
    celery_env: MakeEnv,
    make_smtp_server: MakeServer,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    """Outcomes are recorded every 50 messages (or second): killed three quarters through a
    chunk of 200, a worker leaves at most what it had on the wire plus one window of sent
    but unrecorded messages to go out twice, each with the same ``Message-ID``."""
    members = due_members(engine, 200)  # one chunk
    server = make_smtp_server(Behaviour(delay=0.005))  # fast: four windows in a chunk
    env = celery_env(server)
    workers = start_workers(start_worker, env, 2)  # one takes the chunk, one stands by

    with started_job(env, tmp_path) as job:
        for worker in workers:
            worker.wait_ready()
        assert wait_until(lambda: lease_holder(engine) is not None, timeout=30)
        holder = lease_holder(engine)
        assert holder is not None
        [victim] = [w for w in workers if pid_of(holder) in w.pool_pids()]
        assert wait_until(lambda: len(server.messages) >= 150, timeout=30, interval=0.001)
        victim.kill()
        time.sleep(0.2)
        received_at_kill = len(server.messages)
        at_risk = received_unsettled(engine, server, holder)
        summary, _ = finish(job)

    assert received_at_kill < len(members), "the kill did not land mid-chunk"
    assert at_risk <= IN_FLIGHT + SETTLE_WINDOW
    duplicates = assert_delivered(
        engine, server, members, summary, duplicates_at_most=IN_FLIGHT + SETTLE_WINDOW
    )
    assert duplicates <= at_risk


# -- the broker ----------------------------------------------------------------------------


def test_a_broker_restart_mid_run_loses_nothing_and_sends_nothing_twice(
    engine: Engine,
    restart_broker: Callable[..., None],
    celery_env: MakeEnv,
    make_smtp_server: MakeServer,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    """RabbitMQ stops while the run waits, with one chunk in the worker's hands and two in
    the queue. The chunk in hand is finished (its acknowledgement is lost with the
    connection, so it comes back, empty: its rows are settled); the queue is durable and
    its messages persistent, so the other chunks are there when the worker reconnects."""
    members = due_members(engine, 600)  # three chunks
    server = make_smtp_server(Behaviour(delay=0.01))
    env = celery_env(server)
    [worker] = start_workers(start_worker, env)

    with started_job(env, tmp_path) as job:
        assert wait_until(lambda: len(server.messages) >= 50, timeout=30)
        restart_broker(down_for=0.2)
        summary, _ = finish(job)

    assert "Connection to broker lost" in worker.log()
    assert summary["sent"] == len(members)
    assert_delivered(engine, server, members, summary, duplicates_at_most=0)


def test_a_purged_queue_is_refilled_by_the_sweep(
    engine: Engine,
    broker: Broker,
    celery_env: MakeEnv,
    smtp_server: SmtpServer,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    """The queue loses the run's tasks before any worker takes one. The database still has
    every row, never claimed: once they have waited a lease, the sweep (the waiting run's,
    or a worker's) queues them again."""
    members = due_members(engine, 300)
    env = celery_env(smtp_server)

    with started_job(env, tmp_path) as job:
        assert wait_until(
            lambda: statuses(engine)["PENDING"] == len(members) and broker.queue_depth() >= 2,
            timeout=30,
        )
        assert broker.purge() >= 2
        assert broker.queue_depth() == 0
        [worker] = start_workers(start_worker, env)
        summary, log = finish(job)

    assert "no one holds: enqueued again" in log + worker.log()
    assert_delivered(engine, smtp_server, members, summary, duplicates_at_most=0)


def test_a_queue_deleted_under_a_working_worker_is_declared_again_and_refilled(
    engine: Engine,
    broker: Broker,
    celery_env: MakeEnv,
    make_smtp_server: MakeServer,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    """The queue is deleted with two of the run's three chunks while the worker sends the
    first: the worker is told (``basic.cancel``), reconnects and declares the queue again,
    and the sweep queues the lost rows again."""
    members = due_members(engine, 600)
    server = make_smtp_server(Behaviour(delay=0.01))
    env = celery_env(server)
    [worker] = start_workers(start_worker, env)

    with started_job(env, tmp_path) as job:
        assert wait_until(lambda: len(server.messages) >= 20, timeout=30)
        broker.delete_queue()
        summary, log = finish(job)

    assert "no one holds: enqueued again" in log + worker.log()
    assert_delivered(engine, server, members, summary, duplicates_at_most=0)


# -- SMTP ------------------------------------------------------------------------------------


def test_while_smtp_is_down_reminders_fail_with_the_reason_and_a_later_run_delivers_them(
    engine: Engine,
    celery_env: MakeEnv,
    start_worker: StartWorker,
    unused_port: int,
    tmp_path: Path,
) -> None:
    """Nothing listens: each message is tried, retried once (``REWARDS_SMTP_RETRIES``), then
    its row is ``FAILED`` with what went wrong. A failed reminder is due again, so the
    next run, with the server back, delivers it."""
    members = due_members(engine, 8)
    down = SmtpServer(host="127.0.0.1", port=unused_port, behaviour=ACCEPT)  # not running
    env = celery_env(down, REWARDS_SMTP_RETRIES="1", REWARDS_NOTIFY_LEASE_SECONDS="5")
    start_workers(start_worker, env)

    first = run_job(env, tmp_path)
    assert (first["sent"], first["failed"]) == (0, len(members))
    assert first["failuresByReason"] == {"connection refused": len(members)}
    assert_settled_as_summarised(engine, first)

    with running_smtp_server(port=unused_port) as server:
        second = run_job(env, tmp_path)
    assert (second["planned"], second["sent"], second["failed"]) == (len(members), len(members), 0)
    assert_delivered(engine, server, members, second)
    for user in members:
        [failed, sent] = reasons(engine)[user]
        assert failed is not None
        assert failed.startswith("connection refused: ")
        assert sent is None


def test_smtp_back_within_the_retries_delivers_in_the_same_run(
    engine: Engine,
    celery_env: MakeEnv,
    start_worker: StartWorker,
    unused_port: int,
    tmp_path: Path,
) -> None:
    members = due_members(engine, 8)
    down = SmtpServer(host="127.0.0.1", port=unused_port, behaviour=ACCEPT)
    env = celery_env(
        down,
        REWARDS_SMTP_RETRIES="3",  # tries at 0, 0.5, 1.5 and 3.5 s
        REWARDS_NOTIFY_LEASE_SECONDS="10",
    )
    [worker] = start_workers(start_worker, env)

    with started_job(env, tmp_path) as job:
        assert wait_until(lambda: lease_holder(engine) is not None, timeout=30)
        time.sleep(0.2)  # the first tries meet a closed port
        with running_smtp_server(port=unused_port) as server:
            summary, _ = finish(job)

    assert "retrying" in worker.log()
    assert (summary["sent"], summary["failed"]) == (len(members), 0)
    assert_delivered(engine, server, members, summary)


def test_4xx_answers_are_retried_and_5xx_fail_at_once_with_the_code_and_text(
    engine: Engine,
    celery_env: MakeEnv,
    make_smtp_server: MakeServer,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    """A 4xx may pass later: it is retried (once here), then the row is ``FAILED`` with the
    server's code and text. A 5xx will not: the row is ``FAILED`` at once. A failed reminder
    is due again, so the next run tries it again (up to ``REWARDS_NOTIFY_MAX_ATTEMPTS``
    failed rows: the planner's rule, whoever delivers; see ``test_job.py``)."""
    members = due_members(engine, 6)
    busy, bad = members[0], members[1]
    server = make_smtp_server(
        Behaviour(
            at="RCPT",
            reply="451 4.3.0 try again later",
            only_for=frozenset({email_of(busy), email_of(bad)}),
        )
    )
    env = celery_env(server, REWARDS_SMTP_RETRIES="1", REWARDS_NOTIFY_LEASE_SECONDS="10")
    start_workers(start_worker, env)

    first = run_job(env, tmp_path)
    assert (first["sent"], first["failed"]) == (4, 2)
    assert first["failuresByReason"] == {"451 4.3.0 try again later": 2}
    assert server.attempts == 4 + 2 * 2  # the two refused were tried twice each
    assert_settled_as_summarised(engine, first)

    server.behaviour = Behaviour(
        at="RCPT", reply="550 5.1.1 mailbox unavailable", only_for=frozenset({email_of(bad)})
    )
    server.reset()
    second = run_job(env, tmp_path)
    assert (second["planned"], second["sent"], second["failed"]) == (2, 1, 1)
    assert second["failuresByReason"] == {"550 5.1.1 mailbox unavailable": 1}
    assert server.attempts == 2  # one each: the 5xx was not retried
    assert_settled_as_summarised(engine, second)
    assert reasons(engine)[busy] == ["451 4.3.0 try again later", None]
    assert reasons(engine)[bad] == ["451 4.3.0 try again later", "550 5.1.1 mailbox unavailable"]


# -- runs ------------------------------------------------------------------------------------


def test_a_second_run_while_one_waits_says_so_and_nothing_is_sent_twice(
    engine: Engine,
    celery_env: MakeEnv,
    smtp_server: SmtpServer,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    members = due_members(engine, 300)
    env = celery_env(smtp_server)

    with started_job(env, tmp_path) as first:
        # No worker yet: the first run has written the outbox and waits, holding the lock.
        assert wait_until(lambda: statuses(engine)["PENDING"] == len(members), timeout=30)
        second = run_rewards(
            "notify", "run", "--as-of", AS_OF, "--json", env=env, cwd=tmp_path, timeout=30
        )
        assert second.returncode == 0, second.stderr
        assert json_output(second.stdout)["alreadyRunning"] is True
        start_workers(start_worker, env)
        summary, _ = finish(first)

    assert_delivered(engine, smtp_server, members, summary, duplicates_at_most=0)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(job_runs)) == 1


def test_a_member_who_opts_out_or_loses_their_email_after_planning_is_not_sent_to(
    engine: Engine,
    celery_env: MakeEnv,
    smtp_server: SmtpServer,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    """Each row is decided again when a worker claims it, with the member as they are then."""
    members = due_members(engine, 10)
    opted_out, no_email = members[3], members[7]
    env = celery_env(smtp_server)

    with started_job(env, tmp_path) as job:
        assert wait_until(lambda: statuses(engine)["PENDING"] == len(members), timeout=30)
        with engine.begin() as conn:
            conn.execute(
                update(users).where(users.c.id == opted_out).values(emailNotifications=False)
            )
            conn.execute(update(users).where(users.c.id == no_email).values(email=None))
        start_workers(start_worker, env)
        summary, _ = finish(job)

    assert (summary["sent"], summary["skipped"], summary["failed"]) == (len(members) - 2, 1, 1)
    assert summary["failuresByReason"] == {MISSING_EMAIL: 1}
    assert reasons(engine)[opted_out] == [OPTED_OUT]
    assert reasons(engine)[no_email] == [MISSING_EMAIL]
    assert statuses(engine) == Counter({"SENT": len(members) - 2, "SKIPPED": 1, "FAILED": 1})
    assert_delivered(engine, smtp_server, [u for u in members if u not in (opted_out, no_email)])
    assert_settled_as_summarised(engine, summary)


def test_no_wait_returns_once_the_reminders_are_queued_and_the_workers_finish_them(
    engine: Engine,
    celery_env: MakeEnv,
    smtp_server: SmtpServer,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    members = due_members(engine, 300)
    env = celery_env(smtp_server)

    # No worker is running: a run that waited for its reminders would not return.
    summary = run_job(env, tmp_path, "--no-wait")
    assert summary["planned"] == len(members)
    assert summary["byType"] == {"EXPIRATION_7_DAYS": {"PENDING": len(members)}}
    assert statuses(engine) == Counter({"PENDING": len(members)})  # what the summary said

    start_workers(start_worker, env)
    assert wait_until(lambda: statuses(engine) == Counter({"SENT": len(members)}), timeout=30)
    assert_delivered(engine, smtp_server, members, duplicates_at_most=0)


# -- the shared rate cap --------------------------------------------------------------------


def test_the_send_rate_cap_holds_across_two_workers(
    engine: Engine,
    celery_env: MakeEnv,
    smtp_server: SmtpServer,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    """``REWARDS_SEND_RATE=40``: two workers, each free to send hundreds a second, share the
    one cap; over the run, messages per second stay within 10% of it."""
    rate = 40
    members = due_members(engine, 100)
    env = celery_env(
        smtp_server,
        REWARDS_SEND_RATE=str(rate),
        REWARDS_NOTIFY_BATCH_SIZE="50",  # two tasks: one per worker, each held until done
        REWARDS_NOTIFY_LEASE_SECONDS="10",  # a task takes 2.5 s at half the cap
    )
    workers = start_workers(start_worker, env, 2)
    for worker in workers:
        worker.wait_ready()

    summary = run_job(env, tmp_path)

    assert_delivered(engine, smtp_server, members, summary, duplicates_at_most=0)
    with engine.connect() as conn:
        sent_at = sorted(
            conn.execute(
                select(notification_log.c.sentAt).where(notification_log.c.sentAt.is_not(None))
            ).scalars()
        )
        senders = set(conn.execute(select(deliveries.c.claimedBy)).scalars())
    assert len(senders) == 2, senders  # both workers sent
    achieved = (len(sent_at) - 1) / (sent_at[-1] - sent_at[0]).total_seconds()
    assert rate * 0.9 <= achieved <= rate * 1.1, f"{achieved:.1f} messages per second"
