"""Operator views: reminder logs, counts, job runs, and running the job."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from rewards.api.deps import Admin, EngineDep, ReadConn, SettingsDep
from rewards.api.routes.members import notification_out
from rewards.api.schemas import (
    AnomalyOut,
    AnomalyPage,
    JobRunRequest,
    JobRunsOut,
    JobSummaryOut,
    NotificationPage,
    StatsOut,
    UtcDatetime,
    problem_responses,
)
from rewards.clock import utc_naive
from rewards.ledger import history
from rewards.notifications.history import LogFilter, list_logs
from rewards.notifications.job import CheckExpiringPointsJob
from rewards.notifications.stats import notification_stats, recent_runs
from rewards.notifications.tiers import Status

router = APIRouter(
    prefix="/admin",
    tags=["operators"],
    dependencies=[Admin],
    responses=problem_responses(400, 401, 403, 409, 413, 422),
)


def _naive(value: datetime | None) -> datetime | None:
    return None if value is None else utc_naive(value)


@router.get("/notifications", response_model=NotificationPage)
def notifications(
    conn: ReadConn,
    status: Status | None = None,
    notificationType: Annotated[str | None, Query(max_length=64)] = None,
    userId: Annotated[str | None, Query(max_length=200)] = None,
    createdFrom: Annotated[UtcDatetime | None, Query(alias="from")] = None,
    createdTo: Annotated[UtcDatetime | None, Query(alias="to")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> NotificationPage:
    """Reminder log rows, newest first, filtered; ``nextCursor`` gives the next page."""
    filters = LogFilter(
        user_id=userId,
        status=status.value if status else None,
        notification_type=notificationType,
        created_from=_naive(createdFrom),
        created_to=_naive(createdTo),
    )
    rows, next_cursor = list_logs(conn, filters, limit=limit, cursor=cursor)
    return NotificationPage(items=[notification_out(r) for r in rows], nextCursor=next_cursor)


@router.get("/notifications/stats", response_model=StatsOut)
def stats(conn: ReadConn) -> StatsOut:
    """Counts by status and by tier and status, failures by reason, recent runs."""
    return StatsOut(**notification_stats(conn).as_json())


@router.get("/ledger-anomalies", response_model=AnomalyPage)
def ledger_anomalies(
    conn: ReadConn,
    accountId: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> AnomalyPage:
    """What the ledger rules could not honour in rows other applications wrote, newest first."""
    rows, next_cursor = history.ledger_anomalies(
        conn, account_id=accountId, limit=limit, cursor=cursor
    )
    return AnomalyPage(
        items=[
            AnomalyOut(
                id=a.id,
                accountId=a.account_id,
                kind=a.kind,
                entryId=a.entry_id,
                points=a.points,
                at=a.at,
                detectedAt=a.detected_at,
            )
            for a in rows
        ],
        nextCursor=next_cursor,
    )


@router.get("/job-runs", response_model=JobRunsOut)
def job_runs(conn: ReadConn, limit: Annotated[int, Query(ge=1, le=500)] = 20) -> JobRunsOut:
    return JobRunsOut(items=recent_runs(conn, limit))


@router.post("/jobs/check-expiring-points", response_model=JobSummaryOut)
async def run_job(
    engine: EngineDep, settings: SettingsDep, body: JobRunRequest | None = None
) -> JobSummaryOut:
    """Run CheckExpiringPointsJob now: the same summary as ``rewards notify run --json``.

    409 if a run is already in progress; 422 for a future ``asOf`` without ``dryRun``.
    """
    request = body or JobRunRequest()
    job = CheckExpiringPointsJob(engine, settings)
    summary = await run_in_threadpool(
        job.run, day=request.asOf, dry_run=request.dryRun, trigger="api"
    )
    return JobSummaryOut(**summary.as_json())
