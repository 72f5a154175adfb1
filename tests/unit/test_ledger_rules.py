"""The remainder formula agrees with a step-by-step simulation of the account."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given

from rewards.ledger.rules import Credit, available, due_expirations, remainders
from tests.ledger_steps import Earn, Redeem, Step, steps
from tests.reference import ReferenceAccount

T0 = datetime(2030, 1, 1)


def replay(history: list[Step]) -> None:
    """Run ``history`` through the rules and the reference, comparing after every step."""
    ref = ReferenceAccount()
    credits: list[Credit] = []
    debits = 0
    posted: dict[datetime, int] = {}
    now = T0
    for n, step in enumerate(history):
        if isinstance(step, Earn):
            expires = (
                None
                if step.expires_in_hours is None
                else now + timedelta(hours=step.expires_in_hours)
            )
            credits.append(Credit(f"c{n:03d}", step.points, now, expires))
            ref.earn(f"c{n:03d}", step.points, now, expires)
        elif isinstance(step, Redeem):
            # The ledger posts due expirations before a debit.
            for instant, points in due_expirations(credits, debits, now).items():
                posted[instant] = posted.get(instant, 0) + points
                debits += points
            can = available(credits, debits, now) >= step.points
            assert ref.redeem(step.points) is can
            if can:
                debits += step.points
        else:
            now += timedelta(hours=step.hours)
            ref.advance(now)

        assert available(credits, debits, now) == ref.available() >= 0
        left = remainders(credits, debits)
        live = ref.live_remainders()
        assert {i: left[i] for i in live} == live
        due = due_expirations(credits, debits, now)
        assert all(0 < points <= sum(c.amount for c in credits) for points in due.values())
        assert {k: posted.get(k, 0) + due.get(k, 0) for k in ref.expirations} == ref.expirations


@given(steps)
def test_remainder_formula_matches_the_simulation(history: list[Step]) -> None:
    replay(history)


def test_a_later_credit_expiring_sooner_takes_over_earlier_spending() -> None:
    credits = [
        Credit("late", 100, T0, T0 + timedelta(days=300)),
        Credit("soon", 100, T0 + timedelta(days=1), T0 + timedelta(days=10)),
    ]
    assert remainders(credits, 50) == {"soon": 50, "late": 100}


@pytest.mark.parametrize(
    ("debits", "expected"),
    [(0, {T0 + timedelta(days=1): 100}), (60, {T0 + timedelta(days=1): 40}), (100, {})],
)
def test_expiry_posts_only_what_is_left(debits: int, expected: dict[datetime, int]) -> None:
    credits = [
        Credit("a", 100, T0, T0 + timedelta(days=1)),
        Credit("b", 100, T0, None),
    ]
    assert due_expirations(credits, debits, T0 + timedelta(days=2)) == expected


def test_never_expiring_points_are_spent_last() -> None:
    credits = [Credit("forever", 100, T0, None), Credit("dated", 100, T0, T0 + timedelta(days=5))]
    assert remainders(credits, 30) == {"dated": 70, "forever": 100}
