"""The member's own pages, met the way a member meets them: from a link in a real reminder.

The reminder's "See your balance" link opens a page with no login: the signed
token in the link is the credential. It shows what the member can spend over all
their accounts, what expires on which date, and the way to stop the reminders.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from sqlalchemy import Engine

from rewards.members.links import LinkPurpose, make_link_token
from rewards.notifications.messages import format_date
from tests.integration.api_server import (
    SECRET_KEY,
    LiveApi,
    assert_problem,
    create_user,
    earn,
    json_of,
    noon,
    noon_in,
    open_account,
    running_api,
    today,
)

pytest_plugins = ["tests.integration.api_server"]

JOB = "/admin/jobs/check-expiring-points"
HTML = {"accept": "text/html,application/xhtml+xml"}
JSON = {"accept": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
ONE_CLICK = "List-Unsubscribe=One-Click"
BALANCE, UNSUBSCRIBE = LinkPurpose.BALANCE, LinkPurpose.UNSUBSCRIBE


class PageReader(HTMLParser):
    """What a reader of a page sees: its text, its links, its table rows, its forms."""

    def __init__(self) -> None:
        super().__init__()
        self.words: list[str] = []
        self.links: list[tuple[str, str]] = []  # (text, href)
        self.rows: list[list[str]] = []
        self.forms: list[tuple[str, str, dict[str, str]]] = []  # (method, action, hidden fields)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self._href: str | None = None
        self._link_words: list[str] = []
        self._cell: list[str] | None = None
        self._hidden = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values))
        if tag in ("style", "title"):
            self._hidden = True
        elif tag == "a":
            self._href, self._link_words = values.get("href", ""), []
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "form":
            self.forms.append((values.get("method", "get").lower(), values.get("action", ""), {}))
        elif tag == "input" and values.get("type") == "hidden" and self.forms:
            self.forms[-1][2][values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "title"):
            self._hidden = False
        elif tag == "a" and self._href is not None:
            self.links.append((" ".join(self._link_words), self._href))
            self._href = None
        elif tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append(" ".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        words = data.split()
        self.words += words
        if self._href is not None:
            self._link_words += words
        if self._cell is not None:
            self._cell += words

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def link(self, text: str) -> str:
        """The href of the one link that reads ``text``."""
        [href] = [h for t, h in self.links if t == text]
        return href


def read_page(html: str) -> PageReader:
    reader = PageReader()
    reader.feed(html)
    reader.close()
    return reader


def reminders_on(api: LiveApi, user_id: str) -> bool:
    return bool(json_of(api.client.get(f"/users/{user_id}"), 200)["emailNotifications"])


def part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body(preferencelist=(subtype,))
    assert isinstance(body, EmailMessage)
    content: str = body.get_content()
    return content


def balance_links(message: EmailMessage) -> tuple[str, str]:
    """The "See your balance" link of the HTML part and the balance URL of the text part."""
    html_link = read_page(part(message, "html")).link("See your balance")
    lines = [line.strip() for line in part(message, "plain").splitlines()]
    text_link = lines[lines.index("Your balance and what expires when:") + 1]
    return html_link, text_link


def get_anonymously(api: LiveApi, url: str, **headers: str) -> httpx.Response:
    response = api.anonymous.get(url, headers=headers)
    assert "authorization" not in response.request.headers
    return response


def assert_private(response: httpx.Response) -> None:
    """The URL carries a credential: never cached, never sent on as a referrer."""
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"


def assert_private_page(response: httpx.Response, status: int = 200) -> PageReader:
    """A member page: HTML for a phone, private, loading nothing from elsewhere."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert_private(response)
    assert "Traceback" not in response.text
    page = read_page(response.text)
    assert ("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}) in (
        page.tags
    )
    external = [
        (tag, values)
        for tag, values in page.tags
        if tag in ("script", "img", "link", "iframe")
        or any(v.startswith(("http:", "https:", "//")) for v in values.values())
    ]
    assert external == [], "a member page loads nothing from elsewhere"
    return page


@pytest.fixture
def member(live_api: LiveApi) -> dict[str, Any]:
    """Ann, with two accounts: 100 points expiring in 7 days, 40 in 45 days, 10 in 200 days
    and 25 that never expire."""
    ann = create_user(live_api, email="ann@example.com", name="Ann Lee")
    first, second = open_account(live_api, ann["id"]), open_account(live_api, ann["id"])
    earn(live_api, first, 100, noon_in(7)[1])
    earn(live_api, second, 40, noon_in(45)[1])
    earn(live_api, second, 10, noon_in(200)[1])
    earn(live_api, second, 25)
    return ann


