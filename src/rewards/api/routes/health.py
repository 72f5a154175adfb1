"""Health and Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from rewards.api.deps import EngineDep
from rewards.api.errors import problem
from rewards.api.schemas import Health
from rewards.db import DatabaseUnavailable, check_connection

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz(engine: EngineDep) -> Any:
    """200 when the database answers, 503 (problem+json) when it does not."""
    try:
        check_connection(engine)
    except (DatabaseUnavailable, SQLAlchemyError) as exc:
        log.warning("healthz: %s", exc)  # the operator's reason; the client gets none
        return problem(503, "the database does not answer")
    return Health(status="ok", database="ok")


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    body = await run_in_threadpool(generate_latest, request.app.state.metrics)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
