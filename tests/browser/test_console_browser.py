"""The console and the member pages in a real browser, against a real ``rewards serve``.

The set-up is the operator's day: a programme on PostgreSQL, a real run of the job
(``rewards notify run``) sending through SMTP to the in-process test server, so
real emails exist, one of them refused by the server; then ``rewards serve``. The
tests are the operator's (and a member's) steps, in order, in one browser:
sign in, see the run of the day, find a member, open an email, retry the failure,
start a dry run, follow the email's links as the member, turn reminders back on,
sign out. A screenshot of each page is kept in ``var/screenshots/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect
from sqlalchemy import Engine

from rewards import migrate
from rewards.db import create_db_engine
from tests.conftest import DatabaseFactory, require_postgres
from tests.process_helpers import (
    Shop,
    rewards_env,
    run_rewards,
    started_rewards,
    wait_until,
)
from tests.smtp_server import Behaviour, SmtpServer, free_port, running_smtp_server

ADMIN_TOKEN = "browser-admin-token"
CLIENT_TOKEN = "browser-client-token"
REFUSED = "dee@refused.example.com"
# The tests are the steps of one operator's day, in order, in one tab: `make test` runs
# the suite with `--dist loadfile`, so one worker runs this file's tests in order.
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
PHONE: ViewportSize = {"width": 390, "height": 844}
LAPTOP: ViewportSize = {"width": 1280, "height": 860}


@dataclass
class Service:
    base_url: str
    engine: Engine
    smtp: SmtpServer
    api: httpx.Client
    """The client applications' view (``REWARDS_API_TOKEN``)."""
    mailed: list[EmailMessage]
    """What the day's run sent."""

    def message_to(self, address: str) -> EmailMessage:
        [found] = [m for m in self.mailed if str(m["To"]).endswith(f"<{address}>")]
        return found


def shot(page: Page, name: str, *, full: bool = True) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """PostgreSQL with a programme, a real run of the job through SMTP, then ``rewards serve``."""
    require_postgres()
    factory = DatabaseFactory("postgresql", tmp_path_factory.mktemp("browser"))
    url = factory.new_url()
    engine = create_db_engine(url)
    migrate.upgrade(engine)
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    today = now.replace(hour=0, minute=0, second=0)

    def due_in(days: int) -> datetime:
        """Noon (UTC, the programme's zone here) ``days`` dates from today, at any hour."""
        return today + timedelta(days=days, hours=12)

    shop = Shop(engine)
    shop.member("ann", email="ann@example.com", name="Ann Lee")
    shop.earn("ann", 300, due_in(7), earned_at=now - timedelta(days=200))
    shop.earn("ann", 120, now + timedelta(days=60), earned_at=now - timedelta(days=20))
    shop.member("bo", email="bo@example.com", name="Bo Berg")
    shop.earn("bo", 80, due_in(30), earned_at=now - timedelta(days=300))
    shop.member("dee", email=REFUSED, name="Dee Dunn")
    shop.earn("dee", 55, due_in(7), earned_at=now - timedelta(days=100))
    shop.member("eve", email=None, name="Eve (no email)")
    shop.earn("eve", 40, due_in(1), earned_at=now - timedelta(days=30))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    refuse = Behaviour(at="RCPT", reply="550 5.1.1 no such mailbox", only_for=frozenset({REFUSED}))
    cwd = tmp_path_factory.mktemp("serve")
    with running_smtp_server(refuse) as smtp:
        env = rewards_env(
            url,
            smtp,
            REWARDS_PUBLIC_URL=base_url,
            REWARDS_ADMIN_TOKEN=ADMIN_TOKEN,
            REWARDS_API_TOKEN=CLIENT_TOKEN,
            REWARDS_EMAIL_FROM="Rewards Club <rewards@club.test>",
        )
        run = run_rewards("notify", "run", env=env, cwd=cwd)
        assert run.returncode == 0, run.stderr
        assert len(smtp.messages) == 2, run.stdout  # Ann and Bo; Dee refused, Eve has no email
        with (
            started_rewards(
                "serve", "--port", str(port), "--no-scheduler", env=env, cwd=cwd
            ) as server,
            httpx.Client(
                base_url=base_url,
                headers={"Authorization": f"Bearer {CLIENT_TOKEN}"},
                timeout=30,
            ) as api,
        ):

            def answers() -> bool:
                try:
                    return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return server.poll() is not None

            assert wait_until(answers, timeout=30, interval=0.1)
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            yield Service(base_url, engine, smtp, api, list(smtp.messages))
    engine.dispose()
    factory.drop_all()


