"""Set-based SQL on the lot projection: balances, what expires when, and posting expiry.

Every statement reads ``PointLot`` through its partial indexes (lots with points
left whose expiry is not yet recorded), so its cost follows what is live or due,
not the length of the ledger's history. The predicate is spelled with
:data:`rewards.models.LIVE_LOT_SQL` so the planner can match those indexes even
in a prepared statement's generic plan.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Select,
    and_,
    bindparam,
    cast,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from rewards.ids import new_id
from rewards.ledger import projection_sql as pg
from rewards.ledger.projection import EXPIRY_TOO_LARGE, among
from rewards.ledger.rules import MAX_ENTRY_POINTS
from rewards.models import EXPIRE_ENTRY_SQL, LIVE_LOT_SQL, Timestamp
from rewards.tables import anomalies, ledger, lots

EXPIRE_DESCRIPTION = "Points expired"


def _ts(value: datetime) -> ColumnElement[datetime]:
    return literal(value, Timestamp)


def spendable_at(as_of: datetime) -> ColumnElement[bool]:
    """A live lot that exists at ``as_of`` and has not expired by then."""
    return and_(
        LIVE_LOT_SQL,
        lots.c.createdAt <= _ts(as_of),
        or_(lots.c.expiresAt > _ts(as_of), lots.c.expiresAt.is_(None)),
    )


def available_balance(conn: Connection, account_ids: Collection[str], as_of: datetime) -> int:
    """Points spendable at ``as_of`` over the accounts, in one query."""
    if not account_ids:
        return 0
    total = conn.scalar(
        select(func.coalesce(func.sum(lots.c.remaining), 0)).where(
            lots.c.accountId.in_(sorted(account_ids)), spendable_at(as_of)
        )
    )
    return int(total or 0)


def expiring_lots(
    after: datetime, until: datetime, account_ids: Collection[str] | None = None
) -> Select[Any]:
    """Live lots expiring in ``(after, until]``: ``accountId``, ``expiresAt``, ``remaining``.

    Without ``account_ids``, every account: one range scan of the expiry index. The
    job asks as of its scheduled time, and a lot earned since is reminded all the
    same (the member holds it when the email goes out).
    """
    query = select(lots.c.accountId, lots.c.expiresAt, lots.c.remaining).where(
        LIVE_LOT_SQL, lots.c.expiresAt > _ts(after), lots.c.expiresAt <= _ts(until)
    )
    if account_ids is not None:
        query = query.where(lots.c.accountId.in_(sorted(account_ids)))
    return query


@dataclass(frozen=True, slots=True)
class DueExpiry:
    """What is left of an account's lots expiring at one instant, due to be recorded."""

    account_id: str
    at: datetime
    points: int


def post_due_expirations(
    conn: Connection, as_of: datetime, *, account_ids: Collection[str] | None = None
) -> tuple[int, int]:
    """Record what is left of the lots expired by ``as_of``: one ``EXPIRE`` per account and instant.

    Considers the given accounts, or all of them; call it inside
    :func:`rewards.ledger.projection.projection_writes`. One range of the lots still
    due finds the (account, instant) pairs; their entries are inserted and their lots
    flagged expired. Idempotent: an entry already there for that instant (another
    application's too) is kept, and a unique index settles races. An instant whose
    points exceed what one entry holds is recorded as an ``EXPIRY_TOO_LARGE`` anomaly
    instead of failing everyone's run; its lots count as gone all the same. Returns
    ``(entries posted, points expired)``.
    """
    found = due_expirations(conn, as_of, account_ids)
    fits = [d for d in found if d.points <= MAX_ENTRY_POINTS]
    too_large = [d for d in found if d.points > MAX_ENTRY_POINTS]
    posted = _post(conn, fits)
    if too_large:
        conn.execute(
            _insert(conn)(anomalies).on_conflict_do_nothing(index_elements=["id"]),
            [
                {
                    "id": f"{EXPIRY_TOO_LARGE}:{d.account_id}:{d.at.isoformat()}",
                    "accountId": d.account_id,
                    "kind": EXPIRY_TOO_LARGE,
                    "points": d.points,
                    "at": d.at,
                }
                for d in too_large
            ],
        )
    return posted


