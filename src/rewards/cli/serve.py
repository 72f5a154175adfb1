"""``rewards serve``: the HTTP API and, unless told otherwise, the job's scheduler."""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
from typing import Annotated

import typer
import uvicorn
from apscheduler.schedulers.base import BaseScheduler
from pydantic import SecretStr

from rewards.api.app import create_app
from rewards.cli.context import app_context, err, out
from rewards.collector import freeze_startup_objects
from rewards.config import Settings, require_own_secret_to_send
from rewards.db import check_connection
from rewards.migrate import require_current
from rewards.notifications.scheduler import build_scheduler


class UnsafeServe(Exception):
    """Serving as configured would expose the API without credentials."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def with_tokens(settings: Settings, host: str) -> tuple[Settings, dict[str, str]]:
    """Settings ready to serve on ``host``; tokens generated for a loopback-only session.

    Off loopback, missing tokens or the default secret key are refused.
    """
    missing = [n for n in ("api_token", "admin_token") if getattr(settings, n) is None]
    if not is_loopback(host):
        if missing:
            names = ", ".join(f"REWARDS_{n.upper()}" for n in missing)
            raise UnsafeServe(f"refusing to serve on {host} without {names}")
        if not settings.has_own_secret:
            raise UnsafeServe(f"refusing to serve on {host} with the default REWARDS_SECRET_KEY")
        return settings, {}
    generated = {n: secrets.token_urlsafe(24) for n in missing}
    update = {n: SecretStr(v) for n, v in generated.items()}
    return settings.model_copy(update=update), generated


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    scheduler: Annotated[
        bool, typer.Option("--scheduler/--no-scheduler", help="Also run the daily job.")
    ] = True,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Server processes (the scheduler runs once).")
    ] = 1,
) -> None:
    """Serve the HTTP API (docs at /docs) and run CheckExpiringPointsJob on its schedule."""
    context = app_context(ctx)
    require_own_secret_to_send(context.settings)
    check_connection(context.engine)
    require_current(context.engine)
    try:
        settings, generated = with_tokens(context.settings, host)
    except UnsafeServe as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from exc
    for name, value in generated.items():
        out.print(f"REWARDS_{name.upper()} for this session: {value}", highlight=False)
    sched = build_scheduler(context.engine, settings) if scheduler else None
    # uvicorn shuts down gracefully on SIGINT or SIGTERM and then raises the signal
    # again; uvicorn.run swallows SIGINT's KeyboardInterrupt, but SIGTERM's default
    # action would kill the process (exit -15). Treated like Ctrl-C, a stop exits 0.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if workers == 1:
            app = create_app(settings, context.engine, scheduler=sched)
            freeze_startup_objects()
            uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=True)
        else:
            _serve_processes(sched, generated, host=host, port=port, workers=workers)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve_processes(
    sched: BaseScheduler | None, generated: dict[str, str], *, host: str, port: int, workers: int
) -> None:
    """Several server processes, each building its app from the environment; the
    scheduler runs here, in the supervising process, once."""
    os.environ.update({f"REWARDS_{name.upper()}": value for name, value in generated.items()})
    if sched is not None:
        sched.start()
    try:
        uvicorn.run(
            "rewards.api.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            proxy_headers=True,
        )
    finally:
        if sched is not None:
            sched.shutdown(wait=True)
