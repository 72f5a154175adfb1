"""Member pages: one strict, autoescaping layout, private headers on every answer."""

from __future__ import annotations

from typing import Any

import jinja2
import pytest

from rewards.api.pages import (
    BALANCE,
    PRIVATE_HEADERS,
    REFUSED,
    RESUBSCRIBED,
    TEMPLATE_NAMES,
    UNSUBSCRIBE_CONFIRM,
    UNSUBSCRIBED,
    Pages,
)

BALANCE_CONTEXT: dict[str, Any] = {
    "name": "Ann Lee",
    "available_phrase": "175 points",
    "today_text": "Wednesday 25 November 2026",
    "window_days": 90,
    "expiring": [
        {
            "date_text": "Wednesday 2 December 2026",
            "when": "in 7 days",
            "points_phrase": "100 points",
        }
    ],
    "unsubscribe_url": "unsubscribe?token=t",
    "resubscribe_url": "resubscribe?token=r",
}
CONTEXTS: dict[str, dict[str, Any]] = {
    BALANCE: BALANCE_CONTEXT,
    UNSUBSCRIBE_CONFIRM: {"action": "unsubscribe?token=t"},
    UNSUBSCRIBED: {"resubscribe_url": "resubscribe?token=r"},
    RESUBSCRIBED: {"balance_url": "balance?token=b"},
    REFUSED: {"detail": "This link is invalid.", "advice": "Use the latest one."},
}


@pytest.fixture(scope="module")
def pages() -> Pages:
    return Pages(programme="Acme Rewards")


def test_every_page_has_a_context_here() -> None:
    assert set(CONTEXTS) == set(TEMPLATE_NAMES)


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_every_page_is_on_the_one_layout_and_private(pages: Pages, template: str) -> None:
    response = pages.render(template, **CONTEXTS[template])
    html = bytes(response.body).decode()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert '<p class="programme">Acme Rewards</p>' in html
    assert "max-width: 560px" in html
    for header, value in PRIVATE_HEADERS.items():
        assert response.headers[header] == value


def test_a_page_that_names_a_missing_value_fails(pages: Pages) -> None:
    context = {k: v for k, v in BALANCE_CONTEXT.items() if k != "today_text"}
    with pytest.raises(jinja2.UndefinedError, match="today_text"):
        pages.render(BALANCE, **context)


def test_values_are_escaped(pages: Pages) -> None:
    response = pages.render(BALANCE, **{**BALANCE_CONTEXT, "name": '<script>alert("x")</script>'})
    html = bytes(response.body).decode()
    assert "<script>" not in html
    assert "Hi &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;," in html


def test_the_balance_page_says_when_reminders_are_off(pages: Pages) -> None:
    html = bytes(pages.render(BALANCE, **{**BALANCE_CONTEXT, "unsubscribe_url": None}).body)
    assert b"Expiry reminders are off" in html
    assert b"unsubscribe?token=" not in html
    assert b'<form method="post" action="resubscribe?token=r">' in html
