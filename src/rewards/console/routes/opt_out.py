"""Bulk opt-out: upload a list, see what will change, confirm."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import UploadFile

from rewards.api.deps import EngineDep
from rewards.clock import utcnow
from rewards.console import auth
from rewards.console.web import (
    UPLOAD_BYTES,
    CheckedForm,
    Console,
    ConsoleDep,
    SignedIn,
    form_text,
    log,
    page_context,
)
from rewards.members import service as members
from rewards.members.bulk import InvalidMemberList, apply_opt_out, plan_opt_out, read_member_list

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/opt-out")
def opt_out_form(request: Request, session: SignedIn, console: ConsoleDep) -> HTMLResponse:
    return console.pages.render(
        "opt-out.html.j2", **page_context(request, session, console, error=None, text="")
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
    text = form_text(form, "text")
    if isinstance(upload, UploadFile) and upload.filename:
        source = upload.filename
        raw = await upload.read(UPLOAD_BYTES + 1)
        if len(raw) > UPLOAD_BYTES:
            return _opt_out_error(request, session, console, "The file is larger than 4 MiB.")
        text = raw.decode("utf-8", "replace")
    source = source or form_text(form, "source") or "pasted list"
    try:
        lines = read_member_list(text)
    except InvalidMemberList as exc:
        return _opt_out_error(request, session, console, str(exc))
    if not lines:
        return _opt_out_error(request, session, console, "The list names no member.")
    step = form_text(form, "step")

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
        **page_context(
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
        "opt-out.html.j2", 400, **page_context(request, session, console, error=error, text="")
    )
