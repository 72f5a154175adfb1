"""A realistic loyalty programme for the benchmark, generated member by member.

Everything is relative to one instant, ``as_of`` (the daily run being measured):
history starts two years before it, purchases earn points that expire a year
later, short-lived promotional credits (7-45 days) follow redemptions and
campaigns, a few goodwill adjustments never expire, members churn and let their
points lapse. Redemptions respect the chronological rule (they never spend more
than is spendable at their instant), and expiry is recorded as the service
records it: one ``EXPIRE`` entry per account and expiry instant, for what is left.

The generator is streaming: it keeps the state of one member at a time and
appends ``COPY`` text lines to lists that the loader drains, so memory stays
bounded at any size. It is also the benchmark's *independent* statement of the
rule: it simulates each account's lots itself (a heap by expiry, nothing shared
with :mod:`rewards.ledger.lots`) and reports, per member and date of the 30-day
window, what is left to expire at ``as_of`` (:attr:`Programme.truth`).

Three periods:

* the history, up to yesterday's run (``as_of - 1 day`` at the job's hour):
  ledger rows, ``EXPIRE`` entries for every expiry instant up to then, and
  yesterday's ``NotificationLog`` rows (what a run at that instant would have
  decided for each key of its window);
* one more day, up to ``as_of``: credits, redemptions and promotions only
  (another application's writes: no ``EXPIRE`` entries; posting them is the job's
  work), spooled in :attr:`Programme.new_day`;
* ``as_of`` itself: the truth of the window, in :attr:`Programme.truth`.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
NEVER = 1 << 62
"""The expiry of a never-expiring lot: after every instant, so it is consumed last."""

HISTORY_DAYS = 730
WINDOW_DAYS = 30
TIERS = (30, 7, 1)
EPOCH = datetime(1970, 1, 1)

PURCHASE, REDEEM, PROMO, CAMPAIGN, ADJUST = range(5)

LEDGER_COLUMNS = (
    '"id", "accountId", "entryType", "credit", "debit", "description", "createdAt", "expiresAt"'
)
USER_COLUMNS = '"id", "email", "name", "createdAt", "emailNotifications"'
ACCOUNT_COLUMNS = '"id", "userId", "createdAt"'
LOG_COLUMNS = (
    '"id", "userId", "notificationType", "status", "sentAt", "failureReason",'
    ' "expirationDate", "pointsExpiring", "createdAt"'
)


def to_ms(moment: datetime) -> int:
    """A naive UTC instant as integer milliseconds since the epoch."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


_SECONDS = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86_400)]
_DAYS: dict[int, str] = {}


