"""Static assets, signing in and out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from rewards.clock import utcnow
from rewards.console import auth
from rewards.console.pages import STATIC_FILES
from rewards.console.web import (
    NOTICES,
    CheckedForm,
    Console,
    ConsoleDep,
    SignedIn,
    form_text,
    log,
    see_other,
)

router = APIRouter(prefix="/console", include_in_schema=False)


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
    return see_other(auth.safe_next(next_url))


@router.post("/sign-in")
async def sign_in(request: Request, console: ConsoleDep) -> Response:
    """Exchange the admin token for a session cookie; the client token is refused."""
    settings = console.settings
    try:
        form = await request.form(max_files=0, max_fields=10)
    except Exception:
        return sign_in_page(console, next_url="/console", status_code=400, error="Not a form.")
    next_url = auth.safe_next(form_text(form, "next"))
    if not auth.sign_in_csrf_matches(
        settings, request.cookies.get(auth.SIGN_IN_COOKIE), form_text(form, "csrf")
    ):
        return sign_in_page(
            console,
            next_url=next_url,
            status_code=403,
            error="This form expired or did not come from this page. Please try again.",
        )
    if not auth.is_admin_token(settings, form_text(form, "token")):
        log.warning(
            "[console] sign-in refused from %s", request.client.host if request.client else "?"
        )
        return sign_in_page(
            console,
            next_url=next_url,
            status_code=401,
            error="That is not the admin token (REWARDS_ADMIN_TOKEN). Nothing was signed in.",
        )
    operator = auth.operator_name(form_text(form, "name"))
    response = see_other(next_url)
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
    response = see_other("/console/sign-in?notice=signed-out")
    response.delete_cookie(
        auth.SESSION_COOKIE,
        path=auth.COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=auth.cookie_is_secure(console.settings),
    )
    log.info("[console] %s signed out", session.operator)
    return response
