"""The SMTP client against real servers: pipelining, TLS, STARTTLS, logins, dot-stuffing.

The sender's behaviour (pool, retries, classification) is in ``test_delivery.py``,
against a server that offers ``PIPELINING`` as real ones do; here, what the client
itself must get right on the wire: it pipelines only where the server offers it
(and then really does), it secures and logs in as the settings say, and a message
arrives byte for byte, leading dots included.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from rewards.notifications.delivery.smtp import SmtpSender
from rewards.notifications.delivery.smtp_client import SmtpConnection
from tests.integration.test_delivery import reminders, send, smtp_settings
from tests.smtp_server import Behaviour, SmtpServer, running_smtp_server

USER, PASSWORD = "rewards", "s3cret-password"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (certificate, key)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def trusted(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """The test certificate trusted as a CA would be (``SSL_CERT_FILE``); the server's context."""
    cert, key = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    return server_context


def check_login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


def delivered_to(server: SmtpServer, count: int = 1) -> list[str]:
    assert len(server.envelopes) == count
    return [e.rcpt_tos[0] for e in server.envelopes]


# -- pipelining ------------------------------------------------------------------------------


class StrictPipeliningServer:
    """Offers PIPELINING and answers the envelope only once MAIL, RCPT and DATA have all
    arrived: a client that waits for each reply before the next command stalls here."""

    def __init__(self) -> None:
        self.reads_before_reply: list[int] = []
        self.received: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 strict ESMTP\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250-strict\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        while True:
            first = await reader.readline()
            if first.startswith(b"QUIT") or not first:
                writer.write(b"221 bye\r\n")
                await writer.drain()
                writer.close()
                return
            lines = [first, await reader.readline(), await reader.readline()]
            assert [line[:4] for line in lines] == [b"MAIL", b"RCPT", b"DATA"], lines
            writer.write(b"250 sender ok\r\n250 recipient ok\r\n354 go ahead\r\n")
            self.received.append(await reader.readuntil(b"\r\n.\r\n"))
            writer.write(b"250 queued\r\n")


def test_the_envelope_goes_in_one_write_where_the_server_offers_pipelining() -> None:
    strict = StrictPipeliningServer()

    async def run() -> dict[str, Any]:
        server = await asyncio.start_server(strict.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            connection = await SmtpConnection.open("127.0.0.1", port, timeout=2)
            refused = [
                await connection.send("a@example.com", ["b@example.com"], data, timeout=2)
                for data in (b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond\r\n")
            ]
            await connection.quit(2)
            return {"refused": refused}

    # Without pipelining the client would wait for MAIL's reply, the server for RCPT: a
    # two-second timeout, not a delivery.
    assert asyncio.run(run()) == {"refused": [{}, {}]}
    assert [m.split(b"\r\n\r\n")[1] for m in strict.received] == [
        b"first\r\n.\r\n",
        b"second\r\n.\r\n",
    ]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
def test_refusals_are_told_apart_with_and_without_pipelining(pipelining: bool) -> None:
    refuse = Behaviour(
        at="RCPT", reply="550 5.1.1 no such mailbox", only_for=frozenset({"x@e.com"})
    )
    with running_smtp_server(refuse, pipelining=pipelining) as server:
        settings = smtp_settings(server)
        messages = reminders(3, emails=["a@e.com", "x@e.com", "c@e.com"])
        outcomes = send(SmtpSender(settings), messages)
    assert [o.detail for o in outcomes] == [None, "550 5.1.1 no such mailbox", None]
    assert sorted(delivered_to(server, 2)) == ["a@e.com", "c@e.com"]


def test_a_message_arrives_byte_for_byte_leading_dots_included(smtp_server: SmtpServer) -> None:
    data = b"Subject: dots\r\n\r\n.one dot\r\n..two dots\r\n.\r\nlast line"

    async def run() -> None:
        connection = await SmtpConnection.open(smtp_server.host, smtp_server.port, timeout=5)
        await connection.send("a@example.com", ["b@example.com"], data, timeout=5)
        await connection.quit(5)

    asyncio.run(run())
    [received] = smtp_server.messages
    assert received.get_payload() == ".one dot\r\n..two dots\r\n.\r\nlast line\r\n"


# -- TLS and logins --------------------------------------------------------------------------


@pytest.fixture
def starttls_server(trusted: ssl.SSLContext) -> Iterator[SmtpServer]:
    with running_smtp_server(
        tls_context=trusted, require_starttls=True, authenticator=check_login
    ) as server:
        yield server


def test_starttls_then_login_delivers(starttls_server: SmtpServer) -> None:
    settings = smtp_settings(
        starttls_server, smtp_security="starttls", smtp_user=USER, smtp_password=PASSWORD
    )
    outcomes = send(SmtpSender(settings), reminders(2))
    assert [o.detail for o in outcomes] == [None, None]
    assert delivered_to(starttls_server, 2) == ["member0@example.com", "member1@example.com"]


def test_a_wrong_password_is_a_permanent_failure(starttls_server: SmtpServer) -> None:
    settings = smtp_settings(
        starttls_server, smtp_security="starttls", smtp_user=USER, smtp_password="wrong"
    )
    [outcome] = send(SmtpSender(settings), reminders(1))
    assert outcome.detail is not None
    assert outcome.detail.startswith("535 "), outcome.detail
    assert starttls_server.attempts == 0


def test_starttls_required_by_the_settings_but_not_offered_is_reported(
    smtp_server: SmtpServer,
) -> None:
    settings = smtp_settings(smtp_server, smtp_security="starttls")
    [outcome] = send(SmtpSender(settings), reminders(1))
    assert outcome.detail == "not supported by the server: the server does not offer STARTTLS"
    assert smtp_server.attempts == 0


def test_implicit_tls_delivers(trusted: ssl.SSLContext) -> None:
    with running_smtp_server(ssl_context=trusted) as server:
        settings = smtp_settings(server, smtp_security="tls")
        outcomes = send(SmtpSender(settings), reminders(2))
    assert [o.detail for o in outcomes] == [None, None]
    assert len(delivered_to(server, 2)) == 2


def test_a_certificate_that_is_not_trusted_is_refused(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with running_smtp_server(tls_context=context, require_starttls=True) as server:
        settings = smtp_settings(server, smtp_security="starttls", smtp_retries=0)
        [outcome] = send(SmtpSender(settings), reminders(1))
    assert outcome.detail is not None
    assert outcome.detail.startswith("cannot connect: STARTTLS with 127.0.0.1"), outcome.detail
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.detail
    assert server.attempts == 0
