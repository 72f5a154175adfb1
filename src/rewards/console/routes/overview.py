"""The overview: today's run and the next one, reminders by status and tier, a 30-day chart,
failures by reason."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from rewards.api.deps import ReadConn
from rewards.clock import local_date, local_midnight_utc, utcnow
from rewards.config import Settings
from rewards.console import queries
from rewards.console.chart import stacked_bars
from rewards.console.web import ConsoleDep, SignedIn, page_context
from rewards.notifications.schedule import cron_trigger

router = APIRouter(prefix="/console", include_in_schema=False)


def next_fire(settings: Settings, now: datetime) -> datetime | None:
    """The next fire of ``REWARDS_NOTIFY_CRON`` after ``now`` (naive UTC), in naive UTC."""
    trigger = cron_trigger(settings.notify_cron, settings.zone)
    fire = trigger.get_next_fire_time(None, now.replace(tzinfo=UTC))
    return None if fire is None else fire.astimezone(UTC).replace(tzinfo=None)


@router.get("")
def overview(
    request: Request, session: SignedIn, console: ConsoleDep, conn: ReadConn
) -> HTMLResponse:
    """Did today's run happen, how many reminders went out, which failed and why."""
    settings = console.settings
    now = utcnow()
    today = local_date(now, settings.zone)
    days = queries.reminders_per_day(conn, today=today, days=30, zone=settings.zone)
    week = days[-7:]
    chart = stacked_bars([(d.day, {s: d.total(s) for s in queries.STATUSES}) for d in days])
    return console.pages.render(
        "overview.html.j2",
        **page_context(
            request,
            session,
            console,
            today=today,
            today_run=queries.latest_run_of_day(conn, today, settings.zone),
            last_runs=queries.latest_runs(conn, 5),
            next_fire=next_fire(settings, now),
            cron=settings.notify_cron,
            today_counts=queries.totals(days[-1:]),
            week_counts=queries.totals(week),
            week_from=week[0].day,
            month_from=days[0].day,
            statuses=queries.STATUSES,
            chart=chart,
            failures=queries.failures_by_reason(
                conn, since=local_midnight_utc(week[0].day, settings.zone)
            ),
            waiting=queries.outbox_waiting(conn),
            running=console.runner.running(),
        ),
    )
