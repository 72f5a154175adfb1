"""The one small interface every delivery backend implements.

Like an HTTP transport: the job hands over ready-made messages and gets one
outcome per message back, in the same order. Backends never raise for a
message that could not be delivered; they report it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol


@dataclass(frozen=True)
class Outcome:
    """What happened to one message.

    ``delivered`` is True once the server (or the outbox, or the console) took it.
    ``detail`` explains a failure for ``NotificationLog.failureReason``, with the SMTP
    code and text when there is one, e.g. ``"550 5.1.1 mailbox unavailable"``.
    """

    delivered: bool
    detail: str | None = None
    seconds: float = 0.0


class Sender(Protocol):
    """Delivers messages. Used as an async context manager around a whole run."""

    async def __aenter__(self) -> Sender: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def send_many(self, messages: Sequence[EmailMessage]) -> list[Outcome]:
        """Deliver ``messages`` (concurrently where the backend can); one outcome each, in order."""
        ...
