"""Operator endpoints over real HTTP: reminder logs, counts, job runs, the job trigger, metrics."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from rewards.ids import new_id
from rewards.models import NotificationLog
from tests.integration.api_server import (
    LiveApi,
    assert_problem,
    create_user,
    earn,
    json_of,
    noon_in,
    open_account,
    today,
)
from tests.process_helpers import json_output, rewards_env, run_rewards

pytest_plugins = ["tests.integration.api_server"]

JOB = "/admin/jobs/check-expiring-points"
NOTIFICATION_KEYS = {
    "id",
    "userId",
    "notificationType",
    "status",
    "sentAt",
    "failureReason",
    "expirationDate",
    "pointsExpiring",
    "createdAt",
}
TYPES = ("EXPIRATION_30_DAYS", "EXPIRATION_7_DAYS", "EXPIRATION_1_DAY")
STATUSES = ("SENT", "FAILED", "SKIPPED")
REASONS = {"SENT": None, "FAILED": "missing email", "SKIPPED": "user opted out"}
T0 = datetime(2025, 3, 1, 9, 0)


@dataclass(frozen=True)
class Row:
    id: str
    user_id: str
    notification_type: str
    status: str
    created_at: datetime


@pytest.fixture
def log_rows(live_api: LiveApi, engine: Engine) -> list[Row]:
    """Twelve NotificationLog rows of two members, newest first as the API orders them.

    Statuses and tiers vary independently; rows 4 and 5 share a ``createdAt`` so
    pages must break the tie on ``id``.
    """
    users = [create_user(live_api)["id"], create_user(live_api, email="bo@example.com")["id"]]
    rows: list[Row] = []
    values: list[dict[str, Any]] = []
    for i in range(12):
        created = T0 + timedelta(hours=4 if i == 5 else i)
        row = Row(new_id(), users[i % 2], TYPES[(i // 3) % 3], STATUSES[i % 3], created)
        rows.append(row)
        values.append(
            {
                "id": row.id,
                "userId": row.user_id,
                "notificationType": row.notification_type,
                "status": row.status,
                "sentAt": created if row.status == "SENT" else None,
                "failureReason": REASONS[row.status],
                "expirationDate": datetime(2025, 4, 1) + timedelta(days=i),
                "pointsExpiring": 10 * (i + 1),
                "createdAt": created,
            }
        )
    with engine.begin() as conn:
        conn.execute(insert(NotificationLog), values)
    return sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["items"]]


def stamp(moment: datetime) -> str:
    return moment.isoformat() + "Z"


def member_with_points_due_in_7_days(api: LiveApi, **fields: Any) -> tuple[str, date]:
    """A member holding 100 points that expire 7 days after today."""
    user = create_user(api, **fields)["id"]
    day, at = noon_in(7)
    earn(api, open_account(api, user), 100, at)
    return user, day


def run_job(api: LiveApi, **body: Any) -> dict[str, Any]:
    summary: dict[str, Any] = json_of(api.admin.post(JOB, json=body), 200)
    return summary


# -- the reminder log ---------------------------------------------------------------------------


def test_log_rows_have_the_documented_shape(live_api: LiveApi, log_rows: list[Row]) -> None:
    page = json_of(live_api.admin.get("/admin/notifications?limit=1"), 200)
    [item] = page["items"]
    newest = log_rows[0]
    assert set(item) == NOTIFICATION_KEYS
    assert item == {
        "id": newest.id,
        "userId": newest.user_id,
        "notificationType": newest.notification_type,
        "status": newest.status,
        "sentAt": stamp(newest.created_at) if newest.status == "SENT" else None,
        "failureReason": REASONS[newest.status],
        "expirationDate": "2025-04-12",
        "pointsExpiring": 120,
        "createdAt": stamp(newest.created_at),
    }


def test_all_rows_come_newest_first(live_api: LiveApi, log_rows: list[Row]) -> None:
    page = json_of(live_api.admin.get("/admin/notifications"), 200)
    assert ids(page) == [r.id for r in log_rows]
    assert page["nextCursor"] is None


@pytest.mark.parametrize("status", STATUSES)
def test_rows_filter_by_status(live_api: LiveApi, log_rows: list[Row], status: str) -> None:
    page = json_of(live_api.admin.get(f"/admin/notifications?status={status}"), 200)
    assert ids(page) == [r.id for r in log_rows if r.status == status]


@pytest.mark.parametrize("notification_type", TYPES)
def test_rows_filter_by_tier(
    live_api: LiveApi, log_rows: list[Row], notification_type: str
) -> None:
    page = json_of(
        live_api.admin.get(f"/admin/notifications?notificationType={notification_type}"), 200
    )
    assert ids(page) == [r.id for r in log_rows if r.notification_type == notification_type]


def test_rows_filter_by_member(live_api: LiveApi, log_rows: list[Row]) -> None:
    user = log_rows[0].user_id
    page = json_of(live_api.admin.get(f"/admin/notifications?userId={user}"), 200)
    assert ids(page) == [r.id for r in log_rows if r.user_id == user]


def test_rows_filter_by_creation_time_from_inclusive_to_exclusive(
    live_api: LiveApi, log_rows: list[Row]
) -> None:
    start, end = T0 + timedelta(hours=3), T0 + timedelta(hours=8)
    params = {"from": start.isoformat(), "to": stamp(end)}
    page = json_of(live_api.admin.get("/admin/notifications", params=params), 200)
    assert ids(page) == [r.id for r in log_rows if start <= r.created_at < end]


def test_filters_combine(live_api: LiveApi, log_rows: list[Row]) -> None:
    user = log_rows[0].user_id
    params = {"userId": user, "status": "SENT", "to": stamp(T0 + timedelta(hours=6))}
    page = json_of(live_api.admin.get("/admin/notifications", params=params), 200)
    expected = [
        r.id
        for r in log_rows
        if r.user_id == user and r.status == "SENT" and r.created_at < T0 + timedelta(hours=6)
    ]
    assert expected
    assert ids(page) == expected


@pytest.mark.parametrize(("limit", "params"), [(5, {}), (1, {}), (2, {"status": "FAILED"})])
def test_pages_follow_next_cursor_without_overlap_or_gaps(
    live_api: LiveApi, log_rows: list[Row], limit: int, params: dict[str, str]
) -> None:
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {**params, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        page = json_of(live_api.admin.get("/admin/notifications", params=query), 200)
        pages += 1
        assert 0 < len(page["items"]) <= limit
        seen.extend(ids(page))
        cursor = page["nextCursor"]
        if cursor is None:
            break
        assert pages <= len(log_rows)
    expected = [r.id for r in log_rows if params.get("status") in (None, r.status)]
    assert seen == expected
    assert pages == -(-len(expected) // limit)


@pytest.mark.parametrize(
    "query",
    ["status=BOUNCED", "limit=0", "limit=501", "from=yesterday", "to=2025-02-30", "cursor=%25%25"],
)
def test_invalid_log_filters_are_refused(
    live_api: LiveApi, log_rows: list[Row], query: str
) -> None:
    response = live_api.admin.get(f"/admin/notifications?{query}")
    assert response.status_code in (400, 422)
    assert_problem(response, response.status_code)


@pytest.mark.parametrize(
    "params", [{"from": "0001-01-01T00:00:00+01:00"}, {"to": "9999-12-31T23:59:59-05:00"}]
)
def test_a_filter_time_beyond_the_calendar_in_utc_is_refused(
    live_api: LiveApi, params: dict[str, str]
) -> None:
    assert_problem(live_api.admin.get("/admin/notifications", params=params), 422)


# -- counts -------------------------------------------------------------------------------------


def test_stats_count_rows_by_status_and_tier_and_failures_by_reason(
    live_api: LiveApi, log_rows: list[Row]
) -> None:
    stats = json_of(live_api.admin.get("/admin/notifications/stats"), 200)
    assert stats == {
        "byStatus": {"FAILED": 4, "SENT": 4, "SKIPPED": 4},
        "byTypeAndStatus": {
            "EXPIRATION_1_DAY": {"FAILED": 1, "SENT": 1, "SKIPPED": 1},
            "EXPIRATION_30_DAYS": {"FAILED": 2, "SENT": 2, "SKIPPED": 2},
            "EXPIRATION_7_DAYS": {"FAILED": 1, "SENT": 1, "SKIPPED": 1},
        },
        "failuresByReason": {"missing email": 4},
        "recentRuns": [],
    }


# -- running the job ----------------------------------------------------------------------------


def test_a_run_sends_the_reminders_due_and_says_so(live_api: LiveApi) -> None:
    member_with_points_due_in_7_days(live_api)
    member_with_points_due_in_7_days(live_api, email="out@example.com", emailNotifications=False)
    summary = run_job(live_api, asOf=today().isoformat())
    assert summary["asOf"] == f"{today().isoformat()}T09:00:00Z"
    assert summary["dryRun"] is False
    assert (summary["planned"], summary["sent"], summary["failed"], summary["skipped"]) == (
        2,
        1,
        0,
        1,
    )
    assert summary["byType"] == {"EXPIRATION_7_DAYS": {"SENT": 1, "SKIPPED": 1}}
    assert summary["error"] is None
    assert len(live_api.smtp.messages) == 1


def test_the_run_summary_has_the_keys_of_notify_run_json(
    live_api: LiveApi, database_url: str, tmp_path: Path
) -> None:
    day = today().isoformat()
    env = rewards_env(database_url)
    cli = run_rewards("notify", "run", "--json", "--dry-run", "--as-of", day, env=env, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    api = run_job(live_api, asOf=day, dryRun=True)
    assert set(api) == set(json_output(cli.stdout))
    assert api["dryRun"] is True


def test_a_dry_run_may_look_ahead_and_writes_nothing(live_api: LiveApi) -> None:
    member_with_points_due_in_7_days(live_api)
    summary = run_job(live_api, asOf=(today() + timedelta(days=6)).isoformat(), dryRun=True)
    assert summary["byType"] == {"EXPIRATION_1_DAY": {"SENT": 1}}
    assert summary["runId"] is None
    assert live_api.smtp.messages == []
    assert json_of(live_api.admin.get("/admin/notifications"), 200)["items"] == []
    assert json_of(live_api.admin.get("/admin/job-runs"), 200)["items"] == []


def test_a_run_in_the_future_without_dry_run_is_refused(live_api: LiveApi) -> None:
    member_with_points_due_in_7_days(live_api)
    response = live_api.admin.post(
        JOB, json={"asOf": (today() + timedelta(days=1)).isoformat(), "dryRun": False}
    )
    assert "dry-run" in assert_problem(response, 422)["detail"]
    assert json_of(live_api.admin.get("/admin/job-runs"), 200)["items"] == []
    assert live_api.smtp.messages == []


def test_a_run_without_a_body_runs_now(live_api: LiveApi) -> None:
    summary = json_of(live_api.admin.post(JOB), 200)
    assert summary["dryRun"] is False
    assert summary["asOf"].startswith(today().isoformat())
    assert summary["runId"]


@pytest.mark.parametrize(
    "body",
    [{"asOf": "not-a-date"}, {"asOf": "2025-02-30"}, {"dryRun": "maybe"}, {"when": "now"}],
)
def test_an_invalid_run_request_is_refused(live_api: LiveApi, body: dict[str, Any]) -> None:
    assert_problem(live_api.admin.post(JOB, json=body), 422)
    assert json_of(live_api.admin.get("/admin/job-runs"), 200)["items"] == []


def test_a_dry_run_at_the_end_of_the_calendar_is_refused(live_api: LiveApi) -> None:
    assert_problem(live_api.admin.post(JOB, json={"asOf": "9999-12-31", "dryRun": True}), 422)


def test_job_runs_list_the_api_triggered_run(live_api: LiveApi) -> None:
    member_with_points_due_in_7_days(live_api)
    summary = run_job(live_api, asOf=today().isoformat())
    [record] = json_of(live_api.admin.get("/admin/job-runs"), 200)["items"]
    assert record["id"] == summary["runId"]
    assert (record["status"], record["trigger"]) == ("SUCCEEDED", "api")
    assert record["asOf"] == summary["asOf"]
    assert (record["planned"], record["sent"], record["failed"], record["skipped"]) == (1, 1, 0, 0)
    assert record["byType"] == {"EXPIRATION_7_DAYS": {"SENT": 1}}
    assert record["finishedAt"].endswith("Z")
    assert record["error"] is None


def test_job_runs_honour_the_limit(live_api: LiveApi) -> None:
    for _ in range(3):
        run_job(live_api, asOf=today().isoformat())
    assert len(json_of(live_api.admin.get("/admin/job-runs?limit=2"), 200)["items"]) == 2


def test_a_member_sees_the_reminders_sent_to_them(live_api: LiveApi) -> None:
    user, day = member_with_points_due_in_7_days(live_api)
    other, _ = member_with_points_due_in_7_days(live_api, email="bo@example.com")
    run_job(live_api, asOf=today().isoformat())
    page = json_of(live_api.client.get(f"/users/{user}/notifications"), 200)
    [item] = page["items"]
    assert page["nextCursor"] is None
    assert set(item) == NOTIFICATION_KEYS
    assert {k: item[k] for k in NOTIFICATION_KEYS - {"id", "sentAt", "createdAt"}} == {
        "userId": user,
        "notificationType": "EXPIRATION_7_DAYS",
        "status": "SENT",
        "failureReason": None,
        "expirationDate": day.isoformat(),
        "pointsExpiring": 100,
    }
    assert item["sentAt"].endswith("Z")
    assert item["createdAt"].endswith("Z")
    assert other != user


def test_a_members_history_pages_through_next_cursor(
    live_api: LiveApi, log_rows: list[Row]
) -> None:
    user = log_rows[0].user_id
    first = json_of(live_api.client.get(f"/users/{user}/notifications?limit=4"), 200)
    rest = json_of(
        live_api.client.get(
            f"/users/{user}/notifications", params={"limit": 4, "cursor": first["nextCursor"]}
        ),
        200,
    )
    assert ids(first) + ids(rest) == [r.id for r in log_rows if r.user_id == user]
    assert rest["nextCursor"] is None


# -- metrics ------------------------------------------------------------------------------------


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (labels in any order)."""
    for line in metrics.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    raise AssertionError(f"no sample {name}{labels} in:\n{metrics}")


