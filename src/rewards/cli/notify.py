"""``rewards notify``: run CheckExpiringPointsJob on demand, and look at what it did."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Annotated

import typer
from rich.table import Table

from rewards.cli.context import app_context, err, out
from rewards.config import require_own_secret_to_send
from rewards.db import check_connection
from rewards.migrate import require_current
from rewards.notifications.job import CheckExpiringPointsJob
from rewards.notifications.locking import JobAlreadyRunning
from rewards.notifications.runs import JobSummary
from rewards.notifications.stats import notification_stats

app = typer.Typer(
    help="Expiry reminders: run the job, see what was sent and why not.", no_args_is_help=True
)

STATUSES = ("SENT", "FAILED", "SKIPPED")


def summary_table(summary: JobSummary) -> Table:
    title = "Would be done (dry run)" if summary.dry_run else "CheckExpiringPointsJob"
    table = Table("tier", *(s.lower() for s in STATUSES), title=title)
    for notification_type, counts in summary.counts_by_type().items():
        table.add_row(notification_type, *(f"{counts.get(s, 0):,}" for s in STATUSES))
    table.add_section()
    table.add_row("total", f"{summary.sent:,}", f"{summary.failed:,}", f"{summary.skipped:,}")
    return table


def print_summary(summary: JobSummary) -> None:
    out.print(
        f"As of {summary.as_of:%Y-%m-%d %H:%M} UTC: "
        f"{'would expire' if summary.dry_run else 'expired'} {summary.expired_points:,} points "
        f"in {summary.expired_entries:,} entries; {summary.planned:,} reminders due"
        + (f"; {summary.resent:,} interrupted ones re-sent" if summary.resent else "")
    )
    out.print(summary_table(summary))
    for reason, count in summary.failures.most_common():
        out.print(f"  failed: {reason} x{count}", highlight=False)
    out.print(f"Finished in {summary.duration_seconds:.2f}s.")


@app.command()
def run(
    ctx: typer.Context,
    as_of: Annotated[
        datetime | None,
        typer.Option(
            "--as-of",
            formats=["%Y-%m-%d"],
            help="Run as if it were this date's scheduled time (YYYY-MM-DD).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Preview; write and send nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="With REWARDS_DISPATCH=celery: return once the reminders are queued.",
        ),
    ] = False,
) -> None:
    """Post due expirations and send the reminders that are due."""
    context = app_context(ctx)
    if not dry_run:
        require_own_secret_to_send(context.settings)
    check_connection(context.engine)
    require_current(context.engine)
    job = CheckExpiringPointsJob(context.engine, context.settings)
    day: date | None = as_of.date() if as_of else None
    try:
        summary = job.run(day=day, dry_run=dry_run, wait=not no_wait)
    except JobAlreadyRunning as exc:
        if as_json:
            print(json.dumps({"alreadyRunning": True, "message": str(exc)}))
        else:
            err.print(str(exc))
        return
    if as_json:
        print(json.dumps(summary.as_json()))
    else:
        print_summary(summary)


@app.command()
def stats(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Counts by status and tier, failures by reason, and the recent runs."""
    context = app_context(ctx)
    check_connection(context.engine)
    require_current(context.engine)
    with context.engine.connect() as conn:
        result = notification_stats(conn)
    if as_json:
        print(json.dumps(result.as_json()))
        return
    table = Table("tier", *(s.lower() for s in ("PENDING", *STATUSES)), title="Reminders")
    for notification_type, counts in result.by_type_and_status.items():
        table.add_row(notification_type, *(f"{counts.get(s, 0):,}" for s in ("PENDING", *STATUSES)))
    out.print(table)
    if result.failures_by_reason:
        reasons = Table("failure reason", "count", title="Why reminders failed")
        for reason, count in result.failures_by_reason.items():
            reasons.add_row(reason, f"{count:,}")
        out.print(reasons)
    runs = Table(
        "started (UTC)",
        "as of",
        "status",
        "sent",
        "failed",
        "skipped",
        "expired pts",
        title="Recent runs",
    )
    for r in result.recent_runs:
        runs.add_row(
            r["startedAt"],
            r["asOf"],
            r["status"],
            str(r["sent"]),
            str(r["failed"]),
            str(r["skipped"]),
            f"{r['expiredPoints']:,}",
        )
    out.print(runs)
