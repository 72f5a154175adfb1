"""The lot projection: lots, what each debit consumed, and keeping them in step with the ledger.

``PointLedger`` is the one source of truth; ``PointLot``, ``PointAllocation``,
``LedgerAnomaly`` and ``LedgerSyncState`` are derived from it by the rule in
:mod:`rewards.ledger.lots`, and can be rebuilt from it at any time.

Two kinds of writer keep them in step:

* the service's own writes (earn, redeem, expiry) update the projection in the
  same transaction as the ledger row, inside :func:`projection_writes`, which
  keeps the change triggers from recording them;
* anything else that inserts, updates or deletes ``PointLedger`` rows (another
  application, ``psql``, a bulk ``COPY``), or moves an account to another member,
  fires triggers that record the account in ``LedgerChange``. :func:`sync_changes`
  then brings those accounts up to date: rows appended after what the lots account
  for are applied on top of them; anything else (a backdated row, an update, a
  delete, a move) replays the account's whole history.

On PostgreSQL the statements of the sync go to the driver as plain SQL with array
parameters (:mod:`rewards.ledger.projection_sql`): a batch is a few statements
whatever its size, and no time goes to building them. SQLite, the embedded
default, gets the same statements through SQLAlchemy Core.

Everything here works inside the caller's transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    any_,
    bindparam,
    delete,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import Text

from rewards.db import keyed_reads
from rewards.ledger import projection_sql as pg
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
from rewards.models import EXPIRE_ENTRY_SQL, LIVE_LOT_SQL
from rewards.tables import accounts, allocations, anomalies, changes, ledger, lots, sync_state

WRITER_SETTING = "rewards.projection_writer"
"""The PostgreSQL setting, local to a transaction, that tells the triggers the service writes."""

SHORTFALL = "SHORTFALL"
EXPIRY_TOO_LARGE = "EXPIRY_TOO_LARGE"


def _postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


@contextmanager
def projection_writes(conn: Connection) -> Iterator[None]:
    """Around ledger writes that update the projection themselves (the service's own).

    PostgreSQL: a transaction-local setting the triggers read. SQLite has no such
    thing, but it has one writer: the write lock is taken at once, and what the
    triggers record after that is this transaction's own doing, removed at the end.
    """
    if _postgres(conn):
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


def among(column: Any, ids: Collection[str], dialect: str) -> Any:
    """``column`` is one of ``ids``: one array parameter on PostgreSQL (a statement that
    stays the same, whatever the count), an ``IN`` list on SQLite."""
    if dialect == "postgresql":
        return column == any_(literal(sorted(ids), ARRAY(Text)))
    return column.in_(sorted(ids))


def lock_accounts(conn: Connection, account_ids: Collection[str], *, skip_locked: bool) -> set[str]:
    """Row locks on the accounts (PostgreSQL); returns those that exist and were locked.

    In a consistent order, so two lockers of overlapping sets cannot deadlock. SQLite
    has one writer: every existing account is as good as locked.
    """
    if not account_ids:
        return set()
    query = select(accounts.c.id).where(among(accounts.c.id, account_ids, conn.dialect.name))
    if _postgres(conn):
        query = query.order_by(accounts.c.id).with_for_update(skip_locked=skip_locked)
    return set(conn.scalars(query))


def _lock(conn: Connection, account_ids: Collection[str], *, skip_locked: bool) -> dict[str, str]:
    """Lock the accounts (as :func:`lock_accounts`); those locked, with their member."""
    return _members(conn, account_ids, pg.LOCK_SKIP_LOCKED if skip_locked else pg.LOCK)


def _members(
    conn: Connection, account_ids: Collection[str], sql: str = pg.MEMBERS
) -> dict[str, str]:
    """Account -> its member, for the accounts that exist (``sql``: locking them on
    PostgreSQL; SQLite has one writer, and every account is as good as locked)."""
    ids = sorted(account_ids)
    if _postgres(conn):
        return dict(pg.rows(conn, sql, (ids,)))
    query = select(accounts.c.id, accounts.c.userId).where(accounts.c.id.in_(ids))
    return dict(conn.execute(query).all())


def _derived(conn: Connection, account_ids: Collection[str]) -> set[str]:
    """The accounts something was derived for (they have a sync state)."""
    ids = sorted(account_ids)
    if _postgres(conn):
        return {a for a, _ in pg.rows(conn, pg.STATES, (ids,))}
    return set(conn.scalars(select(sync_state.c.accountId).where(sync_state.c.accountId.in_(ids))))


# -- reading the ledger --------------------------------------------------------------------


def ledger_rows(conn: Connection, account_ids: Collection[str]) -> dict[str, list[LedgerRow]]:
    """The accounts' whole ledger histories, by account.

    On PostgreSQL the rows come straight from the driver as tuples: a full sync reads
    every row of the ledger, and this is most of its time.
    """
    by_account: dict[str, list[LedgerRow]] = defaultdict(list)
    if not account_ids:
        return by_account
    if _postgres(conn):
        for account_id, *fields in pg.stream(conn, pg.LEDGER, (sorted(account_ids),)):
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


# -- writing the projection ----------------------------------------------------------------


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
        if _postgres(conn):
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
            self.users.update(_members(conn, missing))
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
    """Forget what was derived for the accounts, before a replay writes ``replacing``.

    Rows another application moved from one account to another keep their ids: the
    lots, allocations and anomalies about to be written are also cleared by id, from
    whichever account held them.
    """
    replacing = replacing or Writes()
    ids = sorted(account_ids)
    lot_ids = [lot.id for _, lot in replacing.lots]
    debit_ids = sorted({r[0] for r in replacing.allocations})
    anomaly_ids = [r[0] for r in replacing.anomalies]
    if _postgres(conn):
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


def replay_accounts(
    conn: Connection,
    account_ids: Collection[str],
    now: datetime,
    *,
    members: Mapping[str, str] | None = None,
    derived: Collection[str] | None = None,
) -> SyncStats:
    """Rebuild the accounts' projection from their ledger alone.

    ``members`` (account -> member) and ``derived`` (the accounts with a projection to
    clear) save reading them when the caller knows; a derived account gone from
    ``Account`` is cleared.
    """
    if members is None:
        members = _members(conn, account_ids)
    if derived is None:
        derived = _derived(conn, account_ids)
    histories = ledger_rows(conn, account_ids)
    writes = Writes(users=dict(members))
    rows_read = 0
    for account_id in account_ids:
        history = histories.pop(account_id, [])
        rows_read += len(history)
        result = replay(history, now)
        writes.add_lots(account_id, result.lots)
        writes.add_allocations(account_id, result.allocations, result.shortfalls, now)
        if result.synced_through is not None:
            writes.states[account_id] = result.synced_through
    clear_projection(conn, derived)
    _write_replayed(conn, writes)
    return SyncStats(
        accounts=len(account_ids),
        replayed=len(account_ids),
        rows=rows_read,
        shortfalls=len(writes.anomalies),
    )


def _write_replayed(conn: Connection, writes: Writes) -> None:
    """Write what a replay derived, its accounts' old projection cleared.

    A row another application moved from one account to another keeps its id, and may
    still be held under its old account: the insert then fails on the key, and the
    rows are cleared by id (wherever they are) and written again. A savepoint keeps
    the rest of the transaction; the common case pays no look-up by id.
    """
    try:
        with conn.begin_nested():
            writes.apply(conn)
    except (IntegrityError, pg.UniqueViolation):
        clear_projection(conn, (), replacing=writes)
        writes.apply(conn)


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
    account another transaction holds is left for later. Then, in statements that see
    whatever was committed before the lock was held: the change records are deleted
    and the ledger read, so whatever a deleted record stands for is read, and a change
    committed meanwhile stays for the next call.
    """
    candidates = pending_accounts(conn, account_ids, limit)
    if not candidates:
        return SyncStats()
    members = _lock(conn, candidates, skip_locked=not wait)
    if not wait and len(members) < len(candidates):
        busy = _existing(conn, set(candidates) - set(members))
        candidates = [a for a in candidates if a not in busy]  # locked, or gone from Account
        if not candidates:
            return SyncStats()
    return _apply_changes(conn, _take_changes(conn, candidates), members, now)


def _existing(conn: Connection, account_ids: Collection[str]) -> set[str]:
    return set(
        conn.scalars(
            select(accounts.c.id).where(among(accounts.c.id, account_ids, conn.dialect.name))
        )
    )


@dataclass(frozen=True, slots=True)
class Change:
    """What an account's change records ask for, and where its lots stand."""

    since: datetime | None
    """The earliest ``createdAt`` the recorded inserts brought; None: replay the account."""
    synced_through: datetime | None
    """The latest ``createdAt`` its lots account for; None: nothing derived yet."""

    @property
    def appendable(self) -> bool:
        """Every change is an insert after what the lots account for."""
        return (
            self.since is not None
            and self.synced_through is not None
            and self.since > self.synced_through
        )


def _take_changes(conn: Connection, account_ids: Sequence[str]) -> dict[str, Change]:
    """Delete the accounts' change records; per account, what they ask for."""
    if _postgres(conn):
        found = pg.rows(conn, pg.TAKE_CHANGES, (list(account_ids),))
        return {
            account_id: Change(None if replay_all else since, synced)
            for account_id, replay_all, since, synced in found
        }
    taken = conn.execute(
        delete(changes)
        .where(changes.c.accountId.in_(list(account_ids)))
        .returning(changes.c.accountId, changes.c.since)
    ).all()
    earliest: dict[str, datetime | None] = {}
    for account_id, since in taken:
        if account_id in earliest and earliest[account_id] is None:
            continue
        current = earliest.get(account_id, since)
        earliest[account_id] = None if since is None or current is None else min(since, current)
    states = select(sync_state.c.accountId, sync_state.c.syncedThrough).where(
        sync_state.c.accountId.in_(list(earliest))
    )
    synced = dict(conn.execute(states).all())
    return {a: Change(since, synced.get(a)) for a, since in earliest.items()}


REPLAY_BATCH_ACCOUNTS = 2000
"""Accounts replayed per round trip: their whole histories are held in memory at once."""


def _apply_changes(
    conn: Connection, changed: Mapping[str, Change], members: Mapping[str, str], now: datetime
) -> SyncStats:
    """Append where the new rows all come after what the lots account for; else replay."""
    appendable = {
        account_id: change.synced_through
        for account_id, change in changed.items()
        if change.appendable and change.synced_through is not None and account_id in members
    }
    replayed = set(changed) - set(appendable)
    stats = SyncStats()
    if appendable:
        fallen_back, stats = _append(conn, appendable, members, now)
        replayed |= fallen_back
    stats += SyncStats(accounts=len(changed) - len(replayed))
    ordered = sorted(replayed)
    for start in range(0, len(ordered), REPLAY_BATCH_ACCOUNTS):
        chunk = ordered[start : start + REPLAY_BATCH_ACCOUNTS]
        derived = [a for a in chunk if a not in members or changed[a].synced_through is not None]
        stats += replay_accounts(conn, chunk, now, members=members, derived=derived)
    return stats


def _new_rows(
    conn: Connection, synced: Mapping[str, datetime]
) -> tuple[dict[str, list[LedgerRow]], dict[str, datetime]]:
    """Rows created after each account's ``syncedThrough``, and each account's latest
    recorded expiry (the latest ``EXPIRE`` entry's instant)."""
    new_rows: dict[str, list[LedgerRow]] = defaultdict(list)
    latest: dict[str, datetime] = {}
    ids = sorted(synced)
    if _postgres(conn):
        for account_id, expiry, *fields in pg.stream(
            conn, pg.NEW_ROWS, (ids, [synced[a] for a in ids])
        ):
            new_rows[account_id].append(LedgerRow(*fields))
            if expiry is not None:
                latest[account_id] = expiry
        return new_rows, latest
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
        .where(ledger.c.accountId.in_(ids), ledger.c.createdAt > sync_state.c.syncedThrough)
    )
    for account_id, *fields in conn.execute(query):
        new_rows[account_id].append(LedgerRow(*fields))
    expiries = (
        select(ledger.c.accountId, func.max(ledger.c.expiresAt))
        .where(EXPIRE_ENTRY_SQL, ledger.c.accountId.in_(ids))
        .group_by(ledger.c.accountId)
    )
    latest.update((a, t) for a, t in conn.execute(expiries) if t is not None)
    return new_rows, latest


