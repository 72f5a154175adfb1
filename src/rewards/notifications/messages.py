"""Reminder emails: one ``Reminder`` (a row of the log) in, one ready-to-send message out.

:meth:`MessageBuilder.render` is the one way a reminder is made: the SMTP envelope
and the message as bytes (:class:`RenderedMessage`), written by :mod:`.mime`
without the ``email`` package's header machinery, so a message costs tens of
microseconds instead of a millisecond. :meth:`MessageBuilder.build` parses those
bytes into an ``EmailMessage`` for code that wants one; it cannot differ.

The wording lives in Jinja2 templates (``templates/``, or an operator's own folder
in ``REWARDS_TEMPLATES_DIR``, searched first). The environment is strict: a
template that names a value the builder does not supply fails at once
(:class:`MessageTemplateError`) instead of mailing a blank to members, and the
HTML part is autoescaped so a member's name cannot inject markup.

Headers are derived from the log row, never from the moment of sending, where it
matters: the ``Message-ID`` is ``<{log_id}@{sender domain}>``, so re-sending a row
left ``PENDING`` by a crash produces the same id and receivers can deduplicate.

Both links in an email are signed member links (:mod:`rewards.members.links`): the
balance link opens the member's own page, the unsubscribe link stops the emails,
and neither works as the other. ``List-Unsubscribe`` is only the HTTPS one-click
URL (RFC 8058): no mailto, since nothing reads that mailbox.
"""

from __future__ import annotations

import email
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.headerregistry import BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import EmailPolicy, Policy
from email.policy import default as default_policy
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
from itsdangerous import Signer, TimestampSigner, URLSafeTimedSerializer

from rewards.config import Settings
from rewards.members.links import LinkPurpose, link_url
from rewards.notifications import mime
from rewards.templating import strict_environment

TEMPLATE_NAMES: Mapping[str, str] = {
    "subject": "reminder.subject.j2",
    "text": "reminder.txt.j2",
    "html": "reminder.html.j2",
}
DEFAULT_MESSAGE_ID_DOMAIN = "rewards.local"
ONE_CLICK = "List-Unsubscribe=One-Click"
_URL = re.compile(r"[\x21-\x3b=\x3f-\x7e]+")  # printable ASCII but "<" and ">"

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July",
    "August", "September", "October", "November", "December",
)  # fmt: skip


class MessageTemplateError(Exception):
    """A template is missing, malformed, or names a value the builder does not supply."""


class InvalidRecipient(ValueError):
    """The member's address cannot be put in a ``To`` header."""


@dataclass(frozen=True)
class Reminder:
    """Everything one reminder email says, taken from its ``NotificationLog`` row."""

    log_id: str
    user_id: str
    email: str
    name: str | None
    points: int
    expiration_date: date
    notification_type: str
    days_left: int


def when_phrase(days_left: int) -> str:
    """The tier's wording: ``"tomorrow"`` for 1 day, ``"in N days"`` otherwise."""
    if days_left < 0:
        raise ValueError(f"points that expired {-days_left} days ago get no reminder")
    if days_left == 0:
        return "today"
    if days_left == 1:
        return "tomorrow"
    return f"in {days_left} days"


def format_points(points: int) -> str:
    """``1250`` → ``"1,250 points"``; ``1`` → ``"1 point"``."""
    return f"{points:,} point" if points == 1 else f"{points:,} points"


def format_date(day: date) -> str:
    """``"Friday 4 December 2026"``: English whatever the process locale is."""
    return f"{_WEEKDAYS[day.weekday()]} {day.day} {_MONTHS[day.month - 1]} {day.year}"


def sender_name(email_from: str) -> str:
    """The programme's name as members see it: the sender's display name, or ``"Rewards"``."""
    return parseaddr(email_from)[0] or "Rewards"


