"""Ledger operations: earn, redeem, balances, upcoming expirations, lots and history.

Each function works inside the caller's transaction (a SQLAlchemy ``Connection``
already in ``begin()``), so an API request or a job step commits all of its
writes or none. Writes update the lot projection with the ledger row; reads
first apply what other applications changed on the accounts they read, so no
answer depends on a stale projection. The clock (``as_of``) is always passed in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Text, bindparam, insert, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
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
from rewards.ledger.lots import Lot, allocate
from rewards.ledger.projection import (
    Writes,
    lock_accounts,
    pending_accounts,
    projection_writes,
    replay_accounts,
    sync_changes,
)
from rewards.ledger.queries import (
    post_due_expirations,
    spendable_at,
)
from rewards.ledger.rules import MAX_POINTS
from rewards.models import Timestamp
from rewards.tables import accounts, ledger, lots, sync_state

UTC = ZoneInfo("UTC")


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


@dataclass(frozen=True)
class Holdings:
    """What accounts hold at an instant: points to spend, and what expires on which date."""

    available: int
    expiring: list[Expiring]


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
        found = bool(lock_accounts(conn, [account_id], skip_locked=False))
    else:
        found = (
            conn.execute(
                update(accounts)
                .where(accounts.c.id == account_id)
                .values(id=accounts.c.id)
                .returning(accounts.c.id)
            ).one_or_none()
            is not None
        )
    if not found:
        raise UnknownAccount(account_id)


def require_account(conn: Connection, account_id: str) -> None:
    if conn.execute(select(accounts.c.id).where(accounts.c.id == account_id)).first() is None:
        raise UnknownAccount(account_id)


def bring_up_to_date(conn: Connection, account_ids: Collection[str], as_of: datetime) -> None:
    """Apply what other applications changed on these accounts, before reading them.

    One indexed look-up when nothing changed, which is the rule.
    """
    if pending_accounts(conn, account_ids):
        with projection_writes(conn):
            sync_changes(conn, as_of, account_ids)


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
        row = conn.execute(insert(ledger).values(**values).returning(*ledger.c)).one()
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
        select(*ledger.c).where(ledger.c.accountId == account_id, ledger.c.idempotencyKey == key)
    ).one_or_none()
    if row is None:
        return None
    asked = (entry_type, points, expires_at, description)
    if (row.entryType, row.credit or row.debit, row.expiresAt, row.description) != asked:
        raise IdempotencyConflict(key)
    return _entry(row, replayed=True)


def _synced_through(conn: Connection, account_id: str) -> datetime | None:
    found: datetime | None = conn.scalar(
        select(sync_state.c.syncedThrough).where(sync_state.c.accountId == account_id)
    )
    return found


def _project(conn: Connection, entry: Entry, writes: Writes, as_of: datetime) -> None:
    """Store what ``entry`` did to the lots, or replay the account when it is not the latest.

    An entry at or before an instant the lots already account for (rows another
    application dated ahead, or two writes in one millisecond) can change how
    earlier debits were served; the account's history is replayed instead.
    """
    synced = _synced_through(conn, entry.account_id)
    if synced is not None and synced >= entry.created_at:
        replay_accounts(conn, [entry.account_id], as_of)
        return
    writes.states[entry.account_id] = entry.created_at
    writes.apply(conn)


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
    """Credit ``points`` as a new lot; it expires at ``expires_at`` (never, if None).

    A replay is recognised before the expiry is held against the clock: the retry of an
    earn whose ``expires_at`` has passed since returns the first entry.
    """
    validate_points(points)
    as_of = utc_naive(as_of)
    expires_at = None if expires_at is None else utc_naive(expires_at)
    with projection_writes(conn):
        lock_account(conn, account_id)
        sync_changes(conn, as_of, [account_id])
        earlier = _replay(
            conn, account_id, idempotency_key, "EARN", points, expires_at, description
        )
        if earlier is not None:
            return earlier
        if expires_at is not None and expires_at <= as_of:
            raise InvalidEntry("expiresAt must be in the future")
        entry = _insert_entry(
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
        writes = Writes()
        writes.add_lots(
            account_id, [Lot(entry.id, points, points, entry.created_at, entry.expires_at)]
        )
        _project(conn, entry, writes, as_of)
    return entry


def _live_lots(conn: Connection, account_id: str, as_of: datetime) -> list[Lot]:
    rows = conn.execute(select(lots).where(lots.c.accountId == account_id, spendable_at(as_of)))
    return [Lot(r.id, r.credited, r.remaining, r.createdAt, r.expiresAt, r.expired) for r in rows]


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
    """Spend ``points`` from the lots valid now, earliest-expiring first; all or nothing.

    Expirations due by ``as_of`` are recorded first, in the same transaction, so a
    redemption never spends expired points. Raises :class:`InsufficientPoints`
    (and writes nothing, once the caller rolls back) when the balance is short.
    """
    validate_points(points)
    as_of = utc_naive(as_of)
    with projection_writes(conn):
        lock_account(conn, account_id)
        sync_changes(conn, as_of, [account_id])
        earlier = _replay(conn, account_id, idempotency_key, "REDEEM", points, None, description)
        if earlier is not None:
            return earlier
        post_due_expirations(conn, as_of, account_ids=[account_id])
        held = _live_lots(conn, account_id, as_of)
        balance = sum(lot.remaining for lot in held)
        if balance < points:
            raise InsufficientPoints(account_id, points, balance)
        entry = _insert_entry(
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
        made, _ = allocate(held, entry.id, points, as_of)
        writes = Writes()
        writes.add_allocations(account_id, made, [], as_of)
        used = {a.lot_id for a in made}
        writes.remaining.update({lot.id: lot.remaining for lot in held if lot.id in used})
        _project(conn, entry, writes, as_of)
    return entry


_LIVE = """l."accountId" {ids} AND "remaining" > 0 AND NOT "expired"
 AND l."createdAt" <= :now AND """
_HOLDINGS_SQL = f"""
SELECT (SELECT count(*) FROM "Account" WHERE "id" {{ids}}) AS known,
       EXISTS (SELECT 1 FROM "LedgerChange" WHERE "accountId" {{ids}}) AS waiting,
       (SELECT CAST(coalesce(sum(l."remaining"), 0) AS BIGINT) FROM "PointLot" AS l
        WHERE {_LIVE}(l."expiresAt" > :now OR l."expiresAt" IS NULL)) AS available,
       l."expiresAt", l."remaining"
