"""The operator console over HTTP, on both databases: who gets in, what each page shows,
and what its forms change.

The server is the real app on a real port (``live_api``); the job runs through the
API and sends to the in-process SMTP server, so the console shows real reminders.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, select, text

from rewards.console import auth
from rewards.models import NotificationLog, PreferenceChange, User
from rewards.notifications.tiers import Status
from tests.integration.api_server import (
    ADMIN_TOKEN,
    CLIENT_TOKEN,
    LiveApi,
    create_user,
    earn,
    json_of,
    noon_in,
    open_account,
    running_api,
    today,
)
from tests.integration.console_client import (
    ConsoleClient,
    csrf_of,
    set_cookie_attributes,
)
from tests.process_helpers import wait_until

pytest_plugins = ["tests.integration.api_server"]

JOB = "/admin/jobs/check-expiring-points"

CONSOLE_PAGES = [
    "/console",
    "/console/runs",
    "/console/reminders",
    "/console/reminders?status=FAILED",
    "/console/members?q=ann",
    "/console/opt-out",
]


@pytest.fixture
def console(live_api: LiveApi) -> Iterator[ConsoleClient]:
    client = ConsoleClient(live_api.base_url)
    yield client
    client.close()


@pytest.fixture
def operator(console: ConsoleClient) -> ConsoleClient:
    """An operator signed in with the admin token."""
    page = console.sign_in(ADMIN_TOKEN, "Ann Operator")
    assert page.status == 200, page.text
    assert "Overview" in page.text
    return console


@pytest.fixture
def programme(live_api: LiveApi, engine: Engine) -> dict[str, Any]:
    """Ann and Bo with points expiring in 7 days, Cy with a malformed address (written as
    another application would), and today's run of the job, sent through SMTP."""
    ann = create_user(live_api, email="ann@example.com", name="Ann Lee")
    bo = create_user(live_api, email="bo@example.com", name="Bo Berg")
    accounts = {}
    for member, points in ((ann, 120), (bo, 80)):
        account = open_account(live_api, member["id"])
        earn(live_api, account, points, noon_in(7)[1])
        accounts[member["id"]] = account
    with engine.begin() as conn:
        conn.execute(
            text('INSERT INTO "User" ("id", "email", "name") VALUES (\'cy\', \'cy@\', \'Cy\')')
        )
    cy_account = open_account(live_api, "cy")
    earn(live_api, cy_account, 50, noon_in(7)[1])
    summary = json_of(live_api.admin.post(JOB, json={"asOf": today().isoformat()}), 200)
    assert (summary["sent"], summary["failed"]) == (2, 1), summary
    return {"ann": ann, "bo": bo, "accounts": accounts, "summary": summary}


def log_rows(engine: Engine, user_id: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(NotificationLog)
                .where(NotificationLog.userId == user_id)
                .order_by(NotificationLog.createdAt)
            )
        )


def reminders_on(engine: Engine, user_id: str) -> bool:
    with engine.connect() as conn:
        return bool(conn.scalar(select(User.emailNotifications).where(User.id == user_id)))


def changes_of(engine: Engine, user_id: str) -> list[tuple[bool, str, str]]:
    with engine.connect() as conn:
        return [
            (bool(r.emailNotifications), r.via, r.changedBy)
            for r in conn.execute(
                select(PreferenceChange)
                .where(PreferenceChange.userId == user_id)
                .order_by(PreferenceChange.changedAt, PreferenceChange.id)
            )
        ]


# -- who gets in ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [*CONSOLE_PAGES, "/console/members/cy", "/console/runs/x"])
def test_without_a_session_every_console_page_is_the_sign_in_and_shows_no_data(
    console: ConsoleClient, programme: dict[str, Any], path: str
) -> None:
    page = console.get(path)
    assert page.status == 401
    assert page.is_sign_in
    for secret in ("ann@example.com", "Ann Lee", "bo@example.com", "EXPIRATION_7_DAYS"):
        assert secret not in page.response.text
    assert page.response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("token", "why"),
    [("wrong-token", "wrong"), (CLIENT_TOKEN, "the client token"), ("", "empty")],
)
def test_only_the_admin_token_signs_in(console: ConsoleClient, token: str, why: str) -> None:
    page = console.sign_in(token)
    assert page.status == 401, why
    assert "That is not the admin token" in page.text
    assert console.session_cookie is None
    assert console.get("/console").is_sign_in


