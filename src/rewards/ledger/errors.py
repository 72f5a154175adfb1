"""Ledger errors: raised in the domain, translated once at each edge (API, CLI)."""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error a client can cause; the message is fit to show."""


class UnknownAccount(LedgerError):
    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id!r} does not exist")
        self.account_id = account_id


class UnknownUser(LedgerError):
    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id!r} does not exist")
        self.user_id = user_id


class InvalidEntry(LedgerError):
    """Points out of range, an expiry in the past, and the like."""


class InsufficientPoints(LedgerError):
    def __init__(self, account_id: str, requested: int, available: int) -> None:
        super().__init__(
            f"account {account_id!r} has {available} points available; {requested} requested"
        )
        self.account_id = account_id
        self.requested = requested
        self.available = available


class DuplicateEntry(LedgerError):
    """An entry with this id already exists (a client-supplied id was reused)."""


class IdempotencyConflict(LedgerError):
    """An Idempotency-Key was reused for a different request."""

    def __init__(self, key: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used for a different request")
        self.key = key
