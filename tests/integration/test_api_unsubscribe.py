"""One-click unsubscribe (RFC 8058) over real HTTP, down to the link in a real email."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from html.parser import HTMLParser
from urllib.parse import urljoin

import httpx
import pytest
from sqlalchemy import Engine, text

from rewards.members.links import LinkPurpose, make_link_token
from tests.integration.api_server import (
    SECRET_KEY,
    LiveApi,
    assert_problem,
    create_user,
    insert_credit,
    json_of,
    noon,
    open_account,
    today,
)

pytest_plugins = ["tests.integration.api_server"]

ONE_CLICK = "List-Unsubscribe=One-Click"
FORM = {"content-type": "application/x-www-form-urlencoded"}
HTML = {"accept": "text/html,application/xhtml+xml"}
JSON = {"accept": "application/json"}


@pytest.fixture
def members(live_api: LiveApi) -> tuple[str, str]:
    """Two members with reminders on: the one the link is for, and someone else."""
    return create_user(live_api)["id"], create_user(live_api, email="bo@example.com")["id"]


def reminders_on(api: LiveApi, user_id: str) -> bool:
    return bool(json_of(api.client.get(f"/users/{user_id}"), 200)["emailNotifications"])


def one_click(api: LiveApi, token: str, **headers: str) -> httpx.Response:
    return api.anonymous.post(
        "/unsubscribe", params={"token": token}, content=ONE_CLICK, headers={**FORM, **headers}
    )


def make_token(secret: str, user_id: str, *, now: datetime | None = None) -> str:
    """An unsubscribe link's token."""
    return make_link_token(secret, LinkPurpose.UNSUBSCRIBE, user_id, now=now)


class FormReader(HTMLParser):
    """The first form of a page: its action and its hidden fields."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.method: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form" and self.action is None:
            self.action, self.method = values.get("action"), values.get("method")
        elif tag == "input" and values.get("type") == "hidden":
            self.fields[values["name"]] = values.get("value", "")


# -- the link works ---------------------------------------------------------------------------


def test_following_the_link_shows_a_confirmation_page_and_changes_nothing(
    live_api: LiveApi, members: tuple[str, str]
) -> None:
    member, _ = members
    response = live_api.anonymous.get(
        "/unsubscribe", params={"token": make_token(SECRET_KEY, member)}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<form" in response.text
    assert reminders_on(live_api, member)


def test_one_click_turns_reminders_off_for_that_member_only(
    live_api: LiveApi, members: tuple[str, str]
) -> None:
    member, other = members
    response = one_click(live_api, make_token(SECRET_KEY, member))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert not reminders_on(live_api, member)
    assert reminders_on(live_api, other)


def test_the_confirmation_pages_button_unsubscribes(
    live_api: LiveApi, members: tuple[str, str]
) -> None:
    member, _ = members
    url = live_api.url("/unsubscribe")
    page = live_api.anonymous.get(url, params={"token": make_token(SECRET_KEY, member)})
    form = FormReader()
    form.feed(page.text)
    assert (form.method or "").lower() == "post"
    assert form.action is not None
    response = live_api.anonymous.post(urljoin(url, form.action), data=form.fields)
    assert response.status_code == 200, response.text
    assert not reminders_on(live_api, member)


def test_unsubscribing_twice_is_harmless(live_api: LiveApi, members: tuple[str, str]) -> None:
    member, _ = members
    token = make_token(SECRET_KEY, member)
    assert one_click(live_api, token).status_code == 200
    assert one_click(live_api, token).status_code == 200
    assert not reminders_on(live_api, member)


def test_a_post_that_is_not_one_click_is_refused(
    live_api: LiveApi, members: tuple[str, str]
) -> None:
    member, _ = members
    response = live_api.anonymous.post(
        "/unsubscribe",
        params={"token": make_token(SECRET_KEY, member)},
        content="List-Unsubscribe=Maybe",
        headers=FORM,
    )
    assert_problem(response, 400)
    assert reminders_on(live_api, member)


# -- bad links ----------------------------------------------------------------------------------


def bad_token(kind: str, member: str, other: str) -> str:
    if kind == "forged":  # signed with a secret that is not the server's
        return make_token("another-secret-entirely", member)
    if kind == "altered":  # another member's id pasted over the signed one
        _, _, signature = make_token(SECRET_KEY, member).partition(".")
        return make_token(SECRET_KEY, other).partition(".")[0] + "." + signature
    if kind == "expired":
        return make_token(SECRET_KEY, member, now=datetime.now(UTC) - timedelta(days=401))
    if kind == "unknown member":
        return make_token(SECRET_KEY, "nobody")
    return "garbage"


KINDS = ["forged", "altered", "expired", "unknown member", "garbage"]


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_token_is_refused_as_html_to_browsers(
    live_api: LiveApi, members: tuple[str, str], kind: str, method: str
) -> None:
    member, other = members
    token = bad_token(kind, member, other)
    response = live_api.anonymous.request(
        method, "/unsubscribe", params={"token": token}, content=ONE_CLICK, headers={**FORM, **HTML}
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert "Nothing was changed" in response.text
    assert "Traceback" not in response.text
    assert reminders_on(live_api, member)
    assert reminders_on(live_api, other)


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_token_is_refused_as_a_problem_to_other_clients(
    live_api: LiveApi, members: tuple[str, str], kind: str, method: str
) -> None:
    member, other = members
    token = bad_token(kind, member, other)
    response = live_api.anonymous.request(
        method, "/unsubscribe", params={"token": token}, content=ONE_CLICK, headers={**FORM, **JSON}
    )
    assert "Nothing was changed" in assert_problem(response, 400)["detail"]
    assert reminders_on(live_api, member)
    assert reminders_on(live_api, other)


def test_a_token_is_required(live_api: LiveApi) -> None:
    assert_problem(live_api.anonymous.post("/unsubscribe", content=ONE_CLICK, headers=FORM), 422)


def test_unsubscribing_does_not_hold_up_other_requests_while_it_waits_for_the_database(
    live_api: LiveApi, engine: Engine, members: tuple[str, str]
) -> None:
    member, _ = members
    touch = text('UPDATE "User" SET "name" = "name" WHERE "id" = :id')
    with ThreadPoolExecutor(max_workers=1) as pool:
        with engine.begin() as conn:
            conn.execute(touch, {"id": member})  # the member's row stays locked until the commit
            pending = pool.submit(one_click, live_api, make_token(SECRET_KEY, member))
            time.sleep(0.3)  # the unsubscribe is now waiting for that lock
            started = time.monotonic()
            try:
                health: int | None = live_api.anonymous.get("/healthz", timeout=2).status_code
            except httpx.TimeoutException:
                health = None
            waited = time.monotonic() - started
        assert pending.result(timeout=30).status_code == 200
    assert health == 200, f"/healthz got no answer in {waited:.1f}s"
    assert waited < 1.0
    assert not reminders_on(live_api, member)


# -- end to end: the email's own header ------------------------------------------------------------


def unsubscribe_url(message: EmailMessage) -> str:
    """The one https?:// URL of a ``List-Unsubscribe`` header."""
    header = " ".join(str(message["List-Unsubscribe"]).split())
    [url] = re.findall(r"<(https?://[^>]+)>", header)
    return str(url)


