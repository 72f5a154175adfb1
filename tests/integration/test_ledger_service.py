"""Ledger operations on real databases: earn, redeem, expiry, balances."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import Connection, Engine, func, select, text

from rewards.ids import new_id
from rewards.ledger import service
from rewards.ledger.errors import InsufficientPoints, InvalidEntry, UnknownAccount
from rewards.ledger.queries import accounts_table, live_remainders, post_due_expirations
from rewards.models import PointLedger
from tests.ledger_steps import Earn, Redeem, Step, steps
from tests.reference import ReferenceAccount

T0 = datetime(2030, 1, 1, 12, 0)
UTC = ZoneInfo("UTC")


def new_account(engine: Engine) -> str:
    user_id, account_id = new_id(), new_id()
    with engine.begin() as conn:
        conn.execute(text('INSERT INTO "User" ("id") VALUES (:u)'), {"u": user_id})
        conn.execute(
            text('INSERT INTO "Account" ("id", "userId") VALUES (:a, :u)'),
            {"a": account_id, "u": user_id},
        )
    return account_id


@pytest.fixture
def account(engine: Engine) -> str:
    return new_account(engine)


def entries(engine: Engine, account_id: str) -> list[tuple[str, int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(PointLedger.entryType, PointLedger.credit, PointLedger.debit)
            .where(PointLedger.accountId == account_id)
            .order_by(PointLedger.createdAt, PointLedger.entryType)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def test_redeem_spends_earliest_expiring_first(engine: Engine, account: str) -> None:
    with engine.begin() as conn:
        service.earn(conn, account, 100, as_of=T0, expires_at=T0 + timedelta(days=30))
        service.earn(conn, account, 100, as_of=T0, expires_at=T0 + timedelta(days=5))
        service.earn(conn, account, 100, as_of=T0)
        service.redeem(conn, account, 150, as_of=T0 + timedelta(days=1))
        soon = service.upcoming_expirations(
            conn, [account], as_of=T0 + timedelta(days=1), until=T0 + timedelta(days=60), zone=UTC
        )
    assert [(e.date, e.points) for e in soon] == [((T0 + timedelta(days=30)).date(), 50)]


def test_redeem_posts_due_expirations_first_and_never_spends_expired_points(
    engine: Engine, account: str
) -> None:
    with engine.begin() as conn:
        service.earn(conn, account, 100, as_of=T0, expires_at=T0 + timedelta(days=1))
        service.earn(conn, account, 30, as_of=T0)
    with pytest.raises(InsufficientPoints) as excinfo, engine.begin() as conn:
        service.redeem(conn, account, 50, as_of=T0 + timedelta(days=2))
    assert (excinfo.value.available, excinfo.value.requested) == (30, 50)
    # The refused redemption rolled back with its transaction: nothing was written.
    assert entries(engine, account) == [("EARN", 100, 0), ("EARN", 30, 0)]

    with engine.begin() as conn:
        service.redeem(conn, account, 30, as_of=T0 + timedelta(days=2))
    assert sorted(entries(engine, account)) == sorted(
        [("EARN", 100, 0), ("EARN", 30, 0), ("EXPIRE", 0, 100), ("REDEEM", 0, 30)]
    )


def test_expiry_is_idempotent_and_one_entry_per_account_and_instant(
    engine: Engine, account: str
) -> None:
    instant = T0 + timedelta(days=3)
    with engine.begin() as conn:
        service.earn(conn, account, 40, as_of=T0, expires_at=instant)
        service.earn(conn, account, 60, as_of=T0 + timedelta(hours=1), expires_at=instant)
        service.earn(conn, account, 10, as_of=T0, expires_at=T0 + timedelta(days=9))
    with engine.begin() as conn:
        assert post_due_expirations(conn, T0 + timedelta(days=4)) == (1, 100)
    with engine.begin() as conn:
        assert post_due_expirations(conn, T0 + timedelta(days=4)) == (0, 0)
        assert service.balance(conn, account, T0 + timedelta(days=4)) == 10


@pytest.mark.parametrize("points", [0, -1, 1_000_000_001, True])
def test_out_of_range_points_are_refused(engine: Engine, account: str, points: int) -> None:
    with pytest.raises(InvalidEntry), engine.begin() as conn:
        service.earn(conn, account, points, as_of=T0)
    assert entries(engine, account) == []


def test_an_expiry_in_the_past_is_refused(engine: Engine, account: str) -> None:
    with pytest.raises(InvalidEntry), engine.begin() as conn:
        service.earn(conn, account, 5, as_of=T0, expires_at=T0 - timedelta(seconds=1))


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


def test_balance_counts_unposted_expiries_as_gone(engine: Engine, account: str) -> None:
    with engine.begin() as conn:
        service.earn(conn, account, 70, as_of=T0, expires_at=T0 + timedelta(days=1))
        service.earn(conn, account, 30, as_of=T0, expires_at=T0 + timedelta(days=10))
        service.redeem(conn, account, 20, as_of=T0)
    with engine.connect() as conn:
        assert service.balance(conn, account, T0) == 80
        assert service.balance(conn, account, T0 + timedelta(days=2)) == 30
        expired_rows = conn.scalar(select(func.count()).where(PointLedger.entryType == "EXPIRE"))
    assert expired_rows == 0


def test_a_members_balance_sums_the_accounts_in_one_query(engine: Engine) -> None:
    first, second = new_account(engine), new_account(engine)
    with engine.begin() as conn:
        service.earn(conn, first, 70, as_of=T0, expires_at=T0 + timedelta(days=1))
        service.earn(conn, second, 30, as_of=T0)
        service.redeem(conn, second, 10, as_of=T0)
    with engine.connect() as conn:
        assert service.total_balance(conn, [first, second], T0) == 90
        assert service.total_balance(conn, [first, second], T0 + timedelta(days=2)) == 20
        assert service.total_balance(conn, [], T0) == 0


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=steps)
def test_ledger_matches_the_step_by_step_simulation(engine: Engine, history: list[Step]) -> None:
    account_id = new_account(engine)
    ref = ReferenceAccount()
    now = T0
    for step in history:
        with engine.begin() as conn:
            if isinstance(step, Earn):
                expires = (
                    None
                    if step.expires_in_hours is None
                    else now + timedelta(hours=step.expires_in_hours)
                )
                entry = service.earn(conn, account_id, step.points, as_of=now, expires_at=expires)
                ref.earn(entry.id, step.points, entry.created_at, expires)
            elif isinstance(step, Redeem):
                try:
                    service.redeem(conn, account_id, step.points, as_of=now)
                    accepted = True
                except InsufficientPoints:
                    accepted = False
                assert ref.redeem(step.points) is accepted
            else:
                now += timedelta(hours=step.hours)
                ref.advance(now)
                if step.hours % 2:  # sometimes the daily job posts expiry, sometimes not yet
                    post_due_expirations(conn, now)
        with engine.connect() as conn:
            assert service.balance(conn, account_id, now) == ref.available() >= 0
            live = {
                r.id: int(r.remaining)
                for r in conn.execute(live_remainders(accounts_table([account_id]), now))
            }
            assert live == ref.live_remainders()
    with engine.begin() as conn:
        post_due_expirations(conn, now)
        posted = conn.execute(
            select(PointLedger.expiresAt, PointLedger.debit).where(
                PointLedger.accountId == account_id, PointLedger.entryType == "EXPIRE"
            )
        ).all()
    assert dict(posted) == ref.expirations
