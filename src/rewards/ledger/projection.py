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
  for are applied on top of them (:mod:`rewards.ledger.append`); anything else (a
  backdated row, an update, a delete, a move) replays the account's whole history.

The tables are read and written by :mod:`rewards.ledger.projection_store`. Everything
here works inside the caller's transaction, but :func:`sync_all`, which makes its own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from sqlalchemy import Connection, Engine, delete, false, func, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from rewards.collector import collector_paused
from rewards.db import create_db_engine, keyed_reads
from rewards.ledger import projection_sql as pg
from rewards.ledger.append import append
from rewards.ledger.batches import run_in_pool, worker_processes
from rewards.ledger.lots import replay
from rewards.ledger.projection_store import (
    EXPIRY_TOO_LARGE,
    SHORTFALL,
    Writes,
    among,
    clear_projection,
    ledger_rows,
    lock_accounts,
    lock_members,
    members_of,
    on_postgres,
    with_projection,
)
from rewards.tables import accounts, changes, sync_state

__all__ = [
    "EXPIRY_TOO_LARGE",
    "SHORTFALL",
    "SyncStats",
    "Writes",
    "among",
    "count_pending",
    "ledger_rows",
    "lock_accounts",
    "pending_accounts",
    "projection_writes",
    "replay_accounts",
    "sync_all",
    "sync_all_in",
    "sync_changes",
]

WRITER_SETTING = "rewards.projection_writer"
"""The PostgreSQL setting, local to a transaction, that tells the triggers the service writes."""


@contextmanager
def projection_writes(conn: Connection) -> Iterator[None]:
    """Around ledger writes that update the projection themselves (the service's own).

    PostgreSQL: a transaction-local setting the triggers read. SQLite has no such
    thing, but it has one writer: the write lock is taken at once, and what the
    triggers record after that is this transaction's own doing, removed at the end.
    """
    if on_postgres(conn):
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
        members = members_of(conn, account_ids)
    if derived is None:
        derived = with_projection(conn, account_ids)
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


# -- other writers' changes ------------------------------------------------------------------


def pending_accounts(
    conn: Connection, account_ids: Collection[str] | None = None, limit: int | None = None
) -> list[str]:
    """Accounts with recorded changes: among ``account_ids``, or the first ``limit`` of all."""
    if account_ids is not None and not account_ids:
        return []
    if account_ids is not None and limit is None and on_postgres(conn):
        return [a for (a,) in pg.rows(conn, pg.PENDING_AMONG, (sorted(set(account_ids)),))]
    query = select(changes.c.accountId).distinct().order_by(changes.c.accountId)
    if account_ids is not None:
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
    locked = lock_members(conn, candidates, skip_locked=not wait)
    if not wait and len(locked) < len(candidates):
        busy = _existing(conn, set(candidates) - set(locked))
        candidates = [a for a in candidates if a not in busy]  # locked, or gone from Account
        if not candidates:
            return SyncStats()
    return _apply_changes(conn, _take_changes(conn, candidates), locked, now)


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
    if on_postgres(conn):
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
        appended = append(conn, appendable, members, now)
        replayed |= appended.replay
        stats = SyncStats(rows=appended.rows, shortfalls=appended.shortfalls)
    stats += SyncStats(accounts=len(changed) - len(replayed))
    ordered = sorted(replayed)
    for start in range(0, len(ordered), REPLAY_BATCH_ACCOUNTS):
        chunk = ordered[start : start + REPLAY_BATCH_ACCOUNTS]
        derived = [a for a in chunk if a not in members or changed[a].synced_through is not None]
        stats += replay_accounts(conn, chunk, now, members=members, derived=derived)
    return stats


SYNC_BATCH_ACCOUNTS = 2000
"""Accounts brought up to date per transaction by :func:`sync_all`."""

SYNC_WORKERS = 2
"""Transactions :func:`sync_all` runs at once on PostgreSQL, each in a worker process of
its own (see :mod:`rewards.ledger.batches`); SQLite has a single writer, and goes one
batch at a time."""

PARALLEL_FROM_BATCHES = 10
"""Below this many batches waiting, :func:`sync_all` runs them one after another."""


@collector_paused()
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
        if waiting >= PARALLEL_FROM_BATCHES * batch_accounts:
            # The change records were just written in bulk (an upgrade, a load by another
            # application): with autovacuum's older picture of a near-empty table the
            # planner reads all of them to find each next page of accounts.
            with engine.begin() as conn:
                conn.execute(text('ANALYZE "LedgerChange"'))
            return _sync_in_parallel(engine, now, batch_accounts, progress, workers)
    return _sync_in_turn(engine, now, batch_accounts, progress=progress)


