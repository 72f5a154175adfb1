"""Chronological spending: how debits consume lots, as a plain function of the ledger.

Each credit is a *lot*. A debit made at instant ``t`` (a ``REDEEM``, or an ``ADJUST``
debit) consumes the lots that exist at ``t`` (``createdAt <= t``; at the same instant
credits come before debits) and have not expired at ``t`` (``expiresAt > t`` or
never), earliest-expiring first: by ``expiresAt`` (never-expiring last), then
``createdAt``, then ``id``. A lot earned after a debit is never consumed by it. A
debit larger than what its instant offers takes what there is; the rest is a
:class:`Shortfall`, never taken from later lots. ``EXPIRE`` rows record expiry and
consume nothing.

:func:`replay` applies that rule to an account's whole history; :func:`allocate`
applies it to one more debit on top of the lots as they stand. Both are pure: the
projection tables (:mod:`rewards.ledger.projection`) store what they compute.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

EXPIRE = "EXPIRE"


class LedgerRow(NamedTuple):
    """One ``PointLedger`` row, as much of it as the rule reads.

    A named tuple: a full sync makes one per ledger row, straight from the driver's
    tuples (``LedgerRow._make``), at a fraction of a frozen dataclass's cost.
    """

    id: str
    entry_type: str
    credit: int
    debit: int
    created_at: datetime
    expires_at: datetime | None = None

    @property
    def consumes(self) -> bool:
        """A debit that spends points (``EXPIRE`` only records what expired)."""
        return self.debit > 0 and self.entry_type != EXPIRE


def processing_key(row: LedgerRow) -> tuple[datetime, bool, str]:
    """The order rows take effect in: by instant, credits before debits, then by id."""
    return (row.created_at, row.debit > 0, row.id)


@dataclass(slots=True)
class Lot:
    id: str
    credited: int
    remaining: int
    created_at: datetime
    expires_at: datetime | None
    expired: bool = False
    """Points are left, and their expiry is recorded (an ``EXPIRE`` entry at its instant)."""

    def consumption_key(self) -> tuple[bool, datetime, datetime, str]:
        """Earliest-expiring first, never-expiring last, then creation time, then id."""
        return (
            self.expires_at is None,
            self.expires_at or datetime.min,
            self.created_at,
            self.id,
        )

    def spendable_at(self, moment: datetime) -> bool:
        return (
            self.remaining > 0
            and self.created_at <= moment
            and (self.expires_at is None or self.expires_at > moment)
        )


@dataclass(frozen=True, slots=True)
class Allocation:
    debit_id: str
    lot_id: str
    points: int


@dataclass(frozen=True)
class Shortfall:
    """What a debit could not take: its account had less than that at its instant."""

    debit_id: str
    points: int
    at: datetime


def allocate(
    lots: Sequence[Lot], debit_id: str, points: int, at: datetime
) -> tuple[list[Allocation], int]:
    """Consume ``points`` at ``at`` from ``lots`` (mutated), in consumption order.

    Returns the allocations and the shortfall (0 when the lots covered it all).
    """
    allocations: list[Allocation] = []
    wanted = points
    for lot in sorted((lot for lot in lots if lot.spendable_at(at)), key=Lot.consumption_key):
        taken = min(wanted, lot.remaining)
        lot.remaining -= taken
        allocations.append(Allocation(debit_id, lot.id, taken))
        wanted -= taken
        if wanted == 0:
            break
    return allocations, wanted


@dataclass
class Replay:
    """An account's lots, what each debit consumed, and what could not be honoured."""

    lots: list[Lot] = field(default_factory=list)
    allocations: list[Allocation] = field(default_factory=list)
    shortfalls: list[Shortfall] = field(default_factory=list)
    synced_through: datetime | None = None
    """The latest ``createdAt`` among the rows that create or consume lots."""


def replay(rows: Iterable[LedgerRow], now: datetime) -> Replay:
    """Apply the rule to an account's history (rows in any order).

    A lot's ``expired`` flag is set where points are left of it, its expiry has passed
    by ``now`` and an ``EXPIRE`` row records that instant (a spent lot has nothing to
    expire, and is never flagged).
    """
    ordered = sorted(rows, key=processing_key)
    result = Replay()
    expiries = {row.expires_at for row in ordered if row.entry_type == EXPIRE and row.debit > 0}
    # Lots not yet known to be used up, in consumption order; spent or expired ones are
    # dropped from the top as they surface (everything above an expired lot is expired).
    heap: list[tuple[tuple[bool, datetime, datetime, str], Lot]] = []
    for row in ordered:
        if row.credit > 0:
            lot = Lot(row.id, row.credit, row.credit, row.created_at, row.expires_at)
            result.lots.append(lot)
            heapq.heappush(heap, (lot.consumption_key(), lot))
            result.synced_through = _latest(result.synced_through, row.created_at)
        elif row.consumes:
            wanted = row.debit
            at = row.created_at
            while wanted and heap:
                lot = heap[0][1]
                if lot.remaining == 0 or (lot.expires_at is not None and lot.expires_at <= at):
                    heapq.heappop(heap)
                    continue
                taken = min(wanted, lot.remaining)
                lot.remaining -= taken
                wanted -= taken
                result.allocations.append(Allocation(row.id, lot.id, taken))
            if wanted:
                result.shortfalls.append(Shortfall(row.id, wanted, at))
            result.synced_through = _latest(result.synced_through, at)
    for lot in result.lots:
        lot.expired = (
            lot.remaining > 0
            and lot.expires_at is not None
            and lot.expires_at <= now
            and lot.expires_at in expiries
        )
    return result


def _latest(current: datetime | None, moment: datetime) -> datetime:
    return moment if current is None or moment > current else current
