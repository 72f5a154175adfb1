"""The operator console: server-rendered pages under ``/console``.

Pages read through bounded, indexed queries (:mod:`rewards.console.queries`);
what they change goes through the same services as the API and the CLI
(preferences recorded with the operator's name, retries through the outbox, runs
through the job). The pages are in :mod:`rewards.console.routes`, one module per
area; what they share is in :mod:`rewards.console.web`.

``install(app)`` adds the routes, the console's state and its error pages.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from sqlalchemy import Engine

from rewards.config import Settings
from rewards.console.pages import ConsolePages, load_static
from rewards.console.routes import members, opt_out, overview, reminders, runs, sign_in
from rewards.console.routes.sign_in import sign_in_page
from rewards.console.runner import ConsoleRunner
from rewards.console.web import Console, FormRefused, SignInRequired
from rewards.notifications.messages import MessageBuilder, sender_name


def install(app: FastAPI, settings: Settings, engine: Engine) -> Console:
    """Add the console to ``app``: its state, routes and the pages for the refusals."""
    console = Console(
        settings=settings,
        pages=ConsolePages(settings.zone, sender_name(settings.email_from)),
        runner=ConsoleRunner(engine, settings),
        builder=MessageBuilder(settings),
        static=load_static(),
    )
    app.state.console = console

    @app.exception_handler(SignInRequired)
    async def sign_in_required(request: Request, exc: SignInRequired) -> Response:
        return sign_in_page(console, next_url=exc.next_url)

    @app.exception_handler(FormRefused)
    async def form_refused(request: Request, exc: FormRefused) -> Response:
        return console.pages.render(
            "refused.html.j2",
            403,
            message="This form expired or did not come from the console. Nothing was changed.",
        )

    for area in (sign_in, overview, runs, reminders, members, opt_out):
        app.include_router(area.router)
    return console
