"""The demo programme is deterministic and obeys the ledger's rules."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from rewards.demo import generate_programme
from rewards.ledger.rules import Credit, remainders

NOW = datetime(2026, 6, 15, 9, 0)


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


def test_no_account_ever_spends_more_than_it_has() -> None:
    programme = generate_programme(NOW, members=300)
    per_account: dict[str, list[dict[str, object]]] = defaultdict(list)
    for row in programme.ledger:
        per_account[row["accountId"]].append(row)
    for rows in per_account.values():
        rows.sort(key=lambda r: r["createdAt"])  # type: ignore[arg-type, return-value]
        credits: list[Credit] = []
        debits = 0
        for row in rows:
            if row["credit"]:
                credits.append(
                    Credit(str(row["id"]), int(row["credit"]), row["createdAt"], row["expiresAt"])  # type: ignore[arg-type, call-overload]
                )
            else:
                debits += int(row["debit"])  # type: ignore[call-overload]
                left = remainders(credits, debits)
                assert sum(left.values()) == sum(c.amount for c in credits) - debits >= 0