def test_signing_in_sets_a_session_cookie_that_scripts_and_other_sites_cannot_use(
    console: ConsoleClient,
) -> None:
    form = console.get("/console/sign-in")
    response = console.http.post(
        "/console/sign-in", data={**form.form("/console/sign-in").fields, "token": ADMIN_TOKEN}
    )
    assert response.status_code == 303
    cookie = set_cookie_attributes(response, auth.SESSION_COOKIE)
    assert cookie["httponly"] == "true"
    assert cookie["samesite"].lower() == "strict"
    assert cookie["path"] == "/console"
    assert int(cookie["max-age"]) == auth.SESSION_SECONDS
    assert "secure" not in cookie  # served over plain HTTP here


def test_the_session_cookie_is_secure_when_the_public_url_is_https(
    live_api: LiveApi, engine: Engine, database_url: str
) -> None:
    with running_api(
        engine, database_url, live_api.smtp, public_url="https://rewards.example.com"
    ) as api:
        client = ConsoleClient(api.base_url)
        form = client.get("/console/sign-in")
        sign_in = set_cookie_attributes(form.response, auth.SIGN_IN_COOKIE)
        assert sign_in["secure"] == "true"
        response = client.http.post(  # a client over plain HTTP keeps a Secure cookie to itself
            "/console/sign-in",
            data={**form.form("/console/sign-in").fields, "token": ADMIN_TOKEN},
            headers={"cookie": f"{auth.SIGN_IN_COOKIE}={sign_in['value']}"},
        )
        client.close()
    assert set_cookie_attributes(response, auth.SESSION_COOKIE)["secure"] == "true"


def test_sign_in_goes_back_to_the_page_asked_for(
    console: ConsoleClient, programme: dict[str, Any]
) -> None:
    asked = console.get("/console/members?q=ann")
    assert asked.is_sign_in
    page = console.submit(asked, "/console/sign-in", token=ADMIN_TOKEN)
    assert page.response.url.path == "/console/members"
    assert "ann@example.com" in page.text


def test_sign_in_never_sends_an_operator_to_another_site(console: ConsoleClient) -> None:
    page = console.get("/console/sign-in")
    response = console.http.post(
        "/console/sign-in",
        data={**page.form("/console/sign-in").fields, "token": ADMIN_TOKEN, "next": "//evil.test"},
    )
    assert response.headers["location"] == "/console"


def test_signing_out_ends_the_session(operator: ConsoleClient) -> None:
    page = operator.get("/console")
    signed_out = operator.submit(page, "/console/sign-out")
    assert signed_out.is_sign_in
    assert "You are signed out." in signed_out.text
    assert operator.session_cookie is None
    assert operator.get("/console/runs").is_sign_in


def test_an_expired_session_is_refused(live_api: LiveApi, console: ConsoleClient) -> None:
    old = datetime.now(UTC) - timedelta(seconds=auth.SESSION_SECONDS + 60)
    cookie = auth.new_session(live_api.settings, "operator Old", old)
    console.http.cookies.set(auth.SESSION_COOKIE, cookie, path="/console")
    assert console.get("/console").is_sign_in


def test_a_session_made_under_another_admin_token_is_refused(
    live_api: LiveApi, console: ConsoleClient
) -> None:
    other = live_api.settings.model_copy(update={"admin_token": SecretStr("older-token")})
    cookie = auth.new_session(other, "operator Old", datetime.now(UTC))
    console.http.cookies.set(auth.SESSION_COOKIE, cookie, path="/console")
    assert console.get("/console").is_sign_in


# -- CSRF -------------------------------------------------------------------------------------


