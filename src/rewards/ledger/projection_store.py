"""The projection's tables: the ledger read for them, what a sync writes, what a replay clears.

Reads and writes for many accounts at once. On PostgreSQL they go to the driver as plain
SQL with array parameters (:mod:`rewards.ledger.projection_sql`): a batch is a few
statements whatever its size, and no time goes to building them. SQLite, the embedded
default, gets the same statements through SQLAlchemy Core.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    any_,
    bindparam,
    delete,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import Text

from rewards.ledger import projection_sql as pg
from rewards.ledger.lots import Allocation, LedgerRow, Lot, Shortfall
from rewards.tables import accounts, allocations, anomalies, ledger, lots, sync_state

SHORTFALL = "SHORTFALL"
EXPIRY_TOO_LARGE = "EXPIRY_TOO_LARGE"


def on_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def among(column: Any, ids: Collection[str], dialect: str) -> Any:
    """``column`` is one of ``ids``: one array parameter on PostgreSQL (a statement that
    stays the same, whatever the count), an ``IN`` list on SQLite."""
    if dialect == "postgresql":
        return column == any_(literal(sorted(ids), ARRAY(Text)))
    return column.in_(sorted(ids))


# -- accounts --------------------------------------------------------------------------------


def lock_accounts(conn: Connection, account_ids: Collection[str], *, skip_locked: bool) -> set[str]:
    """Row locks on the accounts (PostgreSQL); returns those that exist and were locked.

    In a consistent order, so two lockers of overlapping sets cannot deadlock. SQLite
    has one writer: every existing account is as good as locked.
    """
    if not account_ids:
        return set()
    query = select(accounts.c.id).where(among(accounts.c.id, account_ids, conn.dialect.name))
    if on_postgres(conn):
        query = query.order_by(accounts.c.id).with_for_update(skip_locked=skip_locked)
    return set(conn.scalars(query))


def lock_members(
    conn: Connection, account_ids: Collection[str], *, skip_locked: bool
) -> dict[str, str]:
    """Lock the accounts (as :func:`lock_accounts`); those locked, with their member."""
    return members_of(conn, account_ids, pg.LOCK_SKIP_LOCKED if skip_locked else pg.LOCK)


def members_of(
    conn: Connection, account_ids: Collection[str], sql: str = pg.MEMBERS
) -> dict[str, str]:
    """Account -> its member, for the accounts that exist (``sql``: locking them on
    PostgreSQL; SQLite has one writer, and every account is as good as locked)."""
    ids = sorted(account_ids)
    if on_postgres(conn):
        return dict(pg.rows(conn, sql, (ids,)))
    query = select(accounts.c.id, accounts.c.userId).where(accounts.c.id.in_(ids))
    return dict(conn.execute(query).all())


def with_projection(conn: Connection, account_ids: Collection[str]) -> set[str]:
    """The accounts something was derived for (they have a sync state)."""
    ids = sorted(account_ids)
    if on_postgres(conn):
        return {a for a, _ in pg.rows(conn, pg.STATES, (ids,))}
    query = select(sync_state.c.accountId).where(sync_state.c.accountId.in_(ids))
    return set(conn.scalars(query))


# -- reading the ledger ----------------------------------------------------------------------


def ledger_rows(conn: Connection, account_ids: Collection[str]) -> dict[str, list[LedgerRow]]:
    """The accounts' whole ledger histories, by account.

    On PostgreSQL the rows come straight from the driver as tuples: a full sync reads
    every row of the ledger, and this is most of its time.
    """
    by_account: dict[str, list[LedgerRow]] = defaultdict(list)
    if not account_ids:
        return by_account
    if on_postgres(conn):
        make = LedgerRow._make
        for row in pg.stream(conn, pg.LEDGER, (sorted(account_ids),)):
            by_account[row[0]].append(make(row[1:]))
        return by_account
    query = select(
        ledger.c.accountId,
        ledger.c.id,
        ledger.c.entryType,
        ledger.c.credit,
        ledger.c.debit,
        ledger.c.createdAt,
        ledger.c.expiresAt,
    ).where(ledger.c.accountId.in_(sorted(account_ids)))
    for account_id, *fields in conn.execute(query):
        by_account[account_id].append(LedgerRow(*fields))
    return by_account


# -- writing the projection ------------------------------------------------------------------


def _shortfall_id(debit_id: str) -> str:
    return f"{SHORTFALL}:{debit_id}"


@dataclass
class Writes:
    """What one step of keeping the projection up to date will write, gathered first."""

    lots: list[tuple[str, Lot]] = field(default_factory=list)
    """New lots, with their account."""
    remaining: dict[str, int] = field(default_factory=dict)
    """Lot id -> its new ``remaining``."""
    expired: list[str] = field(default_factory=list)
    """Lots whose expiry the ledger now records."""
    allocations: list[tuple[Any, ...]] = field(default_factory=list)
    anomalies: list[tuple[Any, ...]] = field(default_factory=list)
    states: dict[str, datetime] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    """Account -> its member, for the new lots; looked up where the caller did not say."""

    def add_lots(self, account_id: str, new: Iterable[Lot]) -> None:
        self.lots.extend((account_id, lot) for lot in new)

    def add_allocations(
        self, account_id: str, made: Iterable[Allocation], short: Iterable[Shortfall], now: datetime
    ) -> None:
        self.allocations.extend((a.debit_id, a.lot_id, account_id, a.points) for a in made)
        self.anomalies.extend(
            (_shortfall_id(s.debit_id), account_id, SHORTFALL, s.debit_id, s.points, s.at, now)
            for s in short
        )

    def apply(self, conn: Connection) -> None:
        if on_postgres(conn):
            pg.insert_rows(conn, pg.LOTS, self._lot_rows(conn))
            pg.update_lots(conn, self.remaining, self.expired)
            pg.insert_rows(conn, pg.ALLOCATIONS, self.allocations)
            pg.insert_rows(conn, pg.ANOMALIES, self.anomalies)
            pg.save_states(conn, self.states)
            return
        _insert(conn, lots, pg.LOTS, self._lot_rows(conn))
        _update_lots(conn, self.remaining, self.expired)
        _insert(conn, allocations, pg.ALLOCATIONS, self.allocations)
        _insert(conn, anomalies, pg.ANOMALIES, self.anomalies)
        _save_states(conn, self.states)

    def _lot_rows(self, conn: Connection) -> list[tuple[Any, ...]]:
        missing = {account_id for account_id, _ in self.lots} - set(self.users)
        if missing:
            self.users.update(members_of(conn, missing))
        return [
            (
                lot.id,
                account_id,
                self.users[account_id],
                lot.credited,
                lot.remaining,
                lot.created_at,
                lot.expires_at,
                lot.expired,
            )
            for account_id, lot in self.lots
        ]


def _insert(
    conn: Connection, table: Table, columns: pg.Columns, rows: Sequence[tuple[Any, ...]]
) -> None:
    if rows:
        names = columns.names
        conn.execute(insert(table), [dict(zip(names, row, strict=True)) for row in rows])


def _update_lots(conn: Connection, remaining: Mapping[str, int], expired: Sequence[str]) -> None:
    if remaining:
        conn.execute(
            update(lots)
            .where(lots.c.id == bindparam("lot_id"))
            .values(remaining=bindparam("left")),
            [{"lot_id": k, "left": v} for k, v in remaining.items()],
        )
    if expired:
        conn.execute(update(lots).where(lots.c.id.in_(list(expired))).values(expired=True))


def _save_states(conn: Connection, states: Mapping[str, datetime]) -> None:
    """Upsert ``syncedThrough`` per account."""
    if not states:
        return
    upsert = sqlite.insert(sync_state)
    conn.execute(
        upsert.on_conflict_do_update(
            index_elements=["accountId"], set_={"syncedThrough": upsert.excluded.syncedThrough}
        ),
        [{"accountId": a, "syncedThrough": t} for a, t in states.items()],
    )


def clear_projection(
    conn: Connection, account_ids: Collection[str], replacing: Writes | None = None
) -> None:
    """Forget what was derived for the accounts, and the rows ``replacing`` is about to
    write, by id, from whichever account holds them (rows another application moved
    from one account to another keep their ids)."""
    replacing = replacing or Writes()
    ids = sorted(account_ids)
    lot_ids = [lot.id for _, lot in replacing.lots]
    debit_ids = sorted({r[0] for r in replacing.allocations})
    anomaly_ids = [r[0] for r in replacing.anomalies]
    if on_postgres(conn):
        if ids or lot_ids or debit_ids or anomaly_ids:
            pg.clear(conn, ids, lot_ids, debit_ids, anomaly_ids)
        return
    for table, key, by_id in (
        (lots, lots.c.id, lot_ids),
        (allocations, allocations.c.debitId, debit_ids),
        (anomalies, anomalies.c.id, anomaly_ids),
    ):
        if not ids and not by_id:
            continue
        of_accounts: Any = table.c.accountId.in_(ids)
        if table is anomalies:
            of_accounts = of_accounts & (anomalies.c.kind == SHORTFALL)
        conn.execute(delete(table).where(or_(of_accounts, key.in_(by_id))))
    if ids:
        conn.execute(delete(sync_state).where(sync_state.c.accountId.in_(ids)))
