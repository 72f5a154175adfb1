"""FastAPI dependencies, declared once as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from sqlalchemy import Connection, Engine

from rewards.api.pages import Pages
from rewards.config import Settings

# The plain look-ups below are ``async``: FastAPI runs a sync dependency on a worker
# thread, and a hop to a thread and back for reading an attribute costs more than the
# request's own work when the server is busy.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_pages(request: Request) -> Pages:
    pages: Pages = request.app.state.pages
    return pages


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
PagesDep = Annotated[Pages, Depends(get_pages)]


def transaction(engine: EngineDep) -> Iterator[Connection]:
    """One transaction per request: everything it wrote commits, or nothing does."""
    with engine.begin() as conn:
        yield conn


def read_only(engine: EngineDep) -> Iterator[Connection]:
    """A connection for reads. It commits at the end all the same: a read first applies
    what other applications changed on the accounts it reads, and that is kept."""
    with engine.connect() as conn:
        yield conn
        conn.commit()


# scope="function": commit (or roll back) when the endpoint returns, before the response is
# sent, so a client never sees 201 for a write that did not commit.
# max_concurrency: requests beyond the connection pool wait on the event loop, not in a
# worker thread; otherwise a burst larger than the thread pool could leave the requests
# holding connections without a thread to finish on. 8 + 8 is the pool's 16 kept open
# (rewards.db.create_db_engine); healthz and metrics borrow from its overflow.
DB_CONCURRENCY = 8
Tx = Annotated[Connection, Depends(transaction, scope="function", max_concurrency=DB_CONCURRENCY)]
ReadConn = Annotated[
    Connection, Depends(read_only, scope="function", max_concurrency=DB_CONCURRENCY)
]

_bearer = HTTPBearer(auto_error=False, description="REWARDS_API_TOKEN or REWARDS_ADMIN_TOKEN")


def _matches(given: str, expected: SecretStr | None) -> bool:
    return expected is not None and hmac.compare_digest(
        given.encode(), expected.get_secret_value().encode()
    )


def _token_kind(
    settings: Settings, credentials: HTTPAuthorizationCredentials | None
) -> Literal["admin", "client"]:
    """Which token the request carries; 401 for none or an unknown one."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise HTTPException(401, "a bearer token is required")
    if _matches(credentials.credentials, settings.admin_token):
        return "admin"
    if _matches(credentials.credentials, settings.api_token):
        return "client"
    raise HTTPException(401, "invalid token")


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def require_client(settings: SettingsDep, credentials: Credentials) -> None:
    """Client applications: the API token (operators' admin token works too)."""
    _token_kind(settings, credentials)


async def require_admin(settings: SettingsDep, credentials: Credentials) -> None:
    """Operator endpoints: the admin token only; a client token is the wrong kind (403)."""
    if _token_kind(settings, credentials) != "admin":
        raise HTTPException(403, "this endpoint needs the admin token")


Client = Depends(require_client)
Admin = Depends(require_admin)
