"""The lot projection: lots, what each debit consumed, and keeping them in step with the ledger.

``PointLedger`` is the one source of truth; ``PointLot``, ``PointAllocation``,
``LedgerAnomaly`` and ``LedgerSyncState`` are derived from it by the rule in
:mod:`rewards.ledger.lots`, and can be rebuilt from it at any time.

Two kinds of writer keep them in step:

* the service's own writes (earn, redeem, expiry) update the projection in the
  same transaction as the ledger row, inside :func:`projection_writes`, which
  keeps the change triggers from recording them;
* anything else that inserts, updates or deletes ``PointLedger`` rows (another
  application, ``psql``, a bulk ``COPY``) fires triggers that record the
  account in ``LedgerChange``. :func:`sync_changes` then brings those accounts up
  to date: rows appended after what the lots account for are applied on top of
  them; anything else (a backdated row, an update, a delete) replays the
  account's whole history.

Everything here works inside the caller's transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    delete,
    false,
    func,
    insert,
    select,
    text,
    update,
)

from rewards.ledger.lots import (
    EXPIRE,
    Allocation,
    LedgerRow,
    Lot,
    Shortfall,
    allocate,
    processing_key,
    replay,
)
from rewards.tables import accounts, allocations, anomalies, changes, ledger, lots, sync_state

WRITER_SETTING = "rewards.projection_writer"
"""The PostgreSQL setting, local to a transaction, that tells the triggers the service writes."""

SHORTFALL = "SHORTFALL"
EXPIRY_TOO_LARGE = "EXPIRY_TOO_LARGE"

COPY_THRESHOLD = 500
"""Above this many rows, PostgreSQL gets them with ``COPY`` rather than ``INSERT``."""


@contextmanager
def projection_writes(conn: Connection) -> Iterator[None]:
    """Around ledger writes that update the projection themselves (the service's own).

    PostgreSQL: a transaction-local setting the triggers read. SQLite has no such
    thing, but it has one writer: the write lock is taken at once, and what the
    triggers record after that is this transaction's own doing, removed at the end.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SELECT set_config('{WRITER_SETTING}', 'on', true)"))
        yield
        return
    conn.execute(update(changes).where(false()).values(id=changes.c.id))  # the write lock, now
    mark = conn.scalar(select(func.coalesce(func.max(changes.c.id), 0)))
    yield
    conn.execute(delete(changes).where(changes.c.id > mark))


def lock_accounts(conn: Connection, account_ids: Collection[str], *, skip_locked: bool) -> set[str]:
    """Row locks on the accounts (PostgreSQL); returns those that exist and were locked.

    In a consistent order, so two lockers of overlapping sets cannot deadlock. SQLite
    has one writer: every existing account is as good as locked.
    """
    if not account_ids:
        return set()
    query = select(accounts.c.id).where(accounts.c.id.in_(sorted(account_ids)))
    if conn.dialect.name == "postgresql":
        query = query.order_by(accounts.c.id).with_for_update(skip_locked=skip_locked)
    return set(conn.scalars(query))


# -- reading the ledger --------------------------------------------------------------------


def _ledger_row(row: Any) -> LedgerRow:
    return LedgerRow(row.id, row.entryType, row.credit, row.debit, row.createdAt, row.expiresAt)


LEDGER_COLUMNS = (
    ledger.c.accountId,
    ledger.c.id,
    ledger.c.entryType,
    ledger.c.credit,
    ledger.c.debit,
    ledger.c.createdAt,
    ledger.c.expiresAt,
)


def ledger_rows(conn: Connection, account_ids: Collection[str]) -> dict[str, list[LedgerRow]]:
    """The accounts' whole ledger histories, by account."""
    by_account: dict[str, list[LedgerRow]] = defaultdict(list)
    if account_ids:
        query = select(*LEDGER_COLUMNS).where(ledger.c.accountId.in_(sorted(account_ids)))
        for row in conn.execute(query):
            by_account[row.accountId].append(_ledger_row(row))
    return by_account


def _lot(row: Any) -> Lot:
    return Lot(row.id, row.credited, row.remaining, row.createdAt, row.expiresAt, row.expired)


# -- writing the projection ----------------------------------------------------------------


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert many rows: ``COPY`` on PostgreSQL when there are many, else one ``INSERT``."""
    if not rows:
        return
    if conn.dialect.name != "postgresql" or len(rows) < COPY_THRESHOLD:
        conn.execute(insert(table), list(rows))
        return
    columns = list(rows[0])
    names = ", ".join(f'"{c}"' for c in columns)
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row(tuple(row[c] for c in columns))


def _lot_values(account_id: str, lot: Lot) -> dict[str, Any]:
    return {
        "id": lot.id,
        "accountId": account_id,
        "credited": lot.credited,
        "remaining": lot.remaining,
        "createdAt": lot.created_at,
        "expiresAt": lot.expires_at,
        "expired": lot.expired,
    }


def _allocation_values(account_id: str, allocation: Allocation) -> dict[str, Any]:
    return {
        "debitId": allocation.debit_id,
        "lotId": allocation.lot_id,
        "accountId": account_id,
        "points": allocation.points,
    }


def _shortfall_values(account_id: str, shortfall: Shortfall, now: datetime) -> dict[str, Any]:
    return {
        "id": f"{SHORTFALL}:{shortfall.debit_id}",
        "accountId": account_id,
        "kind": SHORTFALL,
        "entryId": shortfall.debit_id,
        "points": shortfall.points,
        "at": shortfall.at,
        "detectedAt": now,
    }


@dataclass
class Writes:
    """What one step of keeping the projection up to date will write, gathered first."""

    lots: list[dict[str, Any]]
    remaining: list[dict[str, Any]]
    allocations: list[dict[str, Any]]
    anomalies: list[dict[str, Any]]
    states: dict[str, datetime]

    @classmethod
    def empty(cls) -> Writes:
        return cls([], [], [], [], {})

    def add_allocations(
        self, account_id: str, made: Iterable[Allocation], short: Iterable[Shortfall], now: datetime
    ) -> None:
        self.allocations.extend(_allocation_values(account_id, a) for a in made)
        self.anomalies.extend(_shortfall_values(account_id, s, now) for s in short)

    def apply(self, conn: Connection) -> None:
        insert_rows(conn, lots, self.lots)
        if self.remaining:
            conn.execute(
                update(lots)
                .where(lots.c.id == bindparam("lot_id"))
                .values(remaining=bindparam("left")),
                self.remaining,
            )
        insert_rows(conn, allocations, self.allocations)
        insert_rows(conn, anomalies, self.anomalies)
        save_sync_state(conn, self.states)


def save_sync_state(conn: Connection, states: dict[str, datetime]) -> None:
    """Upsert ``syncedThrough`` per account (as a delete and an insert, on both databases)."""
    if not states:
        return
    conn.execute(delete(sync_state).where(sync_state.c.accountId.in_(sorted(states))))
    insert_rows(
        conn,
        sync_state,
        [{"accountId": a, "syncedThrough": t} for a, t in sorted(states.items())],
    )


def clear_projection(conn: Connection, account_ids: Collection[str]) -> None:
    """Forget everything derived for the accounts (before a replay writes it anew)."""
    if not account_ids:
        return
    ids = sorted(account_ids)
    conn.execute(delete(lots).where(lots.c.accountId.in_(ids)))
    conn.execute(delete(allocations).where(allocations.c.accountId.in_(ids)))
    conn.execute(
        delete(anomalies).where(anomalies.c.accountId.in_(ids), anomalies.c.kind == SHORTFALL)
    )
    conn.execute(delete(sync_state).where(sync_state.c.accountId.in_(ids)))


@dataclass(frozen=True)
class SyncStats:
    accounts: int = 0
    replayed: int = 0
    """Accounts whose whole history was replayed (the others had rows appended)."""
    rows: int = 0
    """Ledger rows read."""
    shortfalls: int = 0
    """Debits found larger than what their instant allowed (recorded as anomalies)."""

    def __add__(self, other: SyncStats) -> SyncStats:
        return SyncStats(
            self.accounts + other.accounts,
            self.replayed + other.replayed,
            self.rows + other.rows,
            self.shortfalls + other.shortfalls,
        )


def replay_accounts(conn: Connection, account_ids: Collection[str], now: datetime) -> SyncStats:
    """Rebuild the accounts' projection from their ledger alone."""
    histories = ledger_rows(conn, account_ids)
    writes = Writes.empty()
    rows_read = 0
    for account_id in account_ids:
        history = histories.get(account_id, [])
        rows_read += len(history)
        result = replay(history, now)
        writes.lots.extend(_lot_values(account_id, lot) for lot in result.lots)
        writes.add_allocations(account_id, result.allocations, result.shortfalls, now)
        if result.synced_through is not None:
            writes.states[account_id] = result.synced_through
    clear_projection(conn, account_ids)
    writes.apply(conn)
    return SyncStats(
        accounts=len(account_ids),
        replayed=len(account_ids),
        rows=rows_read,
        shortfalls=len(writes.anomalies),
    )


# -- other writers' changes ----------------------------------------------------------------


def pending_accounts(
    conn: Connection, account_ids: Collection[str] | None = None, limit: int | None = None
) -> list[str]:
    """Accounts with recorded changes: among ``account_ids``, or the first ``limit`` of all."""
    query = select(changes.c.accountId).distinct().order_by(changes.c.accountId)
    if account_ids is not None:
        if not account_ids:
            return []
        query = query.where(changes.c.accountId.in_(sorted(account_ids)))
    if limit is not None:
        query = query.limit(limit)
    return list(conn.scalars(query))


def count_pending(conn: Connection) -> int:
    """How many accounts wait for their changes to be applied."""
    return int(conn.scalar(select(func.count(changes.c.accountId.distinct()))) or 0)


def sync_changes(
    conn: Connection,
    now: datetime,
    account_ids: Collection[str] | None = None,
    *,
    limit: int | None = None,
    wait: bool = True,
) -> SyncStats:
    """Apply the recorded changes of the given accounts (or of up to ``limit`` accounts).

    The accounts are locked for the rest of the transaction; with ``wait=False`` an
    account another transaction holds is left for later. The change records read
    are deleted, so a change committed meanwhile stays for the next call.
    """
    candidates = pending_accounts(conn, account_ids, limit)
    if not candidates:
        return SyncStats()
    locked = lock_accounts(conn, candidates, skip_locked=not wait)
    existing = locked if conn.dialect.name != "postgresql" or wait else _existing(conn, candidates)
    busy = existing - locked
    batch = [a for a in candidates if a not in busy]  # locked, or gone from Account
    if not batch:
        return SyncStats()
    records = conn.execute(
        select(changes.c.id, changes.c.accountId, changes.c.since).where(
            changes.c.accountId.in_(batch)
        )
    ).all()
    earliest: dict[str, datetime | None] = {}
    for record in records:
        if record.accountId in earliest and earliest[record.accountId] is None:
            continue
        since = record.since
        current = earliest.get(record.accountId, since)
        earliest[record.accountId] = (
            None if since is None or current is None else min(since, current)
        )
    stats = _apply_changes(conn, earliest, now)
    conn.execute(delete(changes).where(changes.c.id.in_([r.id for r in records])))
    return stats


def _existing(conn: Connection, account_ids: Collection[str]) -> set[str]:
    return set(conn.scalars(select(accounts.c.id).where(accounts.c.id.in_(sorted(account_ids)))))


def _apply_changes(
    conn: Connection, earliest: dict[str, datetime | None], now: datetime
) -> SyncStats:
    """Append where the new rows all come after what the lots account for; else replay."""
    synced = dict(
        conn.execute(
            select(sync_state.c.accountId, sync_state.c.syncedThrough).where(
                sync_state.c.accountId.in_(sorted(earliest))
            )
        ).all()
    )
    appendable = {
        account_id: synced[account_id]
        for account_id, since in earliest.items()
        if since is not None and account_id in synced and since > synced[account_id]
    }
    replayed = set(earliest) - set(appendable)
    appended = SyncStats()
    if appendable:
        fallen_back, appended = _append(conn, appendable, now)
        replayed |= fallen_back
    stats = appended + SyncStats(accounts=len(earliest) - len(replayed))
    if replayed:
        stats += replay_accounts(conn, replayed, now)
    return stats


def _append(
    conn: Connection, synced: dict[str, datetime], now: datetime
) -> tuple[set[str], SyncStats]:
    """Apply rows created after each account's ``syncedThrough`` on top of its lots.

    Returns the accounts that need a replay after all (an ``EXPIRE`` row among the
    new ones, or a new debit dated before an expiry already recorded), and what the
    others took (their rows read and shortfalls found; accounts are counted by the caller).
    """
    ids = sorted(synced)
    new_rows: dict[str, list[LedgerRow]] = defaultdict(list)
    query = (
        select(*LEDGER_COLUMNS)
        .join(sync_state, sync_state.c.accountId == ledger.c.accountId)
        .where(ledger.c.accountId.in_(ids), ledger.c.createdAt > sync_state.c.syncedThrough)
    )
    rows_read = 0
    for found in conn.execute(query):
        new_rows[found.accountId].append(_ledger_row(found))
        rows_read += 1
    current: dict[str, list[Lot]] = defaultdict(list)
    for held_lot in conn.execute(
        select(lots).where(lots.c.accountId.in_(ids), lots.c.remaining > 0)
    ):
        current[held_lot.accountId].append(_lot(held_lot))

    replay_needed: set[str] = set()
    writes = Writes.empty()
    for account_id in ids:
        rows = sorted(new_rows.get(account_id, []), key=processing_key)
        if not rows:
            continue
        first = rows[0].created_at
        held = current.get(account_id, [])
        if any(r.entry_type == EXPIRE for r in rows) or any(
            lot.expired and lot.expires_at is not None and lot.expires_at > first for lot in held
        ):
            replay_needed.add(account_id)
            continue
        before = {lot.id: lot.remaining for lot in held}
        added: list[Lot] = []
        for row in rows:
            if row.credit > 0:
                lot = Lot(row.id, row.credit, row.credit, row.created_at, row.expires_at)
                held.append(lot)
                added.append(lot)
            elif row.consumes:
                made, short = allocate(held, row.id, row.debit, row.created_at)
                shortfalls = [Shortfall(row.id, short, row.created_at)] if short else []
                writes.add_allocations(account_id, made, shortfalls, now)
        writes.lots.extend(_lot_values(account_id, lot) for lot in added)
        writes.remaining.extend(
            {"lot_id": lot.id, "left": lot.remaining}
            for lot in held
            if lot.id in before and lot.remaining != before[lot.id]
        )
        writes.states[account_id] = rows[-1].created_at
    writes.apply(conn)
    return replay_needed, SyncStats(rows=rows_read, shortfalls=len(writes.anomalies))


SYNC_BATCH_ACCOUNTS = 2000
"""Accounts brought up to date per transaction by :func:`sync_all`."""


def sync_all(
    engine: Engine,
    now: datetime,
    *,
    batch_accounts: int = SYNC_BATCH_ACCOUNTS,
    progress: Callable[[SyncStats], None] | None = None,
) -> SyncStats:
    """Apply every recorded change, a batch of accounts per transaction.

    Safe to stop and run again: a batch commits its projection rows and deletes its
    change records together. ``progress`` is called after each batch.
    """
    total = SyncStats()
    while True:
        with engine.begin() as conn, projection_writes(conn):
            stats = sync_changes(conn, now, limit=batch_accounts)
        total += stats
        if progress is not None and stats.accounts:
            progress(stats)
        if stats.accounts < batch_accounts:
            return total


def sync_all_in(
    conn: Connection, now: datetime, batch_accounts: int = SYNC_BATCH_ACCOUNTS
) -> SyncStats:
    """:func:`sync_all` inside the caller's transaction (a dry run rolls it back)."""
    total = SyncStats()
    with projection_writes(conn):
        while True:
            stats = sync_changes(conn, now, limit=batch_accounts)
            total += stats
            if stats.accounts < batch_accounts:
                return total
