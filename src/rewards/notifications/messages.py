"""Reminder emails: one ``Reminder`` (a row of the log) in, one ready-to-send ``EmailMessage`` out.

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

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import Policy
from email.policy import default as default_policy
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any

import jinja2

from rewards.config import Settings
from rewards.members.links import LinkPurpose, link_url, make_link_token
from rewards.templating import strict_environment

TEMPLATE_NAMES: Mapping[str, str] = {
    "subject": "reminder.subject.j2",
    "text": "reminder.txt.j2",
    "html": "reminder.html.j2",
}
DEFAULT_MESSAGE_ID_DOMAIN = "rewards.local"
ONE_CLICK = "List-Unsubscribe=One-Click"

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


def _policy() -> Policy:
    registry = HeaderRegistry()
    registry.map_to_type("list-unsubscribe", _UriListHeader)
    return default_policy.clone(header_factory=registry)


POLICY = _policy()
"""The policy of every message built here (the default one, plus ``_UriListHeader``)."""


def create_environment(templates_dir: Path | None) -> jinja2.Environment:
    """The emails' environment: an operator's folder first, then the shipped templates."""
    loaders: list[jinja2.BaseLoader] = []
    if templates_dir is not None:
        loaders.append(jinja2.FileSystemLoader(templates_dir))
    loaders.append(jinja2.PackageLoader("rewards.notifications", "templates"))
    return strict_environment(loaders)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class MessageBuilder:
    """Turns reminders into multipart text + HTML emails with the settings' sender and links.

    Templates are loaded when the builder is made, so a missing or malformed one
    stops the run before anything is sent. ``clock`` dates the ``Date`` header and
    the signed links.
    """

    def __init__(self, settings: Settings, clock: Callable[[], datetime] = _utc_now) -> None:
        self._env = create_environment(settings.templates_dir)
        self._templates = {part: self._load(name) for part, name in TEMPLATE_NAMES.items()}
        self._from = settings.email_from
        self._sender_name = sender_name(settings.email_from)
        local, _, domain = parseaddr(settings.email_from)[1].rpartition("@")
        self._domain = domain if local and domain else DEFAULT_MESSAGE_ID_DOMAIN
        self._public_url = settings.public_url.rstrip("/")
        self._secret = settings.secret_key.get_secret_value()
        self._clock = clock

    def _load(self, name: str) -> jinja2.Template:
        try:
            return self._env.get_template(name)
        except jinja2.TemplateError as exc:
            raise MessageTemplateError(f"template {name}: {exc}") from exc

    def _render(self, part: str, context: Mapping[str, Any]) -> str:
        template = self._templates[part]
        try:
            return template.render(context)
        except jinja2.TemplateError as exc:
            raise MessageTemplateError(f"template {template.name}: {exc}") from exc

    def message_id(self, log_id: str) -> str:
        """``<{log_id}@{domain}>``: the same for every send of one log row."""
        return f"<{log_id}@{self._domain}>"

    def _link(self, purpose: LinkPurpose, user_id: str, now: datetime) -> str:
        """The member's signed link for ``purpose``, issued at ``now``."""
        token = make_link_token(self._secret, purpose, user_id, now=now)
        return link_url(self._public_url, purpose, token)

    def context(self, reminder: Reminder, now: datetime) -> dict[str, Any]:
        """The values a template may use; the links in it are signed at ``now``."""
        name = " ".join(reminder.name.split()) if reminder.name else None
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
            "balance_url": self._link(LinkPurpose.BALANCE, reminder.user_id, now),
            "unsubscribe_url": self._link(LinkPurpose.UNSUBSCRIBE, reminder.user_id, now),
            "sender_name": self._sender_name,
            "public_url": self._public_url,
        }

    def build(self, reminder: Reminder) -> EmailMessage:
        """The email for ``reminder``; raises :class:`MessageTemplateError` or
        :class:`InvalidRecipient`, never sends anything."""
        now = self._clock()
        context = self.context(reminder, now)
        subject = " ".join(self._render("subject", context).split())
        text = self._render("text", context)
        html = self._render("html", context)

        message = EmailMessage(policy=POLICY)
        message["From"] = self._from
        try:
            message["To"] = Address(display_name=context["name"] or "", addr_spec=reminder.email)
        except Exception as exc:  # ValueError or a HeaderParseError from the parser
            raise InvalidRecipient(f"invalid format: {reminder.email!r}: {exc}") from exc
        message["Subject"] = subject
        message["Date"] = format_datetime(now if now.tzinfo else now.replace(tzinfo=UTC))
        message["Message-ID"] = self.message_id(reminder.log_id)
        message["List-Unsubscribe"] = f"<{context['unsubscribe_url']}>"
        message["List-Unsubscribe-Post"] = ONE_CLICK
        message["X-Rewards-Notification"] = reminder.log_id
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        return message