class _UriListHeader(UnstructuredHeader, BaseHeader):
    """A ``List-Unsubscribe`` header folded only between its ``<uri>`` items.

    The standard folding turns any word longer than a line into RFC 2047
    encoded-words, which mangles the long token URLs so mail clients cannot use
    them. Each item stays whole on its own line instead (lines may reach 998).
    """

    def fold(self, *, policy: Policy) -> str:
        items = re.split(r"(?<=>)\s*,\s*", str(self).strip())
        return f"{self.name}: " + ("," + policy.linesep + " ").join(items) + policy.linesep


def _policy() -> EmailPolicy[EmailMessage]:
    registry = HeaderRegistry()
    registry.map_to_type("list-unsubscribe", _UriListHeader)
    return default_policy.clone(header_factory=registry)


POLICY = _policy()
"""The policy of :meth:`MessageBuilder.build`'s messages: the default plus ``_UriListHeader``."""


def parse_message(data: bytes) -> EmailMessage:
    """``data`` (from :meth:`MessageBuilder.render`) as an ``EmailMessage``; it writes back as-is.

    Line ends become ``\\n``, the ``email`` package's own (with CRLF the decoded parts
    would keep a ``\\r`` on every line); a writer puts back the policy's. Header
    lines parsed from bytes are re-folded on output when longer than 78 columns,
    under whatever policy the writer uses (aiosmtplib uses ``SMTP``), so
    ``List-Unsubscribe`` is stored as a ``_UriListHeader``, which folds itself whole.
    """
    message = email.message_from_bytes(data.replace(b"\r\n", b"\n"), policy=POLICY)
    assert isinstance(message, EmailMessage), "the policy makes EmailMessages"
    if "List-Unsubscribe" in message:
        message.replace_header("List-Unsubscribe", message["List-Unsubscribe"])
    return message


def create_environment(templates_dir: Path | None) -> jinja2.Environment:
    """The emails' environment: an operator's folder first, then the shipped templates."""
    loaders: list[jinja2.BaseLoader] = []
    if templates_dir is not None:
        loaders.append(jinja2.FileSystemLoader(templates_dir))
    loaders.append(jinja2.PackageLoader("rewards.notifications", "templates"))
    return strict_environment(loaders)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    """``moment`` with a time zone; a naive one means UTC (as in :mod:`rewards.members.links`)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RenderedMessage:
    """One reminder ready to send: the SMTP envelope and the message's bytes.

    ``data`` is the whole message (RFC 5322 / MIME), 7-bit ASCII with CRLF line
    ends, no line longer than 998 octets: hand it over as it is, e.g.
    ``await smtp.sendmail(m.sender, m.recipients, m.data)`` with aiosmtplib, which
    adds the SMTP dot-stuffing and the final ``.``. Every address is ASCII, so
    neither SMTPUTF8 nor 8BITMIME is needed.
    """

    message_id: str
    """The ``Message-ID`` header's value, ``<{log_id}@{domain}>``: stable per log row."""
    sender: str
    """The envelope sender (``MAIL FROM``): the address of ``REWARDS_EMAIL_FROM``."""
    recipients: tuple[str, ...]
    """The envelope recipients (``RCPT TO``): the member's address as in the ``To`` header."""
    data: bytes


class Texts(NamedTuple):
    """The three rendered templates of one reminder."""

    subject: str
    text: str
    html: str


