"""Reminder emails: what they say, the headers that make them deliverable, and the templates.

Golden files under ``tests/unit/golden/`` hold the expected renders; after an
intended wording change, regenerate them with ``REWARDS_UPDATE_GOLDEN=1 pytest
tests/unit/test_messages.py`` and review the diff.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from rewards.config import Settings
from rewards.members.links import InvalidLinkToken, LinkPurpose, read_link_token
from rewards.notifications.messages import (
    InvalidRecipient,
    MessageBuilder,
    MessageTemplateError,
    Reminder,
    format_date,
    format_points,
    when_phrase,
)

GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("REWARDS_UPDATE_GOLDEN") == "1"
NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
SECRET = "golden-secret"

ADA = Reminder(
    log_id="clog0000000000000000000001",
    user_id="cuser000000000000000000001",
    email="ada@example.com",
    name="Ada Lovelace",
    points=1250,
    expiration_date=date(2026, 12, 4),
    notification_type="EXPIRATION_7_DAYS",
    days_left=7,
)
NAMELESS = replace(
    ADA,
    log_id="clog0000000000000000000002",
    name=None,
    points=1,
    expiration_date=date(2026, 11, 28),
    notification_type="EXPIRATION_1_DAY",
    days_left=1,
)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "email_from": "Acme Rewards <rewards@acme.example>",
        "public_url": "https://rewards.example.com",
        "secret_key": SECRET,
        "templates_dir": None,
    }
    values.update(overrides)
    return Settings(**values)


def build(reminder: Reminder = ADA, **overrides: Any) -> EmailMessage:
    return MessageBuilder(make_settings(**overrides), clock=lambda: NOW).build(reminder)


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert isinstance(part, EmailMessage)
    content: str = part.get_content()
    return content


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert isinstance(part, EmailMessage)
    content: str = part.get_content()
    return content


def assert_matches_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8", newline="")
    assert path.exists(), f"no golden file {path}; create it with REWARDS_UPDATE_GOLDEN=1"
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{name} differs from its golden file (REWARDS_UPDATE_GOLDEN=1)"


# --- golden renders -------------------------------------------------------------------------

CASES = {"named-7-days": ADA, "nameless-tomorrow": NAMELESS}


@pytest.mark.parametrize("case", sorted(CASES))
def test_subject_matches_golden(case: str) -> None:
    assert_matches_golden(f"reminder-{case}.subject.txt", str(build(CASES[case])["Subject"]) + "\n")


@pytest.mark.parametrize("case", sorted(CASES))
def test_text_part_matches_golden(case: str) -> None:
    assert_matches_golden(f"reminder-{case}.txt", text_of(build(CASES[case])))


@pytest.mark.parametrize("case", sorted(CASES))
def test_html_part_matches_golden(case: str) -> None:
    assert_matches_golden(f"reminder-{case}.html", html_of(build(CASES[case])))


# --- what the email says --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days_left", "phrase"),
    [(1, "tomorrow"), (7, "in 7 days"), (30, "in 30 days"), (14, "in 14 days"), (0, "today")],
)
def test_tier_wording(days_left: int, phrase: str) -> None:
    assert when_phrase(days_left) == phrase


def test_no_wording_for_points_already_expired() -> None:
    with pytest.raises(ValueError, match="expired"):
        when_phrase(-1)


@pytest.mark.parametrize(
    ("points", "days_left", "subject"),
    [
        (250, 1, "250 points expire tomorrow"),
        (250, 7, "250 points expire in 7 days"),
        (1250, 30, "1,250 points expire in 30 days"),
        (1, 30, "1 point expires in 30 days"),
    ],
)
def test_subject_states_points_and_when(points: int, days_left: int, subject: str) -> None:
    message = build(replace(ADA, points=points, days_left=days_left))
    assert message["Subject"] == subject


@pytest.mark.parametrize(
    ("points", "text"),
    [(0, "0 points"), (1, "1 point"), (999, "999 points"), (1234567, "1,234,567 points")],
)
def test_points_have_thousands_separators(points: int, text: str) -> None:
    assert format_points(points) == text


def test_dates_are_written_out_in_english() -> None:
    assert format_date(date(2026, 12, 4)) == "Friday 4 December 2026"


def test_body_says_name_points_date_wording_and_links() -> None:
    message = build(ADA)
    for body in (text_of(message), html_of(message)):
        assert "Hi Ada Lovelace," in body
        assert "1,250 points" in body
        assert "Friday 4 December 2026" in body
        assert "in 7 days" in body
        assert "https://rewards.example.com/balance?token=" in body
        assert "https://rewards.example.com/unsubscribe?token=" in body


def tokens_in(body: str, path: str) -> set[str]:
    return set(re.findall(rf"https://rewards\.example\.com/{path}\?token=([\w.-]+)", body))


@pytest.mark.parametrize("part", ["text", "html"])
def test_the_balance_link_is_the_members_own_signed_balance_link(part: str) -> None:
    """Not the API route that needs a bearer token: a link the member can open."""
    message = build(ADA)
    body = text_of(message) if part == "text" else html_of(message)
    assert "/users/" not in body
    [token] = tokens_in(body, "balance")
    assert read_link_token(SECRET, LinkPurpose.BALANCE, token, now=NOW) == ADA.user_id
    with pytest.raises(InvalidLinkToken):
        read_link_token(SECRET, LinkPurpose.UNSUBSCRIBE, token, now=NOW)


@pytest.mark.parametrize("part", ["text", "html"])
def test_the_unsubscribe_link_cannot_open_the_balance_page(part: str) -> None:
    message = build(ADA)
    body = text_of(message) if part == "text" else html_of(message)
    [token] = tokens_in(body, "unsubscribe")
    assert read_link_token(SECRET, LinkPurpose.UNSUBSCRIBE, token, now=NOW) == ADA.user_id
    with pytest.raises(InvalidLinkToken):
        read_link_token(SECRET, LinkPurpose.BALANCE, token, now=NOW)


def test_a_member_without_a_name_gets_a_neutral_greeting() -> None:
    message = build(NAMELESS)
    assert text_of(message).startswith("Hello,\n")
    assert '<p style="margin:0 0 16px;">Hello,</p>' in html_of(message)
    for body in (text_of(message), html_of(message)):
        assert "None" not in body
    assert message["To"] == "ada@example.com"


def test_html_escapes_the_members_name() -> None:
    message = build(replace(ADA, name="<script>alert(1)</script>"))
    html = html_of(message)
    assert "<script>" not in html
    assert "Hi &lt;script&gt;alert(1)&lt;/script&gt;," in html
    assert "Hi <script>alert(1)</script>," in text_of(message)  # plain text needs no escaping


# --- headers --------------------------------------------------------------------------------


def test_message_is_multipart_text_and_html() -> None:
    message = build()
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]


def test_sender_recipient_and_date() -> None:
    message = build()
    assert message["From"] == "Acme Rewards <rewards@acme.example>"
    assert message["To"] == "Ada Lovelace <ada@example.com>"
    assert message["Date"].datetime == NOW


def test_message_id_comes_from_the_log_row_and_the_sender_domain() -> None:
    assert build(ADA)["Message-ID"] == "<clog0000000000000000000001@acme.example>"


def test_a_resend_of_the_same_row_has_the_same_message_id() -> None:
    later = MessageBuilder(make_settings(), clock=lambda: NOW + timedelta(days=1)).build(ADA)
    assert later["Message-ID"] == build(ADA)["Message-ID"]


def test_message_id_domain_falls_back_when_the_sender_has_none() -> None:
    message = build(email_from="rewards")
    assert message["Message-ID"] == "<clog0000000000000000000001@rewards.local>"
    assert "mailto:" not in message["List-Unsubscribe"]


def test_notification_header_names_the_log_row() -> None:
    assert build(ADA)["X-Rewards-Notification"] == ADA.log_id


@pytest.mark.parametrize(
    ("public_url", "email_from"),
    [
        ("https://rewards.example.com", "Acme Rewards <rewards@acme.example>"),
        ("http://127.0.0.1:8000", "rewards@localhost"),
        ("https://rewards.example.com", "rewards"),
    ],
)
def test_list_unsubscribe_is_only_the_one_click_url(public_url: str, email_from: str) -> None:
    """RFC 8058: the one URI is the HTTP(S) URL the POST goes to; no mailto that nobody reads."""
    message = build(ADA, public_url=public_url, email_from=email_from)
    header = str(message["List-Unsubscribe"])
    assert "mailto:" not in header
    [url] = re.findall(r"<([^>]*)>", header)
    assert header == f"<{url}>"
    prefix = f"{public_url}/unsubscribe?token="
    assert url.startswith(prefix)
    token = url.removeprefix(prefix)
    assert read_link_token(SECRET, LinkPurpose.UNSUBSCRIBE, token, now=NOW) == ADA.user_id


def test_list_unsubscribe_post_is_one_click() -> None:
    assert build()["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_headers_survive_serialisation_unencoded() -> None:
    """Long URLs must not be folded into RFC 2047 encoded-words, or clients cannot use them."""
    message = build()
    raw = message.as_bytes()
    header_block = raw.split(b"\n\n", 1)[0].decode("ascii")
    assert "=?" not in header_block
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    for name in ("List-Unsubscribe", "List-Unsubscribe-Post", "Message-ID", "Subject", "To"):
        assert parsed[name] == message[name]


def test_a_name_cannot_inject_headers() -> None:
    message = build(replace(ADA, name="Ada\r\nBcc: eve@example.com"))
    assert message["Bcc"] is None
    assert message["To"].addresses[0].addr_spec == "ada@example.com"


def test_an_address_with_a_line_break_is_refused() -> None:
    with pytest.raises(InvalidRecipient):
        build(replace(ADA, email="ada@example.com\r\nBcc: eve@example.com"))


# --- templates ------------------------------------------------------------------------------


def test_a_template_in_the_override_folder_wins(tmp_path: Path) -> None:
    (tmp_path / "reminder.subject.j2").write_text("Heads up: {{ points_phrase }} {{ when }}")
    message = build(ADA, templates_dir=tmp_path)
    assert message["Subject"] == "Heads up: 1,250 points in 7 days"
    assert "in your rewards balance" in text_of(message)  # the others still come from the package


def test_a_template_naming_an_undefined_value_fails(tmp_path: Path) -> None:
    (tmp_path / "reminder.txt.j2").write_text("Hi {{ no_such_value }}")
    with pytest.raises(MessageTemplateError, match="no_such_value"):
        build(ADA, templates_dir=tmp_path)


def test_a_malformed_template_fails_when_the_builder_is_made(tmp_path: Path) -> None:
    (tmp_path / "reminder.html.j2").write_text("{% if name %}unclosed")
    with pytest.raises(MessageTemplateError, match=r"reminder\.html\.j2"):
        MessageBuilder(make_settings(templates_dir=tmp_path))