def _live_lots(conn: Connection, account_ids: Collection[str]) -> dict[str, list[Lot]]:
    """The accounts' lots with points left whose expiry is not recorded."""
    held: dict[str, list[Lot]] = defaultdict(list)
    ids = sorted(account_ids)
    if _postgres(conn):
        found: Iterable[Any] = pg.stream(conn, pg.LIVE_LOTS, (ids,))
    else:
        found = conn.execute(
            select(
                lots.c.accountId,
                lots.c.id,
                lots.c.credited,
                lots.c.remaining,
                lots.c.createdAt,
                lots.c.expiresAt,
            ).where(lots.c.accountId.in_(ids), LIVE_LOT_SQL)
        )
    for account_id, *fields in found:
        held[account_id].append(Lot(*fields))
    return held


def _append(
    conn: Connection, synced: Mapping[str, datetime], members: Mapping[str, str], now: datetime
) -> tuple[set[str], SyncStats]:
    """Apply rows created after each account's ``syncedThrough`` on top of its lots.

    A new ``EXPIRE`` row consumes nothing: it marks the lots of its instant expired.
    The live lots are read only for accounts whose new rows spend or expire some
    (most of a day's accounts only earned). Returns the accounts that need a replay
    after all (a new row dated before an expiry already recorded: a lot flagged
    expired may have been spendable then), and what the others took (rows read,
    shortfalls found; accounts are counted by the caller).
    """
    new_rows, latest_expiry = _new_rows(conn, synced)
    spending = {a for a, rows in new_rows.items() if any(_touches_lots(r) for r in rows)}
    current = _live_lots(conn, spending) if spending else {}
    replay_needed: set[str] = set()
    writes = Writes(users=dict(members))
    rows_read = 0
    for account_id, unordered in new_rows.items():
        rows = sorted(unordered, key=processing_key)
        rows_read += len(rows)
        consuming = [r for r in rows if r.credit > 0 or r.consumes]
        expiry = latest_expiry.get(account_id)
        if consuming and expiry is not None and expiry > consuming[0].created_at:
            replay_needed.add(account_id)
            continue
        _append_rows(writes, account_id, rows, consuming, current.get(account_id, []), now)
        if consuming:
            writes.states[account_id] = max(synced[account_id], consuming[-1].created_at)
    writes.apply(conn)
    return replay_needed, SyncStats(rows=rows_read, shortfalls=len(writes.anomalies))


