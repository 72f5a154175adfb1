"""Unsubscribe tokens: only a fresh token signed with our secret names a member."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from itsdangerous import URLSafeTimedSerializer

from rewards.notifications.unsubscribe import (
    DEFAULT_MAX_AGE_SECONDS,
    InvalidUnsubscribeToken,
    make_token,
    read_token,
    unsubscribe_url,
)

SECRET = "test-secret"
ISSUED = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def _flip(char: str) -> str:
    return "B" if char == "A" else "A"


def test_a_token_names_the_user_it_was_made_for() -> None:
    token = make_token(SECRET, "cuser123")
    assert read_token(SECRET, token) == "cuser123"


def test_a_token_made_at_a_given_moment_is_reproducible() -> None:
    assert make_token(SECRET, "cuser123", now=ISSUED) == make_token(SECRET, "cuser123", now=ISSUED)
    assert make_token(SECRET, "cuser123", now=ISSUED) != make_token(SECRET, "cuser456", now=ISSUED)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    forged = make_token("someone-elses-secret", "cuser123")
    with pytest.raises(InvalidUnsubscribeToken):
        read_token(SECRET, forged)


@pytest.mark.parametrize("position", [0, 1, -10], ids=["payload", "payload-2", "signature"])
def test_an_altered_token_is_refused(position: int) -> None:
    token = make_token(SECRET, "cuser123")
    chars = list(token)
    chars[position] = _flip(chars[position])
    altered = "".join(chars)
    assert altered != token
    with pytest.raises(InvalidUnsubscribeToken):
        read_token(SECRET, altered)


def test_a_token_for_another_purpose_is_refused() -> None:
    """The salt keeps out a token that the same secret signed for something else."""
    other = URLSafeTimedSerializer(SECRET, salt="password-reset").dumps("cuser123")
    with pytest.raises(InvalidUnsubscribeToken):
        read_token(SECRET, other)


def test_a_token_older_than_the_default_max_age_is_refused() -> None:
    token = make_token(SECRET, "cuser123", now=ISSUED)
    fresh = ISSUED + timedelta(seconds=DEFAULT_MAX_AGE_SECONDS)
    assert read_token(SECRET, token, now=fresh) == "cuser123"
    with pytest.raises(InvalidUnsubscribeToken, match=r"expired|age"):
        read_token(SECRET, token, now=fresh + timedelta(seconds=1))


def test_a_token_older_than_a_given_max_age_is_refused() -> None:
    token = make_token(SECRET, "cuser123", now=ISSUED)
    with pytest.raises(InvalidUnsubscribeToken):
        read_token(SECRET, token, max_age_seconds=60, now=ISSUED + timedelta(minutes=2))


def test_without_max_age_an_old_token_is_accepted() -> None:
    token = make_token(SECRET, "cuser123", now=ISSUED)
    later = ISSUED + timedelta(days=3650)
    assert read_token(SECRET, token, max_age_seconds=None, now=later) == "cuser123"


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "not a token at all", "é.é.é", "...."])
def test_garbage_is_refused(garbage: str) -> None:
    with pytest.raises(InvalidUnsubscribeToken):
        read_token(SECRET, garbage)


def test_the_url_carries_the_token_quoted() -> None:
    token = make_token(SECRET, "cuser123")
    url = unsubscribe_url("https://rewards.example.com/", token)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("https", "rewards.example.com")
    assert parts.path == "/unsubscribe"
    assert parse_qs(parts.query) == {"token": [token]}


def test_the_url_quotes_characters_that_would_break_the_query() -> None:
    assert (
        unsubscribe_url("http://x", "a+b/c=d&e") == "http://x/unsubscribe?token=a%2Bb%2Fc%3Dd%26e"
    )
