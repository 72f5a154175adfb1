"""A run whose process dies is not left ``RUNNING`` for ever, and the metrics only grow.

``kill -9`` gives the process no chance to close its run record. The next run
that takes the job lock knows that nothing else runs, and marks the record
``ABANDONED`` with the moment it noticed.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

from prometheus_client import generate_latest
from sqlalchemy import Engine, select

from rewards.metrics import build_registry
from rewards.models import NotificationJobRun
from tests.process_helpers import Shop, rewards_env, run_rewards, started_rewards, wait_until
from tests.smtp_server import Behaviour, SmtpServer

RUN_DAY = date(2025, 5, 12)
DUE = datetime(2025, 5, 19, 15, 0)


def scrape(engine: Engine) -> dict[str, float]:
    """The job-run samples of ``/metrics``, by name and labels."""
    text = generate_latest(build_registry(engine)).decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(rewards_job_run\w*(?:\{[^}]*\})?) (\S+)", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def runs(engine: Engine) -> list[tuple[str, str, datetime | None, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                NotificationJobRun.id,
                NotificationJobRun.status,
                NotificationJobRun.abandonedAt,
                NotificationJobRun.error,
            ).order_by(NotificationJobRun.startedAt)
        ).all()
    return [(r.id, r.status, r.abandonedAt, r.error) for r in rows]


def test_a_run_killed_with_sigkill_is_marked_abandoned_by_the_next_run(
    engine: Engine,
    database_url: str,
    make_smtp_server: Callable[[Behaviour], SmtpServer],
    tmp_path: Path,
) -> None:
    Shop(engine).members_with_points([f"m{n:03d}" for n in range(60)], 100, DUE)
    server = make_smtp_server(Behaviour(delay=0.05))
    env = rewards_env(database_url, server, REWARDS_SMTP_CONCURRENCY="1")
    as_of = ("--as-of", RUN_DAY.isoformat())

    with started_rewards("notify", "run", *as_of, env=env, cwd=tmp_path) as process:
        assert wait_until(lambda: len(server.messages) >= 3 or process.poll() is not None, 30)
        assert process.poll() is None, "the run finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    [(killed, status, abandoned_at, _)] = runs(engine)
    assert (status, abandoned_at) == ("RUNNING", None)
    during = scrape(engine)
    assert during["rewards_job_running"] == 1.0
    assert during['rewards_job_runs_total{outcome="abandoned"}'] == 0.0

    noticed_from = datetime.utcnow().replace(microsecond=0)
    result = run_rewards("notify", "run", *as_of, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    [first, second] = runs(engine)
    assert first[:2] == (killed, "ABANDONED")
    assert first[2] is not None
    assert noticed_from <= first[2] <= datetime.utcnow()
    assert first[3] == "the process running it stopped before it finished"
    assert second[1] == "SUCCEEDED"

    after = scrape(engine)
    assert after["rewards_job_running"] == 0.0
    assert after['rewards_job_runs_total{outcome="abandoned"}'] == 1.0
    assert after['rewards_job_runs_total{outcome="succeeded"}'] == 1.0
    for name, value in during.items():
        if name.startswith("rewards_job_runs_total"):
            assert after[name] >= value, f"{name} went down: {value} -> {after[name]}"


def test_a_run_in_progress_is_not_abandoned_by_a_run_that_cannot_take_the_lock(
    engine: Engine,
    database_url: str,
    make_smtp_server: Callable[[Behaviour], SmtpServer],
    tmp_path: Path,
) -> None:
    Shop(engine).members_with_points([f"m{n:03d}" for n in range(40)], 100, DUE)
    server = make_smtp_server(Behaviour(delay=0.2))  # 8 s in all: long enough to overlap
    env = rewards_env(database_url, server, REWARDS_SMTP_CONCURRENCY="1")
    as_of = ("--as-of", RUN_DAY.isoformat())
    with started_rewards("notify", "run", *as_of, env=env, cwd=tmp_path) as first:
        assert wait_until(lambda: len(server.messages) >= 2 or first.poll() is not None, 30)
        assert first.poll() is None
        second = run_rewards("notify", "run", *as_of, env=env, cwd=tmp_path)
        assert second.returncode == 0, second.stderr
        assert "already running" in second.stderr
        assert [r[1] for r in runs(engine)] == ["RUNNING"]
        assert first.wait(timeout=60) == 0
    assert [r[1] for r in runs(engine)] == ["SUCCEEDED"]
