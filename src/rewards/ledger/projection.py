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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Integer,
    Table,
    Text,
    any_,
    bindparam,
    delete,
    false,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from rewards.db import keyed_reads
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
        # Evaluated left to right: the value before, then the switch.
        previous = conn.scalar(
            text(
                f"SELECT coalesce(current_setting('{WRITER_SETTING}', true), ''),"
                f" set_config('{WRITER_SETTING}', 'on', true)"
            )
        )
        yield
        # Writes later in the same transaction are someone else's again. (After an error
        # the transaction is rolled back, and the setting with it.)
        conn.execute(
            text(f"SELECT set_config('{WRITER_SETTING}', :previous, true)"),
            {"previous": previous or ""},
        )
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
    query = select(accounts.c.id).where(among(accounts.c.id, account_ids, conn.dialect.name))
    if conn.dialect.name == "postgresql":
        query = query.order_by(accounts.c.id).with_for_update(skip_locked=skip_locked)
    return set(conn.scalars(query))


def among(column: Any, ids: Collection[str], dialect: str) -> Any:
    """``column`` is one of ``ids``: one array parameter on PostgreSQL (a statement that
    stays the same, whatever the count), an ``IN`` list on SQLite."""
    if dialect == "postgresql":
        return column == any_(literal(sorted(ids), ARRAY(Text)))
    return column.in_(sorted(ids))


# -- reading the ledger --------------------------------------------------------------------


LEDGER_SQL = (
    'SELECT "accountId", "id", "entryType", "credit", "debit", "createdAt", "expiresAt"'
    ' FROM "PointLedger" WHERE "accountId" = ANY(%s)'
)


def ledger_rows(conn: Connection, account_ids: Collection[str]) -> dict[str, list[LedgerRow]]:
    """The accounts' whole ledger histories, by account.

    On PostgreSQL the rows come straight from the driver as tuples: a full sync reads
    every row of the ledger, and this is most of its time.
    """
    by_account: dict[str, list[LedgerRow]] = defaultdict(list)
    if not account_ids:
        return by_account
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cursor:
            cursor.execute(LEDGER_SQL, (sorted(account_ids),))
            for account_id, *fields in cursor:
                by_account[account_id].append(LedgerRow(*fields))
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


def _lot(row: Any) -> Lot:
    return Lot(row.id, row.credited, row.remaining, row.createdAt, row.expiresAt, row.expired)


# -- writing the projection ----------------------------------------------------------------

LOT_COLUMNS = ("id", "accountId", "credited", "remaining", "createdAt", "expiresAt", "expired")
ALLOCATION_COLUMNS = ("debitId", "lotId", "accountId", "points")
ANOMALY_COLUMNS = ("id", "accountId", "kind", "entryId", "points", "at", "detectedAt")
STATE_COLUMNS = ("accountId", "syncedThrough")