def _touches_lots(row: LedgerRow) -> bool:
    """A row that changes lots already held: a debit that spends, or a recorded expiry."""
    return row.debit > 0


def _append_rows(
    writes: Writes,
    account_id: str,
    rows: Sequence[LedgerRow],
    consuming: Sequence[LedgerRow],
    held: list[Lot],
    now: datetime,
) -> None:
    """One account's new rows (in processing order) applied to its live lots ``held``."""
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
            lot.remaining > 0
            and lot.expires_at is not None
            and lot.expires_at <= now
            and lot.expires_at in recorded
        ):
            lot.expired = True
            if lot.id in before:
                writes.expired.append(lot.id)
    writes.add_lots(account_id, added)


SYNC_BATCH_ACCOUNTS = 2000
"""Accounts brought up to date per transaction by :func:`sync_all`."""

SYNC_WORKERS = 2
"""Transactions :func:`sync_all` runs at once on PostgreSQL, each on its own connection and
thread. A batch is half PostgreSQL's work (reading the ledger, writing lots and their
indexes) and half Python's (the replay, which holds the interpreter lock): two batches
overlap one's database time with the other's Python time, in one process's memory."""

PARALLEL_FROM_ACCOUNTS = 10 * SYNC_BATCH_ACCOUNTS
"""Below this many accounts waiting, :func:`sync_all` goes one batch after another."""


