"""Reminder emails: what they say, the headers that make them deliverable, and the templates.

Golden files under ``tests/unit/golden/`` hold the expected renders; after an
intended wording change, regenerate them with ``REWARDS_UPDATE_GOLDEN=1 pytest
tests/unit/test_messages.py`` and review the diff.

``build()`` is ``render()``'s bytes parsed back, so the tests written against it
check those bytes too; the ones at the end read ``render()``'s bytes the way a
receiver does (the standard library's parser, default policy) and check that
every header and both parts come out exactly as they went in.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from email.errors import NonPrintableDefect
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtplib.email import extract_recipients, extract_sender, flatten_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards.config import Settings
from rewards.members.links import (
    InvalidLinkToken,
    LinkPurpose,
    link_url,
    make_link_token,
    read_link_token,
)
from rewards.notifications.messages import (
    InvalidRecipient,
    MessageBuilder,
    MessageTemplateError,
    Reminder,
    RenderedMessage,
    Texts,
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


# --- the bytes on the wire ------------------------------------------------------------------


def builder(now: datetime = NOW, **overrides: Any) -> MessageBuilder:
    return MessageBuilder(make_settings(**overrides), clock=lambda: now)


def render(reminder: Reminder = ADA, **overrides: Any) -> RenderedMessage:
    return builder(**overrides).render(reminder)


def expected_texts(reminder: Reminder, **overrides: Any) -> Texts:
    made = builder(**overrides)
    return made.texts(made.context(reminder, NOW))


def receive(data: bytes) -> EmailMessage:
    """The message as a receiver reads it: the standard library's parser, default policy."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def part(message: EmailMessage, subtype: str) -> str:
    """A decoded part with ``\\n`` line ends (parsed from CRLF bytes, it keeps the CRs)."""
    body = message.get_body(preferencelist=(subtype,))
    assert isinstance(body, EmailMessage)
    content: str = body.get_content()
    return content.replace("\r\n", "\n")


def display_name(data: bytes) -> str:
    """The ``To`` display name as RFC 2047 reads it.

    The standard library's parser keeps the space between two encoded-words of a
    display name, which RFC 2047 (section 6.2) drops, so for a name long enough
    to need several it reads extra spaces; ``decode_header`` reads them right.
    """
    phrase = "".join(raw_field(data, "To").removeprefix("To: ").split("\r\n"))
    phrase = phrase.rpartition(" <")[0]
    if "=?" not in phrase:
        [to] = receive(data)["To"].addresses
        return str(to.display_name)
    return str(make_header(decode_header(phrase)))


def header_lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def raw_field(data: bytes, name: str) -> str:
    """A header field as written: its lines joined with their CRLFs."""
    lines = header_lines(data)
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}: ".encode()))
    end = start + 1
    while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
        end += 1
    return b"\r\n".join(lines[start:end]).decode("ascii")


WIRE_CASES = {
    "ascii name": ADA,
    "no name": NAMELESS,
    "non-ascii name": replace(ADA, name="Zoë Ünïcode-Ñame 山田太郎"),
    "emoji in the name": replace(ADA, name="Ada 👩‍💻 Lovelace"),
    "quotes and commas": replace(ADA, name='Lovelace, Ada "The Countess" (née Byron)'),
    "specials only ascii": replace(ADA, name='Lovelace, Ada "A.L." \\ <Countess>'),
    "long name": replace(ADA, name=" ".join(["Augusta Ada King"] * 12)),
    "long non-ascii name": replace(ADA, name="Ünïcödé Ñåmé " * 15),
    "one very long word": replace(ADA, name="A" * 300),
    "looks encoded": replace(ADA, name="=?utf-8?q?Eve?="),
    "spaces to collapse": replace(ADA, name="  Ada \t\n Lovelace  "),
    "longest api user id": replace(ADA, user_id="u" * 64),
}