def reminder_of(api: LiveApi) -> EmailMessage:
    """Run the job for today through the API; the one reminder the SMTP server received."""
    summary = json_of(api.admin.post(JOB, json={"asOf": today().isoformat()}), 200)
    assert summary["byType"] == {"EXPIRATION_7_DAYS": {"SENT": 1}}
    [message] = api.smtp.messages
    return message


# -- the link in the email ----------------------------------------------------------------------


def test_the_balance_link_in_a_real_reminder_opens_the_members_own_page(
    live_api: LiveApi, member: dict[str, Any]
) -> None:
    html_link, text_link = balance_links(reminder_of(live_api))
    assert html_link == text_link
    assert html_link.startswith(live_api.base_url)

    page = assert_private_page(get_anonymously(live_api, html_link, **HTML))
    assert "Ann Lee" in page.text
    assert "175 points" in page.text  # 100 + 40 + 10 + 25, over both accounts
    in_7, in_45, in_200 = (today() + timedelta(days=d) for d in (7, 45, 200))
    expiring = {row[0]: row[-1] for row in page.rows if row}
    assert any(k.startswith(format_date(in_7)) and v == "100 points" for k, v in expiring.items())
    assert any(k.startswith(format_date(in_45)) and v == "40 points" for k, v in expiring.items())
    assert format_date(in_200) not in page.text  # beyond the next 90 days


def test_the_balance_link_opens_for_a_client_that_asks_for_anything(
    live_api: LiveApi, member: dict[str, Any]
) -> None:
    html_link, _ = balance_links(reminder_of(live_api))
    assert_private_page(get_anonymously(live_api, html_link))


def test_the_balance_pages_unsubscribe_link_stops_the_reminders(
    live_api: LiveApi, member: dict[str, Any]
) -> None:
    balance_url, _ = balance_links(reminder_of(live_api))
    page = assert_private_page(get_anonymously(live_api, balance_url, **HTML))
    confirm_url = urljoin(balance_url, page.link("Stop these reminders"))
    assert "/unsubscribe?token=" in confirm_url

    confirm = assert_private_page(get_anonymously(live_api, confirm_url, **HTML))
    [(method, action, fields)] = confirm.forms
    assert method == "post"
    assert reminders_on(live_api, member["id"])
    done = live_api.anonymous.post(urljoin(confirm_url, action), data=fields, headers=HTML)
    assert_private_page(done)
    assert not reminders_on(live_api, member["id"])

    again = assert_private_page(get_anonymously(live_api, balance_url, **HTML))
    assert "reminders are off" in again.text
    assert [text for text, href in again.links if "unsubscribe" in href] == []


def test_a_member_with_nothing_expiring_and_reminders_off_is_told_so(live_api: LiveApi) -> None:
    bo = create_user(live_api, email="bo@example.com", name=None, emailNotifications=False)
    token = make_link_token(SECRET_KEY, BALANCE, bo["id"])
    page = assert_private_page(get_anonymously(live_api, f"/balance?token={token}", **HTML))
    assert "Hello," in page.text
    assert "0 points" in page.text
    assert "None of your points expire in the next 90 days." in page.text
    assert "Expiry reminders are off" in page.text
    assert [href for _, href in page.links if "unsubscribe" in href] == []


def test_the_members_name_cannot_inject_markup(live_api: LiveApi) -> None:
    eve = create_user(live_api, email="eve@example.com", name="<b onmouseover=x>Eve</b>")
    token = make_link_token(SECRET_KEY, BALANCE, eve["id"])
    response = get_anonymously(live_api, f"/balance?token={token}", **HTML)
    page = assert_private_page(response)
    assert "<b onmouseover=x>Eve</b>" in page.text  # shown as text ...
    assert ("b", {"onmouseover": "x"}) not in page.tags  # ... never as markup


def test_expirations_are_listed_per_calendar_date_in_the_programmes_time_zone(
    live_api: LiveApi, engine: Engine, database_url: str
) -> None:
    """01:00 and 20:00 UTC on one day are two dates in Auckland (UTC+12/13)."""
    ann = create_user(live_api)
    account = open_account(live_api, ann["id"])
    day = today() + timedelta(days=10)
    for hour, points in ((1, 30), (20, 12)):
        earn(live_api, account, points, noon(day).replace(hour=hour).isoformat() + "Z")
    token = make_link_token(SECRET_KEY, BALANCE, ann["id"])

    def rows(api: LiveApi) -> list[list[str]]:
        page = assert_private_page(get_anonymously(api, f"/balance?token={token}", **HTML))
        return [[row[0].split(" in ")[0], row[-1]] for row in page.rows[1:]]

    assert rows(live_api) == [[format_date(day), "42 points"]]
    with running_api(engine, database_url, live_api.smtp, timezone="Pacific/Auckland") as nz:
        assert rows(nz) == [
            [format_date(day), "30 points"],
            [format_date(day + timedelta(days=1)), "12 points"],
        ]