def test_a_form_without_its_csrf_token_changes_nothing(
    operator: ConsoleClient, engine: Engine, programme: dict[str, Any]
) -> None:
    ann = programme["ann"]["id"]
    for csrf in (None, "forged", "0" * 40):
        data = {"enabled": "off"} | ({"csrf": csrf} if csrf else {})
        page = operator.post(f"/console/members/{ann}/reminders", data)
        assert page.status == 403
        assert "Nothing was changed" in page.text
    assert reminders_on(engine, ann)
    assert changes_of(engine, ann) == []


def test_another_sessions_csrf_token_is_refused(
    live_api: LiveApi, operator: ConsoleClient, engine: Engine, programme: dict[str, Any]
) -> None:
    other = ConsoleClient(live_api.base_url)
    other.sign_in(ADMIN_TOKEN, "Bo")
    their_token = csrf_of(other.get("/console"))
    other.close()
    ann = programme["ann"]["id"]
    page = operator.post(
        f"/console/members/{ann}/reminders", {"enabled": "off", "csrf": their_token}
    )
    assert page.status == 403
    assert reminders_on(engine, ann)


def test_the_sign_in_form_needs_its_own_cookie(live_api: LiveApi) -> None:
    """A sign-in posted from elsewhere (no sign-in cookie) is refused: no login CSRF."""
    first = ConsoleClient(live_api.base_url)
    fields = first.get("/console/sign-in").form("/console/sign-in").fields
    first.close()
    stranger = ConsoleClient(live_api.base_url)
    page = stranger.post("/console/sign-in", {**fields, "token": ADMIN_TOKEN})
    assert page.status == 403
    assert stranger.session_cookie is None
    stranger.close()


@pytest.mark.parametrize("path", ["/console/runs", "/console/opt-out", "/console/sign-out"])
def test_every_form_of_the_console_checks_its_token(operator: ConsoleClient, path: str) -> None:
    assert operator.post(path, {"mode": "dry-run", "text": "x", "step": "apply"}).status == 403


# -- every page --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CONSOLE_PAGES)
def test_every_page_is_private_and_loads_only_the_consoles_own_assets(
    operator: ConsoleClient, programme: dict[str, Any], path: str
) -> None:
    page = operator.get(path)
    assert page.status == 200, page.text
    headers = page.response.headers
    assert headers["cache-control"] == "no-store"
    assert headers["x-frame-options"] == "DENY"
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    external = [
        (tag, values)
        for tag, values in page.tags
        if any(v.startswith(("http:", "https:", "//")) for k, v in values.items() if k != "value")
    ]
    assert external == []
    assert [v["src"] for t, v in page.tags if t == "script"] == ["/console/static/console.js"]
    assert ("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}) in (
        page.tags
    )
    assert not [v for t, v in page.tags if "style" in v], "no inline style (the CSP forbids it)"


