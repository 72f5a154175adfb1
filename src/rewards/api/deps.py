"""FastAPI dependencies, declared once as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection, Engine

from rewards.config import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]


def transaction(engine: EngineDep) -> Iterator[Connection]:
    """One transaction per request: everything it wrote commits, or nothing does."""
    with engine.begin() as conn:
        yield conn


def read_only(engine: EngineDep) -> Iterator[Connection]:
    with engine.connect() as conn:
        yield conn


Tx = Annotated[Connection, Depends(transaction)]
ReadConn = Annotated[Connection, Depends(read_only)]

_bearer = HTTPBearer(auto_error=False, description="REWARDS_API_TOKEN or REWARDS_ADMIN_TOKEN")


def _matches(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise HTTPException(401, "a bearer token is required")
    return credentials.credentials


def require_client(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Client applications: the API token (operators' admin token works too)."""
    token = _token(credentials)
    api = settings.api_token.get_secret_value() if settings.api_token else None
    admin = settings.admin_token.get_secret_value() if settings.admin_token else None
    if not (_matches(token, api) or _matches(token, admin)):
        raise HTTPException(401, "invalid token")


def require_admin(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Operator endpoints: the admin token only; a client token is the wrong kind (403)."""
    token = _token(credentials)
    api = settings.api_token.get_secret_value() if settings.api_token else None
    admin = settings.admin_token.get_secret_value() if settings.admin_token else None
    if _matches(token, admin):
        return
    if _matches(token, api):
        raise HTTPException(403, "this endpoint needs the admin token")
    raise HTTPException(401, "invalid token")


Client = Depends(require_client)
Admin = Depends(require_admin)