def test_the_unsubscribe_header_of_a_real_reminder_opts_the_member_out(
    live_api: LiveApi, engine: Engine
) -> None:
    run_day = today() - timedelta(days=60)
    member = create_user(live_api, email="ann@example.com", name="Ann Lee")["id"]
    account = open_account(live_api, member)
    earned = noon(run_day - timedelta(days=30))
    insert_credit(engine, account, 100, noon(run_day + timedelta(days=7)), earned)
    insert_credit(engine, account, 50, noon(run_day + timedelta(days=31)), earned)
    job = "/admin/jobs/check-expiring-points"

    first = json_of(live_api.admin.post(job, json={"asOf": run_day.isoformat()}), 200)
    assert first["byType"] == {"EXPIRATION_7_DAYS": {"SENT": 1}}
    [message] = live_api.smtp.messages
    assert message["List-Unsubscribe-Post"] == ONE_CLICK
    url = unsubscribe_url(message)
    assert url.startswith(live_api.url("/unsubscribe?token="))

    response = live_api.anonymous.post(url, content=ONE_CLICK, headers=FORM)
    assert response.status_code == 200, response.text
    assert not reminders_on(live_api, member)

    next_day = (run_day + timedelta(days=1)).isoformat()
    second = json_of(live_api.admin.post(job, json={"asOf": next_day}), 200)
    assert second["byType"] == {"EXPIRATION_30_DAYS": {"SKIPPED": 1}}
    skipped = json_of(
        live_api.admin.get("/admin/notifications", params={"userId": member, "status": "SKIPPED"}),
        200,
    )
    [row] = skipped["items"]
    assert (row["notificationType"], row["expirationDate"], row["failureReason"]) == (
        "EXPIRATION_30_DAYS",
        (run_day + timedelta(days=31)).isoformat(),
        "user opted out",
    )
    assert row["pointsExpiring"] == 50
    assert len(live_api.smtp.messages) == 1
