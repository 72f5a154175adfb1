"""A reminder's email, made again from its log row: what the member received.

The log keeps the decision, not the message, so the message is made again by
the one code that makes them (:meth:`MessageBuilder.render`) from the row: its
id (so the same ``Message-ID``), tier, date and points, the days left counted
from the as-of date of the run that wrote it, and the member's name and address
as they are now. The links in it are signed now, not the ones that were mailed:
they work as the member's would, for the member.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from email.message import EmailMessage

from rewards.clock import local_date
from rewards.config import Settings
from rewards.notifications.messages import InvalidRecipient, MessageBuilder, Reminder, parse_message

HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)


@dataclass(frozen=True)
class EmailPreview:
    subject: str
    headers: list[tuple[str, str]]
    text: str
    html: str
    problem: str | None = None
    """Why no message could be made for this address (it shows the texts all the same)."""


def _part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body(preferencelist=(subtype,))
    if not isinstance(body, EmailMessage):
        return ""
    content = body.get_content()
    return content if isinstance(content, str) else ""


def render_logged(
    builder: MessageBuilder,
    settings: Settings,
    *,
    log_id: str,
    user_id: str,
    email: str | None,
    name: str | None,
    notification_type: str,
    expiration_date: date,
    points: int,
    decided_as_of: datetime,
    now: datetime,
) -> EmailPreview:
    """The email of one log row, rendered at ``now``; ``decided_as_of`` dates its tier."""
    days_left = max((expiration_date - local_date(decided_as_of, settings.zone)).days, 0)
    reminder = Reminder(
        log_id=log_id,
        user_id=user_id,
        email=(email or "").strip(),
        name=name,
        points=points,
        expiration_date=expiration_date,
        notification_type=notification_type,
        days_left=days_left,
    )
    try:
        message = parse_message(builder.render(reminder).data)
    except InvalidRecipient as exc:
        texts = builder.texts(builder.context(reminder, now))
        return EmailPreview(texts.subject, [], texts.text, texts.html, problem=str(exc))
    headers = [(h, str(message[h])) for h in HEADERS if message[h] is not None]
    return EmailPreview(
        str(message["Subject"]), headers, _part(message, "plain"), _part(message, "html")
    )
