"""Hundreds of requests through one running server.

Connection pools and prepared statements change behaviour after the first few
executions on a connection: psycopg prepares a statement on its fifth use, and
PostgreSQL may then switch to a generic plan, in which a bound parameter is no
longer a constant. A statement that needs a constant (an ``ON CONFLICT`` target
naming a partial index, say) works for the first requests and fails later.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from tests.integration.api_server import (
    LiveApi,
    available,
    create_user,
    insert_credit,
    noon,
    noon_in,
    open_account,
    today,
)

pytest_plugins = ["tests.integration.api_server"]

ROUNDS = 300


def test_hundreds_of_earns_and_redemptions_on_one_server_never_fail(live_api: LiveApi) -> None:
    account = open_account(live_api, create_user(live_api)["id"])
    # An expired credit, so every redemption's lazy expiry has something to consider.
    yesterday = noon(today() - timedelta(days=1))
    insert_credit(
        live_api.engine, account, 7, expires_at=yesterday, created_at=yesterday - timedelta(days=3)
    )
    _, expires_at = noon_in(60)
    statuses: Counter[int] = Counter()
    for _ in range(ROUNDS):
        earned = live_api.client.post(
            f"/accounts/{account}/earn", json={"points": 5, "expiresAt": expires_at}
        )
        redeemed = live_api.client.post(f"/accounts/{account}/redeem", json={"points": 3})
        statuses[earned.status_code] += 1
        statuses[redeemed.status_code] += 1
    assert statuses == Counter({201: 2 * ROUNDS}), statuses
    assert available(live_api, account) == 2 * ROUNDS
