"""The lots over HTTP: what each credit left, what each debit used, and other writers' rows.

Reads apply what another application wrote to the ledger before they answer, so
a row inserted with plain SQL shows at once in the lots, the history and the
balance, and a debit its instant could not cover is an anomaly the operators see.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, text

from rewards.clock import utcnow
from tests.integration.api_server import (
    LiveApi,
    available,
    create_user,
    earn,
    insert_credit,
    json_of,
    noon,
    noon_in,
    open_account,
    today,
)

pytest_plugins = ["tests.integration.api_server"]


def lots(api: LiveApi, account: str, **params: Any) -> dict[str, Any]:
    page: dict[str, Any] = json_of(api.client.get(f"/accounts/{account}/lots", params=params), 200)
    return page


def history(api: LiveApi, account: str, **params: Any) -> dict[str, Any]:
    page: dict[str, Any] = json_of(
        api.client.get(f"/accounts/{account}/ledger", params=params), 200
    )
    return page


def raw_debit(engine: Engine, account: str, points: int, created_at: Any, entry_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                'INSERT INTO "PointLedger" ("id", "accountId", "entryType", "debit", "createdAt")'
                " VALUES (:id, :account, 'REDEEM', :debit, :created)"
            ),
            {
                "id": entry_id,
                "account": account,
                "debit": points,
                "created": created_at.isoformat(sep=" ", timespec="milliseconds"),
            },
        )


def test_each_lot_shows_what_was_credited_and_what_is_left(live_api: LiveApi) -> None:
    account = open_account(live_api, create_user(live_api)["id"])
    _, soon = noon_in(10)
    _, later = noon_in(40)
    first = earn(live_api, account, 100, soon)
    second = earn(live_api, account, 50, later)
    forever = earn(live_api, account, 30)
    json_of(live_api.client.post(f"/accounts/{account}/redeem", json={"points": 120}), 201)

    page = lots(live_api, account)
    assert page["nextCursor"] is None
    by_id = {lot["id"]: lot for lot in page["items"]}
    assert [lot["id"] for lot in page["items"]] == [forever["id"], second["id"], first["id"]]
    assert (by_id[first["id"]]["points"], by_id[first["id"]]["pointsLeft"]) == (100, 0)
    assert by_id[first["id"]]["status"] == "SPENT"
    assert (by_id[second["id"]]["pointsLeft"], by_id[second["id"]]["status"]) == (30, "LIVE")
    assert by_id[second["id"]]["expiresAt"] == later
    assert (by_id[forever["id"]]["pointsLeft"], by_id[forever["id"]]["expiresAt"]) == (30, None)


def test_lots_come_in_pages(live_api: LiveApi) -> None:
    account = open_account(live_api, create_user(live_api)["id"])
    ids = [earn(live_api, account, n + 1)["id"] for n in range(5)]
    first = lots(live_api, account, limit=2)
    second = lots(live_api, account, limit=2, cursor=first["nextCursor"])
    third = lots(live_api, account, limit=2, cursor=second["nextCursor"])
    seen = [lot["id"] for page in (first, second, third) for lot in page["items"]]
    assert seen == list(reversed(ids))
    assert third["nextCursor"] is None


def test_the_history_says_which_lots_each_redemption_used(live_api: LiveApi) -> None:
    account = open_account(live_api, create_user(live_api)["id"])
    _, soon = noon_in(10)
    _, later = noon_in(40)
    late_lot = earn(live_api, account, 50, later)
    early_lot = earn(live_api, account, 100, soon)
    redemption = json_of(
        live_api.client.post(f"/accounts/{account}/redeem", json={"points": 120}), 201
    )
    items = history(live_api, account)["items"]
    assert [e["id"] for e in items] == [redemption["id"], early_lot["id"], late_lot["id"]]
    assert items[0]["used"] == sorted(
        [{"lotId": early_lot["id"], "points": 100}, {"lotId": late_lot["id"], "points": 20}],
        key=lambda u: u["lotId"],
    )
    assert items[1]["used"] == []


def test_an_expire_entry_lists_the_lots_whose_remainder_it_records(
    live_api: LiveApi, engine: Engine
) -> None:
    account = open_account(live_api, create_user(live_api)["id"])
    gone = noon(today() - timedelta(days=2))
    lot = insert_credit(engine, account, 80, expires_at=gone, created_at=gone - timedelta(days=30))
    raw_debit(engine, account, 30, gone - timedelta(days=10), "old-redeem")
    # A redemption records the expiry first, in its own transaction.
    earn(live_api, account, 5)
    json_of(live_api.client.post(f"/accounts/{account}/redeem", json={"points": 5}), 201)
    expire = next(e for e in history(live_api, account)["items"] if e["entryType"] == "EXPIRE")
    assert expire["debit"] == 50
    assert expire["used"] == [{"lotId": lot, "points": 50}]
    [old] = [e for e in history(live_api, account)["items"] if e["id"] == "old-redeem"]
    assert old["used"] == [{"lotId": lot, "points": 30}]
    statuses = {x["id"]: x["status"] for x in lots(live_api, account)["items"]}
    assert statuses[lot] == "EXPIRED"


def test_rows_written_by_another_application_show_at_once(
    live_api: LiveApi, engine: Engine
) -> None:
    account = open_account(live_api, create_user(live_api)["id"])
    _, later = noon_in(40)
    earn(live_api, account, 100, later)
    insert_credit(
        engine,
        account,
        25,
        expires_at=noon(today() + timedelta(days=5)),
        created_at=noon(today() - timedelta(days=1)),
    )
    assert available(live_api, account) == 125
    assert len(lots(live_api, account)["items"]) == 2
    raw_debit(engine, account, 40, utcnow(), "shop-redeem")
    # Earliest-expiring first among the lots valid then: the 25, then 15 of the 100.
    assert available(live_api, account) == 85
    [entry] = [e for e in history(live_api, account)["items"] if e["id"] == "shop-redeem"]
    assert sorted(u["points"] for u in entry["used"]) == [15, 25]


def test_a_debit_larger_than_its_instant_allowed_is_an_anomaly_not_taken_from_later_lots(
    live_api: LiveApi, engine: Engine
) -> None:
    account = open_account(live_api, create_user(live_api)["id"])
    insert_credit(
        engine,
        account,
        30,
        expires_at=noon(today() + timedelta(days=90)),
        created_at=noon(today() - timedelta(days=20)),
    )
    raw_debit(engine, account, 50, noon(today() - timedelta(days=10)), "too-big")
    _, later = noon_in(40)
    earn(live_api, account, 100, later)  # earned after the debit: never used by it
    assert available(live_api, account) == 100
    page = json_of(
        live_api.admin.get("/admin/ledger-anomalies", params={"accountId": account}), 200
    )
    [anomaly] = page["items"]
    assert (anomaly["kind"], anomaly["entryId"], anomaly["points"]) == ("SHORTFALL", "too-big", 20)
    assert live_api.client.get("/admin/ledger-anomalies").status_code == 403


def test_a_deleted_row_is_forgotten_by_the_next_read(live_api: LiveApi, engine: Engine) -> None:
    account = open_account(live_api, create_user(live_api)["id"])
    earn(live_api, account, 100)
    json_of(live_api.client.post(f"/accounts/{account}/redeem", json={"points": 60}), 201)
    assert available(live_api, account) == 40
    with engine.begin() as conn:
        conn.execute(
            text('DELETE FROM "PointLedger" WHERE "accountId" = :a AND "entryType" = \'REDEEM\''),
            {"a": account},
        )
    assert available(live_api, account) == 100
    [lot] = lots(live_api, account)["items"]
    assert lot["pointsLeft"] == 100


def test_unknown_accounts_are_404(live_api: LiveApi) -> None:
    for path in ("/accounts/nope/lots", "/accounts/nope/ledger"):
        assert live_api.client.get(path).status_code == 404
