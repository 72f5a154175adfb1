"""Pure ledger rules: consumption order and the remainder of each credit.

Points are spent earliest-expiring first (never-expiring last, then by
``createdAt``, then ``id``), over the account's whole history: a member who
redeemed and later earned points that expire sooner has the sooner ones
counted as spent. Under that rule the remainder of credit *i* is

    clamp(C_i - D, 0, credit_i)

where ``C_i`` is the running sum of credits in consumption order up to and
including *i*, and ``D`` the account's total debits (redemptions, expirations,
debit adjustments). :mod:`rewards.ledger.queries` computes the same formula in
SQL for many accounts at once; this module is its plain-Python statement.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

MAX_POINTS = 1_000_000_000
"""Largest amount a client may earn or redeem in one entry."""

MAX_ENTRY_POINTS = 2**31 - 1
"""Largest amount a ledger row can hold (``credit`` and ``debit`` are the seed's ``INTEGER``)."""


@dataclass(frozen=True)
class Credit:
    id: str
    amount: int
    created_at: datetime
    expires_at: datetime | None


def consumption_key(credit: Credit) -> tuple[bool, datetime, datetime, str]:
    """Sort key of the consumption order: expiry (never last), then creation, then id."""
    return (
        credit.expires_at is None,
        credit.expires_at or datetime.min,
        credit.created_at,
        credit.id,
    )


def remainders(credits: Iterable[Credit], total_debits: int) -> dict[str, int]:
    """What is left of each credit after ``total_debits`` were spent earliest-expiring first."""
    running = 0
    left: dict[str, int] = {}
    for credit in sorted(credits, key=consumption_key):
        running += credit.amount
        left[credit.id] = max(0, min(running - total_debits, credit.amount))
    return left


def available(credits: Sequence[Credit], total_debits: int, as_of: datetime) -> int:
    """Points that can be spent at ``as_of``: remainders of credits not yet expired."""
    left = remainders(credits, total_debits)
    return sum(left[c.id] for c in credits if c.expires_at is None or c.expires_at > as_of)


def due_expirations(
    credits: Sequence[Credit], total_debits: int, as_of: datetime
) -> dict[datetime, int]:
    """Unspent points per expiry instant that has passed by ``as_of`` (the EXPIRE postings due)."""
    left = remainders(credits, total_debits)
    due: dict[datetime, int] = {}
    for credit in credits:
        if credit.expires_at is not None and credit.expires_at <= as_of and left[credit.id]:
            due[credit.expires_at] = due.get(credit.expires_at, 0) + left[credit.id]
    return due
