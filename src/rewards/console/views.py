"""The operator console: server-rendered pages under ``/console``.

Every page needs a session (:mod:`rewards.console.auth`): without one, any
console URL answers the sign-in page (401) and nothing else, and every form is
checked for its CSRF token. Pages read through bounded, indexed queries
(:mod:`rewards.console.queries`); what they change goes through the same
services as the API and the CLI (preferences recorded with the operator's name,
retries through the outbox, runs through the job).

``install(app)`` adds the routes, the console's state and its error pages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import Engine
from starlette.datastructures import FormData, UploadFile

from rewards.api.deps import EngineDep, ReadConn, SettingsDep, Tx
from rewards.clock import local_date, local_midnight_utc, utcnow
from rewards.config import Settings, SettingsError
from rewards.console import auth, queries
from rewards.console.chart import stacked_bars
from rewards.console.pages import (
    PREVIEW_HEADERS,
    STATIC_FILES,
    ConsolePages,
    load_static,
)
from rewards.console.preview import render_logged
from rewards.console.runner import ConsoleRunner, TaskState
from rewards.ledger import history
from rewards.ledger import service as ledger
from rewards.ledger.errors import UnknownAccount, UnknownUser
from rewards.members import service as members
from rewards.members.bulk import InvalidMemberList, apply_opt_out, plan_opt_out, read_member_list
from rewards.notifications.job import LAST_DAY
from rewards.notifications.messages import MessageBuilder, sender_name
from rewards.notifications.retry import RetryRefused, retry_failed
from rewards.notifications.schedule import cron_trigger
from rewards.notifications.tiers import Status
from rewards.paging import InvalidCursor

log = logging.getLogger("rewards.console")

PAGE_SIZE = 50
MEMBER_ROWS = 20
"""Lots and ledger entries shown per account on a member's page (more on the account's)."""
UPLOAD_BYTES = 4 * 1024 * 1024
"""The largest bulk opt-out list the console takes (about 100,000 addresses)."""

NOTICES = {
    "signed-out": "You are signed out.",
    "reminders-on": "Reminders are on for this member; the change is recorded below.",
    "reminders-off": "Reminders are off for this member; the change is recorded below.",
    "unchanged": "Nothing changed: the preference was already so.",
}


@dataclass
class Console:
    """What the console's pages share, built once with the app."""

    settings: Settings
    pages: ConsolePages
    runner: ConsoleRunner
    builder: MessageBuilder
    static: dict[str, bytes]


