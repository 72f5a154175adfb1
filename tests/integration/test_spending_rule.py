"""The SPEC's example of chronological spending, end to end through the HTTP API.

"Jan 1: earn 1,000 expiring next Jan 1. Jan 5: redeem 1,000. Feb 1: a promotional
100 expiring Mar 3. The redemption used the first lot; the 100 promotional points
expire on Mar 3, and their reminders are due before then." The pooled formula
``clamp(C_i - D, 0, credit_i)`` charges the redemption to the promotional lot and
keeps 100 points alive until next January instead: wrong.

The API only earns and redeems *now*, so the story is shifted to end in the present:
"Jan 1" is 40 days ago, which puts "Feb 1" (the promotional lot) 9 days ago and
"Mar 3" (its expiry) 21 days ahead, and "next Jan 1" 325 days ahead. The January and
February rows are written with plain SQL, as another application would; everything
after that is read through the API, and the job is previewed on dates around Mar 3.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from rewards.ids import new_id
from rewards.tables import allocations
from tests.integration.api_server import (
    LiveApi,
    create_user,
    insert_credit,
    json_of,
    noon,
    open_account,
    today,
)
from tests.process_helpers import sql_timestamp

pytest_plugins = ["tests.integration.api_server"]

JOB = "/admin/jobs/check-expiring-points"


def insert_redemption(engine: Engine, account_id: str, points: int, created_at: datetime) -> str:
    """A REDEEM row written with plain SQL, as another application would."""
    entry_id = new_id()
    with engine.begin() as conn:
        conn.execute(
            text(
                'INSERT INTO "PointLedger" ("id", "accountId", "entryType", "debit", "createdAt")'
                " VALUES (:id, :account, 'REDEEM', :debit, :created)"
            ),
            {
                "id": entry_id,
                "account": account_id,
                "debit": points,
                "created": sql_timestamp(created_at),
            },
        )
    return entry_id


class Story:
    """The SPEC's calendar, shifted so that "Jan 1" is 40 days before today."""

    def __init__(self) -> None:
        self.jan_1 = today() - timedelta(days=40)
        self.jan_5 = self.jan_1 + timedelta(days=4)
        self.feb_1 = self.jan_1 + timedelta(days=31)
        self.mar_3 = self.jan_1 + timedelta(days=61)
        self.next_jan_1 = self.jan_1 + timedelta(days=365)


def pooled_remainders(credits: list[tuple[str, int]], debited: int) -> dict[str, int]:
    """The pooled formula the SPEC rejects: credits in spending order, ``clamp(C_i - D)``."""
    left: dict[str, int] = {}
    cumulative = 0
    for lot_id, amount in credits:
        cumulative += amount
        left[lot_id] = min(max(cumulative - debited, 0), amount)
    return left


def expiring(body: dict[str, Any]) -> dict[str, int]:
    return {e["date"]: e["points"] for e in body["expiring"]}


def preview(api: LiveApi, day: date) -> dict[str, Any]:
    summary: dict[str, Any] = json_of(
        api.admin.post(JOB, json={"asOf": day.isoformat(), "dryRun": True}), 200
    )
    return summary


@pytest.fixture
def story(live_api: LiveApi) -> tuple[Story, str, str, dict[str, str]]:
    """The member, the account, and the ids of the three ledger rows of the example."""
    s = Story()
    member = create_user(live_api)["id"]
    account = open_account(live_api, member)
    engine = live_api.engine
    rows = {
        "first": insert_credit(engine, account, 1000, noon(s.next_jan_1), noon(s.jan_1)),
        "redemption": insert_redemption(engine, account, 1000, noon(s.jan_5)),
        "promo": insert_credit(engine, account, 100, noon(s.mar_3), noon(s.feb_1)),
    }
    return s, member, account, rows


def test_the_redemption_used_the_first_lot_and_the_promotional_points_expire_on_mar_3(
    live_api: LiveApi, story: tuple[Story, str, str, dict[str, str]]
) -> None:
    s, member, account, rows = story

    balance = json_of(live_api.client.get(f"/accounts/{account}/balance?days=400"), 200)
    assert balance["available"] == 100
    assert expiring(balance) == {s.mar_3.isoformat(): 100}
    member_view = json_of(live_api.client.get(f"/users/{member}/expiring-points?days=400"), 200)
    assert (member_view["available"], expiring(member_view)) == (100, {s.mar_3.isoformat(): 100})

    with live_api.engine.connect() as conn:  # the read above stored the projection
        used = conn.execute(
            select(allocations.c.lotId, allocations.c.points).where(
                allocations.c.debitId == rows["redemption"]
            )
        ).all()
    assert dict(used) == {rows["first"]: 1000}


def test_the_promotional_points_reminders_are_due_before_mar_3_and_they_expire_then(
    live_api: LiveApi, story: tuple[Story, str, str, dict[str, str]]
) -> None:
    s, member, _, _ = story

    week_before = preview(live_api, s.mar_3 - timedelta(days=7))
    assert week_before["byType"] == {"EXPIRATION_7_DAYS": {"SENT": 1}}
    assert week_before["expiredPoints"] == 0
    day_before = preview(live_api, s.mar_3 - timedelta(days=1))
    assert day_before["byType"] == {"EXPIRATION_1_DAY": {"SENT": 1}}
    day_after = preview(live_api, s.mar_3 + timedelta(days=1))
    assert (day_after["expiredEntries"], day_after["expiredPoints"]) == (1, 100)
    assert day_after["planned"] == 0

    # Today is 21 days before Mar 3: the 30-day reminder goes out, for what is left.
    summary = json_of(live_api.admin.post(JOB, json={"asOf": today().isoformat()}), 200)
    assert summary["byType"] == {"EXPIRATION_30_DAYS": {"SENT": 1}}
    [sent] = json_of(live_api.admin.get(f"/users/{member}/notifications"), 200)["items"]
    assert (sent["expirationDate"], sent["pointsExpiring"]) == (s.mar_3.isoformat(), 100)


def test_the_pooled_formula_is_not_what_the_service_says(
    live_api: LiveApi, story: tuple[Story, str, str, dict[str, str]]
) -> None:
    s, _, account, rows = story
    # In spending order (earliest expiry first) the pooled formula charges the 1,000
    # to the promotional lot first, and keeps 100 of the first lot alive.
    pooled = pooled_remainders([(rows["promo"], 100), (rows["first"], 1000)], debited=1000)
    assert pooled == {rows["promo"]: 0, rows["first"]: 100}

    pooled_expiring = {s.next_jan_1.isoformat(): pooled[rows["first"]]}

    balance = json_of(live_api.client.get(f"/accounts/{account}/balance?days=400"), 200)
    assert expiring(balance) == {s.mar_3.isoformat(): 100} != pooled_expiring

    # No reminder a week before next Jan 1: nothing is left to expire then.
    week_before_next_year = preview(live_api, s.next_jan_1 - timedelta(days=7))
    assert week_before_next_year["planned"] == 0
    # By then only the promotional 100 have expired (on Mar 3), not the first lot's.
    after_next_year = preview(live_api, s.next_jan_1 + timedelta(days=1))
    assert (after_next_year["expiredEntries"], after_next_year["expiredPoints"]) == (1, 100)
