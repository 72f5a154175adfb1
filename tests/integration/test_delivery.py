"""Delivery backends against the real thing: an SMTP server in this process, files, a stream.

The SMTP server (``tests/smtp_server.py``) answers as each test scripts it:
accepting, refusing for now (4xx) or for good (5xx), dropping the connection, or
not listening at all. Backoff is shrunk to milliseconds so retries stay fast.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from rewards.config import Settings
from rewards.notifications.delivery import (
    ConsoleSender,
    FileSender,
    Outcome,
    Sender,
    SmtpSender,
    create_sender,
)
from rewards.notifications.messages import (
    MessageBuilder,
    Reminder,
    RenderedMessage,
    parse_message,
)
from tests.smtp_server import Behaviour, SmtpServer, Step

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
RETRIES = 2
TRANSIENT = "451 4.3.0 try again later"
PERMANENT = "550 5.1.1 mailbox unavailable"

MakeServer = Callable[[Behaviour], SmtpServer]


def base_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "email_from": "Acme Rewards <rewards@acme.example>",
        "public_url": "https://rewards.example.com",
        "secret_key": "delivery-secret",
        "templates_dir": None,
        "smtp_retries": RETRIES,
        "smtp_timeout": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


def smtp_settings(server: SmtpServer, **overrides: Any) -> Settings:
    return base_settings(**{**server.settings_overrides(), "smtp_retries": RETRIES, **overrides})


def reminders(count: int, *, emails: Sequence[str] | None = None) -> list[RenderedMessage]:
    builder = MessageBuilder(base_settings(), clock=lambda: NOW)
    addresses = (
        list(emails) if emails is not None else [f"member{i}@example.com" for i in range(count)]
    )
    return [
        builder.render(
            Reminder(
                log_id=f"clog{i:021d}",
                user_id=f"cuser{i:020d}",
                email=address,
                name=f"Member {i}",
                points=100 + i,
                expiration_date=date(2026, 12, 4),
                notification_type="EXPIRATION_7_DAYS",
                days_left=7,
            )
        )
        for i, address in enumerate(addresses)
    ]


def send(sender: Sender, messages: Sequence[RenderedMessage]) -> list[Outcome]:
    """Send ``messages`` at once (as a dispatcher does); their outcomes in the same order."""

    async def run() -> list[Outcome]:
        async with sender:
            return list(await asyncio.gather(*(sender.send(m) for m in messages)))

    return asyncio.run(run())


def fast_smtp(settings: Settings) -> SmtpSender:
    return SmtpSender(settings, backoff_initial=0.001, backoff_max=0.01)


# --- SMTP: the happy path -------------------------------------------------------------------


def test_an_accepted_message_arrives_intact(smtp_server: SmtpServer) -> None:
    [message] = reminders(1)
    [outcome] = send(fast_smtp(smtp_settings(smtp_server)), [message])

    assert outcome.delivered
    assert outcome.detail is None
    assert outcome.seconds > 0
    [received] = smtp_server.envelopes
    assert received.mail_from == "rewards@acme.example"
    assert received.rcpt_tos == ["member0@example.com"]
    sent = parse_message(message.data)
    for header in ("Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post", "Subject", "To"):
        assert received.message[header] == sent[header]
    assert received.message["List-Unsubscribe"].startswith(
        "<https://rewards.example.com/unsubscribe?token="
    )
    assert smtp_server.attempts == 1


def test_connections_are_reused_across_batches_and_closed_at_the_end(
    smtp_server: SmtpServer,
) -> None:
    sender = fast_smtp(smtp_settings(smtp_server, smtp_concurrency=4))
    batches = [reminders(3)[:1], reminders(3)[1:2], reminders(3)[2:]]

    async def run() -> list[Outcome]:
        outcomes: list[Outcome] = []
        async with sender:
            for batch in batches:
                outcomes += [await sender.send(m) for m in batch]
        return outcomes

    assert all(o.delivered for o in asyncio.run(run()))
    assert smtp_server.connections == 1
    deadline = time.monotonic() + 2
    while smtp_server.open_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert smtp_server.open_connections == 0


def test_many_messages_share_a_bounded_pool_of_connections(make_smtp_server: MakeServer) -> None:
    server = make_smtp_server(Behaviour(delay=0.01))
    messages = reminders(50)

    outcomes = send(fast_smtp(smtp_settings(server, smtp_concurrency=4)), messages)

    assert all(o.delivered for o in outcomes)
    received = Counter(server.message_ids())
    assert received == Counter(m.message_id for m in messages)
    assert set(received.values()) == {1}
    assert 2 <= server.max_concurrent <= 4
    assert server.connections <= 4


def test_outcomes_come_back_in_input_order(make_smtp_server: MakeServer) -> None:
    emails = ["ann@example.com", "bob@example.com", "cat@example.com", "bob@example.com"]
    server = make_smtp_server(
        Behaviour(at="RCPT", reply=PERMANENT, only_for=frozenset({"bob@example.com"}))
    )

    outcomes = send(fast_smtp(smtp_settings(server)), reminders(4, emails=emails))

    assert [o.delivered for o in outcomes] == [True, False, True, False]
    assert [o.detail for o in outcomes] == [None, PERMANENT, None, PERMANENT]
    assert sorted(e.rcpt_tos[0] for e in server.envelopes) == ["ann@example.com", "cat@example.com"]


def test_sending_outside_the_context_is_a_programming_error(smtp_server: SmtpServer) -> None:
    sender = fast_smtp(smtp_settings(smtp_server))
    with pytest.raises(RuntimeError, match="async with"):
        asyncio.run(sender.send(reminders(1)[0]))


# --- SMTP: failures -------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["MAIL", "RCPT", "DATA"])
def test_a_transient_refusal_is_retried_then_reported(
    make_smtp_server: MakeServer, step: Step
) -> None:
    server = make_smtp_server(Behaviour(at=step, reply=TRANSIENT))

    [outcome] = send(fast_smtp(smtp_settings(server)), reminders(1))

    assert not outcome.delivered
    assert outcome.detail == TRANSIENT
    assert server.attempts == 1 + RETRIES
    assert server.messages == []


@pytest.mark.parametrize("step", ["RCPT", "DATA"])
def test_a_transient_refusal_that_clears_is_delivered_once(
    make_smtp_server: MakeServer, step: Step
) -> None:
    server = make_smtp_server(Behaviour(at=step, reply=TRANSIENT, times=1))

    [outcome] = send(fast_smtp(smtp_settings(server)), reminders(1))

    assert outcome.delivered
    assert server.attempts == 2
    assert len(server.messages) == 1


def test_without_retries_a_transient_refusal_is_tried_once(make_smtp_server: MakeServer) -> None:
    server = make_smtp_server(Behaviour(at="RCPT", reply=TRANSIENT))

    [outcome] = send(fast_smtp(smtp_settings(server, smtp_retries=0)), reminders(1))

    assert outcome.detail == TRANSIENT
    assert server.attempts == 1


@pytest.mark.parametrize("step", ["MAIL", "RCPT", "DATA"])
def test_a_permanent_refusal_fails_at_once(make_smtp_server: MakeServer, step: Step) -> None:
    server = make_smtp_server(Behaviour(at=step, reply=PERMANENT))

    [outcome] = send(fast_smtp(smtp_settings(server)), reminders(1))

    assert not outcome.delivered
    assert outcome.detail == PERMANENT
    assert server.attempts == 1
    assert server.messages == []


@pytest.mark.parametrize("step", ["RCPT", "DATA"])
def test_a_connection_that_always_drops_is_retried_then_reported(
    make_smtp_server: MakeServer, step: Step
) -> None:
    server = make_smtp_server(Behaviour(at=step, drop=True))

    [outcome] = send(fast_smtp(smtp_settings(server)), reminders(1))

    assert not outcome.delivered
    assert outcome.detail is not None
    assert outcome.detail.startswith("connection lost: ")
    assert server.attempts == 1 + RETRIES
    assert server.connections == 1 + RETRIES  # a fresh connection for every retry
    assert server.messages == []


def test_a_dropped_connection_is_reopened_and_the_message_delivered(
    make_smtp_server: MakeServer,
) -> None:
    server = make_smtp_server(Behaviour(at="DATA", drop=True, times=1))

    [outcome] = send(fast_smtp(smtp_settings(server)), reminders(1))

    assert outcome.delivered
    assert server.connections == 2
    assert len(server.messages) == 1


def test_a_server_that_is_not_listening_is_reported(unused_port: int) -> None:
    settings = base_settings(email_backend="smtp", smtp_host="127.0.0.1", smtp_port=unused_port)

    [outcome] = send(fast_smtp(settings), reminders(1))

    assert not outcome.delivered
    assert outcome.detail is not None
    assert outcome.detail.startswith("connection refused: ")
    assert str(unused_port) in outcome.detail


def test_a_server_that_does_not_answer_in_time_is_reported(make_smtp_server: MakeServer) -> None:
    server = make_smtp_server(Behaviour(delay=0.5))

    [outcome] = send(
        fast_smtp(smtp_settings(server, smtp_timeout=0.1, smtp_retries=1)), reminders(1)
    )

    assert not outcome.delivered
    assert outcome.detail is not None
    assert outcome.detail.startswith("timed out")
    assert server.attempts == 2


# --- file backend ---------------------------------------------------------------------------


def test_file_backend_writes_parseable_eml_files(tmp_path: Path) -> None:
    outbox = tmp_path / "var" / "outbox"
    messages = reminders(3)

    outcomes = send(FileSender(outbox), messages)

    assert all(o.delivered for o in outcomes)
    assert sorted(p.name for p in outbox.iterdir()) == [f"clog{i:021d}.eml" for i in range(3)]
    for rendered in messages:
        message = parse_message(rendered.data)
        local = rendered.message_id.strip("<>").split("@")[0]
        parsed = parse_message((outbox / f"{local}.eml").read_bytes())
        assert isinstance(parsed, EmailMessage)
        for header in (
            "From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe",
            "List-Unsubscribe-Post", "X-Rewards-Notification",
        ):  # fmt: skip
            assert parsed[header] == message[header]
        body = parsed.get_body(preferencelist=("plain",))
        assert isinstance(body, EmailMessage)
        original = message.get_body(preferencelist=("plain",))
        assert isinstance(original, EmailMessage)
        assert body.get_content() == original.get_content()


def test_file_backend_overwrites_a_resent_message(tmp_path: Path) -> None:
    [message] = reminders(1)

    send(FileSender(tmp_path), [message])
    send(FileSender(tmp_path), [message])

    assert [p.name for p in tmp_path.iterdir()] == [f"clog{0:021d}.eml"]  # no temp files left


def test_file_backend_reports_an_unwritable_outbox(tmp_path: Path) -> None:
    blocker = tmp_path / "outbox"
    blocker.write_text("a file where the folder should be")

    [outcome] = send(FileSender(blocker), reminders(1))

    assert not outcome.delivered
    assert outcome.detail is not None
    assert outcome.detail.startswith(f"cannot write to outbox {blocker}")


# --- console backend and choice -------------------------------------------------------------


def test_console_backend_prints_a_summary() -> None:
    stream = io.StringIO()
    [message] = reminders(1)

    [outcome] = send(ConsoleSender(stream), [message])

    assert outcome.delivered
    printed = stream.getvalue()
    assert "To: Member 0 <member0@example.com>\n" in printed
    assert "Subject: 100 points expire in 7 days\n" in printed
    assert f"Message-ID: {message.message_id}\n" in printed
    assert "100 points in your rewards balance expire in 7 days" in printed


def test_console_backend_defaults_to_standard_output(capsys: pytest.CaptureFixture[str]) -> None:
    send(ConsoleSender(), reminders(1))
    assert "Subject: 100 points expire in 7 days" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("backend", "kind"), [("smtp", SmtpSender), ("file", FileSender), ("console", ConsoleSender)]
)
def test_the_backend_is_chosen_from_settings(backend: str, kind: type) -> None:
    assert isinstance(create_sender(base_settings(email_backend=backend)), kind)
