"""The app factory: ``create_app(settings)`` builds everything; nothing connects at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine

from rewards import __version__
from rewards.api import errors
from rewards.api.limits import BodySizeLimit
from rewards.api.routes import accounts, admin, health, members, unsubscribe
from rewards.config import Settings
from rewards.db import create_db_engine
from rewards.metrics import build_registry

log = logging.getLogger("rewards.api")

DESCRIPTION = """
Members earn and spend points; points expire; members are reminded by email
before they lose them.

* Client endpoints (`/users`, `/accounts`) take `Authorization: Bearer <REWARDS_API_TOKEN>`.
* Operator endpoints (`/admin`) take `Authorization: Bearer <REWARDS_ADMIN_TOKEN>`.
* `/unsubscribe` needs no header: the signed token in the link is the credential.

Timestamps are ISO 8601; one without a time zone is read as UTC. Errors are
`application/problem+json` (RFC 9457).
"""


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """Build the API for ``settings``; the engine is created here unless one is given."""
    owns_engine = engine is None
    db = engine or create_db_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log.info("[NotificationsModule] registered successfully")
        yield
        if owns_engine:
            db.dispose()

    app = FastAPI(
        title="rewards",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = db
    app.state.metrics = build_registry(db)
    errors.install(app)
    app.add_middleware(BodySizeLimit)
    for module in (members, accounts, admin, unsubscribe, health):
        app.include_router(module.router)
    return app
