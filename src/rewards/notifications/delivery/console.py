"""Console backend: prints a short summary of each message, for trying things out by hand."""

from __future__ import annotations

import sys
from email.message import EmailMessage
from typing import TextIO

from rewards.notifications.delivery.base import Outcome
from rewards.notifications.messages import RenderedMessage, parse_message


def summarize(message: EmailMessage) -> str:
    """To, Subject, Message-ID and the plain-text part, as a few readable lines."""
    body = message.get_body(preferencelist=("plain",))
    text = body.get_content() if isinstance(body, EmailMessage) else ""
    return (
        f"To: {message['To']}\n"
        f"Subject: {message['Subject']}\n"
        f"Message-ID: {message['Message-ID']}\n"
        "\n"
        f"{text.rstrip()}\n"
        f"{'-' * 72}\n"
    )


class ConsoleSender:
    """Writes every message to ``stream`` (default: standard output at the time of sending)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    async def __aenter__(self) -> ConsoleSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, message: RenderedMessage) -> Outcome:
        stream = self._stream or sys.stdout
        stream.write(summarize(parse_message(message.data)))
        stream.flush()
        return Outcome(delivered=True)
