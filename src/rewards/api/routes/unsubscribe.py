"""One-click unsubscribe (RFC 8058). The signed token in the link is the credential."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from rewards.api.deps import EngineDep, SettingsDep
from rewards.api.errors import problem
from rewards.api.schemas import problem_responses
from rewards.ledger.errors import UnknownUser
from rewards.members.service import get_member, opt_out
from rewards.notifications.unsubscribe import InvalidUnsubscribeToken, read_token

router = APIRouter(
    tags=["unsubscribe"],
    responses=problem_responses(413, 422),
)

Token = Query(min_length=1, max_length=1000, description="The signed token from the email.")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title></head>
<body style="font-family:Arial,Helvetica,sans-serif;max-width:32rem;margin:3rem auto;
padding:0 1rem">
<h1 style="font-size:1.4rem">{title}</h1>
{body}
</body></html>"""


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(title=escape(title), body=body), status_code=status)


def _refused(request: Request, reason: str) -> Response:
    if "text/html" in request.headers.get("accept", ""):
        return page(
            "This link does not work",
            f"<p>{escape(reason)} Nothing was changed. Use the link from your latest"
            " reminder email, or change your preferences in your account.</p>",
            status=400,
        )
    return problem(400, f"{reason} Nothing was changed.")


def _member_id(settings: SettingsDep, token: str) -> str:
    return read_token(settings.secret_key.get_secret_value(), token)


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/html": {}}, "description": "A page for the member"},
    400: {
        "content": {"text/html": {}, "application/problem+json": {}},
        "description": "The token is forged, altered or expired; nothing changed",
    },
}


@router.get("/unsubscribe", response_model=None, response_class=HTMLResponse, responses=RESPONSES)
def confirm_page(
    request: Request, settings: SettingsDep, engine: EngineDep, token: str = Token
) -> Response:
    """A small page asking to confirm; nothing changes until the button is pressed."""
    try:
        member_id = _member_id(settings, token)
        with engine.connect() as conn:
            get_member(conn, member_id)
    except (InvalidUnsubscribeToken, UnknownUser):
        return _refused(request, "This unsubscribe link is invalid or has expired.")
    return page(
        "Stop expiry reminders?",
        "<p>You will no longer get emails telling you that your points are about to expire."
        " Your points themselves are not affected.</p>"
        f'<form method="post" action="/unsubscribe?token={escape(token)}">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit" style="padding:.6rem 1.2rem">Unsubscribe</button></form>',
    )


@router.post("/unsubscribe", response_model=None, response_class=HTMLResponse, responses=RESPONSES)
async def unsubscribe(
    request: Request, settings: SettingsDep, engine: EngineDep, token: str = Token
) -> Response:
    """Turn reminders off for the member the token names (RFC 8058 one-click or the button)."""
    body = parse_qs((await request.body()).decode("utf-8", "replace"))
    if body and body.get("List-Unsubscribe") != ["One-Click"]:
        return _refused(request, "This is not a one-click unsubscribe request.")

    def opt_out_member() -> None:
        with engine.begin() as conn:
            opt_out(conn, _member_id(settings, token))

    try:
        # The database work runs on a worker thread, so waiting on a row lock never
        # holds up the event loop (and with it every other request).
        await run_in_threadpool(opt_out_member)
    except (InvalidUnsubscribeToken, UnknownUser):
        return _refused(request, "This unsubscribe link is invalid or has expired.")
    return page(
        "You are unsubscribed",
        "<p>You will no longer get expiry reminder emails. Your points are not affected.</p>",
    )
