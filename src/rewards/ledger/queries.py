"""Set-based ledger SQL: remainders, balances and expiry postings for many accounts at once.

Everything rests on one property of the consumption order: credits that have
expired by ``as_of`` form a *prefix* of it (they expire before any credit still
alive). Hence, for an account with total debits ``D`` and expired credits
``S``:

* the unspent part of the expired prefix is ``max(0, S - D)`` — what expiry posts;
* the remainder of a live credit *i* is ``clamp(R_i - max(0, D - S), 0, credit_i)``
  where ``R_i`` is the running sum over live credits only — the same value
  :func:`rewards.ledger.rules.remainders` gives, whether or not the expiry has
  been posted yet;
* the available balance is ``total credits - max(D, S)``.

So a running sum is only ever needed over the credits that can precede the ones
asked about; the rest of an account's history enters through two aggregates.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    FromClause,
    Select,
    Table,
    and_,
    case,
    cast,
    func,
    literal,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import literal_column

from rewards.db import tune_for_batch
from rewards.ledger.rules import MAX_ENTRY_POINTS
from rewards.models import EXPIRE_ENTRY_SQL, Account, PointLedger, Timestamp

L: Table = PointLedger.__table__  # type: ignore[assignment]
A: Table = Account.__table__  # type: ignore[assignment]

EXPIRE_DESCRIPTION = "Points expired"


def _ts(value: datetime) -> ColumnElement[datetime]:
    return literal(value, Timestamp)


def clamp(value: ColumnElement[Any], upper: ColumnElement[Any]) -> ColumnElement[int]:
    """``min(max(value, 0), upper)`` in SQL both databases speak."""
    return case((value <= 0, 0), (value >= upper, upper), else_=value)


def account_totals(accounts: FromClause, as_of: datetime) -> Select[Any]:
    """Per account: total credits, total debits and credits expired by ``as_of``."""
    expired = case((and_(L.c.credit > 0, L.c.expiresAt <= _ts(as_of)), L.c.credit), else_=0)
    return (
        select(
            L.c.accountId,
            func.coalesce(func.sum(L.c.credit), 0).label("credits"),
            func.coalesce(func.sum(L.c.debit), 0).label("debits"),
            func.coalesce(func.sum(expired), 0).label("expired"),
        )
        .where(L.c.accountId.in_(select(accounts.c.accountId)))
        .group_by(L.c.accountId)
    )


def live_remainders(
    accounts: FromClause | None, as_of: datetime, until: datetime | None = None
) -> Select[Any]:
    """Remainders of the credits alive at ``as_of`` (expiring by ``until``, if given).

    With ``accounts`` None, every account with a credit in ``(as_of, until]`` — the
    window then bounds the work, and only those accounts' totals are read.
    Columns: ``id``, ``accountId``, ``expiresAt``, ``credit``, ``remaining``.
    """
    alive: ColumnElement[bool] = (L.c.expiresAt > _ts(as_of)) | L.c.expiresAt.is_(None)
    if until is not None:
        alive = and_(L.c.expiresAt > _ts(as_of), L.c.expiresAt <= _ts(until))
    elif accounts is None:
        raise ValueError("an unbounded window needs a list of accounts")
    running = func.sum(L.c.credit).over(
        partition_by=L.c.accountId,
        order_by=(L.c.expiresAt.asc().nulls_last(), L.c.createdAt, L.c.id),
        rows=(None, 0),
    )
    live_rows = select(L.c.id, L.c.accountId, L.c.expiresAt, L.c.credit, running.label("running"))
    live_rows = live_rows.where(L.c.credit > 0, alive)
    if accounts is not None:
        live_rows = live_rows.where(L.c.accountId.in_(select(accounts.c.accountId)))
    live = live_rows.cte("live")
    if accounts is None:
        accounts = select(live.c.accountId).distinct().cte("live_accounts")
    totals = account_totals(accounts, as_of).cte("totals")
    spent_on_live = case(
        (totals.c.debits > totals.c.expired, totals.c.debits - totals.c.expired), else_=0
    )
    return select(
        live.c.id,
        live.c.accountId,
        live.c.expiresAt,
        live.c.credit,
        clamp(live.c.running - spent_on_live, live.c.credit).label("remaining"),
    ).join_from(live, totals, live.c.accountId == totals.c.accountId)


def accounts_table(account_ids: Iterable[str]) -> FromClause:
    """A FROM clause listing the given account ids (as column ``accountId``)."""
    return select(A.c.id.label("accountId")).where(A.c.id.in_(list(account_ids))).subquery("accts")


def available_balance(conn: Connection, account_ids: Iterable[str], as_of: datetime) -> int:
    """Points spendable at ``as_of`` over the accounts, in one query.

    Per account: ``total credits - max(debits, expired credits)``.
    """
    rows = conn.execute(account_totals(accounts_table(account_ids), as_of))
    return sum(int(r.credits) - max(int(r.debits), int(r.expired)) for r in rows)


def _new_id_sql(dialect: str) -> ColumnElement[str]:
    """A cuid-shaped id generated by the database itself, for set-based inserts."""
    if dialect == "postgresql":
        return literal_column(
            "'c' || substr(md5(random()::text || clock_timestamp()::text), 1, 24)"
        )
    return literal_column("'c' || lower(hex(randomblob(12)))")


def post_due_expirations(
    conn: Connection,
    as_of: datetime,
    *,
    account_ids: Iterable[str] | None = None,
) -> tuple[int, int]:
    """Post one ``EXPIRE`` debit per account and expiry instant for what is left unspent.

    Considers the given accounts, or all of them. Only accounts whose expired
    credits exceed their debits have anything to post (the prefix property), so
    one aggregate pass finds them and the running sums cover those alone.
    Idempotent: a posted expiry raises the account's debits, so the same
    remainder is never posted twice; a unique index settles races. An instant whose
    remainder is too large for one entry's ``debit`` (only many huge credits expiring
    together can be) is left unposted rather than failing everyone's run; the balance
    counts those points as gone all the same.
    Returns ``(entries posted, points expired)``.
    """
    expired_credit = case((and_(L.c.credit > 0, L.c.expiresAt <= _ts(as_of)), L.c.credit), else_=0)
    totals = select(L.c.accountId, func.sum(L.c.debit).label("debits")).group_by(L.c.accountId)
    if account_ids is not None:
        totals = totals.where(L.c.accountId.in_(list(account_ids)))
    owing = totals.having(func.sum(expired_credit) > func.sum(L.c.debit)).cte("owing")

    running = func.sum(L.c.credit).over(
        partition_by=L.c.accountId,
        order_by=(L.c.expiresAt, L.c.createdAt, L.c.id),
        rows=(None, 0),
    )
    expired = (
        select(L.c.accountId, L.c.expiresAt, L.c.credit, running.label("running"))
        .where(
            L.c.credit > 0,
            L.c.expiresAt <= _ts(as_of),
            L.c.accountId.in_(select(owing.c.accountId)),
        )
        .cte("expired")
    )
    left = clamp(expired.c.running - owing.c.debits, expired.c.credit)
    per_instant = (
        select(
            expired.c.accountId,
            expired.c.expiresAt,
            cast(func.sum(left), BigInteger).label("points"),
        )
        .select_from(expired.join(owing, expired.c.accountId == owing.c.accountId))
        .group_by(expired.c.accountId, expired.c.expiresAt)
        .having(func.sum(left) > 0)
        .subquery("due")
    )
    dialect = conn.dialect.name
    if account_ids is None:
        tune_for_batch(conn)
    rows = select(
        _new_id_sql(dialect),
        per_instant.c.accountId,
        literal("EXPIRE"),
        per_instant.c.points,
        literal(EXPIRE_DESCRIPTION),
        per_instant.c.expiresAt,
        per_instant.c.expiresAt,
    ).where(per_instant.c.points <= MAX_ENTRY_POINTS)  # one entry cannot hold more
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert_fn(L)
        .from_select(
            ["id", "accountId", "entryType", "debit", "description", "createdAt", "expiresAt"],
            rows,
        )
        .on_conflict_do_nothing(
            index_elements=["accountId", "expiresAt"], index_where=EXPIRE_ENTRY_SQL
        )
        .returning(L.c.debit)
    )
    entries = points = 0
    for (debit,) in conn.execute(stmt):
        entries += 1
        points += debit
    return entries, points