@pytest.mark.parametrize(
    ("name", "kind"), [("console.css", "text/css"), ("console.js", "text/javascript")]
)
def test_the_assets_are_served_by_the_service_itself(
    live_api: LiveApi, name: str, kind: str
) -> None:
    response = live_api.anonymous.get(f"/console/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(kind)
    assert live_api.anonymous.get("/console/static/../app.py").status_code == 404


def test_the_overview_answers_did_todays_run_happen_and_what_went_out(
    operator: ConsoleClient, programme: dict[str, Any]
) -> None:
    page = operator.get("/console")
    assert "Today's run SUCCEEDED" in page.text
    assert "2 sent" in page.text
    today_rows = {row[0]: row[1:] for row in page.rows if row and row[0] == "EXPIRATION_7_DAYS"}
    assert today_rows["EXPIRATION_7_DAYS"][:2] == ["2", "1"]  # sent, failed
    assert "invalid format" in page.text  # failures by reason
    assert "Next scheduled run" in page.text
    svg = [v for t, v in page.tags if t == "svg"]
    assert svg
    assert "3 in all" in svg[0]["aria-label"]
    assert len([v for t, v in page.tags if t == "rect"]) == 2  # today's bar: sent and failed


def test_the_next_scheduled_run_is_the_next_fire_of_the_cron_in_the_programmes_zone(
    live_api: LiveApi, engine: Engine, database_url: str
) -> None:
    with running_api(
        engine, database_url, live_api.smtp, notify_cron="30 6 * * *", timezone="Asia/Tokyo"
    ) as api:
        client = ConsoleClient(api.base_url)
        client.sign_in(ADMIN_TOKEN)
        page = client.get("/console")
        client.close()
    match = re.search(r"Next scheduled run (\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)", page.text)
    assert match is not None, page.text
    assert match.group(2) == "06:30:00"  # shown in the programme's zone
    assert "Times are in Asia/Tokyo" in page.text


def test_the_runs_page_lists_the_run_and_its_detail_gives_counts_by_tier(
    operator: ConsoleClient, programme: dict[str, Any]
) -> None:
    runs = operator.get("/console/runs")
    [row] = [r for r in runs.rows if "SUCCEEDED" in r]
    assert row[2:8] == ["SUCCEEDED", "api", "3", "2", "1", "0"]
    detail = operator.get(runs.links[[t for t, _ in runs.links].index(row[0])][1])
    assert "As of" in detail.text
    assert "Duration" in detail.text
    assert ["EXPIRATION_7_DAYS", "2", "1", "0", "0"] in detail.rows
    assert ["invalid format", "1"] in detail.rows
    reminders = operator.get(detail.link("This run's reminders"))
    assert len([r for r in reminders.rows if "SENT" in r or "FAILED" in r]) == 3


def test_a_dry_run_started_from_the_page_shows_what_a_run_would_do(
    operator: ConsoleClient, live_api: LiveApi, programme: dict[str, Any]
) -> None:
    runs = operator.get("/console/runs")
    tomorrow = (today() + timedelta(days=1)).isoformat()
    page = operator.submit(runs, "/console/runs", mode="dry-run", as_of=tomorrow, follow=False)
    assert page.status == 303
    task = page.response.headers["location"]

    def done() -> bool:
        return "What a run would do" in operator.get(task).text

    assert wait_until(done, timeout=20, interval=0.1)
    assert "nothing was written or sent" in operator.get(task).text
    assert live_api.smtp.messages == [] or len(live_api.smtp.messages) == 2


def test_a_run_started_from_the_page_leads_to_its_record(
    operator: ConsoleClient, programme: dict[str, Any]
) -> None:
    runs = operator.get("/console/runs")
    page = operator.submit(runs, "/console/runs", mode="run")
    assert wait_until(
        lambda: (
            "SUCCEEDED" in (p := operator.get(page.response.url.path)).text and "Run of" in p.text
        ),
        timeout=20,
        interval=0.1,
    )
    runs = operator.get("/console/runs")
    assert any("console" in row for row in runs.rows)


def test_reminders_are_found_by_member_status_tier_and_date(
    operator: ConsoleClient, programme: dict[str, Any]
) -> None:
    def members_listed(**params: str) -> set[str]:
        page = operator.get("/console/reminders", params)
        return {t for t, h in page.links if h.startswith("/console/members/")}

    assert members_listed() == {"ann@example.com", "bo@example.com", "cy@"}
    assert members_listed(member="ANN@example.com") == {"ann@example.com"}
    assert members_listed(member=programme["bo"]["id"]) == {"bo@example.com"}
    assert members_listed(status="FAILED") == {"cy@"}
    assert members_listed(tier="EXPIRATION_30_DAYS") == set()
    assert members_listed(tier="EXPIRATION_7_DAYS", status="SENT") == {
        "ann@example.com",
        "bo@example.com",
    }
    day = today()
    assert len(members_listed(**{"from": day.isoformat(), "to": day.isoformat()})) == 3
    assert members_listed(to=(day - timedelta(days=1)).isoformat()) == set()
    assert members_listed(member="nobody@example.com") == set()


def test_reminders_come_in_pages(
    operator: ConsoleClient, engine: Engine, programme: dict[str, Any]
) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        for n in range(55):
            conn.execute(
                NotificationLog.__table__.insert().values(  # type: ignore[attr-defined]
                    id=f"old{n:03d}",
                    userId=programme["ann"]["id"],
                    notificationType="EXPIRATION_30_DAYS",
                    status="FAILED",
                    failureReason="451 try later",
                    expirationDate=datetime(2020, 1, 1) + timedelta(days=n),
                    pointsExpiring=10,
                    createdAt=now - timedelta(days=2, minutes=n),
                )
            )
    first = operator.get("/console/reminders", status="FAILED")
    listed = [h for _, h in first.links if h.startswith("/console/reminders/")]
    assert len(listed) == 50
    second = operator.get(first.link("Older reminders"))
    more = [h for _, h in second.links if h.startswith("/console/reminders/")]
    assert len(more) == 6  # 55 + Cy's
    assert not set(listed) & set(more)
    assert "Older reminders" not in second.text


def test_a_reminders_page_shows_the_email_as_it_was_sent(
    operator: ConsoleClient, live_api: LiveApi, engine: Engine, programme: dict[str, Any]
) -> None:
    [row] = log_rows(engine, programme["ann"]["id"])
    [mailed] = [
        m for m in live_api.smtp.messages if m["To"].addresses[0].addr_spec == "ann@example.com"
    ]
    page = operator.get(f"/console/reminders/{row.id}")
    assert page.status == 200
    assert str(mailed["Subject"]) in page.text
    assert str(mailed["Message-ID"]) in page.text
    assert "freshly signed" in page.text
    assert "120 points" in page.text
    [frame] = [v for t, v in page.tags if t == "iframe"]
    assert frame["sandbox"] == ""  # sandboxed: no script, no same-origin
    preview = operator.http.get(frame["src"])
    assert preview.status_code == 200
    assert "See your balance" in preview.text
    policy = preview.headers["content-security-policy"]
    assert policy.startswith("sandbox;")
    assert "script-src" not in policy
    assert "frame-ancestors 'self'" in policy
    mailed_text = mailed.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert mailed_text.splitlines()[0] in page.text  # "Hi Ann Lee,"


def test_the_email_preview_needs_a_session(
    live_api: LiveApi, engine: Engine, programme: dict[str, Any]
) -> None:
    [row] = log_rows(engine, programme["ann"]["id"])
    response = live_api.anonymous.get(f"/console/reminders/{row.id}/email")
    assert response.status_code == 401
    assert "See your balance" not in response.text


def _smtp_failure(engine: Engine, user_id: str, *, rows: int = 1) -> str:
    """Rewrite the member's SENT reminder as an SMTP refusal (and ``rows - 1`` earlier ones)."""
    [sent] = log_rows(engine, user_id)
    with engine.begin() as conn:
        conn.execute(
            text(
                'UPDATE "NotificationLog" SET "status" = \'FAILED\', "sentAt" = NULL,'
                ' "failureReason" = \'550 5.2.2 mailbox full\' WHERE "id" = :id'
            ),
            {"id": sent.id},
        )
        for n in range(rows - 1):
            conn.execute(
                NotificationLog.__table__.insert().values(  # type: ignore[attr-defined]
                    id=f"{sent.id}-{n}",
                    userId=user_id,
                    notificationType=sent.notificationType,
                    status="FAILED",
                    failureReason="451 later",
                    expirationDate=sent.expirationDate,
                    pointsExpiring=sent.pointsExpiring,
                    createdAt=sent.createdAt - timedelta(hours=n + 1),
                )
            )
    return str(sent.id)


def test_a_failed_reminder_is_retried_through_the_outbox(
    operator: ConsoleClient, live_api: LiveApi, engine: Engine, programme: dict[str, Any]
) -> None:
    ann = programme["ann"]["id"]
    failed = _smtp_failure(engine, ann)
    live_api.smtp.reset()
    page = operator.get(f"/console/reminders/{failed}")
    assert "550 5.2.2 mailbox full" in page.text
    retried = operator.submit(page, f"/console/reminders/{failed}/retry")
    assert retried.status == 200
    assert "SENT" in retried.text
    rows = log_rows(engine, ann)
    assert [r.status for r in rows] == [Status.FAILED.value, Status.SENT.value]
    assert retried.response.url.path == f"/console/reminders/{rows[1].id}"
    [message] = live_api.smtp.messages
    assert message["Message-ID"].startswith(f"<{rows[1].id}@")
    again = operator.get(f"/console/reminders/{failed}")
    assert "Retry now" not in again.text  # a live row exists now


def test_a_retry_is_refused_when_the_attempts_are_used_up(
    operator: ConsoleClient, live_api: LiveApi, engine: Engine, programme: dict[str, Any]
) -> None:
    ann = programme["ann"]["id"]
    failed = _smtp_failure(engine, ann, rows=live_api.settings.notify_max_attempts)
    page = operator.get(f"/console/reminders/{failed}")
    assert "Retry now" not in page.text
    assert "every attempt is used" in page.text
    forced = operator.post(f"/console/reminders/{failed}/retry", {"csrf": csrf_of(page)})
    assert "Not retried: all 3 attempts are used" in forced.text
    assert len(log_rows(engine, ann)) == live_api.settings.notify_max_attempts


def test_a_retry_is_refused_while_the_member_has_no_valid_address(
    operator: ConsoleClient, engine: Engine, programme: dict[str, Any]
) -> None:
    [failed] = log_rows(engine, "cy")
    page = operator.get(f"/console/reminders/{failed.id}")
    refused = operator.submit(page, f"/console/reminders/{failed.id}/retry")
    assert "Not retried: it would not be sent now: invalid format" in refused.text
    assert len(log_rows(engine, "cy")) == 1


# -- members ------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["ANN@", "ann lee", "Ann"])
def test_a_member_is_found_by_the_start_of_their_email_or_name(
    operator: ConsoleClient, programme: dict[str, Any], query: str
) -> None:
    page = operator.get("/console/members", q=query)
    assert ("ann@example.com", f"/console/members/{programme['ann']['id']}") in page.links
    assert "bo@example.com" not in page.text


def test_a_member_id_opens_their_page(operator: ConsoleClient, programme: dict[str, Any]) -> None:
    page = operator.get("/console/members", q=programme["bo"]["id"])
    assert page.response.url.path == f"/console/members/{programme['bo']['id']}"


def test_a_members_page_shows_accounts_lots_ledger_and_reminders(
    operator: ConsoleClient, live_api: LiveApi, programme: dict[str, Any]
) -> None:
    ann = programme["ann"]["id"]
    account = programme["accounts"][ann]
    live_api.client.post(f"/accounts/{account}/redeem", json={"points": 20})
    page = operator.get(f"/console/members/{ann}")
    assert "100 points over 1 account" in page.text
    assert any(row[1:4] == ["120", "100", "LIVE"] for row in page.rows)  # the lot: 100 left
    [redeem] = [row for row in page.rows if len(row) > 1 and row[1] == "REDEEM"]
    assert redeem[3] == "20"
    assert redeem[5].endswith(": 20")
    assert any("EXPIRATION_7_DAYS" in row and "SENT" in row for row in page.rows)
    assert "No change recorded." in page.text


def test_an_operator_turns_a_members_reminders_off_and_on_and_each_change_is_recorded(
    operator: ConsoleClient, engine: Engine, programme: dict[str, Any]
) -> None:
    bo = programme["bo"]["id"]
    page = operator.get(f"/console/members/{bo}")
    off = operator.submit(page, f"/console/members/{bo}/reminders")
    assert "Reminders are off for this member" in off.text
    assert not reminders_on(engine, bo)
    on = operator.submit(off, f"/console/members/{bo}/reminders")
    assert reminders_on(engine, bo)
    assert changes_of(engine, bo) == [
        (False, "CONSOLE", "operator Ann Operator"),
        (True, "CONSOLE", "operator Ann Operator"),
    ]
    table = [row for row in on.rows if "CONSOLE" in row]
    assert len(table) == 2
    assert all("operator Ann Operator" in row for row in table)


def test_changes_made_elsewhere_show_on_the_members_page(
    operator: ConsoleClient, live_api: LiveApi, engine: Engine, programme: dict[str, Any]
) -> None:
    ann = programme["ann"]["id"]
    live_api.client.patch(f"/users/{ann}", json={"emailNotifications": False})
    live_api.client.patch(f"/users/{ann}", json={"emailNotifications": False})  # no change
    live_api.client.patch(f"/users/{ann}", json={"name": "Ann Li"})  # not the preference
    assert changes_of(engine, ann) == [(False, "API", "client application")]
    page = operator.get(f"/console/members/{ann}")
    assert any("API" in row and "client application" in row for row in page.rows)


# -- bulk opt-out ------------------------------------------------------------------------------


LIST = "email\nann@example.com\nnobody@example.com\n\n# a comment\ncy\nANN@EXAMPLE.COM\n"


def test_a_bulk_opt_out_shows_what_will_change_then_changes_it(
    operator: ConsoleClient, engine: Engine, programme: dict[str, Any]
) -> None:
    ann = programme["ann"]["id"]
    with engine.begin() as conn:
        conn.execute(text('UPDATE "User" SET "emailNotifications" = false WHERE "id" = \'cy\''))
    form = operator.get("/console/opt-out")
    fields = form.form("/console/opt-out").fields
    preview = operator.post(
        "/console/opt-out", fields, files={"file": ("asked.csv", LIST.encode(), "text/csv")}
    )
    assert preview.status == 200, preview.text
    assert "Will be opted out 1" in preview.text
    assert "Already opted out 1" in preview.text
    assert "Unknown 1" in preview.text
    assert ["3", "nobody@example.com"] in preview.rows
    assert reminders_on(engine, ann)  # nothing changed yet

    done = operator.submit(preview, "/console/opt-out")
    assert "Opted out 1 member from asked.csv" in done.text
    assert not reminders_on(engine, ann)
    assert changes_of(engine, ann) == [(False, "BULK_CONSOLE", "operator Ann Operator")]
    member = operator.get(f"/console/members/{ann}")
    assert any("asked.csv, line 2" in cell for row in member.rows for cell in row)


def test_a_bulk_opt_out_list_that_names_no_member_is_refused(operator: ConsoleClient) -> None:
    form = operator.get("/console/opt-out")
    page = operator.post("/console/opt-out", {**form.form("/console/opt-out").fields, "text": "\n"})
    assert page.status == 400
    assert "The list names no member." in page.text


def test_the_admin_api_opts_out_in_bulk(
    live_api: LiveApi, engine: Engine, programme: dict[str, Any]
) -> None:
    body = {"csv": LIST, "dryRun": True}
    dry = json_of(live_api.admin.post("/admin/members/opt-out", json=body), 200)
    assert [x["value"] for x in dry["toChange"]] == ["ann@example.com", "cy"]
    assert [x["value"] for x in dry["unknown"]] == ["nobody@example.com"]
    assert [x["line"] for x in dry["repeated"]] == [7]
    assert dry["changed"] == 0
    assert reminders_on(engine, programme["ann"]["id"])
    assert live_api.client.post("/admin/members/opt-out", json=body).status_code == 403
    done = json_of(
        live_api.admin.post(
            "/admin/members/opt-out", json={"members": ["bo@example.com", "ann@example.com"]}
        ),
        200,
    )
    assert done["changed"] == 2
    assert changes_of(engine, programme["bo"]["id"]) == [
        (False, "BULK_API", "operator (admin API)")
    ]


def test_a_bulk_list_is_given_once(live_api: LiveApi) -> None:
    response = live_api.admin.post("/admin/members/opt-out", json={"csv": "a", "members": ["a"]})
    assert response.status_code == 422
