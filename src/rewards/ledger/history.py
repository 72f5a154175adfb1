"""Reading an account's past: its lots, and its ledger entries with what each debit used.

Both are pages, newest first (:mod:`rewards.paging`), and both first apply what
other applications changed on the account, so they never show a stale projection.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, select

from rewards.ledger.service import bring_up_to_date, require_account
from rewards.paging import newest_first_page
from rewards.tables import allocations, anomalies, ledger, lots


@dataclass(frozen=True)
class LotView:
    id: str
    credited: int
    remaining: int
    created_at: datetime
    expires_at: datetime | None
    expired: bool

    def status(self, as_of: datetime) -> str:
        """``LIVE`` (points left to spend), ``SPENT`` or ``EXPIRED``."""
        if self.remaining == 0:
            return "SPENT"
        if self.expired or (self.expires_at is not None and self.expires_at <= as_of):
            return "EXPIRED"
        return "LIVE"


@dataclass(frozen=True)
class Use:
    lot_id: str
    points: int


@dataclass(frozen=True)
class EntryView:
    id: str
    entry_type: str
    credit: int
    debit: int
    description: str | None
    created_at: datetime
    expires_at: datetime | None
    used: list[Use] = field(default_factory=list)
    """For a debit: the lots it consumed and how much of each; for an ``EXPIRE``, the lots
    whose remainder it records."""


def account_lots(
    conn: Connection, account_id: str, as_of: datetime, *, limit: int, cursor: str | None
) -> tuple[list[LotView], str | None]:
    """One page of the account's lots, newest first, and the next page's cursor."""
    require_account(conn, account_id)
    bring_up_to_date(conn, [account_id], as_of)
    query = select(lots).where(lots.c.accountId == account_id)
    rows, next_cursor = newest_first_page(
        conn, query, lots.c.createdAt, lots.c.id, limit=limit, cursor=cursor
    )
    return [
        LotView(r.id, r.credited, r.remaining, r.createdAt, r.expiresAt, bool(r.expired))
        for r in rows
    ], next_cursor


def account_entries(
    conn: Connection, account_id: str, as_of: datetime, *, limit: int, cursor: str | None
) -> tuple[list[EntryView], str | None]:
    """One page of the account's ledger entries, newest first, each debit with what it used."""
    require_account(conn, account_id)
    bring_up_to_date(conn, [account_id], as_of)
    query = select(
        ledger.c.id,
        ledger.c.entryType,
        ledger.c.credit,
        ledger.c.debit,
        ledger.c.description,
        ledger.c.createdAt,
        ledger.c.expiresAt,
    ).where(ledger.c.accountId == account_id)
    rows, next_cursor = newest_first_page(
        conn, query, ledger.c.createdAt, ledger.c.id, limit=limit, cursor=cursor
    )
    used: dict[str, list[Use]] = defaultdict(list)
    debit_ids = [r.id for r in rows if r.debit > 0]
    if debit_ids:
        for a in conn.execute(
            select(allocations.c.debitId, allocations.c.lotId, allocations.c.points)
            .where(allocations.c.debitId.in_(debit_ids))
            .order_by(allocations.c.debitId, allocations.c.lotId)
        ):
            used[a.debitId].append(Use(a.lotId, a.points))
    expiries = {r.expiresAt: r.id for r in rows if r.entryType == "EXPIRE" and r.expiresAt}
    if expiries:
        # An EXPIRE consumes nothing; it records what was left of the lots expiring then.
        for lot in conn.execute(
            select(lots.c.id, lots.c.expiresAt, lots.c.remaining)
            .where(
                lots.c.accountId == account_id,
                lots.c.expiresAt.in_(list(expiries)),
                lots.c.expired.is_(True),
                lots.c.remaining > 0,
            )
            .order_by(lots.c.createdAt, lots.c.id)
        ):
            used[expiries[lot.expiresAt]].append(Use(lot.id, lot.remaining))
    return [
        EntryView(
            r.id,
            r.entryType,
            r.credit,
            r.debit,
            r.description,
            r.createdAt,
            r.expiresAt,
            used.get(r.id, []),
        )
        for r in rows
    ], next_cursor


@dataclass(frozen=True)
class AnomalyView:
    id: str
    account_id: str
    kind: str
    entry_id: str | None
    points: int
    at: datetime
    detected_at: datetime


def ledger_anomalies(
    conn: Connection, *, account_id: str | None = None, limit: int, cursor: str | None
) -> tuple[list[AnomalyView], str | None]:
    """One page of the ledger anomalies found so far, most recently found first."""
    query = select(anomalies)
    if account_id is not None:
        query = query.where(anomalies.c.accountId == account_id)
    rows, next_cursor = newest_first_page(
        conn, query, anomalies.c.detectedAt, anomalies.c.id, limit=limit, cursor=cursor
    )
    return [
        AnomalyView(r.id, r.accountId, r.kind, r.entryId, int(r.points), r.at, r.detectedAt)
        for r in rows
    ], next_cursor