@pytest.fixture(scope="module")
def operator(browser: Browser, service: Service) -> Iterator[Page]:
    """One operator's tab for the whole day, on a laptop."""
    context = browser.new_context(base_url=service.base_url, viewport=LAPTOP)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    context.close()


def sign_in(page: Page, token: str, name: str = "") -> None:
    page.goto("/console")
    expect(page.get_by_role("heading", name="Rewards Club console")).to_be_visible()
    page.get_by_label("Admin token").fill(token)
    if name:
        page.get_by_label("Your name").fill(name)
    page.get_by_role("button", name="Sign in").click()


def links_of(message: EmailMessage) -> dict[str, str]:
    """The links of an email's HTML part, by their text."""

    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.found: dict[str, str] = {}
            self._href: str | None = None

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "a":
                self._href = dict(attrs).get("href") or ""

        def handle_data(self, data: str) -> None:
            if self._href is not None and data.strip():
                self.found[" ".join(data.split())] = self._href
                self._href = None

    body = message.get_body(preferencelist=("html",))
    assert isinstance(body, EmailMessage)
    parser = Links()
    parser.feed(str(body.get_content()))
    return parser.found


# -- the steps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["not-the-token", CLIENT_TOKEN], ids=["wrong", "client"])
def test_a_wrong_token_and_the_client_token_are_refused(
    browser: Browser, service: Service, token: str
) -> None:
    context = browser.new_context(base_url=service.base_url, viewport=LAPTOP)
    page = context.new_page()
    sign_in(page, token)
    expect(page.get_by_role("alert")).to_contain_text("That is not the admin token")
    assert not [c for c in context.cookies() if c["name"] == "rewards_console"]
    page.goto("/console/members/ann")
    expect(page.get_by_label("Admin token")).to_be_visible()
    assert "ann@example.com" not in page.content()
    shot(page, "00-sign-in-refused")
    context.close()


def test_sign_in_and_see_the_run_of_the_day(operator: Page, service: Service) -> None:
    sign_in(operator, ADMIN_TOKEN, "Ann Operator")
    expect(operator.get_by_role("heading", name=re.compile("^Overview"))).to_be_visible()
    today_run = operator.locator("section", has=operator.get_by_role("heading", name="Today's run"))
    expect(today_run).to_contain_text("SUCCEEDED")
    expect(operator.locator("section", has_text="Reminders today")).to_contain_text("2 sent")
    failures = operator.locator(
        "section", has=operator.get_by_role("heading", name=re.compile("^Why"))
    )
    expect(failures).to_contain_text("550 5.1.1 no such mailbox")
    expect(failures).to_contain_text("missing email")
    expect(operator.locator("svg.chart rect")).to_have_count(2)  # today's bar: sent, failed
    cookie = next(c for c in operator.context.cookies() if c["name"] == "rewards_console")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/console"
    shot(operator, "01-overview")


def test_the_overview_on_a_phone(browser: Browser, service: Service) -> None:
    context = browser.new_context(base_url=service.base_url, viewport=PHONE, is_mobile=True)
    page = context.new_page()
    sign_in(page, ADMIN_TOKEN)
    expect(page.get_by_role("heading", name=re.compile("^Overview"))).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "nothing wider than the phone's screen"
    shot(page, "01-overview-phone")
    context.close()


def test_find_a_member_by_email_and_see_their_lots_and_reminders(operator: Page) -> None:
    operator.get_by_role("link", name="Members", exact=True).click()
    operator.get_by_label(re.compile("Member id")).fill("ANN@exa")
    operator.get_by_role("button", name="Find").click()
    operator.get_by_role("link", name="ann@example.com").click()
    expect(operator.get_by_role("heading", name="Ann Lee")).to_be_visible()
    expect(operator.get_by_text("420 points")).to_be_visible()
    lots = operator.locator("table", has_text="Left")
    expect(lots.first).to_contain_text("300")
    expect(lots.first).to_contain_text("LIVE")
    reminders = operator.locator("section", has_text="Reminders sent to this member")
    expect(reminders).to_contain_text("EXPIRATION_7_DAYS")
    expect(reminders).to_contain_text("SENT")
    shot(operator, "02-member")


