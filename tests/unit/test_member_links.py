"""Member links: only a fresh token signed with our secret for this purpose names a member."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
from itsdangerous import URLSafeTimedSerializer

from rewards.members.links import (
    DAY_SECONDS,
    MAX_AGE_SECONDS,
    InvalidLinkToken,
    LinkPurpose,
    link_path,
    link_url,
    make_link_token,
    read_link_token,
)

SECRET = "test-secret"
ISSUED = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
PURPOSES = list(LinkPurpose)
UNSUBSCRIBE, BALANCE = LinkPurpose.UNSUBSCRIBE, LinkPurpose.BALANCE


def _flip(char: str) -> str:
    return "B" if char == "A" else "A"


@pytest.mark.parametrize("purpose", PURPOSES)
def test_a_token_names_the_user_it_was_made_for(purpose: LinkPurpose) -> None:
    token = make_link_token(SECRET, purpose, "cuser123")
    assert read_link_token(SECRET, purpose, token) == "cuser123"


@pytest.mark.parametrize("purpose", PURPOSES)
def test_a_token_made_at_a_given_moment_is_reproducible(purpose: LinkPurpose) -> None:
    first = make_link_token(SECRET, purpose, "cuser123", now=ISSUED)
    assert first == make_link_token(SECRET, purpose, "cuser123", now=ISSUED)
    assert first != make_link_token(SECRET, purpose, "cuser456", now=ISSUED)


@pytest.mark.parametrize("purpose", PURPOSES)
def test_a_token_signed_with_another_secret_is_refused(purpose: LinkPurpose) -> None:
    forged = make_link_token("someone-elses-secret", purpose, "cuser123")
    with pytest.raises(InvalidLinkToken):
        read_link_token(SECRET, purpose, forged)


@pytest.mark.parametrize("purpose", PURPOSES)
@pytest.mark.parametrize("position", [0, 1, -10], ids=["payload", "payload-2", "signature"])
def test_an_altered_token_is_refused(purpose: LinkPurpose, position: int) -> None:
    token = make_link_token(SECRET, purpose, "cuser123")
    chars = list(token)
    chars[position] = _flip(chars[position])
    altered = "".join(chars)
    assert altered != token
    with pytest.raises(InvalidLinkToken):
        read_link_token(SECRET, purpose, altered)


@pytest.mark.parametrize(
    ("made_for", "used_for"),
    [(BALANCE, UNSUBSCRIBE), (UNSUBSCRIBE, BALANCE)],
    ids=["balance-as-unsubscribe", "unsubscribe-as-balance"],
)
def test_a_token_made_for_one_purpose_is_refused_for_the_other(
    made_for: LinkPurpose, used_for: LinkPurpose
) -> None:
    token = make_link_token(SECRET, made_for, "cuser123", now=ISSUED)
    with pytest.raises(InvalidLinkToken):
        read_link_token(SECRET, used_for, token, now=ISSUED)


@pytest.mark.parametrize("purpose", PURPOSES)
def test_a_token_signed_for_something_else_entirely_is_refused(purpose: LinkPurpose) -> None:
    other = URLSafeTimedSerializer(SECRET, salt="password-reset").dumps("cuser123")
    with pytest.raises(InvalidLinkToken):
        read_link_token(SECRET, purpose, other)


def test_unsubscribe_links_already_mailed_keep_working() -> None:
    """The unsubscribe salt is the one the first emails were signed with."""
    mailed = URLSafeTimedSerializer(SECRET, salt="unsubscribe").dumps("cuser123")
    assert read_link_token(SECRET, UNSUBSCRIBE, mailed) == "cuser123"


@pytest.mark.parametrize(
    ("purpose", "days"), [(UNSUBSCRIBE, 400), (BALANCE, 90)], ids=["unsubscribe", "balance"]
)
def test_each_purpose_has_its_max_age(purpose: LinkPurpose, days: int) -> None:
    assert MAX_AGE_SECONDS[purpose] == days * DAY_SECONDS


@pytest.mark.parametrize("purpose", PURPOSES)
def test_a_token_older_than_its_purposes_max_age_is_refused(purpose: LinkPurpose) -> None:
    token = make_link_token(SECRET, purpose, "cuser123", now=ISSUED)
    last_moment = ISSUED + timedelta(seconds=MAX_AGE_SECONDS[purpose])
    assert read_link_token(SECRET, purpose, token, now=last_moment) == "cuser123"
    with pytest.raises(InvalidLinkToken, match=r"expired|age"):
        read_link_token(SECRET, purpose, token, now=last_moment + timedelta(seconds=1))


def test_a_balance_link_outlives_the_points_of_the_earliest_default_reminder() -> None:
    """The 30-day reminder's link still opens the page well after those points expired."""
    token = make_link_token(SECRET, BALANCE, "cuser123", now=ISSUED)
    after_expiry = ISSUED + timedelta(days=30 + 59)
    assert read_link_token(SECRET, BALANCE, token, now=after_expiry) == "cuser123"


def test_a_token_older_than_a_given_max_age_is_refused() -> None:
    token = make_link_token(SECRET, UNSUBSCRIBE, "cuser123", now=ISSUED)
    with pytest.raises(InvalidLinkToken):
        read_link_token(
            SECRET, UNSUBSCRIBE, token, max_age_seconds=60, now=ISSUED + timedelta(minutes=2)
        )


@pytest.mark.parametrize("purpose", PURPOSES)
@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "not a token at all", "é.é.é", "...."])
def test_garbage_is_refused(purpose: LinkPurpose, garbage: str) -> None:
    with pytest.raises(InvalidLinkToken):
        read_link_token(SECRET, purpose, garbage)


@pytest.mark.parametrize(
    ("purpose", "path"), [(UNSUBSCRIBE, "/unsubscribe"), (BALANCE, "/balance")]
)
def test_the_url_carries_the_token_quoted(purpose: LinkPurpose, path: str) -> None:
    token = make_link_token(SECRET, purpose, "cuser123")
    parts = urlsplit(link_url("https://rewards.example.com/", purpose, token))
    assert (parts.scheme, parts.netloc) == ("https", "rewards.example.com")
    assert parts.path == path
    assert parse_qs(parts.query) == {"token": [token]}


def test_the_url_quotes_characters_that_would_break_the_query() -> None:
    assert (
        link_url("http://x", UNSUBSCRIBE, "a+b/c=d&e")
        == "http://x/unsubscribe?token=a%2Bb%2Fc%3Dd%26e"
    )


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("https://rewards.example.com/balance?token=x", "https://rewards.example.com/unsubscribe"),
        (
            "https://shop.example/rewards/balance?token=x",
            "https://shop.example/rewards/unsubscribe",
        ),
    ],
)
def test_a_link_path_leads_to_the_page_next_to_the_current_one(page: str, expected: str) -> None:
    """Relative, so a page links to its neighbour under whatever prefix it is served at."""
    assert urljoin(page, link_path(UNSUBSCRIBE, "t.o.k")) == expected + "?token=t.o.k"
