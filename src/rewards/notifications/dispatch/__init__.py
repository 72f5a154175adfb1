"""Dispatchers: who delivers the reminders the job writes to the outbox.

``inline`` (the default): the job's own process, as it writes each batch.
``celery``: Celery workers on RabbitMQ (``rewards worker``), on as many machines as
wanted; the job enqueues chunks of outbox row ids and waits until they are settled.
Both deliver a chunk the same way (:mod:`rewards.notifications.dispatch.deliver`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol

from sqlalchemy import Engine

from rewards.config import Dispatch, Settings

CHUNK = 200
"""Outbox rows per chunk: a task's worth, a few tenths of a second of sending."""


def chunks(ids: Sequence[str], size: int = CHUNK) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


class Dispatcher(Protocol):
    """Delivers outbox rows; used as a context manager around a run's sending."""

    def __enter__(self) -> Dispatcher: ...

    def __exit__(self, *exc: object) -> None: ...

    def dispatch(self, log_ids: Sequence[str]) -> None:
        """Have these outbox rows delivered (now, or by whoever takes them)."""
        ...

    def wait(self, run_id: str, *, progress: Callable[[], None] | None = None) -> None:
        """Return once every row of the run is settled (re-queueing what a dead worker held)."""
        ...


def create_dispatcher(
    engine: Engine, settings: Settings, *, clock: Callable[[], datetime]
) -> AbstractContextManager[Dispatcher]:
    """The dispatcher named by ``REWARDS_DISPATCH``."""
    if settings.dispatch is Dispatch.CELERY:
        from rewards.notifications.dispatch.celery_app import CeleryDispatcher

        return CeleryDispatcher(engine, settings, clock=clock)
    from rewards.notifications.dispatch.inline import InlineDispatcher

    return InlineDispatcher(engine, settings, clock=clock)