def test_open_an_email_preview(operator: Page, service: Service) -> None:
    reminders = operator.locator("section", has_text="Reminders sent to this member")
    reminders.get_by_role("link").first.click()
    expect(operator.get_by_text("freshly signed")).to_be_visible()
    mailed = service.message_to("ann@example.com")
    expect(operator.get_by_text(str(mailed["Subject"])).first).to_be_visible()
    frame = operator.frame_locator("iframe.email")
    expect(frame.get_by_text("300 points")).to_be_visible()
    expect(frame.get_by_role("link", name="See your balance")).to_be_visible()
    shot(operator, "03-reminder-email")


def test_retry_a_failure(operator: Page, service: Service) -> None:
    operator.goto("/console/reminders?status=FAILED")
    operator.get_by_role("row", name=re.compile(REFUSED)).get_by_role("link").first.click()
    expect(operator.get_by_text("550 5.1.1 no such mailbox").first).to_be_visible()
    # The operator has the member's address corrected, then retries.
    fixed = service.api.patch("/users/dee", json={"email": "dee@example.com"})
    assert fixed.status_code == 200, fixed.text
    service.smtp.reset()
    operator.get_by_role("button", name="Retry now").click()
    expect(operator.get_by_role("heading", name=re.compile("reminder SENT"))).to_be_visible()
    expect(operator.get_by_text("none (retried from the console)")).to_be_visible()
    assert [str(m["To"]) for m in service.smtp.messages] == ["Dee Dunn <dee@example.com>"]
    shot(operator, "04-retried")


def test_start_a_dry_run(operator: Page) -> None:
    operator.get_by_role("link", name="Runs", exact=True).click()
    operator.get_by_role("button", name="Dry run").click()
    expect(operator.get_by_text("What a run would do")).to_be_visible(timeout=20_000)
    expect(operator.get_by_text("nothing was written or sent")).to_be_visible()
    shot(operator, "05-dry-run")
    operator.get_by_role("link", name="All runs").click()
    expect(operator.locator("table")).to_contain_text("SUCCEEDED")
    shot(operator, "06-runs")


def test_follow_the_emails_links_and_see_the_change_in_the_console(
    browser: Browser, operator: Page, service: Service
) -> None:
    links = links_of(service.message_to("ann@example.com"))
    member = browser.new_context(viewport=PHONE, is_mobile=True)  # the member's phone
    phone = member.new_page()
    phone.on("dialog", lambda dialog: dialog.accept())

    phone.goto(links["See your balance"])
    expect(phone.get_by_text("420 points")).to_be_visible()
    shot(phone, "07-member-balance")

    phone.goto(links["Stop these reminders"])
    expect(phone.get_by_role("heading", name="Stop expiry reminders?")).to_be_visible()
    phone.get_by_role("button", name="Unsubscribe").click()
    expect(phone.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
    shot(phone, "08-member-unsubscribed")

    operator.goto("/console/members/ann")
    preference = operator.locator(
        "section", has=operator.get_by_role("heading", name=re.compile("Expiry reminders"))
    )
    expect(preference).to_contain_text("off")
    expect(preference).to_contain_text("UNSUBSCRIBE_LINK")
    expect(preference).to_contain_text("member")

    # Back on, from the member's own balance page.
    phone.goto(links["See your balance"])
    expect(phone.get_by_text("Expiry reminders are off")).to_be_visible()
    phone.get_by_role("button", name="Turn reminders back on").click()
    expect(phone.get_by_role("heading", name="Reminders are back on")).to_be_visible()
    shot(phone, "09-member-resubscribed")
    member.close()

    operator.reload()
    expect(preference).to_contain_text("MEMBER_PAGE")
    expect(operator.get_by_role("button", name="Turn reminders off")).to_be_visible()
    shot(operator, "10-member-changes")


def test_bulk_opt_out_from_a_file(operator: Page, tmp_path: Path) -> None:
    listing = tmp_path / "asked.csv"
    listing.write_text("email\nbo@example.com\nnobody@example.com\n")
    operator.get_by_role("link", name="Bulk opt-out").click()
    operator.get_by_label("CSV file").set_input_files(str(listing))
    operator.get_by_role("button", name="See what will change").click()
    expect(operator.get_by_role("cell", name="nobody@example.com")).to_be_visible()
    shot(operator, "11-opt-out-preview")
    operator.get_by_role("button", name=re.compile("^Opt out 1 member")).click()
    expect(operator.get_by_text("Opted out 1 member from asked.csv")).to_be_visible()


def test_sign_out(operator: Page) -> None:
    operator.get_by_role("button", name="Sign out").click()
    expect(operator.get_by_text("You are signed out.")).to_be_visible()
    operator.goto("/console/reminders")
    expect(operator.get_by_label("Admin token")).to_be_visible()
    assert "ann@example.com" not in operator.content()
