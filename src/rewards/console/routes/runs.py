"""Runs: the list, a run's detail, starting a run or a dry run, and a started task's progress."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from rewards.api.deps import ReadConn
from rewards.clock import local_date, utcnow
from rewards.console import queries
from rewards.console.runner import TaskState
from rewards.console.web import (
    PAGE_SIZE,
    CheckedForm,
    ConsoleDep,
    SignedIn,
    date_or_none,
    form_text,
    page_context,
    see_other,
)
from rewards.notifications.job import LAST_DAY

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/runs")
def runs(
    request: Request,
    session: SignedIn,
    console: ConsoleDep,
    conn: ReadConn,
    before: str | None = None,
    error: str | None = None,
) -> HTMLResponse:
    """Runs, newest first, and the form that starts one."""
    start = None
    if before:
        try:
            start = datetime.fromisoformat(before)
        except ValueError:
            start = None
    rows = queries.latest_runs(conn, PAGE_SIZE + 1, before=start)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return console.pages.render(
        "runs.html.j2",
        **page_context(
            request,
            session,
            console,
            runs=rows,
            next_before=rows[-1].startedAt.isoformat() if more and rows else None,
            first_page=start is not None,
            today=local_date(utcnow(), console.settings.zone),
            running=console.runner.running(),
            error=error,
        ),
    )


@router.post("/runs")
def start_run(session: SignedIn, form: CheckedForm, console: ConsoleDep) -> Response:
    """Start a run or a dry run on a thread of its own; its page follows it."""
    day = date_or_none(form_text(form, "as_of"))
    dry_run = form_text(form, "mode") == "dry-run"
    if form_text(form, "as_of") and day is None:
        return see_other("/console/runs?error=as-of")
    if day is not None and day > LAST_DAY:
        return see_other("/console/runs?error=as-of")
    task = console.runner.start(day=day, dry_run=dry_run, operator=session.operator)
    return see_other(f"/console/tasks/{task.id}")


@router.get("/tasks/{task_id}")
def task_page(
    task_id: str, request: Request, session: SignedIn, console: ConsoleDep, conn: ReadConn
) -> Response:
    """A run started from the console: its record once it has one; a dry run's result."""
    task = console.runner.get(task_id)
    if task is not None and not task.dry_run:
        run_id = (task.summary.run_id if task.summary else None) or queries.console_run_since(
            conn, task.started_at
        )
        if run_id is not None:
            return see_other(f"/console/runs/{run_id}")
    return console.pages.render(
        "task.html.j2",
        404 if task is None else 200,
        **page_context(
            request,
            session,
            console,
            task=task,
            refresh=task is not None and task.state is TaskState.RUNNING,
        ),
    )


@router.get("/runs/{run_id}")
def run_page(
    run_id: str, request: Request, session: SignedIn, console: ConsoleDep, conn: ReadConn
) -> HTMLResponse:
    run = queries.run_by_id(conn, run_id)
    if run is None:
        return console.pages.render(
            "not-found.html.j2",
            404,
            **page_context(request, session, console, what="run", id=run_id),
        )
    duration = None
    if run.finishedAt is not None:
        duration = (run.finishedAt - run.startedAt).total_seconds()
    return console.pages.render(
        "run.html.j2",
        **page_context(
            request,
            session,
            console,
            run=run,
            duration=duration,
            running_for=(utcnow() - run.startedAt).total_seconds(),
            by_type=run.countsByType or {},
            failures=queries.run_failures(conn, run_id).most_common(),
            refresh=run.status == "RUNNING",
        ),
    )