class SignInRequired(Exception):
    """Raised by any console route without a valid session: the sign-in page answers."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class FormRefused(Exception):
    """A form without its CSRF token (or with another session's): nothing is done."""


async def get_console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


ConsoleDep = Annotated[Console, Depends(get_console)]


async def require_session(request: Request, settings: SettingsDep) -> auth.Session:
    try:
        return auth.read_session(settings, request.cookies.get(auth.SESSION_COOKIE), utcnow())
    except auth.NotSignedIn:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(target if request.method == "GET" else auth.COOKIE_PATH) from None


SignedIn = Annotated[auth.Session, Depends(require_session)]


async def checked_form(request: Request, session: SignedIn, settings: SettingsDep) -> FormData:
    """The posted form, once its CSRF token is the session's (else :class:`FormRefused`)."""
    try:
        form = await request.form(max_files=1, max_fields=20, max_part_size=UPLOAD_BYTES)
    except Exception as exc:  # a body that is not a form at all
        raise FormRefused(str(exc)) from exc
    given = form.get("csrf")
    if not auth.csrf_matches(settings, session, given if isinstance(given, str) else None):
        raise FormRefused("the CSRF token is missing or wrong")
    return form


CheckedForm = Annotated[FormData, Depends(checked_form)]

router = APIRouter(prefix="/console", include_in_schema=False)


def _context(
    request: Request, session: auth.Session, console: Console, **extra: Any
) -> dict[str, Any]:
    notice = request.query_params.get("notice")
    return {
        "operator": session.operator,
        "csrf": auth.csrf_token(console.settings, session),
        "path": request.url.path,
        "notice": NOTICES.get(notice or ""),
        **extra,
    }


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _date_or_none(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


# -- static assets and sign-in --------------------------------------------------------------


@router.get("/static/{name}")
async def static(name: str, console: ConsoleDep) -> Response:
    """The console's stylesheet and script, served by the service itself."""
    if name not in STATIC_FILES:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(
        console.static[name],
        media_type=STATIC_FILES[name],
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


def sign_in_page(
    console: Console,
    *,
    next_url: str,
    status_code: int = 401,
    error: str | None = None,
    notice: str | None = None,
) -> Response:
    """The sign-in form, with a fresh sign-in cookie for its CSRF token."""
    nonce = auth.new_sign_in_nonce()
    response = console.pages.render(
        "sign-in.html.j2",
        status_code,
        csrf=auth.sign_in_csrf(console.settings, nonce),
        next_url=auth.safe_next(next_url),
        error=error,
        notice=notice,
        enabled=console.settings.admin_token is not None,
    )
    response.set_cookie(
        auth.SIGN_IN_COOKIE,
        nonce,
        max_age=auth.SIGN_IN_SECONDS,
        path=auth.COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=auth.cookie_is_secure(console.settings),
    )
    return response


@router.get("/sign-in")
async def sign_in_form(
    request: Request,
    console: ConsoleDep,
    next_url: Annotated[str, Query(alias="next")] = "/console",
) -> Response:
    try:
        auth.read_session(console.settings, request.cookies.get(auth.SESSION_COOKIE), utcnow())
    except auth.NotSignedIn:
        notice = NOTICES.get(request.query_params.get("notice") or "")
        return sign_in_page(console, next_url=next_url, status_code=200, notice=notice)
    return _see_other(auth.safe_next(next_url))


@router.post("/sign-in")
async def sign_in(request: Request, console: ConsoleDep) -> Response:
    """Exchange the admin token for a session cookie; the client token is refused."""
    settings = console.settings
    try:
        form = await request.form(max_files=0, max_fields=10)
    except Exception:
        return sign_in_page(console, next_url="/console", status_code=400, error="Not a form.")
    next_url = auth.safe_next(_text(form, "next"))
    if not auth.sign_in_csrf_matches(
        settings, request.cookies.get(auth.SIGN_IN_COOKIE), _text(form, "csrf")
    ):
        return sign_in_page(
            console,
            next_url=next_url,
            status_code=403,
            error="This form expired or did not come from this page. Please try again.",
        )
    if not auth.is_admin_token(settings, _text(form, "token")):
        log.warning(
            "[console] sign-in refused from %s", request.client.host if request.client else "?"
        )
        return sign_in_page(
            console,
            next_url=next_url,
            status_code=401,
            error="That is not the admin token (REWARDS_ADMIN_TOKEN). Nothing was signed in.",
        )
    operator = auth.operator_name(_text(form, "name"))
    response = _see_other(next_url)
    response.set_cookie(
        auth.SESSION_COOKIE,
        auth.new_session(settings, operator, utcnow()),
        max_age=auth.SESSION_SECONDS,
        path=auth.COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=auth.cookie_is_secure(settings),
    )
    response.delete_cookie(auth.SIGN_IN_COOKIE, path=auth.COOKIE_PATH)
    log.info("[console] %s signed in", operator)
    return response


@router.post("/sign-out")
async def sign_out(session: SignedIn, form: CheckedForm, console: ConsoleDep) -> Response:
    response = _see_other("/console/sign-in?notice=signed-out")
    response.delete_cookie(
        auth.SESSION_COOKIE,
        path=auth.COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=auth.cookie_is_secure(console.settings),
    )
    log.info("[console] %s signed out", session.operator)
    return response


# -- overview -------------------------------------------------------------------------------


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
        **_context(
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


# -- runs -----------------------------------------------------------------------------------


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
        **_context(
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
    day = _date_or_none(_text(form, "as_of"))
    dry_run = _text(form, "mode") == "dry-run"
    if _text(form, "as_of") and day is None:
        return _see_other("/console/runs?error=as-of")
    if day is not None and day > LAST_DAY:
        return _see_other("/console/runs?error=as-of")
    task = console.runner.start(day=day, dry_run=dry_run, operator=session.operator)
    return _see_other(f"/console/tasks/{task.id}")


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
            return _see_other(f"/console/runs/{run_id}")
    return console.pages.render(
        "task.html.j2",
        404 if task is None else 200,
        **_context(
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
            "not-found.html.j2", 404, **_context(request, session, console, what="run", id=run_id)
        )
    duration = None
    if run.finishedAt is not None:
        duration = (run.finishedAt - run.startedAt).total_seconds()
    return console.pages.render(
        "run.html.j2",
        **_context(
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


# -- reminders ------------------------------------------------------------------------------


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
        created_from=_date_or_none(params.get("from")),
        created_to=_date_or_none(params.get("to")),
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
        **_context(
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
            **_context(request, session, console, what="reminder", id=log_id),
        )
    row = detail.row
    preview = render_logged(
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
    attempts_left = console.settings.notify_max_attempts - len(detail.key_rows)
    live = [r for r in detail.key_rows if r.status != Status.FAILED.value]
    return console.pages.render(
        "reminder.html.j2",
        status_code,
        **_context(
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


@router.get("/reminders/{log_id}/email")
def reminder_email(log_id: str, session: SignedIn, console: ConsoleDep, conn: ReadConn) -> Response:
    """The email's HTML part by itself, for the preview frame: sandboxed, no script."""
    detail = queries.reminder_detail(conn, log_id)
    if detail is None:
        return Response("no such reminder", status_code=404, media_type="text/plain")
    row = detail.row
    preview = render_logged(
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
    return HTMLResponse(preview.html, headers=dict(PREVIEW_HEADERS))


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
        return _see_other(f"/console/reminders/{log_id}?refused={quote(str(exc))}")
    log.info("[console] %s retried reminder %s: %s", session.operator, log_id, retried.status)
    return _see_other(f"/console/reminders/{retried.log_id}")


# -- members --------------------------------------------------------------------------------


@router.get("/members")
def find_members(
    request: Request, session: SignedIn, console: ConsoleDep, conn: ReadConn, q: str = ""
) -> Response:
    """Find a member by id, or by the start of their email or name."""
    found = queries.find_members(conn, q) if q.strip() else []
    if len(found) == 1 and found[0].id == q.strip():
        return _see_other(f"/console/members/{found[0].id}")
    return console.pages.render(
        "members.html.j2", **_context(request, session, console, q=q, found=found)
    )


@router.get("/members/{member_id}")
def member_page(
    member_id: str, request: Request, session: SignedIn, console: ConsoleDep, conn: ReadConn
) -> HTMLResponse:
    """A member: accounts, lots, ledger with what each debit used, reminders, preference."""
    try:
        member = members.get_member(conn, member_id)
    except UnknownUser:
        return console.pages.render(
            "not-found.html.j2",
            404,
            **_context(request, session, console, what="member", id=member_id),
        )
    now = utcnow()
    settings = console.settings
    account_views = []
    for account in queries.accounts_of(conn, member_id):
        held = ledger.holdings(
            conn, [account.id], as_of=now, until=now + timedelta(days=90), zone=settings.zone
        )
        lots, more_lots = history.account_lots(
            conn, account.id, now, limit=MEMBER_ROWS, cursor=None
        )
        entries, more_entries = history.account_entries(
            conn, account.id, now, limit=MEMBER_ROWS, cursor=None
        )
        account_views.append(
            {
                "id": account.id,
                "created_at": account.createdAt,
                "available": held.available,
                "expiring": held.expiring,
                "lots": lots,
                "more_lots": more_lots is not None,
                "entries": entries,
                "more_entries": more_entries is not None,
            }
        )
    sent, _ = queries.member_reminders(conn, member_id, limit=PAGE_SIZE)
    return console.pages.render(
        "member.html.j2",
        **_context(
            request,
            session,
            console,
            member=member,
            accounts=account_views,
            total=sum(a["available"] for a in account_views),
            reminders=sent,
            changes=members.preference_history(conn, member_id),
            now=now,
        ),
    )


@router.post("/members/{member_id}/reminders")
def set_member_reminders(
    member_id: str, session: SignedIn, form: CheckedForm, conn: Tx
) -> Response:
    """Turn a member's reminders on or off; recorded as this operator's change."""
    enabled = _text(form, "enabled") == "on"
    origin = members.ChangeOrigin(members.ChangeVia.CONSOLE, session.operator)
    try:
        changed = members.set_reminders(conn, member_id, enabled, origin=origin, as_of=utcnow())
    except UnknownUser:
        return _see_other(f"/console/members/{member_id}")
    notice = ("reminders-on" if enabled else "reminders-off") if changed else "unchanged"
    return _see_other(f"/console/members/{member_id}?notice={notice}")


@router.get("/accounts/{account_id}")
def account_page(
    account_id: str,
    request: Request,
    session: SignedIn,
    console: ConsoleDep,
    conn: ReadConn,
    lots: str | None = None,
    entries: str | None = None,
) -> HTMLResponse:
    """One account's lots and ledger entries, a page of each, newest first."""
    now = utcnow()
    try:
        account = members.get_account(conn, account_id)
        lot_page, next_lots = history.account_lots(
            conn, account_id, now, limit=PAGE_SIZE, cursor=lots
        )
        entry_page, next_entries = history.account_entries(
            conn, account_id, now, limit=PAGE_SIZE, cursor=entries
        )
    except (UnknownAccount, InvalidCursor):
        return console.pages.render(
            "not-found.html.j2",
            404,
            **_context(request, session, console, what="account", id=account_id),
        )
    return console.pages.render(
        "account.html.j2",
        **_context(
            request,
            session,
            console,
            account=account,
            lots=lot_page,
            entries=entry_page,
            next_lots=next_lots,
            next_entries=next_entries,
            now=now,
        ),
    )


# -- bulk opt-out ---------------------------------------------------------------------------


@router.get("/opt-out")
def opt_out_form(request: Request, session: SignedIn, console: ConsoleDep) -> HTMLResponse:
    return console.pages.render(
        "opt-out.html.j2", **_context(request, session, console, error=None, text="")
    )


@router.post("/opt-out")
async def opt_out(
    request: Request,
    session: SignedIn,
    form: CheckedForm,
    console: ConsoleDep,
    engine: EngineDep,
) -> Response:
    """Step 1 (``step=preview``): what the list would change. Step 2 (``step=apply``): do it."""
    upload = form.get("file")
    source = ""
    text = _text(form, "text")
    if isinstance(upload, UploadFile) and upload.filename:
        source = upload.filename
        raw = await upload.read(UPLOAD_BYTES + 1)
        if len(raw) > UPLOAD_BYTES:
            return _opt_out_error(request, session, console, "The file is larger than 4 MiB.")
        text = raw.decode("utf-8", "replace")
    source = source or _text(form, "source") or "pasted list"
    try:
        lines = read_member_list(text)
    except InvalidMemberList as exc:
        return _opt_out_error(request, session, console, str(exc))
    if not lines:
        return _opt_out_error(request, session, console, "The list names no member.")
    step = _text(form, "step")

    def work() -> tuple[Any, list[str] | None]:
        with engine.begin() as conn:
            if step == "apply":
                origin = members.ChangeOrigin(members.ChangeVia.BULK_CONSOLE, session.operator)
                plan, changed = apply_opt_out(
                    conn, lines, origin=origin, as_of=utcnow(), source=source
                )
                return plan, changed
            return plan_opt_out(conn, lines), None

    plan, changed = await run_in_threadpool(work)
    if changed is not None:
        log.info(
            "[console] %s opted out %d members from %s", session.operator, len(changed), source
        )
    return console.pages.render(
        "opt-out-done.html.j2" if changed is not None else "opt-out-preview.html.j2",
        **_context(
            request,
            session,
            console,
            plan=plan,
            changed=set(changed or ()),
            text=text,
            source=source,
        ),
    )


def _opt_out_error(
    request: Request, session: auth.Session, console: Console, error: str
) -> HTMLResponse:
    return console.pages.render(
        "opt-out.html.j2", 400, **_context(request, session, console, error=error, text="")
    )


# -- installation ---------------------------------------------------------------------------


def install(app: FastAPI, settings: Settings, engine: Engine) -> Console:
    """Add the console to ``app``: its state, routes and the pages for the refusals."""
    console = Console(
        settings=settings,
        pages=ConsolePages(settings.zone, sender_name(settings.email_from)),
        runner=ConsoleRunner(engine, settings),
        builder=MessageBuilder(settings),
        static=load_static(),
    )
    app.state.console = console

    @app.exception_handler(SignInRequired)
    async def sign_in_required(request: Request, exc: SignInRequired) -> Response:
        return sign_in_page(console, next_url=exc.next_url)

    @app.exception_handler(FormRefused)
    async def form_refused(request: Request, exc: FormRefused) -> Response:
        return console.pages.render(
            "refused.html.j2",
            403,
            message="This form expired or did not come from the console. Nothing was changed.",
        )

    app.include_router(router)
    return console
