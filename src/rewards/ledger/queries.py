"""Set-based SQL on the lot projection: balances, what expires when, and posting expiry.

Every statement reads ``PointLot`` through its partial indexes (lots with points
left whose expiry is not yet recorded), so its cost follows what is live or due,
not the length of the ledger's history. The predicate is spelled with
:data:`rewards.models.LIVE_LOT_SQL` so the planner can match those indexes even
in a prepared statement's generic plan.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Select,
    Text,
    and_,
    bindparam,
    cast,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP

from rewards.ids import new_id
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


def post_due_expirations(
    conn: Connection, as_of: datetime, *, account_ids: Collection[str] | None = None
) -> tuple[int, int]:
    """Record what is left of the lots expired by ``as_of``: one ``EXPIRE`` per account and instant.

    Considers the given accounts, or all of them; call it inside
    :func:`rewards.ledger.projection.projection_writes`. One range scan of the lots
    still due finds the (account, instant) pairs; their entries are inserted and
    their lots flagged expired. Idempotent: an entry already there for that instant
    (another application's too) is kept, and a unique index settles races. An
    instant whose points exceed what one entry holds is recorded as an
    ``EXPIRY_TOO_LARGE`` anomaly instead of failing everyone's run; its lots count
    as gone all the same. Returns ``(entries posted, points expired)``.
    """
    due = select(
        lots.c.accountId,
        lots.c.expiresAt,
        cast(func.sum(lots.c.remaining), BigInteger).label("points"),
    ).where(LIVE_LOT_SQL, lots.c.expiresAt <= _ts(as_of))
    if account_ids is not None:
        due = due.where(among(lots.c.accountId, account_ids, conn.dialect.name))
    found = conn.execute(due.group_by(lots.c.accountId, lots.c.expiresAt)).all()
    fits = [r for r in found if r.points <= MAX_ENTRY_POINTS]
    too_large = [r for r in found if r.points > MAX_ENTRY_POINTS]
    posted: Sequence[Any] = []
    if fits:
        posted = conn.execute(
            _insert(conn)(ledger)
            .on_conflict_do_nothing(
                index_elements=["accountId", "expiresAt"], index_where=EXPIRE_ENTRY_SQL
            )
            .returning(ledger.c.debit),
            [
                {
                    "id": new_id(),
                    "accountId": r.accountId,
                    "entryType": "EXPIRE",
                    "debit": r.points,
                    "description": EXPIRE_DESCRIPTION,
                    "createdAt": r.expiresAt,
                    "expiresAt": r.expiresAt,
                }
                for r in fits
            ],
            # executemany with RETURNING: one row back per inserted entry
        ).all()
        _flag_expired(conn, [(r.accountId, r.expiresAt) for r in fits])
    if too_large:
        conn.execute(
            _insert(conn)(anomalies).on_conflict_do_nothing(index_elements=["id"]),
            [
                {
                    "id": f"{EXPIRY_TOO_LARGE}:{r.accountId}:{r.expiresAt.isoformat()}",
                    "accountId": r.accountId,
                    "kind": EXPIRY_TOO_LARGE,
                    "points": r.points,
                    "at": r.expiresAt,
                }
                for r in too_large
            ],
        )
    return len(posted), sum(int(d) for (d,) in posted)


def _insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def _flag_expired(conn: Connection, instants: list[tuple[str, datetime]]) -> None:
    """Mark expired the live lots of these (account, instant) pairs, whose entries now exist."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text(
                'UPDATE "PointLot" AS l SET "expired" = true'
                " FROM unnest(:accounts, :instants) AS v(account_id, expires_at)"
                ' WHERE l."accountId" = v.account_id AND l."expiresAt" = v.expires_at'
                ' AND l."remaining" > 0 AND NOT l."expired"'
            ).bindparams(
                bindparam("accounts", [a for a, _ in instants], type_=ARRAY(Text)),
                bindparam("instants", [t for _, t in instants], type_=ARRAY(TIMESTAMP())),
            )
        )
        return
    conn.execute(
        update(lots)
        .where(
            LIVE_LOT_SQL,
            lots.c.accountId == bindparam("account_id"),
            lots.c.expiresAt == bindparam("expires_at"),
        )
        .values(expired=True),
        [{"account_id": a, "expires_at": t} for a, t in instants],
    )