@pytest.mark.parametrize("case", sorted(WIRE_CASES))
def test_every_header_reads_back_as_it_was_meant(case: str) -> None:
    reminder = WIRE_CASES[case]
    made = builder()
    context = made.context(reminder, NOW)
    name = " ".join((reminder.name or "").split())

    data = made.render(reminder).data
    message = receive(data)

    assert list(message.keys()) == [
        "From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe",
        "List-Unsubscribe-Post", "X-Rewards-Notification", "MIME-Version", "Content-Type",
    ]  # fmt: skip
    assert message["From"] == "Acme Rewards <rewards@acme.example>"
    [to] = message["To"].addresses
    assert to.addr_spec == reminder.email
    assert display_name(data) == name
    if to.display_name == name:  # unless the parser added spaces between encoded-words
        assert message["To"] == str(Address(display_name=name, addr_spec=reminder.email))
    else:
        assert to.display_name.replace(" ", "") == name.replace(" ", "")
    assert message["Subject"] == made.texts(context).subject
    assert message["Date"].datetime == NOW
    assert message["Message-ID"] == f"<{reminder.log_id}@acme.example>"
    assert message["List-Unsubscribe"] == f"<{context['unsubscribe_url']}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["X-Rewards-Notification"] == reminder.log_id
    assert message["MIME-Version"] == "1.0"
    for header in message.values():
        assert header.defects == ()
    assert message.defects == []


@pytest.mark.parametrize("case", sorted(WIRE_CASES))
def test_both_parts_read_back_exactly(case: str) -> None:
    reminder = WIRE_CASES[case]
    texts = expected_texts(reminder)

    message = receive(render(reminder).data)

    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    for each in parts:
        assert each.get_content_charset() == "utf-8"
        assert each["Content-Transfer-Encoding"] == "quoted-printable"
        assert each.defects == []
    assert part(message, "plain") == texts.text
    assert part(message, "html") == texts.html