def _sync_in_turn(
    engine: Engine,
    now: datetime,
    batch_accounts: int,
    *,
    progress: Callable[[SyncStats], None] | None = None,
    wait: bool = True,
) -> SyncStats:
    """Batches one after another, each in its own transaction, until one comes back short
    (no more waiting, or, with ``wait=False``, an account someone else held)."""
    total = SyncStats()
    while True:
        with engine.begin() as conn, projection_writes(conn), keyed_reads(conn):
            stats = sync_changes(conn, now, limit=batch_accounts, wait=wait)
        total += stats
        if progress is not None and stats.accounts:
            progress(stats)
        if stats.accounts < batch_accounts:
            return total


WAITING_BATCH_ACCOUNTS = 500
"""Accounts per transaction of :func:`sync_waiting`: short, as requests may queue behind it."""


def sync_waiting(
    engine: Engine, now: datetime, *, batch_accounts: int = WAITING_BATCH_ACCOUNTS
) -> SyncStats:
    """Apply what other applications changed, as the scheduler does every
    ``REWARDS_LEDGER_SYNC_SECONDS``, so that reads, redemptions and the daily job find the
    lots up to date instead of bringing them up to date themselves.

    It never waits: an account a request or the daily job holds is left to its holder,
    or to the next pass. A pass ends at the first batch that left one, or found no more.
    The collector is not paused (as :func:`sync_all` does): the scheduler shares its
    process with the server's requests, and a pass is small.
    """
    return _sync_in_turn(engine, now, batch_accounts, wait=False)


BATCH_ATTEMPTS = 3


def _sync_batch(engine: Engine, now: datetime, account_ids: list[str]) -> SyncStats:
    """One batch of a parallel sync, in its own transaction.

    Batches hold disjoint accounts, but a row another application moved between two
    accounts of batches in flight is cleared by each (by id, see :func:`_write_replayed`):
    should they deadlock on it, PostgreSQL gives up one, which is run again.
    """
    attempt = 1
    while True:
        try:
            with engine.begin() as conn, projection_writes(conn), keyed_reads(conn):
                return sync_changes(conn, now, account_ids)
        except (DBAPIError, pg.DeadlockDetected) as exc:
            cause = getattr(exc, "orig", exc)
            if not isinstance(cause, pg.DeadlockDetected) or attempt == BATCH_ATTEMPTS:
                raise
            attempt += 1


def _sync_in_parallel(
    engine: Engine,
    now: datetime,
    batch_accounts: int,
    progress: Callable[[SyncStats], None] | None,
    workers: int,
) -> SyncStats:
    """Pass over the waiting accounts in id order, a batch per transaction, ``workers`` at a
    time; then again, for changes recorded meanwhile, until a pass finds none.

    Batches are disjoint, so their locks never meet; a pass ends once its batches have
    committed (one still in flight must not be handed out again). ``progress`` is
    called in the caller's thread.
    """
    total = SyncStats()

    def finished(stats: SyncStats) -> None:
        nonlocal total
        total += stats
        if progress is not None and stats.accounts:
            progress(stats)

    url = engine.url.render_as_string(hide_password=False)
    with worker_processes(workers, _start_worker, (url,)) as pool:
        while True:
            pages = _Pages(engine, batch_accounts)
            run_in_pool(pool, pages, partial(_sync_batch_in_worker, now), finished, at_once=workers)
            if not pages.handed_out:
                return total


_worker_engine: Engine | None = None
"""A sync worker process's own engine (one connection, kept between its batches)."""


def _start_worker(url: str) -> None:
    global _worker_engine
    _worker_engine = create_db_engine(url, pool_size=1, max_overflow=0)


def _sync_batch_in_worker(now: datetime, account_ids: list[str]) -> SyncStats:
    assert _worker_engine is not None, "not a sync worker"
    with collector_paused():
        return _sync_batch(_worker_engine, now, account_ids)


class _Pages(Iterator[list[str]]):
    """The accounts with recorded changes, a batch at a time, in id order (one pass)."""

    def __init__(self, engine: Engine, size: int) -> None:
        self.engine = engine
        self.size = size
        self.after = ""
        self.handed_out = 0

    def __next__(self) -> list[str]:
        query = (
            select(changes.c.accountId)
            .distinct()
            .where(changes.c.accountId > self.after)
            .order_by(changes.c.accountId)
            .limit(self.size)
        )
        with self.engine.connect() as conn:
            batch = list(conn.scalars(query))
        if not batch:
            raise StopIteration
        self.after = batch[-1]
        self.handed_out += 1
        return batch


DAILY_BATCH_ACCOUNTS = 20_000
"""Accounts per round of :func:`sync_all_in`: a day's changes are mostly appended (a few
rows per account), so a round is a few statements for thousands of accounts; replays
within it still go :data:`REPLAY_BATCH_ACCOUNTS` at a time."""


def sync_all_in(
    conn: Connection, now: datetime, batch_accounts: int = DAILY_BATCH_ACCOUNTS
) -> SyncStats:
    """:func:`sync_all` inside the caller's transaction (a dry run rolls it back)."""
    total = SyncStats()
    with collector_paused(), projection_writes(conn), keyed_reads(conn):
        while True:
            stats = sync_changes(conn, now, limit=batch_accounts)
            total += stats
            if stats.accounts < batch_accounts:
                return total
