"""A real SMTP server in the test process (aiosmtpd), with scripted misbehaviour.

Registered as a pytest plugin from ``tests/conftest.py``. Fixtures:

- ``smtp_server``: a server that accepts everything.
- ``make_smtp_server(behaviour)``: a server that misbehaves as told, e.g.
  ``make_smtp_server(Behaviour(at="RCPT", reply="451 4.3.0 try again later", times=1))``.
- ``unused_port``: a local port with nothing listening (connection refused).

Each server records what it accepted (``.messages``, parsed ``EmailMessage``s),
how many mail transactions were started (``.attempts``, one per ``MAIL FROM``)
and how many connections it saw (``.connections``, ``.max_concurrent``).
``server.settings_overrides()`` gives the ``Settings`` fields that point at it.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Literal

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPProtocol
from aiosmtpd.smtp import Envelope, Session

Step = Literal["MAIL", "RCPT", "DATA"]


@dataclass(frozen=True)
class Behaviour:
    """How the server answers.

    At step ``at`` it answers ``reply`` (an SMTP reply line) or, with
    ``drop=True``, closes the connection without answering. ``times`` limits that
    to the first N transactions (counted per server, across messages); None means
    always. ``only_for`` limits it to those recipient addresses. ``delay`` (seconds)
    is spent in DATA before answering, so concurrency can be observed.
    """

    at: Step = "DATA"
    reply: str | None = None
    drop: bool = False
    times: int | None = None
    only_for: frozenset[str] | None = None
    delay: float = 0.0

    @property
    def misbehaves(self) -> bool:
        return self.reply is not None or self.drop


ACCEPT = Behaviour()


@dataclass
class ReceivedEnvelope:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class SmtpServer:
    """A running test server and what it saw; safe to read after the client is done."""

    host: str
    port: int
    behaviour: Behaviour
    envelopes: list[ReceivedEnvelope] = field(default_factory=list)
    attempts: int = 0
    connections: int = 0
    open_connections: int = 0
    max_concurrent: int = 0
    pipelining: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def messages(self) -> list[EmailMessage]:
        with self.lock:
            return [e.message for e in self.envelopes]

    def message_ids(self) -> list[str]:
        return [str(m["Message-ID"]) for m in self.messages]

    def settings_overrides(self) -> dict[str, Any]:
        """Fields for ``Settings(**...)`` that send through this server, quickly."""
        return {
            "email_backend": "smtp",
            "smtp_host": self.host,
            "smtp_port": self.port,
            "smtp_security": "none",
            "smtp_timeout": 5.0,
            "secret_key": "secret-of-the-test-smtp-server",
        }

    def reset(self) -> None:
        """Forget what was seen so far (connections still open stay counted as open)."""
        with self.lock:
            self.envelopes.clear()
            self.attempts = 0
            self.connections = 0
            self.max_concurrent = self.open_connections


class _Handler:
    """aiosmtpd hooks: record, then misbehave where the behaviour says so."""

    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    def _strikes(self, step: Step, envelope: Envelope, address: str | None = None) -> bool:
        b = self.server.behaviour
        if not b.misbehaves or b.at != step:
            return False
        targets = [address] if address is not None else list(envelope.rcpt_tos)
        if b.only_for is not None and not any(t in b.only_for for t in targets):
            return False
        number: int = getattr(envelope, "attempt_number", 0)
        return b.times is None or number <= b.times

    async def _misbehave(self, server: SMTPProtocol) -> str:
        b = self.server.behaviour
        if b.drop:
            transport = server.transport
            if isinstance(transport, asyncio.Transport):
                transport.abort()
            # aiosmtpd pushes our reply to a closed transport, where it goes nowhere.
            return "421 4.4.2 connection dropped by the test server"
        assert b.reply is not None
        return b.reply

    async def handle_EHLO(
        self,
        server: SMTPProtocol,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.server.pipelining:  # as postfix and every large provider do
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self,
        server: SMTPProtocol,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        with self.server.lock:
            self.server.attempts += 1
            envelope.attempt_number = self.server.attempts  # type: ignore[attr-defined]
        if self._strikes("MAIL", envelope):
            return await self._misbehave(server)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTPProtocol,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self._strikes("RCPT", envelope, address):
            return await self._misbehave(server)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTPProtocol, session: Session, envelope: Envelope) -> str:
        if self.server.behaviour.delay:
            await asyncio.sleep(self.server.behaviour.delay)
        if self._strikes("DATA", envelope):
            return await self._misbehave(server)
        content = envelope.original_content or b""
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.server.lock:
            self.server.envelopes.append(
                ReceivedEnvelope(str(envelope.mail_from), list(envelope.rcpt_tos), parsed)
            )
        return "250 2.0.0 OK queued"


class _CountingSMTP(SMTPProtocol):
    """The aiosmtpd protocol, counting connections as they open and close."""

    stats: SmtpServer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # not the second call of a STARTTLS upgrade
            with self.stats.lock:
                self.stats.connections += 1
                self.stats.open_connections += 1
                self.stats.max_concurrent = max(
                    self.stats.max_concurrent, self.stats.open_connections
                )
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        with self.stats.lock:
            self.stats.open_connections -= 1
        super().connection_lost(error)


class _Controller(Controller):
    def __init__(self, stats: SmtpServer, **options: Any) -> None:
        super().__init__(_Handler(stats), hostname=stats.host, port=stats.port, **options)
        self.stats = stats

    def factory(self) -> SMTPProtocol:
        protocol = _CountingSMTP(self.handler, **self.SMTP_kwargs)
        protocol.stats = self.stats
        return protocol


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running_smtp_server(
    behaviour: Behaviour = ACCEPT,
    *,
    port: int | None = None,
    pipelining: bool = True,
    **options: Any,
) -> Iterator[SmtpServer]:
    """Start a server on 127.0.0.1 and ``port`` (default: a free one); stop it on exit.

    A given port lets a test start the server where a client already looks for it:
    a server that was down, coming up. ``pipelining`` says whether it offers
    ``PIPELINING``; ``options`` go to aiosmtpd (``ssl_context`` for implicit TLS,
    ``tls_context`` and ``require_starttls``, ``authenticator``...).
    """
    stats = SmtpServer(
        host="127.0.0.1", port=port or free_port(), behaviour=behaviour, pipelining=pipelining
    )
    controller = _Controller(stats, **options)
    controller.start()
    # start() opens one probe connection of its own; let it close, then start counting.
    deadline = time.monotonic() + 2.0
    while stats.open_connections and time.monotonic() < deadline:
        time.sleep(0.005)
    stats.reset()
    try:
        yield stats
    finally:
        controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A local SMTP server that accepts and records every message."""
    with running_smtp_server(ACCEPT) as server:
        yield server


@pytest.fixture
def make_smtp_server() -> Iterator[Callable[[Behaviour], SmtpServer]]:
    """Start servers with a given ``Behaviour``; all are stopped after the test."""
    with ExitStack() as stack:

        def make(behaviour: Behaviour = ACCEPT) -> SmtpServer:
            return stack.enter_context(running_smtp_server(behaviour))

        yield make


@pytest.fixture
def unused_port() -> int:
    """A port on 127.0.0.1 with nothing listening: connecting is refused."""
    return free_port()
