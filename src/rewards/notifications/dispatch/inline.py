"""The ``inline`` dispatcher: the job's own process delivers each batch as it is written.

An asyncio loop runs for the whole run, so the sender's pool of SMTP connections
stays open from the first batch to the last.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import Engine

from rewards.config import Settings
from rewards.notifications.delivery import create_sender
from rewards.notifications.delivery.base import Sender
from rewards.notifications.dispatch import chunks
from rewards.notifications.dispatch.deliver import Deliverer
from rewards.notifications.messages import MessageBuilder


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
        self._runner = asyncio.Runner()
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
