"""Signing in to the console: the admin token exchanged for a signed session cookie.

An operator types ``REWARDS_ADMIN_TOKEN`` once; the console answers with a
session cookie signed with ``REWARDS_SECRET_KEY`` (itsdangerous, its own salt, so
no member link can pass for a session, nor a session for a link). The cookie is
``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends
it), ``Secure`` when ``REWARDS_PUBLIC_URL`` is HTTPS, limited to ``/console``, and
expires after :data:`SESSION_SECONDS`. It carries a fingerprint of the admin
token, so changing the token signs everyone out. The client applications' token
(``REWARDS_API_TOKEN``) does not sign in.

Every form carries a CSRF token derived from the session (an HMAC of its random
nonce), checked on every ``POST``; the sign-in form, before there is a session,
uses a short-lived cookie of its own the same way.

Pure functions of the secret, the token and the clock: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from itsdangerous import BadData, TimestampSigner, URLSafeTimedSerializer

from rewards.config import Settings

SESSION_COOKIE = "rewards_console"
SIGN_IN_COOKIE = "rewards_console_sign_in"
COOKIE_PATH = "/console"
SESSION_SECONDS = 8 * 60 * 60
"""A working day: then the operator signs in again."""
SIGN_IN_SECONDS = 30 * 60
"""How long the sign-in form may stay open before it must be reloaded."""
OPERATOR_NAME_MAX = 80

_SESSION_SALT = "rewards.console.session"
_CSRF_SALT = b"rewards.console.csrf:"
_SIGN_IN_SALT = b"rewards.console.sign-in:"


@dataclass(frozen=True)
class Session:
    """A signed-in operator: who they said they are, and the nonce their CSRF tokens come from."""

    nonce: str
    operator: str
    issued_at: datetime


class NotSignedIn(Exception):
    """No session, or one that is forged, expired or made for another admin token."""


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _serializer(settings: Settings, now: datetime | None) -> URLSafeTimedSerializer:
    secret = settings.secret_key.get_secret_value()
    if now is None:
        return URLSafeTimedSerializer(secret, salt=_SESSION_SALT)
    stamp = int(_aware(now).timestamp())

    class _SignerAt(TimestampSigner):
        def get_timestamp(self) -> int:
            return stamp

    return URLSafeTimedSerializer(secret, salt=_SESSION_SALT, signer=_SignerAt)


def token_fingerprint(settings: Settings) -> str:
    """A short digest of the admin token: a session made under another token is refused."""
    token = settings.admin_token.get_secret_value() if settings.admin_token else ""
    return hashlib.sha256(b"rewards.console:" + token.encode()).hexdigest()[:16]


def is_admin_token(settings: Settings, given: str) -> bool:
    """True only for ``REWARDS_ADMIN_TOKEN`` itself (compared in constant time)."""
    if settings.admin_token is None or not given:
        return False
    return hmac.compare_digest(given.encode(), settings.admin_token.get_secret_value().encode())


def operator_name(given: str) -> str:
    """``operator <name>`` as recorded with an operator's changes; ``operator`` without one."""
    name = " ".join(given.split())[:OPERATOR_NAME_MAX]
    return f"operator {name}" if name else "operator"


def new_session(settings: Settings, operator: str, now: datetime) -> str:
    """The cookie value of a new session for ``operator``, issued at ``now``."""
    payload = {"n": secrets.token_urlsafe(18), "o": operator, "t": token_fingerprint(settings)}
    return _serializer(settings, now).dumps(payload)


def read_session(settings: Settings, cookie: str | None, now: datetime) -> Session:
    """The session a cookie carries, or :class:`NotSignedIn`."""
    if not cookie or settings.admin_token is None:
        raise NotSignedIn("no session")
    try:
        payload, issued = _serializer(settings, now).loads(
            cookie, max_age=SESSION_SECONDS, return_timestamp=True
        )
    except BadData as exc:
        raise NotSignedIn(str(exc)) from exc
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("n"), str)
        or not isinstance(payload.get("o"), str)
        or not hmac.compare_digest(str(payload.get("t", "")), token_fingerprint(settings))
    ):
        raise NotSignedIn("not a session of this console")
    return Session(payload["n"], payload["o"], issued)


def _digest(settings: Settings, salt: bytes, nonce: str) -> str:
    secret = settings.secret_key.get_secret_value().encode()
    return hmac.new(secret, salt + nonce.encode(), hashlib.sha256).hexdigest()[:40]


def csrf_token(settings: Settings, session: Session) -> str:
    """The token every form of ``session`` carries."""
    return _digest(settings, _CSRF_SALT, session.nonce)


def csrf_matches(settings: Settings, session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(str(given), csrf_token(settings, session))


def new_sign_in_nonce() -> str:
    """The sign-in form's own nonce (kept in :data:`SIGN_IN_COOKIE`)."""
    return secrets.token_urlsafe(18)


def sign_in_csrf(settings: Settings, nonce: str) -> str:
    return _digest(settings, _SIGN_IN_SALT, nonce)


def sign_in_csrf_matches(settings: Settings, nonce: str | None, given: str | None) -> bool:
    return (
        bool(nonce)
        and bool(given)
        and hmac.compare_digest(str(given), sign_in_csrf(settings, str(nonce)))
    )


def cookie_is_secure(settings: Settings) -> bool:
    """Secure cookies when the service is reached over HTTPS."""
    return settings.public_url.lower().startswith("https://")


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path, never another site."""
    if (
        target
        and target.startswith(COOKIE_PATH)
        and not target.startswith("//")
        and "\\" not in target
        and all(32 <= ord(c) < 127 for c in target)
    ):
        return target
    return COOKIE_PATH