# -- links that do not work ---------------------------------------------------------------------


def test_a_balance_link_still_works_near_the_end_of_its_90_days(
    live_api: LiveApi, member: dict[str, Any]
) -> None:
    issued = datetime.now(UTC) - timedelta(days=90) + timedelta(hours=1)
    token = make_link_token(SECRET_KEY, BALANCE, member["id"], now=issued)
    assert_private_page(get_anonymously(live_api, f"/balance?token={token}", **HTML))


def bad_balance_token(kind: str, member: str, other: str) -> str:
    if kind == "unsubscribe token":  # a real, fresh link, made for the other page
        return make_link_token(SECRET_KEY, UNSUBSCRIBE, member)
    if kind == "forged":  # signed with a secret that is not the server's
        return make_link_token("another-secret-entirely", BALANCE, member)
    if kind == "altered":  # another member's id pasted over the signed one
        _, _, signature = make_link_token(SECRET_KEY, BALANCE, member).partition(".")
        return make_link_token(SECRET_KEY, BALANCE, other).partition(".")[0] + "." + signature
    if kind == "expired":
        issued = datetime.now(UTC) - timedelta(days=90, minutes=1)
        return make_link_token(SECRET_KEY, BALANCE, member, now=issued)
    if kind == "unknown member":
        return make_link_token(SECRET_KEY, BALANCE, "nobody")
    return "garbage"


KINDS = ["unsubscribe token", "forged", "altered", "expired", "unknown member", "garbage"]


@pytest.fixture
def other(live_api: LiveApi) -> str:
    return str(create_user(live_api, email="bo@example.com", name="Bo")["id"])


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_balance_link_gets_a_friendly_page_in_a_browser(
    live_api: LiveApi, member: dict[str, Any], other: str, kind: str
) -> None:
    token = bad_balance_token(kind, member["id"], other)
    response = get_anonymously(live_api, f"/balance?token={token}", **HTML)
    page = assert_private_page(response, 400)
    assert "This balance link is invalid or has expired." in page.text
    assert "latest reminder email" in page.text
    assert "175 points" not in page.text
    assert "Ann Lee" not in page.text


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_balance_link_is_a_problem_to_other_clients(
    live_api: LiveApi, member: dict[str, Any], other: str, kind: str
) -> None:
    token = bad_balance_token(kind, member["id"], other)
    response = get_anonymously(live_api, f"/balance?token={token}", **JSON)
    assert "invalid or has expired" in assert_problem(response, 400)["detail"]
    assert_private(response)


@pytest.mark.parametrize("accept", [HTML, JSON], ids=["html", "json"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_balance_link_cannot_unsubscribe(
    live_api: LiveApi, member: dict[str, Any], method: str, accept: dict[str, str]
) -> None:
    token = make_link_token(SECRET_KEY, BALANCE, member["id"])
    response = live_api.anonymous.request(
        method,
        "/unsubscribe",
        params={"token": token},
        content=ONE_CLICK,
        headers={**FORM, **accept},
    )
    assert response.status_code == 400, response.text
    assert "Nothing was changed" in response.text
    assert_private(response)
    assert reminders_on(live_api, member["id"])


def test_the_balance_link_of_a_real_reminder_cannot_unsubscribe(
    live_api: LiveApi, member: dict[str, Any]
) -> None:
    balance_url, _ = balance_links(reminder_of(live_api))
    token = balance_url.partition("?token=")[2]
    response = live_api.anonymous.post(
        "/unsubscribe", params={"token": token}, content=ONE_CLICK, headers=FORM
    )
    assert_problem(response, 400)
    assert reminders_on(live_api, member["id"])


def test_the_unsubscribe_link_of_a_real_reminder_cannot_open_the_balance_page(
    live_api: LiveApi, member: dict[str, Any]
) -> None:
    message = reminder_of(live_api)
    [unsubscribe_url] = [h for t, h in read_page(part(message, "html")).links if "Stop" in t]
    token = unsubscribe_url.partition("?token=")[2]
    page = assert_private_page(get_anonymously(live_api, f"/balance?token={token}", **HTML), 400)
    assert "175 points" not in page.text


def test_a_balance_link_needs_a_token(live_api: LiveApi) -> None:
    assert_problem(get_anonymously(live_api, "/balance"), 422)
