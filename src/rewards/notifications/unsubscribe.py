"""Signed unsubscribe tokens: the one-click link proves who it is for without a login.

The token carries the member's id and the time it was issued, signed with the
service's secret key. Anyone holding the link may unsubscribe that member (and
nobody else), which is what a one-click link in an email has to allow; a link
older than ``DEFAULT_MAX_AGE_SECONDS`` is refused so a leaked old email does not
work forever. Pure functions: no I/O, no database.
"""

from __future__ import annotations

from urllib.parse import quote

from itsdangerous import BadData, URLSafeTimedSerializer

SALT = "unsubscribe"
DEFAULT_MAX_AGE_SECONDS = 400 * 24 * 60 * 60
"""Long enough to outlive the longest sensible reminder tier (a year ahead)."""


class InvalidUnsubscribeToken(Exception):
    """The token was forged, altered, expired or is not a token at all."""


def _serializer(secret: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt=SALT)


def make_token(secret: str, user_id: str) -> str:
    """A URL-safe token that names ``user_id`` and was signed with ``secret`` now."""
    return _serializer(secret).dumps(user_id)


def read_token(
    secret: str, token: str, max_age_seconds: int | None = DEFAULT_MAX_AGE_SECONDS
) -> str:
    """The user id a token was made for, or :class:`InvalidUnsubscribeToken`.

    ``max_age_seconds=None`` accepts a token of any age.
    """
    try:
        user_id = _serializer(secret).loads(token, max_age=max_age_seconds)
    except BadData as exc:
        raise InvalidUnsubscribeToken(str(exc)) from exc
    if not isinstance(user_id, str) or not user_id:
        raise InvalidUnsubscribeToken("token does not name a user")
    return user_id


def unsubscribe_url(public_url: str, token: str) -> str:
    """``{public_url}/unsubscribe?token=...``, with the token quoted for a query string."""
    return f"{public_url.rstrip('/')}/unsubscribe?token={quote(token, safe='')}"