def test_metrics_are_prometheus_text(live_api: LiveApi) -> None:
    response = live_api.anonymous.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert sample(response.text, "rewards_database_up") == 1.0
    assert "# TYPE rewards_email_send_seconds histogram" in response.text


def test_metrics_count_runs_and_reminders_by_status_and_tier(live_api: LiveApi) -> None:
    member_with_points_due_in_7_days(live_api)
    member_with_points_due_in_7_days(live_api, email="out@example.com", emailNotifications=False)
    run_job(live_api, asOf=today().isoformat())
    text = live_api.anonymous.get("/metrics").text
    assert "# TYPE rewards_job_runs_total counter" in text
    assert sample(text, "rewards_job_runs_total", outcome="succeeded") == 1.0
    assert sample(text, "rewards_job_runs_total", outcome="failed") == 0.0
    assert sample(text, "rewards_job_running") == 0.0
    for status in ("SENT", "SKIPPED"):
        assert (
            sample(text, "rewards_notifications_total", status=status, notification_type=TYPES[1])
            == 1.0
        )


def test_metrics_give_the_time_of_the_last_successful_run(live_api: LiveApi) -> None:
    before = datetime.now().timestamp()
    run_job(live_api, asOf=today().isoformat())
    text = live_api.anonymous.get("/metrics").text
    last = sample(text, "rewards_job_last_success_timestamp_seconds")
    assert before - 1 <= last <= datetime.now().timestamp() + 1


def test_metrics_time_the_emails_sent(live_api: LiveApi) -> None:
    text = live_api.anonymous.get("/metrics").text
    before = sample(text, "rewards_email_send_seconds_count")
    member_with_points_due_in_7_days(live_api)
    run_job(live_api, asOf=today().isoformat())
    text = live_api.anonymous.get("/metrics").text
    assert sample(text, "rewards_email_send_seconds_count") == before + 1
    assert sample(text, "rewards_email_send_seconds_bucket", le="+Inf") == before + 1
