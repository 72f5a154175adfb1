"""A plain, step-by-step simulation of an account, to check the ledger's arithmetic against.

It keeps one bucket per credit and moves points between buckets as events
happen — no running sums, no formula — so agreeing with it is evidence, not
tautology:

* a debit takes from live buckets in consumption order (earliest expiry first,
  never-expiring last, then creation time, then id);
* a credit that sorts before buckets already spent from takes their spending
  over (latest-ordered first), so spending always sits on the earliest credits;
* when time passes a bucket's expiry, whatever is left in it expires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class Bucket:
    id: str
    amount: int
    created_at: datetime
    expires_at: datetime | None
    left: int
    expired: bool = False

    def key(self) -> tuple[bool, datetime, datetime, str]:
        return (self.expires_at is None, self.expires_at or datetime.min, self.created_at, self.id)


@dataclass
class ReferenceAccount:
    buckets: list[Bucket] = field(default_factory=list)
    expirations: dict[datetime, int] = field(default_factory=dict)

    def ordered(self) -> list[Bucket]:
        return sorted(self.buckets, key=Bucket.key)

    def available(self) -> int:
        return sum(b.left for b in self.buckets if not b.expired)

    def earn(self, bucket_id: str, amount: int, at: datetime, expires_at: datetime | None) -> None:
        new = Bucket(bucket_id, amount, at, expires_at, amount)
        self.buckets.append(new)
        later_spent = [b for b in self.ordered() if b.key() > new.key() and b.left < b.amount]
        for bucket in reversed(later_spent):
            moved = min(new.left, bucket.amount - bucket.left)
            new.left -= moved
            bucket.left += moved
            if new.left == 0:
                break

    def redeem(self, amount: int) -> bool:
        if amount > self.available():
            return False
        for bucket in self.ordered():
            if bucket.expired:
                continue
            taken = min(amount, bucket.left)
            bucket.left -= taken
            amount -= taken
        return True

    def advance(self, now: datetime) -> None:
        for bucket in self.buckets:
            if not bucket.expired and bucket.expires_at is not None and bucket.expires_at <= now:
                bucket.expired = True
                if bucket.left:
                    self.expirations[bucket.expires_at] = (
                        self.expirations.get(bucket.expires_at, 0) + bucket.left
                    )
                    bucket.left = 0

    def live_remainders(self) -> dict[str, int]:
        return {b.id: b.left for b in self.buckets if not b.expired}
