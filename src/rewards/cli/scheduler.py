"""``rewards scheduler``: run the daily job on its cron schedule, in the foreground."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import typer

from rewards.cli.context import app_context
from rewards.config import require_own_secret_to_send
from rewards.db import check_connection
from rewards.migrate import require_current
from rewards.notifications.scheduler import build_scheduler


def scheduler(ctx: typer.Context) -> None:
    """Run CheckExpiringPointsJob on REWARDS_NOTIFY_CRON until stopped (Ctrl-C or SIGTERM).

    On a stop signal a run in progress is allowed to finish, so no reminder is
    left in flight.
    """
    context = app_context(ctx)
    require_own_secret_to_send(context.settings)
    check_connection(context.engine)
    require_current(context.engine)
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    sched = build_scheduler(context.engine, context.settings)
    sched.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        sched.shutdown(wait=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
