"""Limits every ledger entry keeps to; the spending rule itself is :mod:`rewards.ledger.lots`."""

from __future__ import annotations

MAX_POINTS = 1_000_000_000
"""Largest amount a client may earn or redeem in one entry."""

MAX_ENTRY_POINTS = 2**31 - 1
"""Largest amount a ledger row can hold (``credit`` and ``debit`` are the seed's ``INTEGER``)."""
