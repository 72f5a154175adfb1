"""Pure rules of the reminders: which tier is due, and what to do for a key.

These functions are the one statement of each rule; the planner's SQL and the
job import them rather than restating them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email


class Status(StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


LIVE_STATUSES = (Status.PENDING, Status.SENT, Status.SKIPPED)
"""A key with one of these is never planned again (one live row per key)."""

OPTED_OUT = "user opted out"
MISSING_EMAIL = "missing email"
INVALID_FORMAT = "invalid format"
TOO_MANY_POINTS = "too many points"
EXPIRED_BEFORE_DELIVERY = "points expired before the reminder could be sent"
NOTHING_LEFT = "no points left to expire"
SUPERSEDED = "superseded"
NO_TIER_DUE = "no reminder is due that far ahead"

POINTS_EXPIRING_MAX = 2**31 - 1
"""The most ``NotificationLog.pointsExpiring`` (the seed's ``INTEGER``) can hold."""


def loggable_points(points: int) -> int:
    """``points`` as ``NotificationLog.pointsExpiring`` can store it (a larger sum is capped)."""
    return min(points, POINTS_EXPIRING_MAX)


def notification_type(tier: int) -> str:
    """``EXPIRATION_30_DAYS``, ``EXPIRATION_7_DAYS``, ``EXPIRATION_1_DAY``, …"""
    return "EXPIRATION_1_DAY" if tier == 1 else f"EXPIRATION_{tier}_DAYS"


def tier_due(days_left: int, tiers: Sequence[int]) -> int | None:
    """The most urgent tier ``t`` with ``days_left <= t``; None if none is due.

    ``days_left`` is the expiration date minus the run date (0 when the points
    expire later today). A missed run therefore catches up with the tier due now,
    never with a stale one, and never with two at once.
    """
    if days_left < 0:
        return None
    due = [t for t in tiers if days_left <= t]
    return min(due) if due else None


@dataclass(frozen=True)
class Decision:
    status: Status
    reason: str | None = None

    @property
    def send(self) -> bool:
        return self.status is Status.PENDING


SEND = Decision(Status.PENDING)


_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9_+-]{1,64}(?:\.[A-Za-z0-9_+-]{1,64}){0,8}"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?\.){1,4}[a-z]{2,24}",
    re.ASCII,
)
_SPECIAL_USE = tuple(SPECIAL_USE_DOMAIN_NAMES)


def _plainly_valid(address: str) -> bool:
    """The common address (ASCII dot-atoms, a lower-case public domain), recognised by one
    regular expression: a tenth of what the full validation costs, which the plan pays
    for every due member. Anything else goes to the full validation. A property test
    holds it to agree with ``email_validator`` on every address it accepts."""
    if len(address) > 254 or _PLAIN_ADDRESS.fullmatch(address) is None:
        return False
    local, domain = address.split("@")
    return len(local) <= 64 and not any(
        domain == special or domain.endswith("." + special) for special in _SPECIAL_USE
    )


@lru_cache(maxsize=65_536)
def is_valid_email(address: str) -> bool:
    """Syntax only: no DNS, so a decision never waits on the network. Cached: the
    dispatcher decides again, at send time, for the members the plan decided."""
    if _plainly_valid(address):
        return True
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def decide(email: str | None, email_notifications: bool, points: int) -> Decision:
    """What to do for one due key, in the seed's order of precedence.

    A sum of points too large for ``NotificationLog.pointsExpiring`` fails that one key
    with the amount in its reason, rather than the whole run.
    """
    if not email_notifications:
        return Decision(Status.SKIPPED, OPTED_OUT)
    if email is None or not email.strip():
        return Decision(Status.FAILED, MISSING_EMAIL)
    if not is_valid_email(email.strip()):
        return Decision(Status.FAILED, INVALID_FORMAT)
    if points > POINTS_EXPIRING_MAX:
        return Decision(
            Status.FAILED,
            f"{TOO_MANY_POINTS}: {points:,} expiring, more than NotificationLog.pointsExpiring"
            f" holds ({POINTS_EXPIRING_MAX:,})",
        )
    return SEND


def recovery_decision(
    notification_type_sent: str, days_left: int, tiers: Sequence[int], points_left: int
) -> Decision | None:
    """For a reminder a crash interrupted: None to send it again, or how to close it.

    ``days_left`` counts from the run date now; ``points_left`` is what is still to
    expire on that date after the run's instant. A reminder is only worth re-sending
    while it says what is true: its points have not expired or been spent, and its
    tier is still the one due (otherwise this run plans the tier due now, and the
    member gets that one, never both).
    """
    if points_left <= 0:
        if days_left <= 0:
            return Decision(Status.FAILED, EXPIRED_BEFORE_DELIVERY)
        return Decision(Status.SKIPPED, NOTHING_LEFT)
    due = tier_due(days_left, tiers)
    if due is None:  # the tiers were changed since: none is due that far ahead
        return Decision(Status.SKIPPED, NO_TIER_DUE)
    if notification_type(due) != notification_type_sent:
        return Decision(Status.SKIPPED, f"{SUPERSEDED} by {notification_type(due)}")
    return None
