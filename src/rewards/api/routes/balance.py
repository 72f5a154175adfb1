"""The member's own balance page: the "See your balance" link in every reminder email.

No bearer token: the signed balance link is the credential, and it opens this
page only (:class:`~rewards.members.links.LinkPurpose`). The page shows what the
member can spend over all their accounts, what expires on which date in the
coming :data:`WINDOW_DAYS` (calendar dates in the programme's time zone), and how
to stop the reminders, or to turn them back on.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from rewards.api.deps import PagesDep, ReadConn, SettingsDep
from rewards.api.pages import BALANCE, LinkToken, page_responses
from rewards.api.schemas import problem_responses
from rewards.clock import days_between, local_date, local_midnight_utc, utcnow
from rewards.ledger import service as ledger
from rewards.ledger.errors import UnknownUser
from rewards.members import service as members
from rewards.members.links import (
    InvalidLinkToken,
    LinkPurpose,
    link_path,
    make_link_token,
    read_link_token,
)
from rewards.notifications.messages import format_date, format_points, when_phrase

router = APIRouter(tags=["member pages"], responses=problem_responses(413, 422))

WINDOW_DAYS = 90
"""The page lists expirations from today through this many calendar days ahead."""

INVALID = "This balance link is invalid or has expired."
ADVICE = "Use the link in your latest reminder email: each one has a fresh link to your balance."


@router.get(
    "/balance",
    response_model=None,
    response_class=HTMLResponse,
    responses=page_responses("The token is forged, altered, expired or not a balance link"),
)
def balance_page(
    request: Request, settings: SettingsDep, pages: PagesDep, conn: ReadConn, token: LinkToken
) -> Response:
    """The member's available points, what expires when, and the way to stop the reminders."""
    now = utcnow()
    secret = settings.secret_key.get_secret_value()
    try:
        member_id = read_link_token(secret, LinkPurpose.BALANCE, token, now=now)
        member = members.get_member(conn, member_id)
        account_ids = members.account_ids_of(conn, member_id)
    except (InvalidLinkToken, UnknownUser):
        return pages.refused(request, INVALID, ADVICE)

    zone = settings.zone
    today = local_date(now, zone)
    until = local_midnight_utc(today + timedelta(days=WINDOW_DAYS + 1), zone)
    held = ledger.holdings(conn, account_ids, as_of=now, until=until, zone=zone)
    available, expiring = held.available, held.expiring

    unsubscribe = resubscribe = None
    if member.email_notifications:
        fresh = make_link_token(secret, LinkPurpose.UNSUBSCRIBE, member_id, now=now)
        unsubscribe = link_path(LinkPurpose.UNSUBSCRIBE, fresh)
    else:
        fresh = make_link_token(secret, LinkPurpose.RESUBSCRIBE, member_id, now=now)
        resubscribe = link_path(LinkPurpose.RESUBSCRIBE, fresh)
    rows: list[dict[str, Any]] = [
        {
            "date_text": format_date(e.date),
            "when": when_phrase(days_between(today, e.date)),
            "points_phrase": format_points(e.points),
        }
        for e in expiring
    ]
    return pages.render(
        BALANCE,
        name=" ".join(member.name.split()) if member.name else None,
        available_phrase=format_points(available),
        today_text=format_date(today),
        window_days=WINDOW_DAYS,
        expiring=rows,
        unsubscribe_url=unsubscribe,
        resubscribe_url=resubscribe,
    )
