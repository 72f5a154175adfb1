"""``rewards worker``: a Celery worker that delivers the outbox (``REWARDS_DISPATCH=celery``)."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from celery import signals

from rewards.cli.context import app_context
from rewards.config import require_own_secret_to_send
from rewards.db import check_connection
from rewards.migrate import require_current
from rewards.notifications.dispatch.celery_app import QUEUE, Sweeper, create_celery


def worker(
    ctx: typer.Context,
    concurrency: Annotated[
        int, typer.Option(min=1, max=64, help="Worker processes (each with its SMTP pool).")
    ] = 2,
) -> None:
    """Deliver reminders from the broker's queue until stopped; run as many as you like.

    Each worker also sweeps the outbox on a timer, re-queueing what a dead worker held.
    Stop it with Ctrl-C or SIGTERM: the task in hand is finished first.
    """
    context = app_context(ctx)
    require_own_secret_to_send(context.settings)
    check_connection(context.engine)
    require_current(context.engine)
    settings = context.settings
    app = create_celery(settings)
    sweeper = Sweeper(app, settings)

    def start_sweeping(**_: Any) -> None:
        sweeper.start()

    def stop_sweeping(**_: Any) -> None:
        sweeper.stop()

    signals.worker_ready.connect(start_sweeping, weak=False)
    signals.worker_shutdown.connect(stop_sweeping, weak=False)

    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            f"--queues={QUEUE}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            # One name per process: Celery's control queue is exclusive to its node name,
            # so a second worker of one name on a host would die at start.
            f"--hostname=rewards-{os.getpid()}@%h",
        ]
    )
