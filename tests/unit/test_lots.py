"""The spending rule as a pure function: :func:`replay` and :func:`allocate`.

Table-driven cases, one behaviour each, then properties against the step-by-step
simulation in :mod:`tests.reference` (which shares no code with the rule).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rewards.ledger.lots import Allocation, LedgerRow, Lot, Shortfall, allocate, replay
from tests.ledger_steps import ledger_histories
from tests.reference import Row, walk

T0 = datetime(2030, 1, 1, 12, 0)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def credit(
    row_id: str, points: int, hours: float, expires: float | None = None, kind: str = "EARN"
) -> LedgerRow:
    return LedgerRow(row_id, kind, points, 0, at(hours), None if expires is None else at(expires))


def debit(row_id: str, points: int, hours: float, kind: str = "REDEEM") -> LedgerRow:
    return LedgerRow(row_id, kind, 0, points, at(hours))


def expire(row_id: str, points: int, instant: float) -> LedgerRow:
    return LedgerRow(row_id, "EXPIRE", 0, points, at(instant), at(instant))


def remainders(rows: list[LedgerRow], now: datetime) -> dict[str, int]:
    return {lot.id: lot.remaining for lot in replay(rows, now).lots}


def taken(rows: list[LedgerRow], now: datetime) -> dict[tuple[str, str], int]:
    return {(a.debit_id, a.lot_id): a.points for a in replay(rows, now).allocations}


# -- replay: which lots a debit takes ------------------------------------------------------------

SPENDING_CASES = {
    "earliest-expiring first": (
        [credit("a", 100, 0, 30), credit("b", 100, 0, 5), credit("c", 100, 0), debit("d", 150, 1)],
        {("d", "b"): 100, ("d", "a"): 50},
    ),
    "never-expiring last": (
        [credit("forever", 100, 0), credit("dated", 100, 0, 120), debit("d", 30, 1)],
        {("d", "dated"): 30},
    ),
    "same expiry: the earlier credit first": (
        [credit("x", 100, 2, 50), credit("y", 100, 1, 50), debit("d", 50, 3)],
        {("d", "y"): 50},
    ),
    "same expiry and instant: by id": (
        [credit("b", 100, 0, 50), credit("a", 100, 0, 50), debit("d", 120, 3)],
        {("d", "a"): 100, ("d", "b"): 20},
    ),
    "a lot earned after the debit is never consumed by it": (
        [credit("first", 1000, 0, 8760), debit("d", 1000, 96), credit("promo", 100, 744, 1464)],
        {("d", "first"): 1000},
    ),
    "at one instant credits come before debits": (
        [credit("a", 100, 0, 100), debit("d", 50, 5), credit("b", 100, 5, 10)],
        {("d", "b"): 50},
    ),
    "debits at one instant are taken in id order": (
        [credit("a", 50, 0, 10), credit("b", 50, 0, 20), debit("z", 50, 1), debit("m", 50, 1)],
        {("m", "a"): 50, ("z", "b"): 50},
    ),
    "a lot expiring at the debit's instant is gone": (
        [credit("a", 100, 0, 5), credit("b", 30, 0), debit("d", 20, 5)],
        {("d", "b"): 20},
    ),
    "a lot is spent across several debits": (
        [credit("a", 100, 0, 50), debit("d1", 30, 1), debit("d2", 30, 2), debit("d3", 30, 3)],
        {("d1", "a"): 30, ("d2", "a"): 30, ("d3", "a"): 30},
    ),
    "an ADJUST debit spends like a redemption": (
        [credit("a", 100, 0, 50, kind="ADJUST"), debit("d", 40, 1, kind="ADJUST")],
        {("d", "a"): 40},
    ),
    "EXPIRE rows consume nothing": (
        [credit("a", 100, 0, 5), credit("b", 100, 0), expire("e", 100, 5), debit("d", 10, 6)],
        {("d", "b"): 10},
    ),
}


@pytest.mark.parametrize(
    ("rows", "expected"), list(SPENDING_CASES.values()), ids=list(SPENDING_CASES)
)
def test_which_lots_each_debit_takes(
    rows: list[LedgerRow], expected: dict[tuple[str, str], int]
) -> None:
    assert taken(rows, at(10_000)) == expected
    assert taken(list(reversed(rows)), at(10_000)) == expected  # rows in any order


def test_what_is_left_of_each_lot_is_the_credit_less_what_debits_took() -> None:
    rows = [
        credit("a", 100, 0, 30),
        credit("b", 100, 0, 5),
        credit("c", 100, 0),
        debit("d", 150, 1),
    ]
    assert remainders(rows, at(1)) == {"a": 50, "b": 0, "c": 100}


def test_an_expired_lot_keeps_what_was_left_of_it() -> None:
    rows = [credit("a", 100, 0, 5), debit("d", 30, 1), debit("late", 50, 6)]
    result = replay(rows, at(7))
    assert {lot.id: lot.remaining for lot in result.lots} == {"a": 70}
    assert result.shortfalls == [Shortfall("late", 50, at(6))]


def test_a_debit_larger_than_its_instant_allows_is_a_shortfall_never_taken_from_later_lots() -> (
    None
):
    rows = [credit("a", 100, 0), debit("d", 150, 1), credit("b", 100, 2)]
    result = replay(rows, at(3))
    assert result.allocations == [Allocation("d", "a", 100)]
    assert result.shortfalls == [Shortfall("d", 50, at(1))]
    assert {lot.id: lot.remaining for lot in result.lots} == {"a": 0, "b": 100}


def test_a_debit_with_nothing_to_take_is_all_shortfall() -> None:
    result = replay([debit("d", 40, 1), credit("a", 100, 2)], at(3))
    assert result.allocations == []
    assert result.shortfalls == [Shortfall("d", 40, at(1))]


@pytest.mark.parametrize(
    ("recorded_at", "now", "expired"),
    [
        (5, 6, True),  # expiry passed and recorded
        (5, 5, True),  # expiry passed at this very instant
        (5, 4, False),  # recorded ahead of time: not expired yet
        (None, 6, False),  # passed but not recorded yet
        (6, 7, False),  # an EXPIRE for another instant
    ],
)
def test_a_lot_is_flagged_expired_once_its_expiry_passed_and_an_expire_row_records_it(
    recorded_at: float | None, now: float, expired: bool
) -> None:
    rows = [credit("a", 100, 0, 5)]
    if recorded_at is not None:
        rows.append(expire("e", 100, recorded_at))
    [lot] = replay(rows, at(now)).lots
    assert lot.expired is expired
    assert lot.remaining == 100  # recording an expiry consumes nothing


def test_synced_through_is_the_latest_row_that_opens_or_spends_a_lot() -> None:
    rows = [credit("a", 100, 0, 5), debit("d", 10, 3), expire("e", 90, 5)]
    assert replay(rows, at(9)).synced_through == at(3)
    assert replay([expire("e", 90, 5)], at(9)).synced_through is None
    assert replay([], at(9)).synced_through is None


# -- allocate: one more debit on top of the lots ---------------------------------------------


def lot(lot_id: str, left: int, created: float, expires: float | None) -> Lot:
    return Lot(lot_id, 100, left, at(created), None if expires is None else at(expires))


ALLOCATE_CASES = {
    "earliest-expiring first, never-expiring last": (
        [lot("never", 100, 0, None), lot("late", 100, 0, 50), lot("soon", 100, 0, 20)],
        250,
        [("soon", 100), ("late", 100), ("never", 50)],
        0,
    ),
    "lots created after the instant are left alone": (
        [lot("now", 50, 10, None), lot("later", 100, 11, 20)],
        80,
        [("now", 50)],
        30,
    ),
    "lots expired at the instant are left alone": (
        [lot("expired", 100, 0, 10), lot("live", 40, 0, 11)],
        60,
        [("live", 40)],
        20,
    ),
    "empty lots are skipped": (
        [lot("empty", 0, 0, 11), lot("full", 100, 0, 12)],
        10,
        [("full", 10)],
        0,
    ),
    "an exact fit stops there": (
        [lot("a", 30, 0, 11), lot("b", 30, 0, 12)],
        30,
        [("a", 30)],
        0,
    ),
    "same expiry: by creation, then id": (
        [lot("b", 10, 1, 20), lot("c", 10, 0, 20), lot("a", 10, 1, 20)],
        25,
        [("c", 10), ("a", 10), ("b", 5)],
        0,
    ),
}


@pytest.mark.parametrize(
    ("lots", "points", "expected", "short"), list(ALLOCATE_CASES.values()), ids=list(ALLOCATE_CASES)
)
def test_allocate_takes_from_the_lots_valid_at_its_instant_in_spending_order(
    lots: list[Lot], points: int, expected: list[tuple[str, int]], short: int
) -> None:
    before = {x.id: x.remaining for x in lots}
    made, shortfall = allocate(lots, "d", points, at(10))
    assert [(a.lot_id, a.points) for a in made] == expected
    assert {a.debit_id for a in made} <= {"d"}
    assert shortfall == short
    used = dict(expected)
    assert {x.id: x.remaining for x in lots} == {k: v - used.get(k, 0) for k, v in before.items()}


# -- properties against the step-by-step simulation ------------------------------------------


def as_ledger_row(row: Row) -> LedgerRow:
    return LedgerRow(row.id, row.entry_type, row.credit, row.debit, row.created_at, row.expires_at)


@given(history=ledger_histories(), now_hours=st.integers(0, 160))
def test_replay_agrees_with_the_step_by_step_simulation(history: list[Row], now_hours: int) -> None:
    now = at(now_hours)
    result = replay([as_ledger_row(r) for r in history], now)
    expected = walk(history)
    recorded = {r.expires_at for r in history if r.entry_type == "EXPIRE"}

    assert {x.id: x.remaining for x in result.lots} == {
        b.id: b.left for b in expected.buckets.values()
    }
    assert {x.id: x.credited for x in result.lots} == {
        b.id: b.amount for b in expected.buckets.values()
    }
    assert {(a.debit_id, a.lot_id): a.points for a in result.allocations} == expected.taken
    assert all(a.points > 0 for a in result.allocations)
    assert {s.debit_id: (s.points, s.at) for s in result.shortfalls} == expected.shortfalls
    assert {x.id: x.expired for x in result.lots} == {
        b.id: b.left > 0 and b.expired_by(now) and b.expires_at in recorded
        for b in expected.buckets.values()
    }
    spending = [r.created_at for r in history if r.credit or r.entry_type != "EXPIRE"]
    assert result.synced_through == max(spending, default=None)


@given(
    history=ledger_histories(),
    points=st.integers(1, 800),
    later=st.integers(0, 100),
)
def test_allocate_on_top_of_a_replay_is_the_replay_of_the_longer_history(
    history: list[Row], points: int, later: int
) -> None:
    """One more debit, after everything, applied to the stored lots or to the whole history."""
    moment = max((r.created_at for r in history), default=T0) + timedelta(hours=later)
    new = Row("zzzz", "REDEEM", 0, points, moment)  # sorts after every id at its instant
    lots = replay([as_ledger_row(r) for r in history], moment).lots
    made, short = allocate(lots, new.id, points, moment)

    expected = walk([*history, new])
    assert {(a.debit_id, a.lot_id): a.points for a in made} == {
        k: v for k, v in expected.taken.items() if k[0] == new.id
    }
    assert short == expected.shortfalls.get(new.id, (0, moment))[0]
    assert {x.id: x.remaining for x in lots} == {b.id: b.left for b in expected.buckets.values()}
