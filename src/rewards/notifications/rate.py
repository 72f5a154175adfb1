"""``REWARDS_SEND_RATE``: one cap on messages per second, shared by every dispatcher.

Mail providers cap a sender's messages per second, whatever the number of
machines sending. The cap is a token bucket kept in the database (the one thing
every worker already shares), refilled from the database's own clock so workers
on different machines agree. Each dispatcher takes tokens in small blocks (a
tenth of a second's worth at most), so the bucket row is touched a few times a
second, not once per message; a dispatcher that takes a block the bucket cannot
cover waits until the bucket would have refilled it.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine, text

BUCKET = "smtp"

_TAKE = {
    "postgresql": text(
        """
        INSERT INTO "SendRateBucket" ("id", "tokens", "refilledAt")
        VALUES (:id, :burst - :n, clock_timestamp() AT TIME ZONE 'UTC')
        ON CONFLICT ("id") DO UPDATE SET
            "tokens" = least(
                :burst,
                "SendRateBucket"."tokens" + :rate * extract(
                    epoch FROM (clock_timestamp() AT TIME ZONE 'UTC')
                    - "SendRateBucket"."refilledAt"
                )
            ) - :n,
            "refilledAt" = clock_timestamp() AT TIME ZONE 'UTC'
        RETURNING "tokens"
        """
    ),
    "sqlite": text(
        """
        INSERT INTO "SendRateBucket" ("id", "tokens", "refilledAt")
        VALUES (:id, :burst - :n, strftime('%Y-%m-%d %H:%M:%f', 'now'))
        ON CONFLICT ("id") DO UPDATE SET
            "tokens" = min(
                :burst,
                "SendRateBucket"."tokens" + :rate * 86400.0 * (
                    julianday('now') - julianday("SendRateBucket"."refilledAt")
                )
            ) - :n,
            "refilledAt" = strftime('%Y-%m-%d %H:%M:%f', 'now')
        RETURNING "tokens"
        """
    ),
}


class SendRate:
    """Await :meth:`acquire` before each message; with no rate set it returns at once."""

    def __init__(self, engine: Engine, rate: float | None, *, bucket: str = BUCKET) -> None:
        self._engine = engine
        self._rate = rate
        self._bucket = bucket
        self._block = max(1, min(50, round((rate or 0) / 10)))
        self._held = 0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if not self._rate:
            return
        async with self._lock:
            if self._held == 0:
                balance = await asyncio.to_thread(self._take, self._block)
                self._held = self._block
                if balance < 0:  # borrowed ahead of the refill: wait until it is ours
                    await asyncio.sleep(-balance / self._rate)
            self._held -= 1

    def _take(self, n: int) -> float:
        assert self._rate
        with self._engine.begin() as conn:
            tokens = conn.execute(
                _TAKE[conn.dialect.name],
                {"id": self._bucket, "n": n, "rate": self._rate, "burst": float(self._block)},
            ).scalar_one()
        return float(tokens)
