"""Reminders: search and paging, a reminder's detail and email as sent, retrying a failure."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from rewards.api.deps import EngineDep, ReadConn
from rewards.clock import utcnow
from rewards.config import SettingsError
from rewards.console import auth, queries
from rewards.console.pages import PREVIEW_HEADERS
from rewards.console.preview import EmailPreview, render_logged
from rewards.console.web import (
    PAGE_SIZE,
    CheckedForm,
    Console,
    ConsoleDep,
    SignedIn,
    date_or_none,
    log,
    page_context,
    see_other,
)
from rewards.notifications.retry import RetryRefused, retry_failed
from rewards.notifications.tiers import Status
from rewards.paging import InvalidCursor

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/reminders")
def reminders(
    request: Request,
    session: SignedIn,
    console: ConsoleDep,
    conn: ReadConn,
    member: str = "",
    status: str = "",
    tier: str = "",
    run: str = "",
    cursor: str | None = None,
) -> HTMLResponse:
    """Reminders newest first, filtered by member, status, tier, dates or run; paged."""
    settings = console.settings
    params = request.query_params
    filters = queries.ReminderFilter(
        member=member.strip() or None,
        status=status if status in queries.STATUSES else None,
        notification_type=tier or None,
        created_from=date_or_none(params.get("from")),
        created_to=date_or_none(params.get("to")),
        run_id=run or None,
    )
    error = None
    try:
        rows, next_cursor = queries.search_reminders(
            conn, filters, settings.zone, limit=PAGE_SIZE, cursor=cursor or None
        )
    except InvalidCursor:
        rows, next_cursor, error = [], None, "That page link is not valid; showing nothing."
    kept = {
        k: v
        for k, v in params.items()
        if k in ("member", "status", "tier", "from", "to", "run") and v
    }
    return console.pages.render(
        "reminders.html.j2",
        **page_context(
            request,
            session,
            console,
            rows=rows,
            filters=filters,
            form={k: params.get(k, "") for k in ("member", "status", "tier", "from", "to", "run")},
            kept=kept,
            next_cursor=next_cursor,
            paged=bool(cursor),
            statuses=queries.STATUSES,
            tiers=queries.notification_types(settings.notify_tiers),
            error=error,
        ),
    )


@router.get("/reminders/{log_id}")
def reminder_page(
    log_id: str,
    request: Request,
    session: SignedIn,
    console: ConsoleDep,
    conn: ReadConn,
    refused: str | None = None,
) -> HTMLResponse:
    return _reminder(request, session, console, conn, log_id, refused=refused)


def _reminder(
    request: Request,
    session: auth.Session,
    console: Console,
    conn: Any,
    log_id: str,
    *,
    refused: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    detail = queries.reminder_detail(conn, log_id)
    if detail is None:
        return console.pages.render(
            "not-found.html.j2",
            404,
            **page_context(request, session, console, what="reminder", id=log_id),
        )
    row = detail.row
    preview = _preview(console, detail)
    attempts_left = console.settings.notify_max_attempts - len(detail.key_rows)
    live = [r for r in detail.key_rows if r.status != Status.FAILED.value]
    return console.pages.render(
        "reminder.html.j2",
        status_code,
        **page_context(
            request,
            session,
            console,
            row=row,
            detail=detail,
            preview=preview,
            attempts_left=attempts_left,
            max_attempts=console.settings.notify_max_attempts,
            can_retry=row.status == Status.FAILED.value and not live and attempts_left > 0,
            refused=refused,
        ),
    )


def _preview(console: Console, detail: queries.ReminderDetail) -> EmailPreview:
    """The reminder's email as it was sent: rendered again from its row and its run's as-of."""
    row = detail.row
    return render_logged(
        console.builder,
        console.settings,
        log_id=row.id,
        user_id=row.userId,
        email=row.email,
        name=row.name,
        notification_type=row.notificationType,
        expiration_date=row.expirationDate.date(),
        points=row.pointsExpiring,
        decided_as_of=detail.run_as_of or row.createdAt,
        now=utcnow(),
    )


@router.get("/reminders/{log_id}/email")
def reminder_email(log_id: str, session: SignedIn, console: ConsoleDep, conn: ReadConn) -> Response:
    """The email's HTML part by itself, for the preview frame: sandboxed, no script."""
    detail = queries.reminder_detail(conn, log_id)
    if detail is None:
        return Response("no such reminder", status_code=404, media_type="text/plain")
    return HTMLResponse(_preview(console, detail).html, headers=dict(PREVIEW_HEADERS))


@router.post("/reminders/{log_id}/retry")
async def retry(
    log_id: str,
    request: Request,
    session: SignedIn,
    form: CheckedForm,
    console: ConsoleDep,
    engine: EngineDep,
) -> Response:
    """Retry a FAILED reminder now (a new row for its key, delivered by the dispatcher)."""
    try:
        retried = await run_in_threadpool(retry_failed, engine, console.settings, log_id)
    except (RetryRefused, SettingsError) as exc:
        return see_other(f"/console/reminders/{log_id}?refused={quote(str(exc))}")
    log.info("[console] %s retried reminder %s: %s", session.operator, log_id, retried.status)
    return see_other(f"/console/reminders/{retried.log_id}")
