"""``rewards scheduler``: run the daily job on its cron schedule, in the foreground."""

from __future__ import annotations

import typer

from rewards.cli.context import app_context
from rewards.db import check_connection
from rewards.notifications.scheduler import build_scheduler


def scheduler(ctx: typer.Context) -> None:
    """Run CheckExpiringPointsJob on REWARDS_NOTIFY_CRON until stopped (Ctrl-C)."""
    context = app_context(ctx)
    check_connection(context.engine)
    sched = build_scheduler(context.engine, context.settings, background=False)
    try:
        sched.start()
    except (KeyboardInterrupt, SystemExit):
        sched.shutdown(wait=False)