DUE_SQL = """
SELECT "accountId", "expiresAt", "remaining" FROM "PointLot"
WHERE "remaining" > 0 AND NOT "expired" AND "expiresAt" <= %s
ORDER BY "expiresAt"
"""
"""Every account's due lots, summed in Python. Ordered by expiry, so PostgreSQL reads the
range of the expiry index: its statistics cannot tell that almost no live lot lies in
the past, and a grouped form was planned as a scan of every live lot (seconds at 10
million ledger rows, for the few thousand due each day)."""


def due_expirations(
    conn: Connection, as_of: datetime, account_ids: Collection[str] | None = None
) -> list[DueExpiry]:
    """Per account and instant up to ``as_of``, what is left of its live lots."""
    if account_ids is None and conn.dialect.name == "postgresql":
        sums: dict[tuple[str, datetime], int] = defaultdict(int)
        for account_id, at, points in pg.stream(conn, DUE_SQL, (as_of,)):
            sums[account_id, at] += points
        # By account: the entries go into the ledger's account indexes in key order.
        return [DueExpiry(a, t, p) for (a, t), p in sorted(sums.items())]
    due = select(
        lots.c.accountId,
        lots.c.expiresAt,
        cast(func.sum(lots.c.remaining), BigInteger).label("points"),
    ).where(LIVE_LOT_SQL, lots.c.expiresAt <= _ts(as_of))
    if account_ids is not None:
        due = due.where(among(lots.c.accountId, account_ids, conn.dialect.name))
    found = conn.execute(due.group_by(lots.c.accountId, lots.c.expiresAt))
    return [DueExpiry(a, t, int(p)) for a, t, p in found]


POST_SQL = """
WITH due (account_id, expires_at, points, id) AS (
    SELECT * FROM unnest(%b::text[], %b::timestamp[], %b::integer[], %b::text[])
), posted AS (
    INSERT INTO "PointLedger"
        ("id", "accountId", "entryType", "debit", "description", "createdAt", "expiresAt")
    SELECT id, account_id, 'EXPIRE', points, %s, expires_at, expires_at FROM due
    ON CONFLICT ("accountId", "expiresAt") WHERE "entryType" = 'EXPIRE' DO NOTHING
    RETURNING "debit"
), flagged AS (
    UPDATE "PointLot" AS l SET "expired" = true FROM due
    WHERE l."accountId" = due.account_id AND l."expiresAt" = due.expires_at
      AND l."remaining" > 0 AND NOT l."expired"
)
SELECT count(*), coalesce(sum("debit"), 0) FROM posted
"""
"""The entries and the flags in one statement: arrays in, one round trip, whatever the count."""


def _post(conn: Connection, due: Sequence[DueExpiry]) -> tuple[int, int]:
    """Insert the ``EXPIRE`` entries (those not already there) and flag their lots expired."""
    if not due:
        return 0, 0
    if conn.dialect.name == "postgresql":
        params = (
            [d.account_id for d in due],
            [d.at for d in due],
            [d.points for d in due],
            [new_id() for _ in due],
            EXPIRE_DESCRIPTION,
        )
        ((count, points),) = pg.rows(conn, POST_SQL, params)
        return int(count), int(points)
    posted = conn.execute(
        sqlite.insert(ledger)
        .on_conflict_do_nothing(
            index_elements=["accountId", "expiresAt"], index_where=EXPIRE_ENTRY_SQL
        )
        .returning(ledger.c.debit),
        [
            {
                "id": new_id(),
                "accountId": d.account_id,
                "entryType": "EXPIRE",
                "debit": d.points,
                "description": EXPIRE_DESCRIPTION,
                "createdAt": d.at,
                "expiresAt": d.at,
            }
            for d in due
        ],
        # executemany with RETURNING: one row back per inserted entry
    ).all()
    conn.execute(
        update(lots)
        .where(
            LIVE_LOT_SQL,
            lots.c.accountId == bindparam("account_id"),
            lots.c.expiresAt == bindparam("expires_at"),
        )
        .values(expired=True),
        [{"account_id": d.account_id, "expires_at": d.at} for d in due],
    )
    return len(posted), sum(int(d) for (d,) in posted)


def _insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
