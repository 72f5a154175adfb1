"""Rows appended after what an account's lots account for, applied on top of the lots.

The day's changes are mostly that: another application wrote a few rows for an account
since the last sync, all dated after everything its lots already account for. They
are applied to the lots as they stand (new lots, allocations, remainders, expiry
flags), in a few statements for thousands of accounts, where a replay would read each
account's whole history.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from rewards.ledger import projection_sql as pg
from rewards.ledger.lots import EXPIRE, LedgerRow, Lot, Shortfall, allocate, processing_key
from rewards.ledger.projection_store import Writes, on_postgres
from rewards.models import EXPIRE_ENTRY_SQL, LIVE_LOT_SQL
from rewards.tables import ledger, lots, sync_state


@dataclass
class Appended:
    """What :func:`append` did, and the accounts it left for a replay."""

    replay: set[str] = field(default_factory=set)
    """Accounts with a new row dated before an expiry already recorded: a lot flagged
    expired may have been spendable then."""
    rows: int = 0
    """Ledger rows read."""
    shortfalls: int = 0


def append(
    conn: Connection, synced: Mapping[str, datetime], members: Mapping[str, str], now: datetime
) -> Appended:
    """Apply rows created after each account's ``syncedThrough`` on top of its lots.

    A new ``EXPIRE`` row consumes nothing: it marks the lots of its instant expired.
    The live lots are read only for accounts whose new rows spend or expire some
    (most of a day's accounts only earned). ``members`` gives the new lots' member.
    """
    new_rows, latest_expiry = _new_rows(conn, synced)
    spending = {a for a, rows in new_rows.items() if any(_touches_lots(r) for r in rows)}
    current = _live_lots(conn, spending) if spending else {}
    done = Appended()
    writes = Writes(users=dict(members))
    for account_id, unordered in new_rows.items():
        rows = sorted(unordered, key=processing_key)
        done.rows += len(rows)
        consuming = [r for r in rows if r.credit > 0 or r.consumes]
        expiry = latest_expiry.get(account_id)
        if consuming and expiry is not None and expiry > consuming[0].created_at:
            done.replay.add(account_id)
            continue
        _append_rows(writes, account_id, rows, consuming, current.get(account_id, []), now)
        if consuming:
            writes.states[account_id] = max(synced[account_id], consuming[-1].created_at)
    writes.apply(conn)
    done.shortfalls = len(writes.anomalies)
    return done


def _touches_lots(row: LedgerRow) -> bool:
    """A row that changes lots already held: a debit that spends, or a recorded expiry."""
    return row.debit > 0


def _new_rows(
    conn: Connection, synced: Mapping[str, datetime]
) -> tuple[dict[str, list[LedgerRow]], dict[str, datetime]]:
    """Rows created after each account's ``syncedThrough``, and each account's latest
    recorded expiry (the latest ``EXPIRE`` entry's instant)."""
    new_rows: dict[str, list[LedgerRow]] = defaultdict(list)
    latest: dict[str, datetime] = {}
    ids = sorted(synced)
    if on_postgres(conn):
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
    if on_postgres(conn):
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