FROM (SELECT 1) AS one
LEFT JOIN "PointLot" AS l
  ON {_LIVE}l."expiresAt" > :now AND l."expiresAt" <= :until
"""
_HOLDINGS_TEXT = {
    # Plain SQL: the balance is the API's hottest read, and building the statement with
    # the expression language costs several times what PostgreSQL takes to answer it.
    # The live-lot predicate is spelled as the partial index's, with constants.
    "postgresql": text(_HOLDINGS_SQL.format(ids="= ANY(:ids)")).bindparams(
        bindparam("ids", type_=ARRAY(Text)),
        bindparam("now", type_=Timestamp),
        bindparam("until", type_=Timestamp),
    ),
    "sqlite": text(_HOLDINGS_SQL.format(ids="IN :ids")).bindparams(
        bindparam("ids", expanding=True),
        bindparam("now", type_=Timestamp),
        bindparam("until", type_=Timestamp),
    ),
}
HOLDINGS = {
    dialect: query.columns(expiresAt=Timestamp) for dialect, query in _HOLDINGS_TEXT.items()
}


def holdings(
    conn: Connection,
    account_ids: Collection[str],
    *,
    as_of: datetime,
    until: datetime,
    zone: ZoneInfo,
) -> Holdings:
    """Points spendable at ``as_of`` over the accounts, and per calendar date in ``zone`` what
    expires in ``(as_of, until]``; :class:`UnknownAccount` if one does not exist.

    One query in the common case: the sum of the accounts' live lots and those of them
    expiring by ``until`` (two index-only ranges of the live-lot index), with whether
    any account waits for other writers' changes and whether all exist; only the lots
    due come back, so an account with hundreds of lots costs no more than one with a
    few. Only when changes wait are they applied first, and the lots read again.
    """
    as_of, until = utc_naive(as_of), utc_naive(until)
    if not account_ids:
        return Holdings(0, [])
    ids = sorted(set(account_ids))
    query = HOLDINGS[conn.dialect.name]
    params = {"ids": ids, "now": as_of, "until": until}
    rows = conn.execute(query, params).all()
    if rows[0].known < len(ids):
        missing = sorted(
            set(account_ids)
            - set(conn.scalars(select(accounts.c.id).where(accounts.c.id.in_(list(account_ids)))))
        )
        raise UnknownAccount(missing[0])
    if rows[0].waiting:
        bring_up_to_date(conn, account_ids, as_of)
        rows = conn.execute(query, params).all()
    per_day: dict[date, int] = defaultdict(int)
    for row in rows:
        if row.remaining is not None:
            per_day[local_date(row.expiresAt, zone)] += row.remaining
    return Holdings(int(rows[0].available), [Expiring(d, p) for d, p in sorted(per_day.items())])


def balance(conn: Connection, account_id: str, as_of: datetime) -> int:
    """Points the account can spend at ``as_of``."""
    return holdings(conn, [account_id], as_of=as_of, until=as_of, zone=UTC).available


def total_balance(conn: Connection, account_ids: list[str], as_of: datetime) -> int:
    """Points spendable at ``as_of`` over several accounts (a member's), in one query."""
    return holdings(conn, account_ids, as_of=as_of, until=as_of, zone=UTC).available


def upcoming_expirations(
    conn: Connection,
    account_ids: list[str],
    *,
    as_of: datetime,
    until: datetime,
    zone: ZoneInfo,
) -> list[Expiring]:
    """Unspent points expiring in ``(as_of, until]``, summed per calendar date in ``zone``."""
    return holdings(conn, account_ids, as_of=as_of, until=until, zone=zone).expiring
