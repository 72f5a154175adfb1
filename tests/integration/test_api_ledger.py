"""Earning, redeeming and balances over real HTTP, with Idempotency-Key replays and races."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from rewards.db import create_db_engine
from tests.integration.api_server import (
    LiveApi,
    assert_problem,
    available,
    create_user,
    earn,
    insert_credit,
    json_of,
    ledger_totals,
    noon,
    noon_in,
    open_account,
    running_api,
    today,
)
from tests.smtp_server import SmtpServer

pytest_plugins = ["tests.integration.api_server"]

ENTRY_KEYS = {
    "id",
    "accountId",
    "entryType",
    "credit",
    "debit",
    "description",
    "createdAt",
    "expiresAt",
}
YEAR = today().year + 5  # a year that is always ahead


@pytest.fixture
def account(live_api: LiveApi) -> str:
    """An account of a fresh member, with no points."""
    return open_account(live_api, create_user(live_api)["id"])


def expiring(api: LiveApi, path: str) -> tuple[int, list[dict[str, Any]]]:
    body = json_of(api.client.get(path), 200)
    return body["available"], body["expiring"]


def run_together(calls: int, call: Callable[[], httpx.Response]) -> list[httpx.Response]:
    """``call`` from ``calls`` threads released at the same moment."""
    start = threading.Barrier(calls)

    def at_once() -> httpx.Response:
        start.wait(timeout=10)
        return call()

    with ThreadPoolExecutor(max_workers=calls) as pool:
        futures = [pool.submit(at_once) for _ in range(calls)]
        return [f.result(timeout=60) for f in futures]


# -- earn and redeem -------------------------------------------------------------------------


def test_earning_returns_the_credit_entry(live_api: LiveApi, account: str) -> None:
    _, expires = noon_in(30)
    body = {"points": 120, "expiresAt": expires, "description": "order 17"}
    entry = json_of(live_api.client.post(f"/accounts/{account}/earn", json=body), 201)
    assert set(entry) == ENTRY_KEYS
    assert {k: entry[k] for k in ENTRY_KEYS - {"id", "createdAt"}} == {
        "accountId": account,
        "entryType": "EARN",
        "credit": 120,
        "debit": 0,
        "description": "order 17",
        "expiresAt": expires,
    }
    assert entry["createdAt"].endswith("Z")
    assert available(live_api, account) == 120


def test_points_earned_without_expiry_never_expire(live_api: LiveApi, account: str) -> None:
    entry = json_of(live_api.client.post(f"/accounts/{account}/earn", json={"points": 5}), 201)
    assert (entry["expiresAt"], entry["description"]) == (None, None)


def test_the_largest_amount_is_accepted(live_api: LiveApi, account: str) -> None:
    assert earn(live_api, account, 1_000_000_000)["credit"] == 1_000_000_000


@pytest.mark.parametrize(
    ("sent", "returned"),
    [
        (f"{YEAR}-01-01T10:00:00", f"{YEAR}-01-01T10:00:00Z"),
        (f"{YEAR}-01-01T10:00:00Z", f"{YEAR}-01-01T10:00:00Z"),
        (f"{YEAR}-01-01T10:00:00+02:00", f"{YEAR}-01-01T08:00:00Z"),
        (f"{YEAR}-01-01T10:00:00-05:30", f"{YEAR}-01-01T15:30:00Z"),
        (f"{YEAR}-01-01", f"{YEAR}-01-01T00:00:00Z"),
    ],
)
def test_timestamps_are_read_as_utc_and_returned_in_utc(
    live_api: LiveApi, account: str, sent: str, returned: str
) -> None:
    assert earn(live_api, account, 10, sent)["expiresAt"] == returned


def test_redeeming_returns_the_debit_entry(live_api: LiveApi, account: str) -> None:
    earn(live_api, account, 100)
    body = {"points": 60, "description": "voucher"}
    entry = json_of(live_api.client.post(f"/accounts/{account}/redeem", json=body), 201)
    assert set(entry) == ENTRY_KEYS
    assert {k: entry[k] for k in ENTRY_KEYS - {"id", "createdAt"}} == {
        "accountId": account,
        "entryType": "REDEEM",
        "credit": 0,
        "debit": 60,
        "description": "voucher",
        "expiresAt": None,
    }
    assert available(live_api, account) == 40


def test_redemptions_spend_the_earliest_expiring_points_first(
    live_api: LiveApi, account: str
) -> None:
    _, soon_at = noon_in(20)
    later, later_at = noon_in(200)
    earn(live_api, account, 30)  # never expires: spent last
    earn(live_api, account, 100, later_at)
    earn(live_api, account, 50, soon_at)
    json_of(live_api.client.post(f"/accounts/{account}/redeem", json={"points": 60}), 201)
    assert expiring(live_api, f"/accounts/{account}/balance?days=365") == (
        120,
        [{"date": later.isoformat(), "points": 90}],
    )


# -- balances and upcoming expirations --------------------------------------------------------


@pytest.fixture
def spent_account(live_api: LiveApi, account: str) -> tuple[str, dict[str, str]]:
    """40 points expiring in 5 days (all spent), 60 in 10 days (10 spent), 70 in 45 days."""
    dates: dict[str, str] = {}
    for days, points in ((5, 40), (10, 60), (45, 70)):
        day, at = noon_in(days)
        earn(live_api, account, points, at)
        dates[f"+{days}"] = day.isoformat()
    json_of(live_api.client.post(f"/accounts/{account}/redeem", json={"points": 50}), 201)
    return account, dates


def test_the_balance_lists_unspent_points_per_date_net_of_redemptions(
    live_api: LiveApi, spent_account: tuple[str, dict[str, str]]
) -> None:
    account, dates = spent_account
    body = json_of(live_api.client.get(f"/accounts/{account}/balance?days=60"), 200)
    assert body == {
        "accountId": account,
        "available": 120,
        "expiring": [{"date": dates["+10"], "points": 50}, {"date": dates["+45"], "points": 70}],
    }


def test_the_balance_leaves_out_dates_beyond_the_days_asked_for(
    live_api: LiveApi, spent_account: tuple[str, dict[str, str]]
) -> None:
    account, dates = spent_account
    assert expiring(live_api, f"/accounts/{account}/balance?days=30") == (
        120,
        [{"date": dates["+10"], "points": 50}],
    )


def test_the_balance_looks_30_days_ahead_by_default(
    live_api: LiveApi, spent_account: tuple[str, dict[str, str]]
) -> None:
    account, dates = spent_account
    assert expiring(live_api, f"/accounts/{account}/balance") == (
        120,
        [{"date": dates["+10"], "points": 50}],
    )


def test_expired_points_are_neither_available_nor_spendable(
    live_api: LiveApi, account: str, engine: Engine
) -> None:
    yesterday = noon(today() - timedelta(days=1))
    insert_credit(engine, account, 80, expires_at=yesterday, created_at=yesterday - timedelta(30))
    assert available(live_api, account) == 0
    response = live_api.client.post(f"/accounts/{account}/redeem", json={"points": 10})
    assert assert_problem(response, 409)["available"] == 0


def test_a_members_expiring_points_are_summed_over_their_accounts(live_api: LiveApi) -> None:
    user = create_user(live_api)["id"]
    first, second = open_account(live_api, user), open_account(live_api, user)
    day10, at10 = noon_in(10)
    day12, at12 = noon_in(12)
    earn(live_api, first, 30, at10)
    earn(live_api, second, 20, at10)
    earn(live_api, second, 5, at12)
    earn(live_api, second, 7)
    body = json_of(live_api.client.get(f"/users/{user}/expiring-points?days=30"), 200)
    assert body == {
        "userId": user,
        "available": 62,
        "expiring": [
            {"date": day10.isoformat(), "points": 50},
            {"date": day12.isoformat(), "points": 5},
        ],
    }


def test_a_member_without_accounts_has_nothing_expiring(live_api: LiveApi) -> None:
    user = create_user(live_api)["id"]
    body = json_of(live_api.client.get(f"/users/{user}/expiring-points"), 200)
    assert body == {"userId": user, "available": 0, "expiring": []}


@pytest.mark.parametrize("days", ["0", "-1", "3651", "ten", "1.5"])
def test_an_invalid_days_is_refused(live_api: LiveApi, account: str, days: str) -> None:
    assert_problem(live_api.client.get(f"/accounts/{account}/balance?days={days}"), 422)


# -- refused amounts and dates ----------------------------------------------------------------


@pytest.mark.parametrize("operation", ["earn", "redeem"])
@pytest.mark.parametrize(
    "points", [0, -1, -100, 1_000_000_001, 2.5, 10.0, "10", True, None, [10], {"n": 10}]
)
def test_invalid_points_are_refused_and_nothing_is_written(
    live_api: LiveApi, engine: Engine, account: str, operation: str, points: object
) -> None:
    earn(live_api, account, 100)
    before = ledger_totals(engine, account)
    response = live_api.client.post(f"/accounts/{account}/{operation}", json={"points": points})
    assert "points" in assert_problem(response, 422)["detail"]
    assert ledger_totals(engine, account) == before


@pytest.mark.parametrize("operation", ["earn", "redeem"])
def test_points_are_required(live_api: LiveApi, account: str, operation: str) -> None:
    response = live_api.client.post(f"/accounts/{account}/{operation}", json={})
    assert "points" in assert_problem(response, 422)["detail"]


@pytest.mark.parametrize(
    "expires_at",
    [
        f"{YEAR}-13-01T00:00:00",
        f"{YEAR}-02-30",
        f"{YEAR}-01-01T25:00:00",
        f"01/02/{YEAR}",
        "tomorrow",
        "",
        f"{YEAR}-01-01T10:00:00+25:00",
    ],
)
def test_a_malformed_expiry_is_refused(live_api: LiveApi, account: str, expires_at: str) -> None:
    body = {"points": 10, "expiresAt": expires_at}
    response = live_api.client.post(f"/accounts/{account}/earn", json=body)
    assert "expiresAt" in assert_problem(response, 422)["detail"]
    assert available(live_api, account) == 0


@pytest.mark.parametrize("expires_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_an_expiry_beyond_the_calendar_in_utc_is_refused(
    live_api: LiveApi, account: str, expires_at: str
) -> None:
    body = {"points": 10, "expiresAt": expires_at}
    response = live_api.client.post(f"/accounts/{account}/earn", json=body)
    assert "expiresAt" in assert_problem(response, 422)["detail"]


@pytest.mark.parametrize("days_ago", [1, 365 * 3])
def test_an_expiry_in_the_past_is_refused(live_api: LiveApi, account: str, days_ago: int) -> None:
    _, past = noon_in(-days_ago)
    response = live_api.client.post(
        f"/accounts/{account}/earn", json={"points": 10, "expiresAt": past}
    )
    assert "expiresAt" in assert_problem(response, 422)["detail"]
    assert available(live_api, account) == 0


@pytest.mark.parametrize(
    ("operation", "body"),
    [
        ("earn", {"points": 10, "reason": "gift"}),
        ("earn", {"points": 10, "credit": 10}),
        ("redeem", {"points": 10, "expiresAt": None}),
        ("redeem", {"points": 10, "accountId": "another"}),
    ],
)
def test_unknown_ledger_fields_are_refused(
    live_api: LiveApi, engine: Engine, account: str, operation: str, body: dict[str, Any]
) -> None:
    earn(live_api, account, 100)
    before = ledger_totals(engine, account)
    assert_problem(live_api.client.post(f"/accounts/{account}/{operation}", json=body), 422)
    assert ledger_totals(engine, account) == before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/accounts/nothing/earn", {"points": 10}),
        ("POST", "/accounts/nothing/redeem", {"points": 10}),
        ("GET", "/accounts/nothing/balance", None),
    ],
)
def test_unknown_accounts_are_not_found(
    live_api: LiveApi, method: str, path: str, body: dict[str, Any] | None
) -> None:
    assert_problem(live_api.client.request(method, path, json=body), 404)


def test_redeeming_more_than_available_is_a_conflict_and_writes_nothing(
    live_api: LiveApi, engine: Engine, account: str
) -> None:
    earn(live_api, account, 30)
    before = ledger_totals(engine, account)
    response = live_api.client.post(f"/accounts/{account}/redeem", json={"points": 50})
    problem = assert_problem(response, 409)
    assert (problem["available"], problem["requested"]) == (30, 50)
    assert ledger_totals(engine, account) == before
    assert available(live_api, account) == 30


# -- Idempotency-Key ------------------------------------------------------------------------------


def test_a_replayed_earn_returns_the_first_entry_and_posts_once(
    live_api: LiveApi, engine: Engine, account: str
) -> None:
    key = {"Idempotency-Key": "order-17-points"}
    body = {"points": 25, "description": "order 17"}
    first = live_api.client.post(f"/accounts/{account}/earn", json=body, headers=key)
    again = live_api.client.post(f"/accounts/{account}/earn", json=body, headers=key)
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert ledger_totals(engine, account) == (1, 25, 0)
    assert available(live_api, account) == 25


def test_a_replayed_redeem_returns_the_first_entry_and_posts_once(
    live_api: LiveApi, engine: Engine, account: str
) -> None:
    earn(live_api, account, 100)
    key = {"Idempotency-Key": "refund-3"}
    first = live_api.client.post(f"/accounts/{account}/redeem", json={"points": 40}, headers=key)
    again = live_api.client.post(f"/accounts/{account}/redeem", json={"points": 40}, headers=key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert available(live_api, account) == 60


def test_a_replayed_earn_whose_expiry_has_passed_since_returns_the_first_entry(
    live_api: LiveApi, engine: Engine, account: str
) -> None:
    key = {"Idempotency-Key": "order-18-points"}
    expires_at = datetime.now(UTC) + timedelta(seconds=1)
    body = {"points": 10, "expiresAt": expires_at.isoformat()}
    first = live_api.client.post(f"/accounts/{account}/earn", json=body, headers=key)
    assert first.status_code == 201, first.text
    time.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 0.05)
    again = live_api.client.post(f"/accounts/{account}/earn", json=body, headers=key)
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert ledger_totals(engine, account) == (1, 10, 0)


def test_a_retry_after_a_refused_redemption_is_a_new_attempt(
    live_api: LiveApi, engine: Engine, account: str
) -> None:
    """A 409 writes nothing, its key included: the retry is judged on the balance it meets."""
    earn(live_api, account, 30)
    key = {"Idempotency-Key": "reward-9"}
    refused = live_api.client.post(f"/accounts/{account}/redeem", json={"points": 50}, headers=key)
    assert assert_problem(refused, 409)["available"] == 30
    again = live_api.client.post(f"/accounts/{account}/redeem", json={"points": 50}, headers=key)
    assert_problem(again, 409)
    earn(live_api, account, 20)
    posted = live_api.client.post(f"/accounts/{account}/redeem", json={"points": 50}, headers=key)
    assert posted.status_code == 201, posted.text
    replayed = live_api.client.post(f"/accounts/{account}/redeem", json={"points": 50}, headers=key)
    assert replayed.status_code == 200
    assert replayed.json() == posted.json()
    assert ledger_totals(engine, account) == (3, 50, 50)
    assert available(live_api, account) == 0


@pytest.mark.parametrize(
    ("operation", "body"),
    [
        ("earn", {"points": 26}),
        ("redeem", {"points": 25}),
        ("earn", {"points": 25, "expiresAt": f"{YEAR}-01-01T00:00:00Z"}),
        ("earn", {"points": 25, "description": "another order"}),
    ],
)
def test_reusing_a_key_for_a_different_request_is_refused(
    live_api: LiveApi, engine: Engine, account: str, operation: str, body: dict[str, Any]
) -> None:
    key = {"Idempotency-Key": "k-1"}
    json_of(
        live_api.client.post(f"/accounts/{account}/earn", json={"points": 25}, headers=key), 201
    )
    response = live_api.client.post(f"/accounts/{account}/{operation}", json=body, headers=key)
    assert "Idempotency-Key" in assert_problem(response, 422)["detail"]
    assert ledger_totals(engine, account) == (1, 25, 0)


def test_a_key_belongs_to_one_account(live_api: LiveApi, engine: Engine) -> None:
    user = create_user(live_api)["id"]
    first, second = open_account(live_api, user), open_account(live_api, user)
    key = {"Idempotency-Key": "k-1"}
    for account in (first, second):
        response = live_api.client.post(
            f"/accounts/{account}/earn", json={"points": 5}, headers=key
        )
        assert response.status_code == 201
    assert available(live_api, second) == 5


def test_concurrent_earns_with_one_key_post_exactly_once(
    live_api: LiveApi, engine: Engine, account: str
) -> None:
    responses = run_together(
        20,
        lambda: live_api.client.post(
            f"/accounts/{account}/earn", json={"points": 7}, headers={"Idempotency-Key": "burst"}
        ),
    )
    assert Counter(r.status_code for r in responses) == {201: 1, 200: 19}
    assert len({r.json()["id"] for r in responses}) == 1
    assert ledger_totals(engine, account) == (1, 7, 0)


# -- bursts of requests --------------------------------------------------------------------------


@pytest.fixture
def fast_failing_api(database_url: str, smtp_server: SmtpServer) -> Iterator[LiveApi]:
    """A server of its own whose engine waits at most 5 s for a pooled connection.

    With the default 30 s, a request stuck behind the connection pool holds the
    suite up for half a minute before it fails.
    """
    engine = create_db_engine(database_url, pool_timeout=5)
    try:
        with running_api(engine, database_url, smtp_server) as api:
            yield api
    finally:
        engine.dispose()


@pytest.mark.postgres_only
def test_concurrent_redeems_never_overspend(
    fast_failing_api: LiveApi, engine: Engine, account: str
) -> None:
    api = fast_failing_api
    earn(api, account, 200)
    responses = run_together(
        50, lambda: api.client.post(f"/accounts/{account}/redeem", json={"points": 10})
    )
    assert Counter(r.status_code for r in responses) == {201: 20, 409: 30}
    for refused in (r for r in responses if r.status_code == 409):
        assert refused.json()["requested"] == 10
        assert 0 <= refused.json()["available"] < 10
    assert ledger_totals(engine, account) == (21, 200, 200)
    assert available(api, account) == 0


@pytest.mark.postgres_only
def test_concurrent_redeems_below_the_thread_pool_size_never_overspend(
    live_api: LiveApi, engine: Engine, account: str
) -> None:
    earn(live_api, account, 200)
    responses = run_together(
        30, lambda: live_api.client.post(f"/accounts/{account}/redeem", json={"points": 10})
    )
    assert Counter(r.status_code for r in responses) == {201: 20, 409: 10}
    assert ledger_totals(engine, account) == (21, 200, 200)
    assert available(live_api, account) == 0


def test_a_burst_of_concurrent_reads_is_served(fast_failing_api: LiveApi, account: str) -> None:
    api = fast_failing_api
    earn(api, account, 10)
    responses = run_together(60, lambda: api.client.get(f"/accounts/{account}/balance"))
    assert Counter(r.status_code for r in responses) == {200: 60}