def sync_all(
    engine: Engine,
    now: datetime,
    *,
    batch_accounts: int = SYNC_BATCH_ACCOUNTS,
    progress: Callable[[SyncStats], None] | None = None,
    workers: int = SYNC_WORKERS,
) -> SyncStats:
    """Apply every recorded change, a batch of accounts per transaction.

    Safe to stop and run again: a batch commits its projection rows and deletes its
    change records together. ``progress`` is called after each batch. A large sync on
    PostgreSQL (an upgrade's, of every account) runs ``workers`` batches at once.
    """
    if engine.dialect.name == "postgresql" and workers > 1:
        with engine.connect() as conn:
            waiting = count_pending(conn)
        if waiting >= PARALLEL_FROM_ACCOUNTS:
            return _sync_in_parallel(engine, now, batch_accounts, progress, workers)
    total = SyncStats()
    while True:
        with engine.begin() as conn, projection_writes(conn), keyed_reads(conn):
            stats = sync_changes(conn, now, limit=batch_accounts)
        total += stats
        if progress is not None and stats.accounts:
            progress(stats)
        if stats.accounts < batch_accounts:
            return total


def _sync_batch(engine: Engine, now: datetime, account_ids: list[str]) -> SyncStats:
    with engine.begin() as conn, projection_writes(conn), keyed_reads(conn):
        return sync_changes(conn, now, account_ids)


