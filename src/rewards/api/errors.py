"""Every error leaves as ``application/problem+json`` (RFC 9457), never as a traceback.

Domain errors are raised in the domain and translated here, once.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from rewards.config import SettingsError
from rewards.ledger.errors import (
    DuplicateEntry,
    IdempotencyConflict,
    InsufficientPoints,
    InvalidEntry,
    LedgerError,
    UnknownAccount,
    UnknownUser,
)
from rewards.members.service import DuplicateId
from rewards.notifications.job import JobError
from rewards.notifications.locking import JobAlreadyRunning
from rewards.paging import InvalidCursor

log = logging.getLogger("rewards.api")

PROBLEM = "application/problem+json"

STATUS_OF: list[tuple[type[Exception], int]] = [
    (UnknownAccount, 404),
    (UnknownUser, 404),
    (InsufficientPoints, 409),
    (DuplicateEntry, 409),
    (DuplicateId, 409),
    (IdempotencyConflict, 422),
    (InvalidEntry, 422),
    (InvalidCursor, 400),
    (JobAlreadyRunning, 409),
    (JobError, 422),
    (LedgerError, 400),
    (SettingsError, 503),
]


def problem(status: int, detail: str | None, **extra: object) -> JSONResponse:
    body: dict[str, object] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _validation_detail(exc: RequestValidationError) -> tuple[str, list[dict[str, object]]]:
    errors: list[dict[str, object]] = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        errors.append({"field": where, "message": str(error.get("msg", "invalid"))})
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    return f"{first['field']}: {first['message']}", errors


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail) if exc.detail else None)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return problem(400, "the request body is not valid JSON")
        detail, errors = _validation_detail(exc)
        return problem(422, detail, errors=errors)

    for error_type, status in STATUS_OF:

        async def domain_error(_: Request, exc: Exception, status: int = status) -> JSONResponse:
            extra: dict[str, object] = {}
            if isinstance(exc, InsufficientPoints):
                extra = {"available": exc.available, "requested": exc.requested}
            return problem(status, str(exc), **extra)

        app.add_exception_handler(error_type, domain_error)

    @app.exception_handler(DataError)
    async def unstorable_value(_: Request, exc: DataError) -> JSONResponse:
        return problem(422, "a value cannot be stored (for example, it contains a NUL character)")

    @app.exception_handler(SQLAlchemyError)
    async def database_error(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        if isinstance(exc, OperationalError) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated
        ):
            log.error(
                "database unavailable during %s %s: %s", request.method, request.url.path, exc
            )
            return problem(503, "the database is unavailable; nothing was changed, try again")
        log.exception("database error during %s %s", request.method, request.url.path)
        return problem(500, "internal error; nothing was changed")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error during %s %s", request.method, request.url.path)
        return problem(500, "internal error")
