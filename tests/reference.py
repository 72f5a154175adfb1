"""A plain, step-by-step simulation of one account under chronological spending.

Written for the tests and sharing no code with ``rewards.ledger``, so that agreeing
with it is evidence, not tautology. It is deliberately brute force:

* one bucket per credit, holding what is left of it;
* the history is walked in time order, from scratch every time anything is asked
  (so a row backdated, deleted or changed simply gives a different walk);
* at each instant, credits open their buckets, then debits, by id, each scanning
  *all* buckets for those it may take from: created at or before its instant and
  not expired at it, earliest expiry first (never-expiring last), then creation
  time, then id;
* once time passes a bucket's expiry, nothing takes from it any more: what is left
  in it is what expired, and posting expiry records that, once per instant;
* a debit larger than what it finds takes all of it and records the rest as a
  shortfall; ``EXPIRE`` rows take nothing: they only record an expiry instant.

The rule, as the SPEC ("Ledger semantics") states it, is the only thing copied.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

EXPIRE = "EXPIRE"


@dataclass(frozen=True)
class Row:
    """A ledger row: a credit (``credit > 0``) or a debit (``debit > 0``)."""

    id: str
    entry_type: str
    credit: int
    debit: int
    created_at: datetime
    expires_at: datetime | None = None

    @property
    def is_credit(self) -> bool:
        return self.credit > 0

    @property
    def spends(self) -> bool:
        return self.debit > 0 and self.entry_type != EXPIRE


@dataclass
class Bucket:
    """What is left of one credit."""

    id: str
    amount: int
    created_at: datetime
    expires_at: datetime | None
    left: int

    def expired_by(self, moment: datetime) -> bool:
        """Time has passed its expiry: ``left`` is what expired, and nothing takes from it."""
        return self.expires_at is not None and self.expires_at <= moment

    def may_serve(self, moment: datetime) -> bool:
        return (
            self.left > 0
            and self.created_at <= moment
            and (self.expires_at is None or self.expires_at > moment)
        )


def _spending_order(bucket: Bucket) -> tuple[int, datetime, datetime, str]:
    never = 1 if bucket.expires_at is None else 0
    return (never, bucket.expires_at or datetime.max, bucket.created_at, bucket.id)


@dataclass
class Walk:
    """The account as the walk of its whole history leaves it."""

    buckets: dict[str, Bucket] = field(default_factory=dict)
    taken: dict[tuple[str, str], int] = field(default_factory=dict)
    """(debit id, bucket id) -> points that debit took from that bucket."""
    shortfalls: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    """debit id -> (points it could not take, its instant)."""

    def open(self, row: Row) -> None:
        self.buckets[row.id] = Bucket(
            row.id, row.credit, row.created_at, row.expires_at, left=row.credit
        )

    def spend(self, row: Row) -> None:
        wanted = row.debit
        for bucket in sorted(self.buckets.values(), key=_spending_order):
            if wanted == 0:
                break
            if not bucket.may_serve(row.created_at):
                continue
            points = min(wanted, bucket.left)
            bucket.left -= points
            wanted -= points
            self.taken[(row.id, bucket.id)] = points
        if wanted:
            self.shortfalls[row.id] = (wanted, row.created_at)


def walk(rows: Sequence[Row]) -> Walk:
    """Apply every row, in time order, to fresh buckets."""
    result = Walk()
    for instant in sorted({row.created_at for row in rows}):
        at_instant = [row for row in rows if row.created_at == instant]
        for row in at_instant:
            if row.is_credit:
                result.open(row)
        for row in sorted((r for r in at_instant if r.spends), key=lambda r: r.id):
            result.spend(row)
    return result


@dataclass
class SimulatedAccount:
    """An account's ledger rows, and everything the service derives from them."""

    rows: dict[str, Row] = field(default_factory=dict)

    # -- the ledger ------------------------------------------------------------------------

    def add(self, row: Row) -> None:
        assert row.id not in self.rows
        self.rows[row.id] = row

    def delete(self, row_id: str) -> None:
        del self.rows[row_id]

    def change(self, row_id: str, **values: Any) -> None:
        self.rows[row_id] = replace(self.rows[row_id], **values)

    def in_order(self) -> list[Row]:
        """The rows by creation time, then id: a stable way to pick one."""
        return sorted(self.rows.values(), key=lambda r: (r.created_at, r.id))

    def recorded_expiries(self) -> dict[datetime, int]:
        """Expiry instant -> points, as the ``EXPIRE`` rows record them."""
        return {
            r.expires_at: r.debit
            for r in self.rows.values()
            if r.entry_type == EXPIRE and r.expires_at is not None
        }

    # -- what follows from it --------------------------------------------------------------

    def walk(self) -> Walk:
        return walk(list(self.rows.values()))

    def balance(self, now: datetime) -> int:
        """Points a debit at ``now`` could take."""
        return sum(b.left for b in self.walk().buckets.values() if b.may_serve(now))

    def expiring(self, after: datetime, until: datetime) -> dict[date, int]:
        """Points left in buckets expiring in ``(after, until]``, per (UTC) date."""
        per_day: dict[date, int] = defaultdict(int)
        for bucket in self.walk().buckets.values():
            expires = bucket.expires_at
            if bucket.left and expires is not None and after < expires <= until:
                per_day[expires.date()] += bucket.left
        return dict(per_day)

    def due_expirations(self, now: datetime) -> dict[datetime, int]:
        """What posting expiry at ``now`` must record: per expiry instant passed by ``now``
        and not recorded yet, the points left in the buckets expiring then (if any)."""
        recorded = self.recorded_expiries()
        due: dict[datetime, int] = defaultdict(int)
        for bucket in self.walk().buckets.values():
            if bucket.expired_by(now) and bucket.expires_at not in recorded:
                assert bucket.expires_at is not None
                due[bucket.expires_at] += bucket.left
        return {instant: points for instant, points in due.items() if points}

    def expected_synced_through(self) -> datetime | None:
        """The latest instant of a row that opens or spends a bucket."""
        moments = [r.created_at for r in self.rows.values() if r.is_credit or r.spends]
        return max(moments, default=None)
