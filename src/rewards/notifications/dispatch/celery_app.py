"""The ``celery`` dispatcher: Celery workers on RabbitMQ deliver the outbox.

The job enqueues chunks of outbox row ids (``rewards.deliver`` tasks); any number
of ``rewards worker`` processes, on any machines with the same ``DATABASE_URL``
and ``REWARDS_BROKER_URL``, take them. A task is acknowledged only once it has
run (``acks_late``; a worker lost mid-task gives its task back), and a worker
takes one task at a time, so the queue stays fair. A task delivered twice, or a
chunk two workers hold, sends each row once: the rows are claimed with a lease.
What a dead worker held, or what a lost queue never delivered, is put back by a
sweep that runs while a job waits and in every worker: the database, not the
broker, says what is left to send.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery, signals
from sqlalchemy import Engine

from rewards.clock import utcnow
from rewards.config import Settings, load_settings
from rewards.db import create_db_engine
from rewards.notifications.delivery import create_sender
from rewards.notifications.delivery.base import Sender
from rewards.notifications.dispatch import chunks
from rewards.notifications.dispatch.deliver import Deliverer
from rewards.notifications.dispatch.inline import worker_name
from rewards.notifications.messages import MessageBuilder
from rewards.notifications.outbox import requeue_stale, unsettled

log = logging.getLogger("rewards.notifications.dispatch")

QUEUE = "rewards.reminders"
DELIVER = "rewards.deliver"
WAIT_POLL_SECONDS = 0.5


def sweep_every(settings: Settings) -> float:
    """How often the sweep looks for rows no one holds: often enough to catch a lease
    soon after it ran out, rarely enough to cost nothing."""
    return max(1.0, min(30.0, settings.notify_lease_seconds / 3))


def create_celery(settings: Settings) -> Celery:
    """The Celery app of ``settings``: its broker, its queue, and the delivery task."""
    app = Celery("rewards", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
    )
    app.task(name=DELIVER, ignore_result=True)(deliver_task)
    return app


def enqueue(app: Celery, log_ids: Sequence[str]) -> int:
    """Send the chunks of ``log_ids``; returns how many rows went (the sweep catches the rest).

    A broker that does not answer is retried for a few seconds, then given up on:
    the rows stay in the outbox, and the sweep enqueues them again later.
    """
    queued = 0
    for chunk in chunks(log_ids):
        try:
            app.send_task(
                DELIVER,
                args=[chunk],
                queue=QUEUE,
                retry=True,
                retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
            )
        except Exception as exc:  # the broker is away; the database keeps the rows
            log.warning(
                "[CheckExpiringPointsJob] could not enqueue %d reminders (%s); the sweep will",
                len(chunk),
                exc,
            )
            continue
        queued += len(chunk)
    return queued


def sweep(engine: Engine, settings: Settings, app: Celery, *, run_id: str | None = None) -> int:
    """Enqueue again the rows whose lease ran out or that were never claimed."""
    with engine.begin() as conn:
        stale = requeue_stale(
            conn, now=utcnow(), lease_seconds=settings.notify_lease_seconds, run_id=run_id
        )
    if stale:
        log.info("[CheckExpiringPointsJob] %d reminders no one holds: enqueued again", len(stale))
        enqueue(app, stale)
    return len(stale)


class CeleryDispatcher:
    """The job's side: enqueue chunks, then wait until the run's rows are all settled."""

    def __init__(
        self, engine: Engine, settings: Settings, *, clock: Callable[[], datetime]
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._app = create_celery(settings)

    def __enter__(self) -> CeleryDispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self._app.close()

    def dispatch(self, log_ids: Sequence[str]) -> None:
        enqueue(self._app, log_ids)

    def wait(self, run_id: str, *, progress: Callable[[], None] | None = None) -> None:
        swept = time.monotonic()
        interval = sweep_every(self._settings)
        while True:
            started = time.monotonic()
            with self._engine.connect() as conn:
                left = unsettled(conn, run_id)
            counted = time.monotonic() - started
            if progress is not None:
                progress()
            if not left:
                return
            if time.monotonic() - swept >= interval:
                sweep(self._engine, self._settings, self._app, run_id=run_id)
                swept = time.monotonic()
            # A large outbox takes longer to count: poll less often rather than keep the
            # database busy counting what the workers are settling.
            time.sleep(max(WAIT_POLL_SECONDS, 20 * counted))


# -- the worker's side ------------------------------------------------------------------------


@dataclass
class _WorkerState:
    """One per worker process (after the fork): its engine, sender and event loop.

    The loop outlives each task, so the sender's SMTP connections are reused from
    task to task.
    """

    engine: Engine
    runner: asyncio.Runner
    deliverer: Deliverer
    sender: Sender


_state: _WorkerState | None = None


def _worker_state() -> _WorkerState:
    global _state
    if _state is None:
        settings = load_settings()
        engine = create_db_engine(settings.database_url)
        runner = asyncio.Runner()
        sender = create_sender(settings)
        runner.run(sender.__aenter__())
        deliverer = Deliverer(
            engine,
            settings,
            builder=MessageBuilder(settings),
            sender=sender,
            clock=utcnow,
            worker=worker_name(),
        )
        _state = _WorkerState(engine, runner, deliverer, sender)
    return _state


def deliver_task(log_ids: list[str]) -> dict[str, int]:
    """``rewards.deliver``: deliver one chunk of outbox rows (what others hold is skipped)."""
    state = _worker_state()
    stats = state.runner.run(state.deliverer.deliver(log_ids))
    return {"claimed": stats.claimed, "sent": stats.sent, "failed": stats.failed}


def _close_worker_state(**_: Any) -> None:
    global _state
    if _state is not None:
        try:
            _state.runner.run(_state.sender.__aexit__(None, None, None))
        finally:
            _state.runner.close()
            _state.engine.dispose()
            _state = None


signals.worker_process_shutdown.connect(_close_worker_state, weak=False)


class Sweeper(threading.Thread):
    """In each worker, the sweep on a timer: nothing waits for the next day's run."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        super().__init__(name="rewards-sweep", daemon=True)
        self._app = app
        self._settings = settings
        self._stop_event = threading.Event()

    def run(self) -> None:
        engine = create_db_engine(self._settings.database_url)
        try:
            while not self._stop_event.wait(sweep_every(self._settings)):
                try:
                    sweep(engine, self._settings, self._app)
                except Exception:  # the database or the broker is away; try again later
                    log.exception("[rewards worker] sweep failed")
        finally:
            engine.dispose()

    def stop(self) -> None:
        self._stop_event.set()
