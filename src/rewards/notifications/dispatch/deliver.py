"""Delivering a chunk of the outbox: claim, decide afresh, build, send, settle promptly.

Both dispatchers (the job's own process, a Celery worker anywhere) run this. Per
chunk of outbox row ids:

1. **claim** the rows no one holds (a lease, :func:`rewards.notifications.outbox.claim`);
2. **decide afresh**, with the member as they are now: one who opted out or lost
   their email since planning is not sent to; a re-send (a row claimed before,
   whose sender died) goes out only while it is still true
   (:func:`rewards.notifications.tiers.recovery_decision`);
3. **build** each message (:meth:`MessageBuilder.render`) and **send** it, through
   the sender's pool of connections, at most ``REWARDS_SEND_RATE`` per second
   across all dispatchers;
4. **settle** what happened within 50 messages or one second, whichever comes
   first (:class:`Settler`), so a crash re-sends at most what was in flight plus
   that window, with the same ``Message-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import Engine

from rewards.clock import local_date
from rewards.config import Settings
from rewards.metrics import observe_send
from rewards.notifications.delivery.base import Outcome, Sender
from rewards.notifications.messages import InvalidRecipient, MessageBuilder, Reminder
from rewards.notifications.outbox import Claimed, Settled, claim, settle
from rewards.notifications.planner import points_left_on_dates
from rewards.notifications.rate import SendRate
from rewards.notifications.tiers import INVALID_FORMAT, Status, decide, recovery_decision

log = logging.getLogger("rewards.notifications.dispatch")

SETTLE_EVERY = 50
"""Outcomes recorded together at most; a crash re-sends at most these plus the in-flight."""
SETTLE_WITHIN = 1.0
"""Seconds an outcome waits at most before it is recorded."""


@dataclass
class ChunkStats:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    resent: int = 0


class Settler:
    """Records outcomes in the database in small batches: every 50, or after one second."""

    def __init__(
        self,
        record: Callable[[list[Settled]], None],
        *,
        every: int = SETTLE_EVERY,
        within: float = SETTLE_WITHIN,
    ) -> None:
        self._record = record
        self._every = every
        self._within = within
        self._waiting: list[Settled] = []
        self._oldest: float | None = None
        self._full = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def add(self, outcome: Settled) -> None:
        if not self._waiting:
            self._oldest = time.monotonic()
        self._waiting.append(outcome)
        if len(self._waiting) >= self._every:
            self._full.set()

    async def _run(self) -> None:
        while not (self._closing and not self._waiting):
            timeout = self._within
            if self._oldest is not None:
                timeout = max(0.0, self._oldest + self._within - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), timeout=timeout)
            self._full.clear()
            await self.flush()

    async def flush(self) -> None:
        batch, self._waiting, self._oldest = self._waiting, [], None
        if batch:
            await asyncio.to_thread(self._record, batch)

    async def close(self) -> None:
        """Record what is left and stop."""
        self._closing = True
        self._full.set()
        if self._task is not None:
            await self._task
        await self.flush()


class Deliverer:
    """Delivers chunks of outbox rows through one sender; dependencies passed in."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        builder: MessageBuilder,
        sender: Sender,
        clock: Callable[[], datetime],
        worker: str,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.builder = builder
        self.sender = sender
        self.clock = clock
        self.worker = worker
        self.rate = SendRate(engine, settings.send_rate)

    async def deliver(self, log_ids: Sequence[str]) -> ChunkStats:
        """Deliver the rows among ``log_ids`` that no one else holds; never raises for a
        message that could not be delivered (it is settled ``FAILED`` with the reason)."""
        now = self.clock()
        lease_until = now + timedelta(seconds=self.settings.notify_lease_seconds)
        claimed = await asyncio.to_thread(self._claim, list(log_ids), now, lease_until)
        stats = ChunkStats(claimed=len(claimed))
        if not claimed:
            return stats
        settler = Settler(self._settle)
        settler.start()
        try:
            to_send = await asyncio.to_thread(self._decide, claimed, settler, stats)
            queue: asyncio.Queue[tuple[Claimed, Reminder]] = asyncio.Queue()
            for item in to_send:
                queue.put_nowait(item)
            senders = min(self.settings.smtp_concurrency, len(to_send)) or 1
            await asyncio.gather(*(self._send_from(queue, settler, stats) for _ in range(senders)))
        finally:
            await settler.close()
        return stats

    # -- the steps --------------------------------------------------------------------------

    def _claim(self, log_ids: list[str], now: datetime, lease_until: datetime) -> list[Claimed]:
        with self.engine.begin() as conn:
            return claim(conn, log_ids, now=now, lease_until=lease_until, worker=self.worker)

    def _settle(self, outcomes: list[Settled]) -> None:
        with self.engine.begin() as conn:
            settle(conn, outcomes, now=self.clock())

    def _decide(
        self, claimed: list[Claimed], settler: Settler, stats: ChunkStats
    ) -> list[tuple[Claimed, Reminder]]:
        """What to send, with the members as they are now; the rest goes to ``settler``.

        Days are counted from the date of the run responsible for each row (its
        as-of, as the planner counted them), so the email says what its tier says.
        """
        zone = self.settings.zone
        now = self.clock()
        resends = [c for c in claimed if c.tries > 1]
        left: dict[tuple[str, date], int] = {}
        for as_of in {c.as_of or now for c in resends}:
            with self.engine.connect() as conn:
                left |= points_left_on_dates(
                    conn,
                    ((c.user_id, c.expiration_date) for c in resends if (c.as_of or now) == as_of),
                    as_of=as_of,
                    zone=zone,
                )
        to_send: list[tuple[Claimed, Reminder]] = []
        for row in claimed:
            days_left = (row.expiration_date - local_date(row.as_of or now, zone)).days
            decision = decide(row.email, row.email_notifications, row.points)
            if decision.send and row.tries > 1:
                stats.resent += 1
                decision = (
                    recovery_decision(
                        row.notification_type,
                        days_left,
                        self.settings.notify_tiers,
                        left.get((row.user_id, row.expiration_date), 0),
                    )
                    or decision
                )
            if not decision.send:
                settler.add(Settled(row.log_id, decision.status, decision.reason))
                self._count(stats, decision.status)
                continue
            assert row.email is not None
            to_send.append(
                (
                    row,
                    Reminder(
                        log_id=row.log_id,
                        user_id=row.user_id,
                        email=row.email.strip(),
                        name=row.name,
                        points=row.points,
                        expiration_date=row.expiration_date,
                        notification_type=row.notification_type,
                        days_left=max(days_left, 0),
                    ),
                )
            )
        return to_send

    async def _send_from(
        self,
        queue: asyncio.Queue[tuple[Claimed, Reminder]],
        settler: Settler,
        stats: ChunkStats,
    ) -> None:
        while not queue.empty():
            row, reminder = queue.get_nowait()
            try:
                message = self.builder.render(reminder)
            except InvalidRecipient:
                settler.add(Settled(row.log_id, Status.FAILED, INVALID_FORMAT))
                stats.failed += 1
                continue
            await self.rate.acquire()
            outcome = await self.sender.send(message)
            settler.add(self._settled(row, outcome))
            self._count(stats, Status.SENT if outcome.delivered else Status.FAILED)
            if outcome.delivered:
                observe_send(outcome.seconds)
            else:
                log.warning(
                    "[CheckExpiringPointsJob] delivery failed: user=%s type=%s date=%s reason=%s",
                    row.user_id,
                    row.notification_type,
                    row.expiration_date,
                    outcome.detail,
                )

    def _settled(self, row: Claimed, outcome: Outcome) -> Settled:
        if outcome.delivered:
            return Settled(row.log_id, Status.SENT, at=self.clock())
        return Settled(row.log_id, Status.FAILED, outcome.detail or "delivery failed")

    @staticmethod
    def _count(stats: ChunkStats, status: Status) -> None:
        if status is Status.SENT:
            stats.sent += 1
        elif status is Status.FAILED:
            stats.failed += 1
        else:
            stats.skipped += 1