@pytest.mark.parametrize("case", sorted(WIRE_CASES))
def test_the_bytes_are_ascii_lines_ending_in_crlf_of_at_most_998_octets(case: str) -> None:
    data = render(WIRE_CASES[case]).data
    assert data.isascii()
    assert data.endswith(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    lines = data.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998


@pytest.mark.parametrize("case", sorted(WIRE_CASES))
def test_folded_header_lines_fit_78_columns(case: str) -> None:
    """Only the List-Unsubscribe URL, kept whole, may pass RFC 5322's recommended 78."""
    data = render(WIRE_CASES[case]).data
    for line in header_lines(data):
        if not line.startswith(b"List-Unsubscribe: "):
            assert len(line) <= 78, line


def test_a_non_ascii_name_is_rfc2047_encoded() -> None:
    data = render(WIRE_CASES["non-ascii name"]).data
    to = raw_field(data, "To")
    assert "=?utf-8?b?" in to
    assert to.endswith(" <ada@example.com>")
    assert receive(data)["To"].addresses[0].display_name == "Zoë Ünïcode-Ñame 山田太郎"


def test_only_the_words_that_need_it_are_encoded() -> None:
    data = render(WIRE_CASES["emoji in the name"]).data
    assert (
        raw_field(data, "To") == "To: Ada =?utf-8?b?8J+RqeKAjfCfkrs=?= Lovelace <ada@example.com>"
    )
    assert receive(data)["To"].addresses[0].display_name == "Ada 👩‍💻 Lovelace"


def test_a_long_non_ascii_name_is_cut_into_encoded_words_between_characters() -> None:
    data = render(WIRE_CASES["long non-ascii name"]).data
    to = raw_field(data, "To").split("\r\n")
    assert len(to) > 3
    assert all(len(line) <= 76 for line in to)  # RFC 2047's limit
    assert display_name(data) == " ".join(("Ünïcödé Ñåmé " * 15).split())


def test_a_name_with_quotes_and_commas_stays_one_mailbox() -> None:
    data = render(WIRE_CASES["quotes and commas"]).data
    [to] = receive(data)["To"].addresses
    assert to.display_name == 'Lovelace, Ada "The Countess" (née Byron)'
    assert to.addr_spec == "ada@example.com"
    ascii_only = render(WIRE_CASES["specials only ascii"]).data
    assert raw_field(ascii_only, "To") == (
        'To: "Lovelace, Ada \\"A.L.\\" \\\\ <Countess>" <ada@example.com>'
    )
    [to] = receive(ascii_only)["To"].addresses
    assert to.display_name == 'Lovelace, Ada "A.L." \\ <Countess>'


def test_a_long_name_is_folded_between_words() -> None:
    data = render(WIRE_CASES["long name"]).data
    to = raw_field(data, "To")
    assert "\r\n " in to
    assert "=?" not in to
    assert receive(data)["To"].addresses[0].display_name == " ".join(["Augusta Ada King"] * 12)


def test_a_name_that_looks_encoded_is_not_decoded_by_the_receiver() -> None:
    data = render(WIRE_CASES["looks encoded"]).data
    assert receive(data)["To"].addresses[0].display_name == "=?utf-8?q?Eve?="


def test_a_non_ascii_subject_is_rfc2047_encoded(tmp_path: Path) -> None:
    (tmp_path / "reminder.subject.j2").write_text(
        "Vos {{ points_text }} points expirent {{ when }} — ne les perdez pas, ça serait dommage"
        " ✨",
        encoding="utf-8",
    )
    data = render(ADA, templates_dir=tmp_path).data
    subject = raw_field(data, "Subject")
    assert subject.startswith("Subject: Vos 1,250 points expirent in 7 days =?utf-8?b?")
    assert all(len(line) <= 76 for line in subject.split("\r\n"))  # RFC 2047's limit
    assert receive(data)["Subject"] == (
        "Vos 1,250 points expirent in 7 days — ne les perdez pas, ça serait dommage ✨"
    )


def test_a_long_ascii_subject_is_folded_not_encoded(tmp_path: Path) -> None:
    words = "Your rewards are about to expire so please do come back and spend them " * 3
    (tmp_path / "reminder.subject.j2").write_text(words + "{{ when }}")
    data = render(ADA, templates_dir=tmp_path).data
    subject = raw_field(data, "Subject")
    assert "\r\n " in subject
    assert "=?" not in subject
    assert receive(data)["Subject"] == words + "in 7 days"


def test_a_long_token_keeps_list_unsubscribe_whole_on_one_line() -> None:
    long_url = "https://rewards.example.com/" + "a-long-prefix/" * 8
    reminder = WIRE_CASES["longest api user id"]
    data = render(reminder, public_url=long_url).data
    field = raw_field(data, "List-Unsubscribe")
    assert "\r\n" not in field
    assert len(field) > 200
    [url] = re.findall(r"^List-Unsubscribe: <([^<>\s]+)>$", field)
    token = url.removeprefix(long_url.rstrip("/") + "/unsubscribe?token=")
    assert read_link_token(SECRET, LinkPurpose.UNSUBSCRIBE, token, now=NOW) == reminder.user_id


def test_a_line_starting_with_from_is_written_so_mbox_relays_leave_it_alone(
    tmp_path: Path,
) -> None:
    (tmp_path / "reminder.txt.j2").write_text("Hello,\nFrom the rewards team\n")
    data = render(ADA, templates_dir=tmp_path).data
    assert b"\r\nFrom " not in data.split(b"\r\n\r\n", 1)[1]
    assert part(receive(data), "plain") == "Hello,\nFrom the rewards team\n"


@pytest.mark.parametrize(
    "address",
    [
        "ada",
        "ada@@example.com",
        "ada@example.com,",
        "Ada <ada@example.com>",
        "ada@example.com\r\nBcc: eve@example.com",
        "zoë@example.com",  # a non-ASCII local part would need SMTPUTF8
        "a" * 250 + "@example.com",
    ],
)
def test_an_address_that_cannot_go_in_a_to_header_is_refused(address: str) -> None:
    with pytest.raises(InvalidRecipient, match="invalid format"):
        render(replace(ADA, email=address))


@pytest.mark.parametrize(
    ("address", "written"),
    [
        (" ada@example.com ", "ada@example.com"),
        ('"ada lovelace"@example.com', '"ada lovelace"@example.com'),
        ("ada@[127.0.0.1]", "ada@[127.0.0.1]"),
        ("ada@bücher.example", "ada@xn--bcher-kva.example"),
    ],
)
def test_an_unusual_address_is_written_in_ascii_in_header_and_envelope(
    address: str, written: str
) -> None:
    rendered = render(replace(ADA, email=address))
    assert rendered.recipients == (written,)
    assert receive(rendered.data)["To"].addresses[0].addr_spec == written


def test_the_envelope_is_the_senders_address_and_the_members() -> None:
    rendered = render(ADA)
    assert rendered.sender == "rewards@acme.example"
    assert rendered.recipients == ("ada@example.com",)
    assert rendered.message_id == "<clog0000000000000000000001@acme.example>"


@pytest.mark.parametrize(
    "email_from",
    [
        "Acme Rewards <rewards@acme.example>",
        "rewards@localhost",
        "rewards",
        "Äcme <r@acme.example>",
    ],
)
def test_the_envelope_is_what_aiosmtplib_takes_from_the_headers(email_from: str) -> None:
    made = builder(email_from=email_from)
    rendered = made.render(ADA)
    message = made.build(ADA)
    assert rendered.sender == extract_sender(message)
    assert list(rendered.recipients) == extract_recipients(message)
    assert receive(rendered.data)["From"] == str(message["From"])


@pytest.mark.parametrize("case", sorted(WIRE_CASES))
def test_build_s_message_writes_back_as_the_rendered_bytes(case: str) -> None:
    """Flattened as aiosmtplib's ``send_message`` does, ``build()``'s message is ``render()``'s."""
    made = builder()
    reminder = WIRE_CASES[case]
    assert flatten_message(made.build(reminder)) == made.render(reminder).data


def test_the_message_id_is_the_same_for_every_render_of_a_row() -> None:
    first = render(ADA)
    later = builder(now=NOW + timedelta(days=1, seconds=7)).render(ADA)
    assert later.message_id == first.message_id
    assert receive(later.data)["Message-ID"] == receive(first.data)["Message-ID"]
    assert later.data != first.data  # the date and the links' issue time moved on


def test_two_rows_have_different_message_ids() -> None:
    made = builder()
    first, second = made.render(ADA), made.render(replace(ADA, log_id=NAMELESS.log_id))
    assert first.message_id != second.message_id
    assert receive(first.data)["Message-ID"] != receive(second.data)["Message-ID"]


def test_rendering_twice_at_the_same_moment_gives_the_same_bytes() -> None:
    made = builder()
    assert made.render(ADA) == made.render(ADA)


def test_a_log_id_that_cannot_be_a_message_id_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="Message-ID"):
        render(replace(ADA, log_id="clog 1\r\nBcc: eve@example.com"))


