"""The one small interface every delivery backend implements.

Like an HTTP transport: a dispatcher hands over a ready-made message (its bytes
and its envelope, :class:`~rewards.notifications.messages.RenderedMessage`) and
gets its outcome back. Backends never raise for a message that could not be
delivered; they report it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rewards.notifications.messages import RenderedMessage


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

    async def send(self, message: RenderedMessage) -> Outcome:
        """Deliver one message; several may be awaited at once where the backend can."""
        ...
