"""The ledger service on real databases, one behaviour of the spending rule per test.

Spending is chronological (SPEC, "Ledger semantics"): a debit takes from the lots
that exist and have not expired at its instant, earliest-expiring first. Rows
another application writes with plain SQL (``raw_*`` below) count as much as the
service's own, backdated ones included.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection, Engine, select, text

from rewards.ids import new_id
from rewards.ledger import service
from rewards.ledger.errors import InsufficientPoints, InvalidEntry, UnknownAccount
from rewards.ledger.projection import SHORTFALL, projection_writes, sync_all
from rewards.ledger.queries import post_due_expirations
from rewards.tables import accounts, allocations, anomalies, ledger, lots, users
from tests.process_helpers import sql_timestamp

T0 = datetime(2030, 1, 1, 12, 0)
UTC = ZoneInfo("UTC")


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def new_account(engine: Engine) -> str:
    user_id, account_id = new_id(), new_id()
    with engine.begin() as conn:
        conn.execute(users.insert().values(id=user_id))
        conn.execute(accounts.insert().values(id=account_id, userId=user_id))
    return account_id


@pytest.fixture
def account(engine: Engine) -> str:
    return new_account(engine)


# -- reading what the service stored ---------------------------------------------------------


def entries(engine: Engine, account_id: str) -> list[tuple[str, int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(ledger.c.entryType, ledger.c.credit, ledger.c.debit)
            .where(ledger.c.accountId == account_id)
            .order_by(ledger.c.createdAt, ledger.c.entryType)
        )
        return [(r.entryType, r.credit, r.debit) for r in rows]


def expire_entries(engine: Engine, account_id: str) -> dict[datetime, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(ledger.c.expiresAt, ledger.c.debit).where(
                ledger.c.accountId == account_id, ledger.c.entryType == "EXPIRE"
            )
        )
        return {r.expiresAt: r.debit for r in rows}


def taken_by(conn: Connection, debit_id: str) -> dict[str, int]:
    """Lot id -> points the debit took from it."""
    rows = conn.execute(select(allocations).where(allocations.c.debitId == debit_id))
    return {r.lotId: r.points for r in rows}


def remaining(conn: Connection, account_id: str) -> dict[str, int]:
    rows = conn.execute(select(lots.c.id, lots.c.remaining).where(lots.c.accountId == account_id))
    return {r.id: r.remaining for r in rows}


def shortfalls(conn: Connection, account_id: str) -> dict[str, tuple[int, datetime]]:
    rows = conn.execute(
        select(anomalies).where(anomalies.c.accountId == account_id, anomalies.c.kind == SHORTFALL)
    )
    return {r.entryId: (r.points, r.at) for r in rows}


def upcoming(conn: Connection, account_id: str, as_of: datetime) -> dict[object, int]:
    found = service.upcoming_expirations(
        conn, [account_id], as_of=as_of, until=as_of + timedelta(days=3650), zone=UTC
    )
    return {e.date: e.points for e in found}


# -- writing as another application does -----------------------------------------------------


def raw_insert(
    engine: Engine,
    account_id: str,
    entry_type: str,
    *,
    credit: int = 0,
    debit: int = 0,
    created_at: datetime,
    expires_at: datetime | None = None,
) -> str:
    """A ``PointLedger`` row inserted with plain SQL, in a transaction of its own."""
    row_id = new_id()
    with engine.begin() as conn:
        conn.execute(
            text(
                'INSERT INTO "PointLedger" ("id", "accountId", "entryType", "credit", "debit",'
                ' "createdAt", "expiresAt") VALUES (:id, :a, :t, :c, :d, :created, :expires)'
            ),
            {
                "id": row_id,
                "a": account_id,
                "t": entry_type,
                "c": credit,
                "d": debit,
                "created": sql_timestamp(created_at),
                "expires": None if expires_at is None else sql_timestamp(expires_at),
            },
        )
    return row_id


def raw_sql(engine: Engine, sql: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql), params)


# -- spending order ----------------------------------------------------------------------------


def test_redeem_spends_earliest_expiring_first_among_lots_valid_at_its_instant(
    engine: Engine, account: str
) -> None:
    with engine.begin() as conn:
        late = service.earn(conn, account, 100, as_of=T0, expires_at=day(30)).id
        soon = service.earn(conn, account, 100, as_of=T0, expires_at=day(5)).id
        never = service.earn(conn, account, 100, as_of=T0).id
        gone = service.earn(conn, account, 100, as_of=T0, expires_at=day(1)).id
        redemption = service.redeem(conn, account, 150, as_of=day(2)).id
        later = service.earn(conn, account, 100, as_of=day(3), expires_at=day(4)).id
        assert taken_by(conn, redemption) == {soon: 100, late: 50}
        assert remaining(conn, account) == {late: 50, soon: 0, never: 100, gone: 100, later: 100}
        assert upcoming(conn, account, day(3)) == {day(4).date(): 100, day(30).date(): 50}
        assert service.balance(conn, account, day(3)) == 250


def test_a_lot_earned_after_a_redemption_is_never_consumed_by_it(
    engine: Engine, account: str
) -> None:
    with engine.begin() as conn:
        first = service.earn(conn, account, 1000, as_of=T0, expires_at=day(365)).id
        redemption = service.redeem(conn, account, 1000, as_of=day(4)).id
        promo = service.earn(conn, account, 100, as_of=day(31), expires_at=day(61)).id
        assert taken_by(conn, redemption) == {first: 1000}
        assert remaining(conn, account) == {first: 0, promo: 100}
        assert upcoming(conn, account, day(32)) == {day(61).date(): 100}
        assert service.balance(conn, account, day(61)) == 0


def test_a_lot_expiring_at_the_instant_of_a_debit_is_not_spent_by_it_nor_by_its_replay(
    engine: Engine, account: str
) -> None:
    with engine.begin() as conn:
        expiring = service.earn(conn, account, 100, as_of=T0, expires_at=day(1)).id
        never = service.earn(conn, account, 50, as_of=T0).id
        redemption = service.redeem(conn, account, 30, as_of=day(1)).id
        assert taken_by(conn, redemption) == {never: 30}
    raw_insert(engine, account, "EARN", credit=5, created_at=T0)  # a backdated row: a replay
    sync_all(engine, day(2))
    with engine.connect() as conn:
        assert taken_by(conn, redemption) == {never: 30}
        assert remaining(conn, account)[expiring] == 100


def test_a_credit_at_the_same_instant_as_a_debit_comes_before_it(
    engine: Engine, account: str
) -> None:
    with engine.begin() as conn:
        long_lived = service.earn(conn, account, 100, as_of=T0, expires_at=day(60)).id
        redemption = service.redeem(conn, account, 50, as_of=day(1)).id
        assert taken_by(conn, redemption) == {long_lived: 50}
        same_instant = service.earn(conn, account, 100, as_of=day(1), expires_at=day(5)).id
        assert taken_by(conn, redemption) == {same_instant: 50}
        assert remaining(conn, account) == {long_lived: 100, same_instant: 50}


def test_debits_at_one_instant_are_taken_in_id_order(engine: Engine, account: str) -> None:
    with engine.begin() as conn:
        soon = service.earn(conn, account, 50, as_of=T0, expires_at=day(5)).id
        late = service.earn(conn, account, 50, as_of=T0, expires_at=day(9)).id
        service.redeem(conn, account, 50, as_of=day(1), entry_id="z-first-written")
        service.redeem(conn, account, 50, as_of=day(1), entry_id="a-second-written")
        assert taken_by(conn, "a-second-written") == {soon: 50}
        assert taken_by(conn, "z-first-written") == {late: 50}


# -- expiry --------------------------------------------------------------------------------------


def test_due_expirations_are_posted_before_a_redemption_which_never_spends_expired_points(
    engine: Engine, account: str
) -> None:
    with engine.begin() as conn:
        service.earn(conn, account, 100, as_of=T0, expires_at=day(1))
        service.earn(conn, account, 30, as_of=T0)
    with pytest.raises(InsufficientPoints) as refused, engine.begin() as conn:
        service.redeem(conn, account, 50, as_of=day(2))
    assert (refused.value.available, refused.value.requested) == (30, 50)
    # The refused redemption rolled back with its transaction: nothing was written.
    assert entries(engine, account) == [("EARN", 100, 0), ("EARN", 30, 0)]

    with engine.begin() as conn:
        service.redeem(conn, account, 30, as_of=day(2))
    assert sorted(entries(engine, account)) == sorted(
        [("EARN", 100, 0), ("EARN", 30, 0), ("EXPIRE", 0, 100), ("REDEEM", 0, 30)]
    )
    assert expire_entries(engine, account) == {day(1): 100}


def test_expiry_posts_what_is_left_once_per_account_and_instant(
    engine: Engine, account: str
) -> None:
    other = new_account(engine)
    with engine.begin() as conn:
        service.earn(conn, account, 40, as_of=T0, expires_at=day(3))
        service.earn(conn, account, 60, as_of=T0 + timedelta(hours=1), expires_at=day(3))
        service.earn(conn, account, 10, as_of=T0, expires_at=day(9))
        service.redeem(conn, account, 25, as_of=day(1))
        service.earn(conn, other, 5, as_of=T0, expires_at=day(3))
    with engine.begin() as conn, projection_writes(conn):
        assert post_due_expirations(conn, day(3) - timedelta(milliseconds=1)) == (0, 0)
    with engine.begin() as conn, projection_writes(conn):
        assert post_due_expirations(conn, day(3)) == (2, 80)  # at the very instant
    with engine.begin() as conn, projection_writes(conn):
        assert post_due_expirations(conn, day(4)) == (0, 0)
    with engine.begin() as conn, projection_writes(conn):
        assert post_due_expirations(conn, day(5)) == (0, 0)
        assert service.balance(conn, account, day(4)) == 10
    assert expire_entries(engine, account) == {day(3): 75}
    assert expire_entries(engine, other) == {day(3): 5}


def test_a_lot_spent_before_its_expiry_posts_no_expire_entry(engine: Engine, account: str) -> None:
    with engine.begin() as conn:
        service.earn(conn, account, 40, as_of=T0, expires_at=day(3))
        service.redeem(conn, account, 40, as_of=day(1))
    with engine.begin() as conn, projection_writes(conn):
        assert post_due_expirations(conn, day(4)) == (0, 0)
    assert expire_entries(engine, account) == {}


def test_balance_counts_unposted_expiries_as_gone(engine: Engine, account: str) -> None:
    with engine.begin() as conn:
        service.earn(conn, account, 70, as_of=T0, expires_at=day(1))
        service.earn(conn, account, 30, as_of=T0, expires_at=day(10))
        service.redeem(conn, account, 20, as_of=T0)
    with engine.connect() as conn:
        assert service.balance(conn, account, T0) == 80
        assert service.balance(conn, account, day(2)) == 30
    assert expire_entries(engine, account) == {}


def test_a_members_balance_sums_the_accounts(engine: Engine) -> None:
    first, second = new_account(engine), new_account(engine)
    with engine.begin() as conn:
        service.earn(conn, first, 70, as_of=T0, expires_at=day(1))
        service.earn(conn, second, 30, as_of=T0)
        service.redeem(conn, second, 10, as_of=T0)
    with engine.connect() as conn:
        assert service.total_balance(conn, [first, second], T0) == 90
        assert service.total_balance(conn, [first, second], day(2)) == 20
        assert service.total_balance(conn, [], T0) == 0


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("points", [0, -1, 1_000_000_001, True])
@pytest.mark.parametrize("operation", ["earn", "redeem"])
def test_out_of_range_points_are_refused(
    engine: Engine, account: str, operation: str, points: int
) -> None:
    with engine.begin() as conn:
        service.earn(conn, account, 500, as_of=T0)
    with pytest.raises(InvalidEntry), engine.begin() as conn:
        getattr(service, operation)(conn, account, points, as_of=T0)
    assert entries(engine, account) == [("EARN", 500, 0)]


def test_an_expiry_in_the_past_is_refused(engine: Engine, account: str) -> None:
    with pytest.raises(InvalidEntry), engine.begin() as conn:
        service.earn(conn, account, 5, as_of=T0, expires_at=T0 - timedelta(seconds=1))
    assert entries(engine, account) == []


@pytest.mark.parametrize(
    "operation",
    [
        lambda conn: service.earn(conn, "nope", 5, as_of=T0),
        lambda conn: service.redeem(conn, "nope", 5, as_of=T0),
        lambda conn: service.balance(conn, "nope", T0),
    ],
    ids=["earn", "redeem", "balance"],
)
def test_unknown_accounts_are_reported(
    engine: Engine, operation: Callable[[Connection], object]
) -> None:
    with engine.begin() as conn, pytest.raises(UnknownAccount):
        operation(conn)


# -- rows written by another application ----------------------------------------------------


def test_a_raw_debit_larger_than_its_instant_allowed_is_an_anomaly_never_taken_from_later_lots(
    engine: Engine, account: str
) -> None:
    with engine.begin() as conn:
        first = service.earn(conn, account, 100, as_of=T0).id
    overdraft = raw_insert(engine, account, "REDEEM", debit=150, created_at=day(1))
    with engine.begin() as conn:
        later = service.earn(conn, account, 100, as_of=day(2)).id
        assert taken_by(conn, overdraft) == {first: 100}
        assert shortfalls(conn, account) == {overdraft: (50, day(1))}
        assert remaining(conn, account) == {first: 0, later: 100}
        assert service.balance(conn, account, day(2)) == 100


def test_a_backdated_raw_credit_changes_what_earlier_debits_used(
    engine: Engine, account: str
) -> None:
    with engine.begin() as conn:
        long_lived = service.earn(conn, account, 100, as_of=T0, expires_at=day(60)).id
        redemption = service.redeem(conn, account, 50, as_of=day(2)).id
        assert taken_by(conn, redemption) == {long_lived: 50}
    backdated = raw_insert(
        engine, account, "EARN", credit=100, created_at=day(1), expires_at=day(11)
    )
    with engine.begin() as conn:
        assert service.balance(conn, account, day(3)) == 150
        assert taken_by(conn, redemption) == {backdated: 50}
        assert remaining(conn, account) == {long_lived: 100, backdated: 50}
        assert upcoming(conn, account, day(3)) == {day(11).date(): 50, day(60).date(): 100}


def test_a_raw_credit_dated_after_a_debit_is_not_consumed_by_it(
    engine: Engine, account: str
) -> None:
    with engine.begin() as conn:
        first = service.earn(conn, account, 100, as_of=T0, expires_at=day(60)).id
        redemption = service.redeem(conn, account, 50, as_of=day(2)).id
    promo = raw_insert(engine, account, "ADJUST", credit=100, created_at=day(3), expires_at=day(5))
    sync_all(engine, day(4))
    with engine.connect() as conn:
        assert taken_by(conn, redemption) == {first: 50}
        assert remaining(conn, account) == {first: 50, promo: 100}


def test_a_row_deleted_by_another_application_is_forgotten(engine: Engine, account: str) -> None:
    with engine.begin() as conn:
        soon = service.earn(conn, account, 100, as_of=T0, expires_at=day(5)).id
        late = service.earn(conn, account, 100, as_of=T0, expires_at=day(50)).id
        redemption = service.redeem(conn, account, 150, as_of=day(1)).id
    raw_sql(engine, 'DELETE FROM "PointLedger" WHERE "id" = :id', id=soon)
    with engine.begin() as conn:
        assert service.balance(conn, account, day(2)) == 0
        assert taken_by(conn, redemption) == {late: 100}
        assert shortfalls(conn, account) == {redemption: (50, day(1))}
        assert remaining(conn, account) == {late: 0}
    raw_sql(engine, 'DELETE FROM "PointLedger" WHERE "id" = :id', id=redemption)
    with engine.begin() as conn:
        assert service.balance(conn, account, day(2)) == 100
        assert taken_by(conn, redemption) == {}
        assert shortfalls(conn, account) == {}


def test_an_update_by_another_application_is_replayed(engine: Engine, account: str) -> None:
    with engine.begin() as conn:
        soon = service.earn(conn, account, 100, as_of=T0, expires_at=day(5)).id
        late = service.earn(conn, account, 100, as_of=T0, expires_at=day(50)).id
        redemption = service.redeem(conn, account, 50, as_of=day(1)).id
    raw_sql(engine, 'UPDATE "PointLedger" SET "debit" = 130 WHERE "id" = :id', id=redemption)
    sync_all(engine, day(2))
    with engine.connect() as conn:
        assert taken_by(conn, redemption) == {soon: 100, late: 30}
        assert remaining(conn, account) == {soon: 0, late: 70}
    raw_sql(engine, 'UPDATE "PointLedger" SET "credit" = 20 WHERE "id" = :id', id=late)
    with engine.begin() as conn:
        assert service.balance(conn, account, day(2)) == 0
        assert taken_by(conn, redemption) == {soon: 100, late: 20}
        assert shortfalls(conn, account) == {redemption: (10, day(1))}


def test_an_expire_written_by_another_application_is_honoured(engine: Engine, account: str) -> None:
    with engine.begin() as conn:
        lot = service.earn(conn, account, 100, as_of=T0, expires_at=day(1)).id
        service.earn(conn, account, 10, as_of=T0)
    raw_insert(engine, account, "EXPIRE", debit=100, created_at=day(1), expires_at=day(1))
    with pytest.raises(InsufficientPoints), engine.begin() as conn:
        service.redeem(conn, account, 11, as_of=day(2))
    with engine.begin() as conn, projection_writes(conn):
        assert post_due_expirations(conn, day(2), account_ids=[account]) == (0, 0)
    with engine.begin() as conn:
        service.redeem(conn, account, 10, as_of=day(2))
        flagged = conn.scalar(select(lots.c.expired).where(lots.c.id == lot))
    assert flagged is True
    assert expire_entries(engine, account) == {day(1): 100}
    assert sorted(entries(engine, account)) == sorted(
        [("EARN", 100, 0), ("EARN", 10, 0), ("EXPIRE", 0, 100), ("REDEEM", 0, 10)]
    )


def test_sync_all_brings_every_changed_account_up_to_date(engine: Engine) -> None:
    first, second = new_account(engine), new_account(engine)
    credits = {
        a: raw_insert(engine, a, "EARN", credit=100, created_at=T0, expires_at=day(9))
        for a in (first, second)
    }
    debit = raw_insert(engine, second, "REDEEM", debit=30, created_at=day(1))
    sync_all(engine, day(2))
    with engine.connect() as conn:
        assert remaining(conn, first) == {credits[first]: 100}
        assert remaining(conn, second) == {credits[second]: 70}
        assert taken_by(conn, debit) == {credits[second]: 30}
    assert sync_all(engine, day(2)).accounts == 0


# -- rows moved between accounts, writes mixed in one transaction ------------------------------


def test_a_credit_moved_to_another_account_by_raw_sql_counts_for_the_new_account(
    engine: Engine,
) -> None:
    old, new = new_account(engine), new_account(engine)
    moved = raw_insert(engine, old, "EARN", credit=100, created_at=T0)
    sync_all(engine, T0)
    raw_sql(engine, 'UPDATE "PointLedger" SET "accountId" = :a WHERE "id" = :id', a=new, id=moved)
    with engine.begin() as conn:
        assert service.balance(conn, new, day(1)) == 100
        assert remaining(conn, new) == {moved: 100}
    with engine.begin() as conn:
        assert service.balance(conn, old, day(1)) == 0


def test_a_raw_write_later_in_a_transaction_the_service_wrote_in_is_noticed(
    engine: Engine,
) -> None:
    account = new_account(engine)
    with engine.begin() as conn:
        service.earn(conn, account, 100, as_of=T0)
        conn.execute(
            text(
                'INSERT INTO "PointLedger" ("id", "accountId", "entryType", "credit", "createdAt")'
                " VALUES (:id, :a, 'EARN', 50, :created)"
            ),
            {"id": new_id(), "a": account, "created": sql_timestamp(T0 - timedelta(hours=1))},
        )
    with engine.begin() as conn:
        assert service.balance(conn, account, day(1)) == 150
