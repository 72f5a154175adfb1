"""Ledger operations: earn, redeem, balances and upcoming expirations.

Each function works inside the caller's transaction (a SQLAlchemy ``Connection``
already in ``begin()``), so an API request or a job step commits all of its
writes or none. The clock (``as_of``) is always passed in.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from rewards.clock import local_date, utc_naive
from rewards.ids import new_id
from rewards.ledger.errors import (
    DuplicateEntry,
    IdempotencyConflict,
    InsufficientPoints,
    InvalidEntry,
    UnknownAccount,
)
from rewards.ledger.queries import (
    accounts_table,
    available_balance,
    live_remainders,
    post_due_expirations,
)
from rewards.ledger.rules import MAX_POINTS
from rewards.models import Account, PointLedger

L: Table = PointLedger.__table__  # type: ignore[assignment]
A: Table = Account.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Entry:
    id: str
    account_id: str
    entry_type: str
    credit: int
    debit: int
    description: str | None
    created_at: datetime
    expires_at: datetime | None
    replayed: bool = False
    """True when an Idempotency-Key matched an earlier entry, which is returned instead."""


@dataclass(frozen=True)
class Expiring:
    date: date
    points: int


def validate_points(points: int) -> int:
    if isinstance(points, bool) or not isinstance(points, int):
        raise InvalidEntry("points must be a whole number")
    if not 1 <= points <= MAX_POINTS:
        raise InvalidEntry(f"points must be between 1 and {MAX_POINTS:,}")
    return points


def lock_account(conn: Connection, account_id: str) -> None:
    """Serialise writers on one account for the rest of the transaction.

    PostgreSQL: a row lock. SQLite: a no-op write, which takes the database's
    single writer lock now rather than at the first real write.
    """
    if conn.dialect.name == "postgresql":
        found = conn.execute(
            select(A.c.id).where(A.c.id == account_id).with_for_update()
        ).one_or_none()
    else:
        found = conn.execute(
            update(A).where(A.c.id == account_id).values(id=A.c.id).returning(A.c.id)
        ).one_or_none()
    if found is None:
        raise UnknownAccount(account_id)


def _entry(row: Any, *, replayed: bool = False) -> Entry:
    return Entry(
        id=row.id,
        account_id=row.accountId,
        entry_type=row.entryType,
        credit=row.credit,
        debit=row.debit,
        description=row.description,
        created_at=row.createdAt,
        expires_at=row.expiresAt,
        replayed=replayed,
    )


def _insert_entry(conn: Connection, values: dict[str, object]) -> Entry:
    try:
        row = conn.execute(insert(L).values(**values).returning(*L.c)).one()
    except IntegrityError as exc:
        if "accountId_fkey" in str(exc.orig) or "FOREIGN KEY" in str(exc.orig):
            raise UnknownAccount(str(values["accountId"])) from exc
        raise DuplicateEntry(f"ledger entry {values['id']!r} already exists") from exc
    return _entry(row)


def _replay(
    conn: Connection,
    account_id: str,
    key: str | None,
    entry_type: str,
    points: int,
    expires_at: datetime | None,
    description: str | None,
) -> Entry | None:
    """The entry an earlier request with this Idempotency-Key posted, if any.

    Called with the account locked, so a concurrent request with the same key
    waits for the first and then finds its entry. The same key with any other
    request is refused rather than silently answered with the first entry.
    """
    if key is None:
        return None
    row = conn.execute(
        select(*L.c).where(L.c.accountId == account_id, L.c.idempotencyKey == key)
    ).one_or_none()
    if row is None:
        return None
    asked = (entry_type, points, expires_at, description)
    if (row.entryType, row.credit or row.debit, row.expiresAt, row.description) != asked:
        raise IdempotencyConflict(key)
    return _entry(row, replayed=True)


def earn(
    conn: Connection,
    account_id: str,
    points: int,
    *,
    as_of: datetime,
    expires_at: datetime | None = None,
    description: str | None = None,
    entry_id: str | None = None,
    idempotency_key: str | None = None,
) -> Entry:
    """Credit ``points``; they expire at ``expires_at`` (never, if None), which must be ahead.

    A replay is recognised before the expiry is held against the clock: the retry of an
    earn whose ``expires_at`` has passed since returns the first entry.
    """
    validate_points(points)
    as_of = utc_naive(as_of)
    expires_at = None if expires_at is None else utc_naive(expires_at)
    lock_account(conn, account_id)
    if (
        earlier := _replay(
            conn, account_id, idempotency_key, "EARN", points, expires_at, description
        )
    ) is not None:
        return earlier
    if expires_at is not None and expires_at <= as_of:
        raise InvalidEntry("expiresAt must be in the future")
    return _insert_entry(
        conn,
        {
            "id": entry_id or new_id(),
            "idempotencyKey": idempotency_key,
            "accountId": account_id,
            "entryType": "EARN",
            "credit": points,
            "description": description,
            "createdAt": as_of,
            "expiresAt": expires_at,
        },
    )


def redeem(
    conn: Connection,
    account_id: str,
    points: int,
    *,
    as_of: datetime,
    description: str | None = None,
    entry_id: str | None = None,
    idempotency_key: str | None = None,
) -> Entry:
    """Spend ``points``, earliest-expiring first; all or nothing.

    Expirations due by ``as_of`` are posted first, in the same transaction, so a
    redemption never spends expired points. Raises :class:`InsufficientPoints`
    (and writes nothing, once the caller rolls back) when the balance is short.
    """
    validate_points(points)
    as_of = utc_naive(as_of)
    lock_account(conn, account_id)
    if (
        earlier := _replay(conn, account_id, idempotency_key, "REDEEM", points, None, description)
    ) is not None:
        return earlier
    post_due_expirations(conn, as_of, account_ids=[account_id])
    balance = available_balance(conn, [account_id], as_of)
    if balance < points:
        raise InsufficientPoints(account_id, points, balance)
    return _insert_entry(
        conn,
        {
            "id": entry_id or new_id(),
            "idempotencyKey": idempotency_key,
            "accountId": account_id,
            "entryType": "REDEEM",
            "debit": points,
            "description": description,
            "createdAt": as_of,
        },
    )


def balance(conn: Connection, account_id: str, as_of: datetime) -> int:
    if conn.execute(select(A.c.id).where(A.c.id == account_id)).one_or_none() is None:
        raise UnknownAccount(account_id)
    return available_balance(conn, [account_id], utc_naive(as_of))


def total_balance(conn: Connection, account_ids: list[str], as_of: datetime) -> int:
    """Points spendable at ``as_of`` over several accounts (a member's), in one query."""
    return available_balance(conn, account_ids, utc_naive(as_of))


def upcoming_expirations(
    conn: Connection,
    account_ids: list[str],
    *,
    as_of: datetime,
    until: datetime,
    zone: ZoneInfo,
) -> list[Expiring]:
    """Unspent points expiring in ``(as_of, until]``, summed per calendar date in ``zone``."""
    if not account_ids:
        return []
    rows = conn.execute(
        live_remainders(accounts_table(account_ids), utc_naive(as_of), utc_naive(until))
    )
    per_day: dict[date, int] = defaultdict(int)
    for row in rows:
        if row.remaining > 0:
            per_day[local_date(row.expiresAt, zone)] += int(row.remaining)
    return [Expiring(day, points) for day, points in sorted(per_day.items())]
