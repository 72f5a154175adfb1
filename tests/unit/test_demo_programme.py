"""The demo programme is deterministic and obeys the ledger's rules.

The rules are checked by a replay written here, independently of ``rewards.ledger``:
each account's rows in time order, its lots spent chronologically as SPEC.md
"Ledger semantics" says (a debit at ``t`` uses the lots with ``createdAt <= t`` not
expired at ``t``, earliest-expiring first, never-expiring last).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest

from rewards.demo import generate_programme

NOW = datetime(2026, 6, 15, 9, 0)
Row = dict[str, Any]


def test_same_clock_and_seed_give_the_same_programme() -> None:
    first = generate_programme(NOW, members=50, seed=7)
    second = generate_programme(NOW, members=50, seed=7)
    assert first == second
    assert first != generate_programme(NOW, members=50, seed=8)


def test_programme_has_the_variety_the_demo_promises() -> None:
    programme = generate_programme(NOW, members=1000)
    users = programme.users
    assert len(users) == 1000
    assert any(not u["emailNotifications"] for u in users)
    assert any(u["email"] is None for u in users)
    assert any(u["email"] and "@" not in u["email"][1:-1] for u in users)
    assert len(programme.accounts) > len(users)
    kinds = {row["entryType"] for row in programme.ledger}
    assert kinds == {"EARN", "REDEEM", "EXPIRE", "ADJUST"}
    expiring_soon = {
        row["expiresAt"].date()
        for row in programme.ledger
        if row["credit"] and row["expiresAt"] and NOW < row["expiresAt"] <= NOW + timedelta(days=60)
    }
    assert len(expiring_soon) > 40  # spread over the coming 60 days


@dataclass
class Lot:
    id: str
    created_at: datetime
    expires_at: datetime | None
    left: int

    def spendable_at(self, moment: datetime) -> bool:
        return self.created_at <= moment and (self.expires_at is None or self.expires_at > moment)

    def spending_order(self) -> tuple[bool, datetime, datetime, str]:
        return (self.expires_at is None, self.expires_at or datetime.min, self.created_at, self.id)


@dataclass
class Account:
    """One account's lots, replayed row by row and spent chronologically."""

    lots: list[Lot] = field(default_factory=list)

    def available(self, moment: datetime) -> int:
        """What a debit at ``moment`` can spend."""
        return sum(lot.left for lot in self.lots if lot.spendable_at(moment))

    def expired_unposted(self, moment: datetime) -> list[str]:
        """Lots expired by ``moment`` with points left that no EXPIRE row has taken."""
        return [lot.id for lot in self.lots if lot.left and not lot.spendable_at(moment)]

    def left_expiring_at(self, instant: datetime) -> int:
        return sum(lot.left for lot in self.lots if lot.expires_at == instant)

    def balance(self) -> int:
        return sum(lot.left for lot in self.lots)

    def replay(self, rows: list[Row]) -> Iterator[Row]:
        """Apply ``rows`` in time order, yielding each debit just before it is applied.

        A redemption (or debit adjustment) takes what it asks from the lots spendable
        at its instant, earliest-expiring first; an ``EXPIRE`` row empties the lots
        expiring at its instant. At one instant credits come before debits.
        """
        for row in sorted(rows, key=lambda r: (r["createdAt"], r["debit"] > 0, r["id"])):
            if row["credit"]:
                self.lots.append(Lot(row["id"], row["createdAt"], row["expiresAt"], row["credit"]))
                continue
            yield row
            if row["entryType"] == "EXPIRE":
                for lot in self.lots:
                    if lot.expires_at == row["expiresAt"]:
                        lot.left = 0
                continue
            wanted = row["debit"]
            spendable = [lot for lot in self.lots if lot.spendable_at(row["createdAt"])]
            for lot in sorted(spendable, key=Lot.spending_order):
                taken = min(wanted, lot.left)
                lot.left -= taken
                wanted -= taken


@pytest.fixture(scope="module")
def accounts() -> list[list[Row]]:
    """The rows of each account of a 300-member programme."""
    per_account: dict[str, list[Row]] = defaultdict(list)
    for row in generate_programme(NOW, members=300).ledger:
        per_account[row["accountId"]].append(row)
    return list(per_account.values())


def test_no_account_ever_spends_more_than_it_has(accounts: list[list[Row]]) -> None:
    redemptions = 0
    for rows in accounts:
        account = Account()
        for debit in account.replay(rows):
            if debit["entryType"] != "EXPIRE":
                redemptions += 1
                at, spendable = debit["createdAt"], account.available(debit["createdAt"])
                assert debit["debit"] <= spendable, (
                    f"{debit['id']} spends {debit['debit']} at {at}; only {spendable} is spendable"
                )
        credited = sum(row["credit"] for row in rows)
        debited = sum(row["debit"] for row in rows)
        assert account.balance() == credited - debited >= 0
    assert redemptions > 100


def test_expirations_posted_before_a_redemption_are_what_was_left_then(
    accounts: list[list[Row]],
) -> None:
    expirations = 0
    for rows in accounts:
        account = Account()
        for debit in account.replay(rows):
            at = debit["createdAt"]
            if debit["entryType"] == "EXPIRE":
                expirations += 1
                assert debit["expiresAt"] == at
                assert debit["debit"] == account.left_expiring_at(at) > 0, debit["id"]
            else:
                assert account.expired_unposted(at) == [], f"before {debit['id']} at {at}"
    assert expirations > 10
