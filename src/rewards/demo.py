"""A realistic, deterministic loyalty programme for the embedded demo.

About a year of activity per member: monthly purchases earning points that
expire a year later, occasional promotional points with a short life, a few
never-expiring goodwill adjustments, and redemptions. Spending is chronological,
as the ledger's: a redemption at ``t`` uses only the lots that exist and have not
expired at ``t``, earliest-expiring first, and never more than they hold.
Expirations that fell due before a redemption are posted first (what was left of
the lots expiring at that instant), as the ledger does; the rest are left for the
daily job to post.

The generator is pure (seeded ``random.Random``, the clock passed in); loading
is one bulk insert per table.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert

from rewards.ledger.lots import Lot, allocate
from rewards.models import Account, PointLedger, User

FIRST_NAMES = [
    "Ada",
    "Alan",
    "Amara",
    "Bea",
    "Carlos",
    "Chen",
    "Dara",
    "Elif",
    "Emeka",
    "Farah",
    "Grace",
    "Hana",
    "Ines",
    "Ivan",
    "Jonas",
    "Kai",
    "Lena",
    "Luca",
    "Maya",
    "Mei",
    "Nadia",
    "Noah",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tariq",
    "Una",
    "Vera",
    "Wen",
    "Yara",
    "Zoe",
]
LAST_NAMES = [
    "Abara",
    "Berg",
    "Costa",
    "Diaz",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Haddad",
    "Ito",
    "Jensen",
    "Kowalski",
    "Larsen",
    "Moreau",
    "Novak",
    "Okafor",
    "Patel",
    "Quispe",
    "Rossi",
    "Silva",
    "Tanaka",
    "Umar",
    "Varga",
    "Weber",
    "Xu",
    "Yilmaz",
    "Zhou",
]
MALFORMED_EMAILS = ("not-an-email", "jane@", "@example.com", "bob@@example.com", "a b@example.com")


def _post_expired(lots: list[Lot], moment: datetime) -> list[tuple[datetime, int]]:
    """Record the expiry of the lots expired by ``moment``: what was left, per instant."""
    expired: dict[datetime, int] = {}
    for lot in lots:
        if lot.expires_at is not None and lot.expires_at <= moment and not lot.expired:
            lot.expired = True
            if lot.remaining:
                expired[lot.expires_at] = expired.get(lot.expires_at, 0) + lot.remaining
    return sorted(expired.items())


@dataclass
class Programme:
    users: list[dict[str, Any]] = field(default_factory=list)
    accounts: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)


def generate_programme(now: datetime, members: int = 1000, seed: int = 42) -> Programme:
    """Members, accounts and a year of ledger rows, the same for the same ``now`` and ``seed``."""
    rng = random.Random(seed)
    programme = Programme()
    start = now - timedelta(days=420)
    for n in range(members):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        user_id = f"demo-user-{n:05d}"
        email: str | None = f"{first}.{last}.{n}@example.com".lower()
        roll = rng.random()
        if roll < 0.03:
            email = None
        elif roll < 0.05:
            email = rng.choice(MALFORMED_EMAILS)
        programme.users.append(
            {
                "id": user_id,
                "email": email,
                "name": f"{first} {last}",
                "createdAt": start + timedelta(days=rng.randint(0, 30)),
                "emailNotifications": rng.random() >= 0.06,
            }
        )
        for a in range(rng.choices((1, 2, 3), weights=(80, 15, 5))[0]):
            account_id = f"demo-account-{n:05d}-{a}"
            programme.accounts.append(
                {"id": account_id, "userId": user_id, "createdAt": start + timedelta(days=31)}
            )
            programme.ledger.extend(_account_activity(rng, account_id, start, now))
    return programme


def _account_activity(
    rng: random.Random, account_id: str, start: datetime, now: datetime
) -> list[dict[str, Any]]:
    """One account's year: earn, promotions, adjustments, redemptions with lazy expiry."""
    events: list[tuple[datetime, str, int, datetime | None]] = []
    day = start + timedelta(days=rng.randint(31, 45))
    while day < now - timedelta(hours=1):
        points = rng.choice((50, 80, 120, 150, 200, 250, 400))
        events.append((day, "EARN", points, day + timedelta(days=365)))
        if rng.random() < 0.25:
            promo_life = timedelta(days=rng.choice((30, 45, 60, 90)))
            events.append(
                (day + timedelta(hours=2), "EARN", rng.choice((25, 50, 100)), day + promo_life)
            )
        if rng.random() < 0.03:
            events.append((day + timedelta(hours=3), "ADJUST", rng.choice((20, 50)), None))
        if rng.random() < 0.2:
            events.append((day + timedelta(days=rng.randint(1, 20)), "REDEEM", 0, None))
        day += timedelta(days=rng.randint(20, 40), minutes=rng.randint(0, 600))

    lots: list[Lot] = []
    rows: list[dict[str, Any]] = []
    for moment, kind, points, expires_at in sorted(events, key=lambda e: e[0]):
        if moment >= now:
            continue
        if kind in ("EARN", "ADJUST"):
            row = _row(
                f"{account_id}-{len(rows):04d}",
                account_id,
                kind,
                moment,
                credit=points,
                expires_at=expires_at,
            )
            lots.append(Lot(row["id"], points, points, moment, expires_at))
            rows.append(row)
            continue
        # As the ledger does: post what expired before this redemption, then spend.
        for instant, expired in _post_expired(lots, moment):
            rows.append(
                _row(
                    f"{account_id}-{len(rows):04d}",
                    account_id,
                    "EXPIRE",
                    instant,
                    debit=expired,
                    expires_at=instant,
                    description="Points expired",
                )
            )
        spendable = sum(lot.remaining for lot in lots if lot.spendable_at(moment))
        if spendable < 50:
            continue
        spend = rng.randint(50, max(50, spendable // 2)) // 10 * 10
        row = _row(
            f"{account_id}-{len(rows):04d}",
            account_id,
            "REDEEM",
            moment,
            debit=spend,
            description="Reward redeemed",
        )
        allocate(lots, row["id"], spend, moment)  # never short: spend <= spendable
        rows.append(row)
    return rows


def _row(
    entry_id: str,
    account_id: str,
    kind: str,
    moment: datetime,
    *,
    credit: int = 0,
    debit: int = 0,
    expires_at: datetime | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    default_description = {"EARN": "Purchase", "ADJUST": "Goodwill points"}.get(kind)
    return {
        "id": entry_id,
        "accountId": account_id,
        "entryType": kind,
        "credit": credit,
        "debit": debit,
        "description": description or default_description,
        "createdAt": moment,
        "expiresAt": expires_at,
    }


def load_programme(engine: Engine, programme: Programme, chunk: int = 5000) -> None:
    """Insert everything in one transaction, in bulk."""
    with engine.begin() as conn:
        conn.execute(insert(User), programme.users)
        conn.execute(insert(Account), programme.accounts)
        for i in range(0, len(programme.ledger), chunk):
            conn.execute(insert(PointLedger), programme.ledger[i : i + chunk])
