"""The app factory: ``create_app(settings)`` builds everything; nothing connects at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from apscheduler.schedulers.base import BaseScheduler
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy import Engine

from rewards import __version__
from rewards.api import errors
from rewards.api.pages import Pages
from rewards.api.routes import accounts, admin, balance, health, members, opt_out, unsubscribe
from rewards.api.schemas import Problem, problem_responses
from rewards.api.uploads import BodySizeLimits
from rewards.collector import freeze_startup_objects
from rewards.config import Settings, load_settings
from rewards.console import views as console
from rewards.db import create_db_engine
from rewards.logs import configure_logging
from rewards.metrics import build_registry
from rewards.notifications.messages import sender_name

log = logging.getLogger("rewards.api")

DESCRIPTION = """
Members earn and spend points; points expire; members are reminded by email
before they lose them.

* Client endpoints (`/users`, `/accounts`) take `Authorization: Bearer <REWARDS_API_TOKEN>`.
* Operator endpoints (`/admin`) take `Authorization: Bearer <REWARDS_ADMIN_TOKEN>`.
* Member pages (`/balance`, `/unsubscribe`, `/resubscribe`), opened from the links in the
  reminder emails, need no header: the signed token in the link is the credential.
* The operators' console is at `/console` (HTML; sign in with the admin token).

Timestamps are ISO 8601; one without a time zone is read as UTC. Errors are
`application/problem+json` (RFC 9457).
"""


def create_app(
    settings: Settings, engine: Engine | None = None, scheduler: BaseScheduler | None = None
) -> FastAPI:
    """Build the API for ``settings``; the engine is created here unless one is given.

    A ``scheduler`` is started with the app and shut down with it, after a run in
    progress has finished, so a graceful stop of the server never cuts a run short.
    """
    owns_engine = engine is None
    db = engine or create_db_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log.info("[NotificationsModule] registered successfully")
        if scheduler is not None:
            scheduler.start()
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.shutdown(wait=True)
            app.state.console.runner.close()
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
    app.state.pages = Pages(programme=sender_name(settings.email_from))
    errors.install(app)
    app.add_middleware(BodySizeLimits)
    for module in (members, accounts, admin, opt_out, balance, unsubscribe, health):
        app.include_router(module.router, responses=problem_responses(503))
    console.install(app, settings, db)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problem_details_in_schema(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def app_from_environment() -> FastAPI:
    """The app of one server process among several (``rewards serve --workers N``).

    Settings come from the environment, which the supervising process has completed
    (tokens generated for a loopback session included); the scheduler is not here.
    """
    configure_logging()
    app = create_app(load_settings())
    freeze_startup_objects()
    return app


def problem_details_in_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Document every error response as what the app sends: ``application/problem+json``."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(problem_schema.pop("$defs", {}))
    components["Problem"] = problem_schema
    problem_content = {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
    }
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if status[0] in "45":
                    if status == "422":
                        response["description"] = "Invalid values"
                    html = {
                        k: v for k, v in response.get("content", {}).items() if k == "text/html"
                    }
                    response["content"] = {**html, **problem_content}
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema
