"""Members: finding them; a member's page (accounts, lots, history, reminders, preference);
an account's page."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from rewards.api.deps import ReadConn, Tx
from rewards.clock import utcnow
from rewards.console import queries
from rewards.console.web import (
    MEMBER_ROWS,
    PAGE_SIZE,
    CheckedForm,
    ConsoleDep,
    SignedIn,
    form_text,
    page_context,
    see_other,
)
from rewards.ledger import history
from rewards.ledger import service as ledger
from rewards.ledger.errors import UnknownAccount, UnknownUser
from rewards.members import service as members
from rewards.paging import InvalidCursor

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/members")
def find_members(
    request: Request, session: SignedIn, console: ConsoleDep, conn: ReadConn, q: str = ""
) -> Response:
    """Find a member by id, or by the start of their email or name."""
    found = queries.find_members(conn, q) if q.strip() else []
    if len(found) == 1 and found[0].id == q.strip():
        return see_other(f"/console/members/{found[0].id}")
    return console.pages.render(
        "members.html.j2", **page_context(request, session, console, q=q, found=found)
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
            **page_context(request, session, console, what="member", id=member_id),
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
        **page_context(
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
    enabled = form_text(form, "enabled") == "on"
    origin = members.ChangeOrigin(members.ChangeVia.CONSOLE, session.operator)
    try:
        changed = members.set_reminders(conn, member_id, enabled, origin=origin, as_of=utcnow())
    except UnknownUser:
        return see_other(f"/console/members/{member_id}")
    notice = ("reminders-on" if enabled else "reminders-off") if changed else "unchanged"
    return see_other(f"/console/members/{member_id}?notice={notice}")


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
            **page_context(request, session, console, what="account", id=account_id),
        )
    return console.pages.render(
        "account.html.j2",
        **page_context(
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
