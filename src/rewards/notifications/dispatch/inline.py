"""The ``inline`` dispatcher: the job's own process delivers each batch as it is written.

An asyncio loop runs on a thread of its own for the whole run, so the sender's pool
of SMTP connections stays open from the first batch to the last, and a batch is
sent while the job plans and writes the next: the database's time and the mail
server's overlap instead of adding up. At most :data:`IN_FLIGHT` batches are handed
over at once, so memory stays bounded whatever the size of the run.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine

from rewards.config import Settings
from rewards.notifications.delivery import create_sender
from rewards.notifications.delivery.base import Sender
from rewards.notifications.dispatch.deliver import Deliverer
from rewards.notifications.messages import MessageBuilder

T = TypeVar("T")


IN_FLIGHT = 2
"""Batches handed to the loop and not finished yet, at most: one sending, one waiting."""


class _LoopThread:
    """An event loop on a thread of its own: the job's thread plans and writes the outbox
    while the loop sends (and the job may itself be called from a running loop, an
    async application or a test harness, where ``asyncio.Runner`` refuses to start)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="rewards-inline-dispatch", daemon=True
        )

    def __enter__(self) -> _LoopThread:
        self._thread.start()
        return self

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.submit(coroutine).result()

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def worker_name() -> str:
    """Who holds a lease: host and process, as an operator would look for them."""
    return f"{socket.gethostname()}:{os.getpid()}"


class InlineDispatcher:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        clock: Callable[[], datetime],
        sender_factory: Callable[[Settings], Sender] = create_sender,
    ) -> None:
        self._loop = _LoopThread()
        self._sender = sender_factory(settings)
        self._deliverer = Deliverer(
            engine,
            settings,
            builder=MessageBuilder(settings, clock=clock),
            sender=self._sender,
            clock=clock,
            worker=worker_name(),
        )
        self._in_flight: deque[Future[Any]] = deque()
        self._one_at_a_time: asyncio.Lock | None = None

    def __enter__(self) -> InlineDispatcher:
        self._loop.__enter__()
        self._loop.run(self._sender.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._drain(raising=exc[0] is None)
            self._loop.run(self._sender.__aexit__(None, None, None))
        finally:
            self._loop.__exit__(None, None, None)

    def dispatch(self, log_ids: Sequence[str]) -> None:
        """Hand the batch to the loop; wait only while :data:`IN_FLIGHT` are still going."""
        if not log_ids:
            return
        self._in_flight.append(self._loop.submit(self._deliver(list(log_ids))))
        while len(self._in_flight) > IN_FLIGHT:
            self._in_flight.popleft().result()

    async def _deliver(self, log_ids: list[str]) -> None:
        # A batch is claimed only once the one before it is delivered: the rows a crash
        # leaves claimed (and re-sends) are never more than one batch.
        if self._one_at_a_time is None:
            self._one_at_a_time = asyncio.Lock()
        async with self._one_at_a_time:
            await self._deliverer.deliver(log_ids)

    def wait(self, run_id: str, *, progress: Callable[[], None] | None = None) -> None:
        """Until every batch handed over is delivered (and settled)."""
        self._drain(raising=True)

    def _drain(self, *, raising: bool) -> None:
        """Let every batch handed over finish: a failure is raised, or only waited out
        when the run is failing already (its own error is the one to report)."""
        while self._in_flight:
            future = self._in_flight.popleft()
            if raising:
                future.result()
            else:
                future.exception()
