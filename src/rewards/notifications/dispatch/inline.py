"""The ``inline`` dispatcher: the job's own process delivers each batch as it is written.

An asyncio loop runs for the whole run, so the sender's pool of SMTP connections
stays open from the first batch to the last.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine

from rewards.config import Settings
from rewards.notifications.delivery import create_sender
from rewards.notifications.delivery.base import Sender
from rewards.notifications.dispatch import chunks
from rewards.notifications.dispatch.deliver import Deliverer
from rewards.notifications.messages import MessageBuilder

T = TypeVar("T")


class _LoopThread:
    """An event loop on a thread of its own, for a caller whose thread already runs one
    (an async application or test harness calling the job), where ``asyncio.Runner``
    refuses to start."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="rewards-inline-dispatch", daemon=True
        )

    def __enter__(self) -> _LoopThread:
        self._thread.start()
        return self

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def _loop_for_this_thread() -> asyncio.Runner | _LoopThread:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.Runner()  # the rule: the job's thread runs no loop of its own
    return _LoopThread()


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
        self._runner = _loop_for_this_thread()
        self._sender = sender_factory(settings)
        self._deliverer = Deliverer(
            engine,
            settings,
            builder=MessageBuilder(settings, clock=clock),
            sender=self._sender,
            clock=clock,
            worker=worker_name(),
        )

    def __enter__(self) -> InlineDispatcher:
        self._runner.__enter__()
        self._runner.run(self._sender.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._runner.run(self._sender.__aexit__(None, None, None))
        finally:
            self._runner.__exit__(None, None, None)

    def dispatch(self, log_ids: Sequence[str]) -> None:
        for chunk in chunks(log_ids, size=max(len(log_ids), 1)):
            self._runner.run(self._deliverer.deliver(chunk))

    def wait(self, run_id: str, *, progress: Callable[[], None] | None = None) -> None:
        """Nothing to wait for: every batch was delivered when it was dispatched."""
