"""One-click unsubscribe (RFC 8058). The signed unsubscribe link is the credential."""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from rewards.api.deps import EngineDep, PagesDep, SettingsDep
from rewards.api.pages import UNSUBSCRIBE_CONFIRM, UNSUBSCRIBED, LinkToken, page_responses
from rewards.api.schemas import problem_responses
from rewards.clock import utcnow
from rewards.config import Settings
from rewards.ledger.errors import UnknownUser
from rewards.members.links import InvalidLinkToken, LinkPurpose, link_path, read_link_token
from rewards.members.service import get_member, opt_out

router = APIRouter(
    tags=["unsubscribe"],
    responses=problem_responses(413, 422),
)

RESPONSES = page_responses(
    "The token is forged, altered, expired or not an unsubscribe link; nothing changed"
)
INVALID = "This unsubscribe link is invalid or has expired. Nothing was changed."
ADVICE = "Use the link from your latest reminder email, or change your preferences in your account."


def _member_id(settings: Settings, token: str) -> str:
    secret = settings.secret_key.get_secret_value()
    return read_link_token(secret, LinkPurpose.UNSUBSCRIBE, token, now=utcnow())


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

    def opt_out_member() -> None:
        with engine.begin() as conn:
            opt_out(conn, _member_id(settings, token))

    try:
        # The database work runs on a worker thread, so waiting on a row lock never
        # holds up the event loop (and with it every other request).
        await run_in_threadpool(opt_out_member)
    except (InvalidLinkToken, UnknownUser):
        return pages.refused(request, INVALID, ADVICE)
    return pages.render(UNSUBSCRIBED)