class _IssuedAt(TimestampSigner):
    """A ``TimestampSigner`` whose clock is fixed at ``issued_at`` (Unix seconds)."""

    def __init__(self, *args: Any, issued_at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.issued_at = issued_at

    def get_timestamp(self) -> int:
        return self.issued_at


class _LinkSigner:
    """Signs member links exactly as :func:`rewards.members.links.make_link_token` does, cheaply.

    ``make_link_token`` builds a signer class and a serializer for every token,
    which is most of its ~17 µs. The tokens here come from the same itsdangerous
    serializer (same secret, purpose salt, key derivation, HMAC-SHA1 and payload),
    only its objects are made once per second of issue time instead of per token,
    and the member's payload is serialised once for both links: about 5 µs a link.
    Nothing about the signature changes; the tests compare these tokens with
    ``make_link_token``'s. (It belongs in :mod:`rewards.members.links`, with
    ``make_link_token`` built on it; it lives here until that module's owner moves it.)
    """

    def __init__(self, secret: str, public_url: str) -> None:
        self._secret = secret
        self._public_url = public_url
        self._serializer = URLSafeTimedSerializer(secret)
        self._signers: tuple[int, dict[LinkPurpose, Signer]] | None = None

    def _signers_at(self, issued_at: int) -> dict[LinkPurpose, Signer]:
        cached = self._signers  # one read: another thread may replace it meanwhile
        if cached is None or cached[0] != issued_at:
            cached = self._signers = (
                issued_at,
                {
                    purpose: URLSafeTimedSerializer(
                        self._secret,
                        salt=purpose.value,
                        signer=_IssuedAt,
                        # hashlib's own sha1 (itsdangerous's default is a Python wrapper
                        # around it) lets hmac use OpenSSL's HMAC: the same digest, faster.
                        signer_kwargs={"issued_at": issued_at, "digest_method": hashlib.sha1},
                    ).make_signer()
                    for purpose in LinkPurpose
                },
            )
        return cached[1]

    def links(self, user_id: str, now: datetime) -> dict[LinkPurpose, str]:
        """The member's link for every purpose, issued at ``now``."""
        signers = self._signers_at(int(_aware(now).timestamp()))
        payload = self._serializer.dump_payload(user_id)
        return {
            purpose: link_url(self._public_url, purpose, signer.sign(payload).decode("ascii"))
            for purpose, signer in signers.items()
        }


class MessageBuilder:
    """Turns reminders into multipart text + HTML emails with the settings' sender and links.

    Templates are loaded when the builder is made, so a missing or malformed one
    stops the run before anything is sent; so does a ``REWARDS_EMAIL_FROM`` or
    ``REWARDS_PUBLIC_URL`` that cannot go in a header. ``clock`` dates the ``Date``
    header and the signed links.
    """

    def __init__(self, settings: Settings, clock: Callable[[], datetime] = _utc_now) -> None:
        self._env = create_environment(settings.templates_dir)
        self._templates = {part: self._load(name) for part, name in TEMPLATE_NAMES.items()}
        from_header = POLICY.header_factory("From", settings.email_from)
        self._from_field = from_header.fold(policy=POLICY.clone(linesep=mime.CRLF))
        addresses = getattr(from_header, "addresses", ())
        self._envelope_sender = addresses[0].addr_spec if addresses else settings.email_from
        self._sender_name = sender_name(settings.email_from)
        local, _, domain = parseaddr(settings.email_from)[1].rpartition("@")
        self._domain = (
            domain if local and mime.DOT_ATOM.fullmatch(domain) else DEFAULT_MESSAGE_ID_DOMAIN
        )
        self._public_url = settings.public_url.rstrip("/")
        if not _URL.fullmatch(self._public_url):
            raise ValueError(
                f"REWARDS_PUBLIC_URL {settings.public_url!r} cannot go in a List-Unsubscribe"
                " header: it must be printable ASCII without spaces or angle brackets"
            )
        self._signer = _LinkSigner(settings.secret_key.get_secret_value(), self._public_url)
        self._clock = clock
        self._date: tuple[datetime, str] | None = None

    def _load(self, name: str) -> jinja2.Template:
        try:
            template = self._env.get_template(name)
        except jinja2.TemplateError as exc:
            raise MessageTemplateError(f"template {name}: {exc}") from exc
        # A template's globals are a ChainMap over the environment's, which every
        # render() copies into the context key by key in Python: half the cost of
        # these small templates. A plain dict of the same values copies in C.
        template.globals = dict(template.globals)
        return template

    def _render(self, part: str, context: Mapping[str, Any]) -> str:
        template = self._templates[part]
        try:
            return template.render(context)
        except jinja2.TemplateError as exc:
            raise MessageTemplateError(f"template {template.name}: {exc}") from exc

    def message_id(self, log_id: str) -> str:
        """``<{log_id}@{domain}>``: the same for every send of one log row."""
        if not mime.DOT_ATOM.fullmatch(log_id):
            raise ValueError(f"log id {log_id!r} cannot be the left part of a Message-ID")
        return f"<{log_id}@{self._domain}>"

    def links(self, user_id: str, now: datetime) -> dict[LinkPurpose, str]:
        """The member's signed links, issued at ``now``: balance page and unsubscribe."""
        return self._signer.links(user_id, now)

    def context(self, reminder: Reminder, now: datetime) -> dict[str, Any]:
        """The values a template may use; the links in it are signed at ``now``."""
        name = " ".join(reminder.name.split()) if reminder.name else None
        links = self.links(reminder.user_id, now)
        return {
            "name": name or None,
            "email": reminder.email,
            "points": reminder.points,
            "points_text": f"{reminder.points:,}",
            "points_phrase": format_points(reminder.points),
            "expiration_date": reminder.expiration_date,
            "date_text": format_date(reminder.expiration_date),
            "days_left": reminder.days_left,
            "when": when_phrase(reminder.days_left),
            "notification_type": reminder.notification_type,
            "balance_url": links[LinkPurpose.BALANCE],
            "unsubscribe_url": links[LinkPurpose.UNSUBSCRIBE],
            "sender_name": self._sender_name,
            "public_url": self._public_url,
        }

    def texts(self, context: Mapping[str, Any]) -> Texts:
        """The subject (on one line), the plain text and the HTML, rendered from ``context``."""
        return Texts(
            subject=" ".join(self._render("subject", context).split()),
            text=self._render("text", context),
            html=self._render("html", context),
        )

    def _date_field(self, now: datetime) -> str:
        """``Date: Fri, 27 Nov 2026 09:00:00 +0000``, formatted once per second."""
        moment = _aware(now).replace(microsecond=0)
        cached = self._date  # one read: another thread may replace it meanwhile
        if cached is None or cached[0] != moment or cached[0].utcoffset() != moment.utcoffset():
            cached = self._date = (moment, mime.field("Date", format_datetime(moment)))
        return cached[1]

    def compose(
        self, reminder: Reminder, context: Mapping[str, Any], texts: Texts, now: datetime
    ) -> RenderedMessage:
        """The headers and both parts around ``texts``: the message as bytes, and its envelope.

        Raises :class:`InvalidRecipient` for an address that cannot go in a ``To`` header.
        """
        try:
            recipient = mime.addr_spec(reminder.email)
        except mime.InvalidAddress as exc:
            raise InvalidRecipient(f"invalid format: {reminder.email!r}: {exc}") from exc
        message_id = self.message_id(reminder.log_id)
        header_fields = (
            self._from_field,
            mime.address_field("To", context["name"] or "", recipient),
            mime.unstructured_field("Subject", texts.subject),
            self._date_field(now),
            mime.field("Message-ID", message_id),
            mime.field("List-Unsubscribe", f"<{context['unsubscribe_url']}>"),
            mime.field("List-Unsubscribe-Post", ONE_CLICK),
            mime.field("X-Rewards-Notification", reminder.log_id),
        )
        data = mime.multipart_alternative(
            header_fields, [mime.text_part("plain", texts.text), mime.text_part("html", texts.html)]
        )
        return RenderedMessage(message_id, self._envelope_sender, (recipient,), data)

    def render(self, reminder: Reminder) -> RenderedMessage:
        """The email for ``reminder``, ready to send; raises :class:`MessageTemplateError` or
        :class:`InvalidRecipient`, never sends anything."""
        now = self._clock()
        context = self.context(reminder, now)
        return self.compose(reminder, context, self.texts(context), now)

    def build(self, reminder: Reminder) -> EmailMessage:
        """:meth:`render`'s message parsed into an ``EmailMessage``, for senders that take one.

        Parsing costs several times what rendering does: senders that can take
        :class:`RenderedMessage` should.
        """
        return parse_message(self.render(reminder).data)
