"""Health and Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from rewards.api.deps import HEALTH_CONCURRENCY, EngineDep
from rewards.api.errors import problem
from rewards.api.schemas import Health
from rewards.db import DatabaseUnavailable, check_connection

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


def database_answers(engine: EngineDep) -> bool:
    """Whether the database answers a trivial query; why not goes to the operator's log."""
    try:
        check_connection(engine)
    except (DatabaseUnavailable, SQLAlchemyError) as exc:
        log.warning("healthz: %s", exc)  # the operator's reason; the client gets none
        return False
    return True


# Bounded like the other database work (rewards.api.deps): unbounded, a load balancer's or
# a load test's burst of checks took a worker thread each and starved one another.
DatabaseAnswers = Annotated[bool, Depends(database_answers, max_concurrency=HEALTH_CONCURRENCY)]


@router.get("/healthz", response_model=Health)
async def healthz(answers: DatabaseAnswers) -> Any:
    """200 when the database answers, 503 (problem+json) when it does not."""
    if not answers:
        return problem(503, "the database does not answer")
    return Health(status="ok", database="ok")


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    body = await run_in_threadpool(generate_latest, request.app.state.metrics)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
