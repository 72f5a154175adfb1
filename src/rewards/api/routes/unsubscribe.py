"""One-click unsubscribe (RFC 8058), and turning reminders back on.

The signed link is the credential: the unsubscribe link of an email, or the
resubscribe button a member page signs when it is shown. Each change is recorded
as the member's own (:class:`~rewards.members.service.ChangeOrigin`).
"""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from rewards.api.deps import EngineDep, PagesDep, SettingsDep
from rewards.api.pages import (
    RESUBSCRIBED,
    UNSUBSCRIBE_CONFIRM,
    UNSUBSCRIBED,
    LinkToken,
    page_responses,
)
from rewards.api.schemas import problem_responses
from rewards.clock import utcnow
from rewards.config import Settings
from rewards.ledger.errors import UnknownUser
from rewards.members.links import (
    InvalidLinkToken,
    LinkPurpose,
    link_path,
    make_link_token,
    read_link_token,
)
from rewards.members.service import MEMBER, ChangeOrigin, ChangeVia, get_member, set_reminders

router = APIRouter(
    tags=["unsubscribe"],
    responses=problem_responses(413, 422),
)

RESPONSES = page_responses(
    "The token is forged, altered, expired or not an unsubscribe link; nothing changed"
)
INVALID = "This unsubscribe link is invalid or has expired. Nothing was changed."
ADVICE = "Use the link from your latest reminder email, or change your preferences in your account."


RESUBSCRIBE_INVALID = "This link is invalid or has expired. Nothing was changed."
RESUBSCRIBE_ADVICE = (
    "Open your balance from the link in your latest reminder email and turn reminders on there."
)


def _member_id(
    settings: Settings, token: str, purpose: LinkPurpose = LinkPurpose.UNSUBSCRIBE
) -> str:
    secret = settings.secret_key.get_secret_value()
    return read_link_token(secret, purpose, token, now=utcnow())


def _fresh_link(settings: Settings, purpose: LinkPurpose, member_id: str) -> str:
    """A link for ``purpose`` signed now, relative to the page that shows it."""
    secret = settings.secret_key.get_secret_value()
    return link_path(purpose, make_link_token(secret, purpose, member_id, now=utcnow()))


@router.get("/unsubscribe", response_model=None, response_class=HTMLResponse, responses=RESPONSES)
def confirm_page(
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    pages: PagesDep,
    token: LinkToken,
) -> Response:
    """A small page asking to confirm; nothing changes until the button is pressed."""
    try:
        member_id = _member_id(settings, token)
        with engine.connect() as conn:
            get_member(conn, member_id)
    except (InvalidLinkToken, UnknownUser):
        return pages.refused(request, INVALID, ADVICE)
    return pages.render(UNSUBSCRIBE_CONFIRM, action=link_path(LinkPurpose.UNSUBSCRIBE, token))


@router.post("/unsubscribe", response_model=None, response_class=HTMLResponse, responses=RESPONSES)
async def unsubscribe(
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    pages: PagesDep,
    token: LinkToken,
) -> Response:
    """Turn reminders off for the member the token names (RFC 8058 one-click or the button)."""
    body = parse_qs((await request.body()).decode("utf-8", "replace"))
    if body and body.get("List-Unsubscribe") != ["One-Click"]:
        return pages.refused(
            request, "This is not a one-click unsubscribe request. Nothing was changed.", ADVICE
        )

    origin = ChangeOrigin(ChangeVia.UNSUBSCRIBE_LINK, MEMBER)

    def opt_out_member() -> str:
        member_id = _member_id(settings, token)
        with engine.begin() as conn:
            set_reminders(conn, member_id, False, origin=origin, as_of=utcnow())
        return member_id

    try:
        # The database work runs on a worker thread, so waiting on a row lock never
        # holds up the event loop (and with it every other request).
        member_id = await run_in_threadpool(opt_out_member)
    except (InvalidLinkToken, UnknownUser):
        return pages.refused(request, INVALID, ADVICE)
    return pages.render(
        UNSUBSCRIBED, resubscribe_url=_fresh_link(settings, LinkPurpose.RESUBSCRIBE, member_id)
    )


@router.post(
    "/resubscribe",
    response_model=None,
    response_class=HTMLResponse,
    responses=page_responses(
        "The token is forged, altered, expired or not a resubscribe link; nothing changed"
    ),
)
def resubscribe(
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    pages: PagesDep,
    token: LinkToken,
) -> Response:
    """Turn reminders back on for the member the token names: the button of a member page."""
    origin = ChangeOrigin(ChangeVia.MEMBER_PAGE, MEMBER, "turned reminders back on")
    try:
        member_id = _member_id(settings, token, LinkPurpose.RESUBSCRIBE)
        with engine.begin() as conn:
            set_reminders(conn, member_id, True, origin=origin, as_of=utcnow())
    except (InvalidLinkToken, UnknownUser):
        return pages.refused(request, RESUBSCRIBE_INVALID, RESUBSCRIBE_ADVICE)
    return pages.render(
        RESUBSCRIBED, balance_url=_fresh_link(settings, LinkPurpose.BALANCE, member_id)
    )
