"""What the console's pages share: its state, the session and CSRF checks, small helpers.

Every page needs a session (:mod:`rewards.console.auth`): without one, any
console URL answers the sign-in page (401) and nothing else, and every form is
checked for its CSRF token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse
from starlette.datastructures import FormData

from rewards.api.deps import SettingsDep
from rewards.clock import utcnow
from rewards.config import Settings
from rewards.console import auth
from rewards.console.pages import ConsolePages
from rewards.console.runner import ConsoleRunner
from rewards.notifications.messages import MessageBuilder

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


def page_context(
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


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def form_text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def date_or_none(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None