def stamp(ms: int) -> str:
    """``YYYY-MM-DD HH:MM:SS.mmm``, as COPY reads a ``TIMESTAMP(3)``; fast (cached parts)."""
    day, rest = divmod(ms, DAY_MS)
    text = _DAYS.get(day)
    if text is None:
        text = _DAYS[day] = (EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")
    second, milli = divmod(rest, 1000)
    return f"{text} {_SECONDS[second]}.{milli:03d}"


def notification_type(days_left: int) -> str:
    """The tier due ``days_left`` days ahead (30/7/1), stated independently of the service."""
    tier = min(t for t in TIERS if days_left <= t)
    return "EXPIRATION_1_DAY" if tier == 1 else f"EXPIRATION_{tier}_DAYS"


@dataclass(frozen=True)
class Horizon:
    """The instants the programme is generated around (naive UTC, whole milliseconds)."""

    as_of: datetime
    """Today's run."""
    yesterday: datetime
    """Yesterday's run: the end of the history."""

    @classmethod
    def around(cls, as_of: datetime, run_hour: int = 9) -> Horizon:
        """Today's run at ``as_of``; yesterday's ran at ``run_hour`` o'clock the day before."""
        return cls(as_of, datetime.combine(as_of.date() - timedelta(days=1), time(run_hour)))

    @property
    def today(self) -> date:
        return self.as_of.date()


class Programme:
    """Members, accounts and ledgers, one member per :meth:`member` call.

    Output goes to lists of COPY text lines (``users``, ``accounts``, ``ledger``,
    ``logs``: the history and yesterday's reminders; ``new_day``: the next day's
    ledger rows; ``truth``: ``userId, date, points`` left to expire in today's
    window). The caller drains them as it likes.
    """

    def __init__(self, horizon: Horizon, seed: int) -> None:
        self.rng = random.Random(seed)
        self.horizon = horizon
        self.as_of_ms = to_ms(horizon.as_of)
        self.yesterday_ms = to_ms(horizon.yesterday)
        self.start_ms = self.as_of_ms - HISTORY_DAYS * DAY_MS
        self.today_day = self.as_of_ms // DAY_MS
        self.yesterday_day = self.yesterday_ms // DAY_MS
        # Windows: expiry after the run's instant, before the end of the 30th day after its date.
        self.window_end_ms = (self.today_day + WINDOW_DAYS + 1) * DAY_MS
        self.yesterday_window_end_ms = (self.yesterday_day + WINDOW_DAYS + 1) * DAY_MS
        self.yesterday_stamp = stamp(self.yesterday_ms)

        self.users: list[str] = []
        self.accounts: list[str] = []
        self.ledger: list[str] = []
        self.logs: list[str] = []
        self.new_day: list[str] = []
        self.truth: list[str] = []

        self.members = 0
        self.account_count = 0
        self.history_rows = 0
        self.new_day_rows = 0
        self.log_rows = 0
        self.counts = dict.fromkeys(("EARN", "PROMO", "REDEEM", "ADJUST+", "ADJUST-", "EXPIRE"), 0)
        self._row = 0
        self._log = 0
        self.heaviest: tuple[int, str] = (0, "")
        """(history rows, userId) of the member with the longest history."""
        self.sample_log_key: tuple[str, str, datetime] | None = None

    # -- one member ------------------------------------------------------------------------

    def member(self) -> None:
        rng = self.rng
        u = self.members
        self.members += 1
        user_id = f"cu{u:023d}"
        if rng.random() < 0.55:  # a member since before the history starts
            joined = self.start_ms - int(rng.random() * 365 * DAY_MS)
        else:
            joined = self.start_ms + int(rng.random() * (self.yesterday_ms - self.start_ms))
        roll = rng.random()
        email = "\\N" if roll < 0.02 else ("broken@" if roll < 0.03 else f"m{u}@example.com")
        opted_in = rng.random() > 0.05
        self.users.append(
            f"{user_id}\t{email}\tMember {u}\t{stamp(joined)}\t{'t' if opted_in else 'f'}\n"
        )
        # Purchases per day: a long tail of very active members, most fairly quiet.
        rate = min(1.0, math.exp(rng.gauss(math.log(1 / 90), 1.0)))
        churn = joined + int(rng.expovariate(1 / 400) * DAY_MS) if rng.random() < 0.5 else NEVER
        threshold = rng.choice((100, 250, 500, 1000))
        propensity = 0.0 if rng.random() < 0.15 else 0.3 + 0.6 * rng.random()
        accounts = rng.choices((1, 2, 3), weights=(80, 15, 5))[0]
        due_yesterday: dict[int, int] = {}
        due_today: dict[int, int] = {}
        rows_before = self.history_rows
        for a in range(accounts):
            account_id = f"ca{u * 4 + a:023d}"
            opened = joined
            if a:  # a second card, some time after joining
                opened += int(rng.random() * min(400 * DAY_MS, self.yesterday_ms - joined))
            self.accounts.append(f"{account_id}\t{user_id}\t{stamp(opened)}\n")
            self.account_count += 1
            self._account(
                account_id,
                max(opened, self.start_ms),
                rate if a == 0 else rate * (0.2 + 0.4 * rng.random()),
                churn,
                threshold,
                propensity,
                due_yesterday,
                due_today,
            )
        rows = self.history_rows - rows_before
        if rows > self.heaviest[0]:
            self.heaviest = (rows, user_id)
        for day, points in due_today.items():
            if points > 0:
                self.truth.append(f"{user_id}\t{_iso_day(day)}\t{points}\n")
        self._yesterdays_reminders(user_id, email, opted_in, due_yesterday)

    def _yesterdays_reminders(
        self, user_id: str, email: str, opted_in: bool, due: dict[int, int]
    ) -> None:
        """What yesterday's run decided for each of the member's keys (one row per key)."""
        rng = self.rng
        for day, points in sorted(due.items()):
            if points <= 0:
                continue
            kind = notification_type(day - self.yesterday_day)
            sent_at = "\\N"
            if not opted_in:
                status, reason = "SKIPPED", "user opted out"
            elif email == "\\N":
                status, reason = "FAILED", "missing email"
            elif email == "broken@":
                status, reason = "FAILED", "invalid format"
            elif rng.random() < 0.005:
                status, reason = "FAILED", "421 4.7.0 Try again later"
            else:
                status, reason = "SENT", "\\N"
                sent_at = stamp(self.yesterday_ms + 1000 + int(rng.random() * 600_000))
            self._log += 1
            self.log_rows += 1
            self.logs.append(
                f"cn{self._log:023d}\t{user_id}\t{kind}\t{status}\t{sent_at}\t{reason}"
                f"\t{_iso_day(day)} 00:00:00\t{points}\t{self.yesterday_stamp}\n"
            )
            if self.sample_log_key is None and status == "SENT":
                self.sample_log_key = (user_id, kind, datetime.combine(_day(day), time.min))

    # -- one account: a chronological simulation of its lots ------------------------------

    def _account(
        self,
        account_id: str,
        opened: int,
        rate: float,
        churn: int,
        threshold: int,
        propensity: float,
        due_yesterday: dict[int, int],
        due_today: dict[int, int],
    ) -> None:
        rng = self.rng
        random_ = rng.random
        expo = rng.expovariate
        push = heapq.heappush
        pop = heapq.heappop
        yesterday = self.yesterday_ms
        as_of = self.as_of_ms
        counts = self.counts
        history = self.ledger
        out = history
        # Lots with points left, by consumption order: [expiresAt, createdAt, id, remaining].
        lots: list[list[Any]] = []
        balance = 0
        events: list[tuple[int, int]] = []
        push(events, (opened + int(expo(rate) * DAY_MS), PURCHASE))
        push(events, (opened + int(expo(1 / 120) * DAY_MS), CAMPAIGN))
        push(events, (opened + int(expo(1 / 400) * DAY_MS), ADJUST))
        last = opened
        in_history = True

        def expire_through(moment: int, record: bool) -> int:
            """Drop the lots expired by ``moment``; one EXPIRE per instant if ``record``."""
            gone = 0
            while lots and lots[0][0] <= moment:
                instant = lots[0][0]
                left = 0
                while lots and lots[0][0] == instant:
                    left += pop(lots)[3]
                gone += left
                if record:
                    self._row += 1
                    when = stamp(instant)
                    history.append(
                        f"cl{self._row:023d}\t{account_id}\tEXPIRE\t0\t{left}\tPoints expired"
                        f"\t{when}\t{when}\n"
                    )
                    self.history_rows += 1
                    counts["EXPIRE"] += 1
            return gone

        def snapshot(after: int, until: int, into: dict[int, int]) -> None:
            for lot in lots:
                expires = lot[0]
                if after < expires < until:
                    day = expires // DAY_MS
                    into[day] = into.get(day, 0) + lot[3]

        while events:
            moment, kind = pop(events)
            if moment > as_of:
                break
            if moment <= last:
                moment = last + 1  # one row per instant and account: no ties to argue about
            if in_history and moment > yesterday:
                balance -= expire_through(yesterday, True)
                snapshot(yesterday, self.yesterday_window_end_ms, due_yesterday)
                in_history = False
                out = self.new_day
            balance -= expire_through(moment, in_history)
            active = moment < churn
            if kind == PURCHASE:
                if not active:
                    continue
                push(events, (moment + 1 + int(expo(rate) * DAY_MS), PURCHASE))
                points = min(5000, max(5, int(rng.lognormvariate(4.1, 0.9)) // 5 * 5))
                expires = moment + 365 * DAY_MS
                row_id = self._new_id()
                row = (
                    f"{row_id}\t{account_id}\tEARN\t{points}\t0\t\\N\t{stamp(moment)}"
                    f"\t{stamp(expires)}\n"
                )
                push(lots, [expires, moment, row_id, points])
                balance += points
                counts["EARN"] += 1
                if balance >= threshold and random_() < propensity:
                    push(events, (moment + 1 + int(expo(0.5) * DAY_MS), REDEEM))
            elif kind == REDEEM:
                if balance < 10:
                    continue
                if random_() < 0.3:
                    points = balance
                else:
                    points = max(10, int(balance * (0.3 + 0.6 * random_())) // 10 * 10)
                _consume(lots, points)
                balance -= points
                row = (
                    f"{self._new_id()}\t{account_id}\tREDEEM\t0\t{points}\tReward"
                    f"\t{stamp(moment)}\t\\N\n"
                )
                counts["REDEEM"] += 1
                if random_() < 0.5:  # a thank-you bonus, short-lived
                    push(events, (moment + 1 + int(random_() * 2 * DAY_MS), PROMO))
            elif kind in (PROMO, CAMPAIGN):
                if kind == CAMPAIGN:
                    if not active:
                        continue
                    push(events, (moment + 1 + int(expo(1 / 120) * DAY_MS), CAMPAIGN))
                    if random_() < 0.5:  # not every campaign reaches every member
                        continue
                points = rng.choice((50, 100, 150, 200, 250, 500))
                expires = moment + int((7 + 38 * random_()) * DAY_MS)
                row_id = self._new_id()
                row = (
                    f"{row_id}\t{account_id}\tEARN\t{points}\t0\tPromotion\t{stamp(moment)}"
                    f"\t{stamp(expires)}\n"
                )
                push(lots, [expires, moment, row_id, points])
                balance += points
                counts["PROMO"] += 1
            else:  # ADJUST
                if not active:
                    continue
                push(events, (moment + 1 + int(expo(1 / 400) * DAY_MS), ADJUST))
                if random_() < 0.75:  # goodwill that never expires
                    points = rng.choice((10, 25, 50, 100, 200))
                    row_id = self._new_id()
                    row = (
                        f"{row_id}\t{account_id}\tADJUST\t{points}\t0\tGoodwill"
                        f"\t{stamp(moment)}\t\\N\n"
                    )
                    push(lots, [NEVER, moment, row_id, points])
                    balance += points
                    counts["ADJUST+"] += 1
                else:
                    if balance < 10:
                        continue
                    points = min(balance, rng.choice((10, 20, 50, 100)))
                    _consume(lots, points)
                    balance -= points
                    row = (
                        f"{self._new_id()}\t{account_id}\tADJUST\t0\t{points}\tCorrection"
                        f"\t{stamp(moment)}\t\\N\n"
                    )
                    counts["ADJUST-"] += 1
            last = moment
            out.append(row)
            if in_history:
                self.history_rows += 1
            else:
                self.new_day_rows += 1
        if in_history:
            balance -= expire_through(yesterday, True)
            snapshot(yesterday, self.yesterday_window_end_ms, due_yesterday)
        expire_through(as_of, False)
        snapshot(as_of, self.window_end_ms, due_today)

    def _new_id(self) -> str:
        self._row += 1
        return f"cl{self._row:023d}"


def _consume(lots: list[list[Any]], points: int) -> None:
    """Spend ``points`` earliest-expiring first (the caller checked they are spendable)."""
    while points:
        top = lots[0]
        take = min(points, top[3])
        top[3] -= take
        points -= take
        if top[3] == 0:
            heapq.heappop(lots)


def _day(day_index: int) -> date:
    return date(1970, 1, 1) + timedelta(days=day_index)


def _iso_day(day_index: int) -> str:
    return _day(day_index).isoformat()