def insert_rows(
    conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Insert many rows: ``COPY`` on PostgreSQL when there are many, else one ``INSERT``."""
    if not rows:
        return
    if conn.dialect.name != "postgresql" or len(rows) < COPY_THRESHOLD:
        conn.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    names = ", ".join(f'"{c}"' for c in columns)
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row(row)


def _lot_row(account_id: str, lot: Lot) -> tuple[Any, ...]:
    return (
        lot.id,
        account_id,
        lot.credited,
        lot.remaining,
        lot.created_at,
        lot.expires_at,
        lot.expired,
    )


def _shortfall_id(debit_id: str) -> str:
    return f"{SHORTFALL}:{debit_id}"


@dataclass
class Writes:
    """What one step of keeping the projection up to date will write, gathered first."""

    lots: list[tuple[Any, ...]] = field(default_factory=list)
    remaining: dict[str, int] = field(default_factory=dict)
    """Lot id -> its new ``remaining``."""
    expired: list[str] = field(default_factory=list)
    """Lots whose expiry the ledger now records."""
    allocations: list[tuple[Any, ...]] = field(default_factory=list)
    anomalies: list[tuple[Any, ...]] = field(default_factory=list)
    states: dict[str, datetime] = field(default_factory=dict)

    def add_lots(self, account_id: str, new: Iterable[Lot]) -> None:
        self.lots.extend(_lot_row(account_id, lot) for lot in new)

    def add_allocations(
        self, account_id: str, made: Iterable[Allocation], short: Iterable[Shortfall], now: datetime
    ) -> None:
        self.allocations.extend((a.debit_id, a.lot_id, account_id, a.points) for a in made)
        self.anomalies.extend(
            (_shortfall_id(s.debit_id), account_id, SHORTFALL, s.debit_id, s.points, s.at, now)
            for s in short
        )

    def apply(self, conn: Connection) -> None:
        insert_rows(conn, lots, LOT_COLUMNS, self.lots)
        _update_lots(conn, self.remaining, self.expired)
        insert_rows(conn, allocations, ALLOCATION_COLUMNS, self.allocations)
        insert_rows(conn, anomalies, ANOMALY_COLUMNS, self.anomalies)
        save_sync_state(conn, self.states)


def _update_lots(conn: Connection, remaining: dict[str, int], expired: Sequence[str]) -> None:
    """Set lots' ``remaining`` and ``expired`` in one statement each (PostgreSQL: from arrays)."""
    if conn.dialect.name == "postgresql":
        if remaining:
            conn.execute(
                text(
                    'UPDATE "PointLot" AS l SET "remaining" = v.remaining'
                    " FROM unnest(:ids, :remaining) AS v(id, remaining) WHERE l.id = v.id"
                ).bindparams(
                    bindparam("ids", list(remaining), type_=ARRAY(Text)),
                    bindparam("remaining", list(remaining.values()), type_=ARRAY(Integer)),
                )
            )
        if expired:
            conn.execute(
                update(lots).where(among(lots.c.id, expired, "postgresql")).values(expired=True)
            )
        return
    if remaining:
        conn.execute(
            update(lots)
            .where(lots.c.id == bindparam("lot_id"))
            .values(remaining=bindparam("left")),
            [{"lot_id": k, "left": v} for k, v in remaining.items()],
        )
    if expired:
        conn.execute(update(lots).where(lots.c.id.in_(list(expired))).values(expired=True))


def save_sync_state(conn: Connection, states: dict[str, datetime]) -> None:
    """Upsert ``syncedThrough`` per account (as a delete and an insert, on both databases)."""
    if not states:
        return
    conn.execute(delete(sync_state).where(among(sync_state.c.accountId, states, conn.dialect.name)))
    insert_rows(conn, sync_state, STATE_COLUMNS, sorted(states.items()))


def clear_projection(
    conn: Connection, account_ids: Collection[str], replacing: Writes | None = None
) -> None:
    """Forget what was derived for the accounts, before a replay writes ``replacing``.

    Rows another application moved from one account to another keep their ids: the
    lots, allocations and anomalies about to be written are also cleared by id, from
    whichever account held them.
    """
    dialect = conn.dialect.name
    if account_ids:
        conn.execute(delete(lots).where(among(lots.c.accountId, account_ids, dialect)))
        conn.execute(
            delete(allocations).where(among(allocations.c.accountId, account_ids, dialect))
        )
        conn.execute(
            delete(anomalies).where(
                among(anomalies.c.accountId, account_ids, dialect), anomalies.c.kind == SHORTFALL
            )
        )
        conn.execute(delete(sync_state).where(among(sync_state.c.accountId, account_ids, dialect)))
    if replacing is None:
        return
    if replacing.lots:
        conn.execute(delete(lots).where(among(lots.c.id, [r[0] for r in replacing.lots], dialect)))
    if replacing.allocations:
        debits = {r[0] for r in replacing.allocations}
        conn.execute(delete(allocations).where(among(allocations.c.debitId, debits, dialect)))
    if replacing.anomalies:
        ids = [r[0] for r in replacing.anomalies]
        conn.execute(delete(anomalies).where(among(anomalies.c.id, ids, dialect)))


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
    writes = Writes()
    rows_read = 0
    for account_id in account_ids:
        history = histories.get(account_id, [])
        rows_read += len(history)
        result = replay(history, now)
        writes.add_lots(account_id, result.lots)
        writes.add_allocations(account_id, result.allocations, result.shortfalls, now)
        if result.synced_through is not None:
            writes.states[account_id] = result.synced_through
    derived = set(
        conn.scalars(
            select(sync_state.c.accountId).where(
                among(sync_state.c.accountId, account_ids, conn.dialect.name)
            )
        )
    )
    clear_projection(conn, derived, replacing=writes)
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
        query = query.where(among(changes.c.accountId, account_ids, conn.dialect.name))
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
            among(changes.c.accountId, batch, conn.dialect.name)
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
    read = [r.id for r in records]
    if conn.dialect.name == "postgresql":
        conn.execute(delete(changes).where(changes.c.id == any_(literal(read, ARRAY(BigInteger)))))
    else:
        conn.execute(delete(changes).where(changes.c.id.in_(read)))
    return stats


def _existing(conn: Connection, account_ids: Collection[str]) -> set[str]:
    return set(
        conn.scalars(
            select(accounts.c.id).where(among(accounts.c.id, account_ids, conn.dialect.name))
        )
    )


def _apply_changes(
    conn: Connection, earliest: dict[str, datetime | None], now: datetime
) -> SyncStats:
    """Append where the new rows all come after what the lots account for; else replay."""
    synced = dict(
        conn.execute(
            select(sync_state.c.accountId, sync_state.c.syncedThrough).where(
                among(sync_state.c.accountId, earliest, conn.dialect.name)
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

    A new ``EXPIRE`` row consumes nothing: it marks the lots of its instant expired.
    Returns the accounts that need a replay after all (a new debit dated before an
    expiry already recorded), and what the others took (rows read, shortfalls found;
    accounts are counted by the caller).
    """
    ids = sorted(synced)
    dialect = conn.dialect.name
    new_rows: dict[str, list[LedgerRow]] = defaultdict(list)
    query = (
        select(
            ledger.c.accountId,
            ledger.c.id,
            ledger.c.entryType,
            ledger.c.credit,
            ledger.c.debit,
            ledger.c.createdAt,
            ledger.c.expiresAt,
        )
        .join(sync_state, sync_state.c.accountId == ledger.c.accountId)
        .where(
            among(ledger.c.accountId, ids, dialect),
            ledger.c.createdAt > sync_state.c.syncedThrough,
        )
    )
    rows_read = 0
    for account_id, *fields in conn.execute(query):
        new_rows[account_id].append(LedgerRow(*fields))
        rows_read += 1
    current: dict[str, list[Lot]] = defaultdict(list)
    for held_lot in conn.execute(
        select(lots).where(among(lots.c.accountId, ids, dialect), lots.c.remaining > 0)
    ):
        current[held_lot.accountId].append(_lot(held_lot))

    replay_needed: set[str] = set()
    writes = Writes()
    for account_id in ids:
        rows = sorted(new_rows.get(account_id, []), key=processing_key)
        if not rows:
            continue
        consuming = [r for r in rows if r.credit > 0 or r.consumes]
        held = current.get(account_id, [])
        if consuming and any(
            lot.expired and lot.expires_at is not None and lot.expires_at > consuming[0].created_at
            for lot in held
        ):
            replay_needed.add(account_id)
            continue
        before = {lot.id: lot.remaining for lot in held}
        added: list[Lot] = []
        for row in consuming:
            if row.credit > 0:
                lot = Lot(row.id, row.credit, row.credit, row.created_at, row.expires_at)
                held.append(lot)
                added.append(lot)
            else:
                made, short = allocate(held, row.id, row.debit, row.created_at)
                shortfalls = [Shortfall(row.id, short, row.created_at)] if short else []
                writes.add_allocations(account_id, made, shortfalls, now)
        recorded = {r.expires_at for r in rows if r.entry_type == EXPIRE and r.debit > 0}
        for lot in held:
            if lot.id in before and lot.remaining != before[lot.id]:
                writes.remaining[lot.id] = lot.remaining
            if (
                not lot.expired
                and lot.remaining > 0
                and lot.expires_at is not None
                and lot.expires_at <= now
                and lot.expires_at in recorded
            ):
                lot.expired = True
                if lot.id in before:
                    writes.expired.append(lot.id)
        writes.add_lots(account_id, added)
        if consuming:
            writes.states[account_id] = max(
                synced[account_id], max(r.created_at for r in consuming)
            )
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
        with engine.begin() as conn, projection_writes(conn), keyed_reads(conn):
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
    with projection_writes(conn), keyed_reads(conn):
        while True:
            stats = sync_changes(conn, now, limit=batch_accounts)
            total += stats
            if stats.accounts < batch_accounts:
                return total
