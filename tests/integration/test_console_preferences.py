"""Every way a member's reminder preference changes is recorded: who, when, how.

The member's own pages (the unsubscribe link, turning reminders back on from the
balance page), the API, and ``rewards members opt-out FILE`` from the shell.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
from sqlalchemy import Engine, select

from rewards.members.links import LinkPurpose, make_link_token
from rewards.models import PreferenceChange, User
from tests.integration.api_server import SECRET_KEY, LiveApi, create_user
from tests.integration.console_client import ConsoleClient, Page
from tests.process_helpers import Shop, json_output, rewards_env, run_rewards

pytest_plugins = ["tests.integration.api_server"]

HTML = {"accept": "text/html"}


def changes(engine: Engine, user_id: str) -> list[tuple[bool, str, str]]:
    with engine.connect() as conn:
        return [
            (bool(r.emailNotifications), r.via, r.changedBy)
            for r in conn.execute(
                select(PreferenceChange)
                .where(PreferenceChange.userId == user_id)
                .order_by(PreferenceChange.changedAt, PreferenceChange.id)
            )
        ]


def reminders_on(engine: Engine, user_id: str) -> bool:
    with engine.connect() as conn:
        return bool(conn.scalar(select(User.emailNotifications).where(User.id == user_id)))


def open_page(api: LiveApi, url: str) -> Page:
    return Page(api.anonymous.get(url, headers=HTML))


def press(api: LiveApi, page: Page, url: str) -> Page:
    """Press the page's one button (its form posts back with the signed link)."""
    [form] = page.forms
    return Page(api.anonymous.post(urljoin(url, form.action), data=form.fields, headers=HTML))


@pytest.fixture
def ann(live_api: LiveApi) -> dict[str, Any]:
    return create_user(live_api, email="ann@example.com", name="Ann Lee")


def test_the_unsubscribe_link_and_the_resubscribe_button_are_recorded_as_the_members(
    live_api: LiveApi, engine: Engine, ann: dict[str, Any]
) -> None:
    token = make_link_token(SECRET_KEY, LinkPurpose.UNSUBSCRIBE, ann["id"])
    confirm_url = live_api.url(f"/unsubscribe?token={token}")
    done = press(live_api, open_page(live_api, confirm_url), confirm_url)
    assert "You are unsubscribed" in done.text
    assert not reminders_on(live_api.engine, ann["id"])

    back = press(live_api, done, confirm_url)
    assert back.status == 200
    assert "Reminders are back on" in back.text
    assert reminders_on(engine, ann["id"])
    assert changes(engine, ann["id"]) == [
        (False, "UNSUBSCRIBE_LINK", "member"),
        (True, "MEMBER_PAGE", "member"),
    ]
    balance = back.link("See your balance")
    assert balance.startswith("balance?token=")


def test_the_balance_page_offers_to_turn_reminders_back_on_when_they_are_off(
    live_api: LiveApi, engine: Engine
) -> None:
    bo = create_user(live_api, email="bo@example.com", name="Bo", emailNotifications=False)
    token = make_link_token(SECRET_KEY, LinkPurpose.BALANCE, bo["id"])
    url = live_api.url(f"/balance?token={token}")
    page = open_page(live_api, url)
    assert "Expiry reminders are off" in page.text
    [form] = page.forms
    assert form.action.startswith("resubscribe?token=")
    assert "Turn reminders back on" in form.buttons
    press(live_api, page, url)
    assert reminders_on(engine, bo["id"])
    assert "Stop these reminders" in open_page(live_api, url).text


@pytest.mark.parametrize("kind", ["balance token", "unsubscribe token", "expired", "forged"])
def test_only_a_fresh_resubscribe_link_turns_reminders_back_on(
    live_api: LiveApi, engine: Engine, kind: str
) -> None:
    bo = create_user(live_api, email="bo@example.com", name="Bo", emailNotifications=False)
    purpose = {
        "balance token": LinkPurpose.BALANCE,
        "unsubscribe token": LinkPurpose.UNSUBSCRIBE,
    }.get(kind, LinkPurpose.RESUBSCRIBE)
    issued = datetime.now(UTC) - (
        timedelta(days=1, minutes=1) if kind == "expired" else timedelta()
    )
    secret = "another-secret" if kind == "forged" else SECRET_KEY
    token = make_link_token(secret, purpose, bo["id"], now=issued)
    response = live_api.anonymous.post(f"/resubscribe?token={token}", headers=HTML)
    assert response.status_code == 400
    assert "Nothing was changed" in response.text
    assert not reminders_on(engine, bo["id"])
    assert changes(engine, bo["id"]) == []


def test_the_console_shows_a_change_the_member_made_with_their_link(
    live_api: LiveApi, engine: Engine, ann: dict[str, Any]
) -> None:
    token = make_link_token(SECRET_KEY, LinkPurpose.UNSUBSCRIBE, ann["id"])
    live_api.anonymous.post(f"/unsubscribe?token={token}", content="List-Unsubscribe=One-Click")
    console = ConsoleClient(live_api.base_url)
    console.sign_in("admin-token")
    page = console.get(f"/console/members/{ann['id']}")
    console.close()
    assert "Expiry reminders off" in page.text
    assert any("UNSUBSCRIBE_LINK" in row and "member" in row for row in page.rows)


# -- the command line ---------------------------------------------------------------------------


def test_rewards_members_opt_out_shows_what_will_change_and_records_who(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    shop = Shop(engine)
    shop.member("m1", email="one@example.com")
    shop.member("m2", email="two@example.com", opted_in=False)
    listing = tmp_path / "asked.csv"
    listing.write_text("id,note\nm1,asked by phone\nm2,\nghost,\n")
    env = rewards_env(database_url)

    dry = run_rewards("members", "opt-out", str(listing), "--dry-run", env=env, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "3 member lines: 1 to opt out, 1 already opted out, 1 unknown" in dry.stdout
    assert "ghost" in dry.stdout
    assert reminders_on(engine, "m1")

    refused = run_rewards("members", "opt-out", str(listing), env=env, cwd=tmp_path)
    assert refused.returncode == 1  # no one answered the question: nothing changed
    assert reminders_on(engine, "m1")

    done = run_rewards(
        "members", "opt-out", str(listing), "--yes", "--by", "Ann", "--json", env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    summary = json_output(done.stdout)
    assert summary["changed"] == 1
    assert [x["value"] for x in summary["unknown"]] == ["ghost"]
    assert not reminders_on(engine, "m1")
    assert changes(engine, "m1") == [(False, "BULK_CLI", "Ann")]


def test_rewards_members_opt_out_refuses_a_file_that_is_not_text(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    listing = tmp_path / "photo.csv"
    listing.write_bytes(b"\x00\x01\x02")
    result = run_rewards(
        "members", "opt-out", str(listing), env=rewards_env(database_url), cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
