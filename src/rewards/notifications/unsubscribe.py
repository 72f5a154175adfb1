"""Signed unsubscribe tokens: the one-click link proves who it is for without a login.

The token carries the member's id and the time it was issued, signed with the
service's secret key. Anyone holding the link may unsubscribe that member (and
nobody else), which is what a one-click link in an email has to allow; a link
older than ``DEFAULT_MAX_AGE_SECONDS`` is refused so a leaked old email does not
work forever. Pure functions: no I/O, no database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

from itsdangerous import BadData, TimestampSigner, URLSafeTimedSerializer

SALT = "unsubscribe"
DEFAULT_MAX_AGE_SECONDS = 400 * 24 * 60 * 60
"""Long enough to outlive the longest sensible reminder tier (a year ahead)."""


class InvalidUnsubscribeToken(Exception):
    """The token was forged, altered, expired or is not a token at all."""


def _serializer(secret: str, now: datetime | None) -> URLSafeTimedSerializer:
    """A serializer whose clock is ``now`` (a naive value is UTC), or the real clock."""
    if now is None:
        return URLSafeTimedSerializer(secret, salt=SALT)
    stamp = int((now if now.tzinfo else now.replace(tzinfo=UTC)).timestamp())

    class _SignerAt(TimestampSigner):
        def get_timestamp(self) -> int:
            return stamp

    return URLSafeTimedSerializer(secret, salt=SALT, signer=_SignerAt)


def make_token(secret: str, user_id: str, *, now: datetime | None = None) -> str:
    """A URL-safe token that names ``user_id``, signed with ``secret`` and dated ``now``.

    ``now`` defaults to the real clock; passing it makes the token reproducible.
    """
    return _serializer(secret, now).dumps(user_id)


def read_token(
    secret: str,
    token: str,
    max_age_seconds: int | None = DEFAULT_MAX_AGE_SECONDS,
    *,
    now: datetime | None = None,
) -> str:
    """The user id a token was made for, or :class:`InvalidUnsubscribeToken`.

    ``max_age_seconds=None`` accepts a token of any age; ``now`` (default: the real
    clock) is the moment its age is measured at.
    """
    try:
        user_id = _serializer(secret, now).loads(token, max_age=max_age_seconds)
    except BadData as exc:
        raise InvalidUnsubscribeToken(str(exc)) from exc
    if not isinstance(user_id, str) or not user_id:
        raise InvalidUnsubscribeToken("token does not name a user")
    return user_id


def unsubscribe_url(public_url: str, token: str) -> str:
    """``{public_url}/unsubscribe?token=...``, with the token quoted for a query string."""
    return f"{public_url.rstrip('/')}/unsubscribe?token={quote(token, safe='')}"
