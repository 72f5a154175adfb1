"""Retrying one ``FAILED`` reminder by hand: an operator's second chance for one key.

The job retries a failed key by itself on later runs, up to
``REWARDS_NOTIFY_MAX_ATTEMPTS`` rows. An operator who has fixed the cause (a
mailbox that was full, an SMTP server that was away) can retry at once: a new
``PENDING`` row for the same key (user, tier, expiration date), written with its
``NotificationDelivery`` row as the job writes its outbox, and handed to the
configured dispatcher. Only a reminder that is still worth sending is retried:

* the key has no live row (``PENDING``, ``SENT``, ``SKIPPED``): the partial unique
  index says the same, so a run racing the retry cannot send twice;
* attempts are left (rows for the key < ``REWARDS_NOTIFY_MAX_ATTEMPTS``);
* the reminder is still true: points are left to expire on that date and the tier is
  still the one due (:func:`~rewards.notifications.tiers.recovery_decision`);
* the member would be sent to now: opted in, with a valid address
  (:func:`~rewards.notifications.tiers.decide`).

Otherwise :class:`RetryRefused` says why, and nothing is written. The new row
carries what is left to expire now, which is what its email says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from rewards.clock import local_date, utcnow
from rewards.config import Settings, require_own_secret_to_send
from rewards.ids import new_id
from rewards.models import LIVE_STATUS_SQL
from rewards.notifications.dispatch import create_dispatcher
from rewards.notifications.planner import points_left_on_dates
from rewards.notifications.tiers import (
    LIVE_STATUSES,
    Status,
    decide,
    loggable_points,
    recovery_decision,
)
from rewards.tables import deliveries, notification_log, users


class RetryRefused(Exception):
    """The reminder cannot be retried now; the message says why. Nothing was written."""


class UnknownReminder(RetryRefused):
    """No ``NotificationLog`` row has that id."""


@dataclass(frozen=True)
class Retried:
    """The row a retry wrote, and how it stands once handed to the dispatcher.

    ``status`` is ``SENT`` or ``FAILED`` when the dispatcher delivers in this process
    (``inline``), usually ``PENDING`` when workers do (``celery``).
    """

    log_id: str
    status: Status
    reason: str | None


def _insert(engine: Engine) -> Any:
    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


def retry_failed(
    engine: Engine,
    settings: Settings,
    log_id: str,
    *,
    clock: Callable[[], datetime] = utcnow,
) -> Retried:
    """Write a new ``PENDING`` row for the key of the ``FAILED`` row ``log_id`` and deliver it.

    Raises :class:`RetryRefused` (or :class:`UnknownReminder`) with the reason when it
    must not be retried; :class:`~rewards.config.SettingsError` when SMTP would be used
    with the public default secret.
    """
    require_own_secret_to_send(settings)
    now = clock()
    n = notification_log
    with engine.begin() as conn:
        row = conn.execute(select(n).where(n.c.id == log_id)).one_or_none()
        if row is None:
            raise UnknownReminder(f"no reminder {log_id!r}")
        if row.status != Status.FAILED.value:
            raise RetryRefused(f"only a FAILED reminder can be retried; this one is {row.status}")
        same_key = (
            n.c.userId == row.userId,
            n.c.notificationType == row.notificationType,
            n.c.expirationDate == row.expirationDate,
        )
        counts = select(n.c.status, func.count()).where(*same_key).group_by(n.c.status)
        statuses: dict[str, int] = dict(conn.execute(counts).all())
        live = sorted(s for s in statuses if s in {x.value for x in LIVE_STATUSES})
        if live:
            raise RetryRefused(f"this reminder already has a {live[0]} row: nothing to retry")
        attempts = sum(statuses.values())
        if attempts >= settings.notify_max_attempts:
            raise RetryRefused(
                f"all {settings.notify_max_attempts} attempts are used"
                f" (REWARDS_NOTIFY_MAX_ATTEMPTS): {attempts} rows for this reminder"
            )
        member = conn.execute(
            select(users.c.email, users.c.emailNotifications).where(users.c.id == row.userId)
        ).one()
        expiration_date = row.expirationDate.date()
        days_left = (expiration_date - local_date(now, settings.zone)).days
        left = points_left_on_dates(
            conn, [(row.userId, expiration_date)], as_of=now, zone=settings.zone
        ).get((row.userId, expiration_date), 0)
        closing = recovery_decision(row.notificationType, days_left, settings.notify_tiers, left)
        if closing is not None:
            raise RetryRefused(f"it is no longer worth sending: {closing.reason}")
        decision = decide(member.email, bool(member.emailNotifications), left)
        if not decision.send:
            raise RetryRefused(f"it would not be sent now: {decision.reason}")
        new_log_id = new_id()
        written = conn.execute(
            _insert(engine)(n)
            .values(
                id=new_log_id,
                userId=row.userId,
                notificationType=row.notificationType,
                status=Status.PENDING.value,
                expirationDate=row.expirationDate,
                pointsExpiring=loggable_points(left),
                createdAt=now,
            )
            .on_conflict_do_nothing(
                index_elements=["userId", "notificationType", "expirationDate"],
                index_where=LIVE_STATUS_SQL,
            )
            .returning(n.c.id)
        ).first()
        if written is None:
            raise RetryRefused("a run wrote this reminder meanwhile: nothing to retry")
        conn.execute(insert(deliveries).values(logId=new_log_id, runId=None, queuedAt=now, tries=0))
    with create_dispatcher(engine, settings, clock=clock) as dispatcher:
        dispatcher.dispatch([new_log_id])
    with engine.connect() as conn:
        status, reason = conn.execute(
            select(n.c.status, n.c.failureReason).where(n.c.id == new_log_id)
        ).one()
    return Retried(new_log_id, Status(status), reason)