def _sync_in_parallel(
    engine: Engine,
    now: datetime,
    batch_accounts: int,
    progress: Callable[[SyncStats], None] | None,
    workers: int,
) -> SyncStats:
    """Pass over the waiting accounts in id order, a batch per transaction, ``workers`` at a
    time; then again, for changes recorded meanwhile, until a pass finds none.

    Batches are disjoint, so their locks never meet. A pass ends once its batches have
    committed: one still in flight must not be handed out again. ``progress`` is called
    here, in the caller's thread; if it (or a batch) raises, no more batches start, and
    those in flight finish before the error is raised.
    """
    total = SyncStats()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ledger-sync") as pool:
        while True:
            in_flight: set[Future[SyncStats]] = set()
            after = ""
            started = 0
            try:
                while True:
                    with engine.connect() as conn:
                        batch = _pending_after(conn, after, batch_accounts)
                    if not batch:
                        break
                    after = batch[-1]
                    started += 1
                    in_flight.add(pool.submit(_sync_batch, engine, now, batch))
                    while len(in_flight) >= workers:
                        total += _finish_one(in_flight, progress)
                while in_flight:
                    total += _finish_one(in_flight, progress)
            except BaseException:
                wait(in_flight)
                raise
            if not started:
                return total


def _finish_one(
    in_flight: set[Future[SyncStats]], progress: Callable[[SyncStats], None] | None
) -> SyncStats:
    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
    finished = done.pop()
    in_flight.discard(finished)
    stats = finished.result()
    if progress is not None and stats.accounts:
        progress(stats)
    return stats


def _pending_after(conn: Connection, after: str, limit: int) -> list[str]:
    """The first ``limit`` accounts with recorded changes whose id comes after ``after``."""
    query = (
        select(changes.c.accountId)
        .distinct()
        .where(changes.c.accountId > after)
        .order_by(changes.c.accountId)
        .limit(limit)
    )
    return list(conn.scalars(query))


DAILY_BATCH_ACCOUNTS = 20_000
"""Accounts per round of :func:`sync_all_in`: a day's changes are mostly appended (a few
rows per account), so a round is a few statements for thousands of accounts; replays
within it still go :data:`REPLAY_BATCH_ACCOUNTS` at a time."""


def sync_all_in(
    conn: Connection, now: datetime, batch_accounts: int = DAILY_BATCH_ACCOUNTS
) -> SyncStats:
    """:func:`sync_all` inside the caller's transaction (a dry run rolls it back)."""
    total = SyncStats()
    with projection_writes(conn), keyed_reads(conn):
        while True:
            stats = sync_changes(conn, now, limit=batch_accounts)
            total += stats
            if stats.accounts < batch_accounts:
                return total