def test_a_public_url_that_cannot_go_in_a_header_stops_the_builder() -> None:
    with pytest.raises(ValueError, match="REWARDS_PUBLIC_URL"):
        builder(public_url="https://rewards.example.com/a b")


@pytest.mark.parametrize(
    "now",
    [
        NOW,
        NOW + timedelta(seconds=1),
        NOW + timedelta(microseconds=999_999),
        NOW.replace(tzinfo=None),  # naive means UTC, as for make_link_token
        datetime(2026, 3, 29, 3, 30, tzinfo=UTC).astimezone(),
    ],
)
def test_links_are_the_tokens_make_link_token_signs(now: datetime) -> None:
    made = builder()
    made.links("cuser000000000000000000009", NOW - timedelta(days=3))  # another second cached
    links = made.links("cuser000000000000000000009", now)
    for purpose in LinkPurpose:
        token = make_link_token(SECRET, purpose, "cuser000000000000000000009", now=now)
        assert links[purpose] == link_url("https://rewards.example.com", purpose, token)


def test_the_date_follows_the_clock_second_by_second() -> None:
    moments = iter([NOW, NOW + timedelta(microseconds=5), NOW + timedelta(seconds=1)])
    made = MessageBuilder(make_settings(), clock=lambda: next(moments))
    dates = [receive(made.render(ADA).data)["Date"].datetime for _ in range(3)]
    assert dates == [NOW, NOW, NOW + timedelta(seconds=1)]


_names = st.one_of(
    st.none(),
    st.text(max_size=120),
    st.text(st.characters(codec="ascii"), max_size=120),
    st.sampled_from(['O\'Brien, "Pat"', "李小龙", "Ådne Ødegård", "=?x?q?y?=", "A\\B"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=_names,
    address=st.emails(),
    points=st.integers(min_value=0, max_value=2**31 - 1),
    days_left=st.integers(min_value=0, max_value=400),
    user_id=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=64),
)
def test_any_member_s_message_reads_back_exactly(
    name: str | None, address: str, points: int, days_left: int, user_id: str
) -> None:
    reminder = replace(
        ADA, name=name, email=address, points=points, days_left=days_left, user_id=user_id
    )
    made = builder()
    try:
        rendered = made.render(reminder)
    except InvalidRecipient:
        assert len(address) > 254 or not address.isascii()
        return
    texts = made.texts(made.context(reminder, NOW))
    expected_name = " ".join((name or "").split())

    data = rendered.data
    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    message = receive(data)
    [to] = message["To"].addresses
    assert to.addr_spec == rendered.recipients[0]
    assert display_name(data) == expected_name
    assert message["Subject"] == texts.subject
    assert part(message, "plain") == texts.text
    assert part(message, "html") == texts.html
    for header in message.values():
        defects = header.defects
        if header.name == "To" and re.search(r"[\x00-\x1f\x7f]", expected_name):
            # written as it is, and read back exactly, but the parser notes the control characters
            defects = tuple(d for d in defects if not isinstance(d, NonPrintableDefect))
        assert defects == (), (header.name, str(header), defects)
