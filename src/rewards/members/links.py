"""Signed member links: a link in an email proves who it is for, and what for, without a login.

A token carries the member's id and the time it was issued, signed with the
service's secret key. Each link has a *purpose* (:class:`LinkPurpose`), and the
purpose is the signature's salt: a token signed for one purpose does not verify
for another, so a balance link cannot unsubscribe anyone and an unsubscribe link
cannot show a balance. Anyone holding a link may do that one thing for that one
member, which is what a link in an email has to allow; each purpose has a
maximum age (:data:`MAX_AGE_SECONDS`) so a leaked old email does not work forever.

Pure functions: no I/O, no database. The clock is passed in where it matters.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from urllib.parse import quote

from itsdangerous import BadData, TimestampSigner, URLSafeTimedSerializer

DAY_SECONDS = 24 * 60 * 60


class LinkPurpose(StrEnum):
    """What a link lets its holder do; the value is the signature's salt and the page's path.

    The salts must never change: tokens already mailed to members carry them.
    """

    UNSUBSCRIBE = "unsubscribe"
    """Turn the member's reminder emails off (one-click, RFC 8058)."""
    BALANCE = "balance"
    """Read the member's balance and upcoming expirations."""
    RESUBSCRIBE = "resubscribe"
    """Turn the member's reminder emails back on: the button of a member page, signed when
    the page is shown (never put in an email)."""


MAX_AGE_SECONDS: Mapping[LinkPurpose, int] = {
    LinkPurpose.UNSUBSCRIBE: 400 * DAY_SECONDS,
    LinkPurpose.BALANCE: 90 * DAY_SECONDS,
    LinkPurpose.RESUBSCRIBE: DAY_SECONDS,
}
"""How long a link works after it was issued, per purpose.

Unsubscribe: 400 days, to outlive any sensible reminder tier (a year ahead) —
a member must always be able to stop the emails from the last one received.

Balance: 90 days. The earliest reminder of the default tiers goes out 30 days
before the points expire, so its link still works for two months after they
have gone (the page then shows what is left and what expires next). The page
shows personal data, so the link lives much shorter than the unsubscribe one;
a member with an older email gets a page asking for the latest reminder's link.
With tiers beyond 90 days a reminder's balance link would expire before its points do.

Resubscribe: a day. The token is signed into a button when a member page is shown,
so it only has to last until the member presses it.
"""


class InvalidLinkToken(Exception):
    """The token was forged, altered, expired, made for another purpose or is not a token."""


def _serializer(secret: str, purpose: LinkPurpose, now: datetime | None) -> URLSafeTimedSerializer:
    """A serializer for ``purpose`` whose clock is ``now`` (naive means UTC), or the real one."""
    salt = LinkPurpose(purpose).value
    if now is None:
        return URLSafeTimedSerializer(secret, salt=salt)
    stamp = int((now if now.tzinfo else now.replace(tzinfo=UTC)).timestamp())

    class _SignerAt(TimestampSigner):
        def get_timestamp(self) -> int:
            return stamp

    return URLSafeTimedSerializer(secret, salt=salt, signer=_SignerAt)


def make_link_token(
    secret: str, purpose: LinkPurpose, user_id: str, *, now: datetime | None = None
) -> str:
    """A URL-safe token that names ``user_id`` for ``purpose``, signed with ``secret``.

    ``now`` (default: the real clock) dates the token; passing it makes the token
    reproducible.
    """
    return _serializer(secret, purpose, now).dumps(user_id)


def read_link_token(
    secret: str,
    purpose: LinkPurpose,
    token: str,
    *,
    max_age_seconds: int | None = None,
    now: datetime | None = None,
) -> str:
    """The user id a token was made for, or :class:`InvalidLinkToken`.

    The token must have been signed with ``secret`` for ``purpose``, no longer than
    ``max_age_seconds`` before ``now`` (defaults: the purpose's :data:`MAX_AGE_SECONDS`
    and the real clock).
    """
    max_age = MAX_AGE_SECONDS[purpose] if max_age_seconds is None else max_age_seconds
    try:
        user_id = _serializer(secret, purpose, now).loads(token, max_age=max_age)
    except BadData as exc:
        raise InvalidLinkToken(str(exc)) from exc
    if not isinstance(user_id, str) or not user_id:
        raise InvalidLinkToken("token does not name a user")
    return user_id


def link_path(purpose: LinkPurpose, token: str) -> str:
    """``{purpose}?token=...``: the link relative to the service's root, token quoted.

    Relative (no leading slash) so a page can link to another one under whatever
    prefix the service is served at.
    """
    return f"{LinkPurpose(purpose).value}?token={quote(token, safe='')}"


def link_url(public_url: str, purpose: LinkPurpose, token: str) -> str:
    """``{public_url}/{purpose}?token=...``: the absolute link put in an email."""
    return f"{public_url.rstrip('/')}/{link_path(purpose, token)}"
