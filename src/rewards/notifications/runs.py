"""The job's own records: one ``NotificationJobRun`` row per run, and what a run did.

A run is written ``RUNNING`` when it starts and closed ``SUCCEEDED`` or ``FAILED``
when it ends. A process that dies in between (``kill -9``, a lost machine) cannot
close its record; the next run that takes the job lock knows that nothing else
is running, so it marks any record still ``RUNNING`` as ``ABANDONED``, with the
moment it noticed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, Table, insert, update

from rewards.ids import new_id
from rewards.models import NotificationJobRun
from rewards.notifications.tiers import Status

log = logging.getLogger("rewards.notifications.job")

R: Table = NotificationJobRun.__table__  # type: ignore[assignment]


class RunStatus(StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    ABANDONED = "ABANDONED"


FINISHED_RUN_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.ABANDONED)

ABANDONED_REASON = "the process running it stopped before it finished"


@dataclass
class JobSummary:
    """What one run did; ``as_json`` is the CLI's and the API's machine-readable form."""

    as_of: datetime
    dry_run: bool
    run_id: str | None = None
    expired_entries: int = 0
    expired_points: int = 0
    planned: int = 0
    resent: int = 0
    by_type: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    failures: Counter[str] = field(default_factory=Counter)
    duration_seconds: float = 0.0
    error: str | None = None
    abandoned_runs: int = 0
    synced_accounts: int = 0
    """Accounts whose ledger other applications changed, brought up to date first."""
    ledger_anomalies: int = 0
    """Debits among those synced that their instant could not cover (see LedgerAnomaly)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per step: ``sync``, ``expire``, then ``plan`` (a dry run) or ``send``."""

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - started

    def count(self, status: Status) -> int:
        return sum(c[status.value] for c in self.by_type.values())

    @property
    def sent(self) -> int:
        return self.count(Status.SENT)

    @property
    def failed(self) -> int:
        return self.count(Status.FAILED)

    @property
    def skipped(self) -> int:
        return self.count(Status.SKIPPED)

    def record(self, notification_type: str, status: Status, reason: str | None = None) -> None:
        self.by_type[notification_type][status.value] += 1
        if status is Status.FAILED and reason:
            self.failures[reason.split(":", 1)[0]] += 1

    def counts_by_type(self) -> dict[str, dict[str, int]]:
        return {t: dict(sorted(c.items())) for t, c in sorted(self.by_type.items())}

    def as_json(self) -> dict[str, Any]:
        return {
            "asOf": self.as_of.isoformat() + "Z",
            "dryRun": self.dry_run,
            "runId": self.run_id,
            "syncedAccounts": self.synced_accounts,
            "ledgerAnomalies": self.ledger_anomalies,
            "expiredEntries": self.expired_entries,
            "expiredPoints": self.expired_points,
            "planned": self.planned,
            "sent": self.sent,
            "failed": self.failed,
            "skipped": self.skipped,
            "resent": self.resent,
            "byType": self.counts_by_type(),
            "failuresByReason": dict(self.failures),
            "durationSeconds": round(self.duration_seconds, 3),
            "timings": {step: round(seconds, 3) for step, seconds in self.timings.items()},
            "error": self.error,
        }


def abandon_dead_runs(conn: Connection, now: datetime) -> int:
    """Close the records left ``RUNNING`` by dead processes; call it holding the job lock.

    Holding the lock proves that no other run is alive: a lock dies with its process.
    Returns how many records were closed.
    """
    result = conn.execute(
        update(R)
        .where(R.c.status == RunStatus.RUNNING.value)
        .values(
            status=RunStatus.ABANDONED.value,
            abandonedAt=now,
            error=ABANDONED_REASON,
        )
    )
    return result.rowcount


def start_run(engine: Engine, summary: JobSummary, trigger: str, now: datetime) -> str:
    """Close dead runs' records and open this run's; returns its id."""
    run_id = new_id()
    with engine.begin() as conn:
        summary.abandoned_runs = abandon_dead_runs(conn, now)
        conn.execute(
            insert(R).values(
                id=run_id,
                asOf=summary.as_of,
                startedAt=now,
                status=RunStatus.RUNNING.value,
                trigger=trigger,
            )
        )
    if summary.abandoned_runs:
        log.warning(
            "[CheckExpiringPointsJob] %d earlier run(s) were left RUNNING by a process that died;"
            " marked ABANDONED",
            summary.abandoned_runs,
        )
    summary.run_id = run_id
    return run_id


def _figures(summary: JobSummary) -> dict[str, Any]:
    return {
        "expiredEntries": summary.expired_entries,
        "expiredPoints": summary.expired_points,
        "planned": summary.planned,
        "sent": summary.sent,
        "failed": summary.failed,
        "skipped": summary.skipped,
        "resent": summary.resent,
        "countsByType": summary.counts_by_type(),
    }


def record_progress(engine: Engine, summary: JobSummary) -> None:
    """Write what the run has done so far into its record, while it is still ``RUNNING``:
    operators watching a long run see it move. Never raises; the end records it anyway."""
    try:
        with engine.begin() as conn:
            conn.execute(
                update(R)
                .where(R.c.id == summary.run_id, R.c.status == RunStatus.RUNNING.value)
                .values(**_figures(summary))
            )
    except Exception:
        log.warning(
            "[CheckExpiringPointsJob] could not record the progress of run %s", summary.run_id
        )


def finish_run(engine: Engine, summary: JobSummary, status: RunStatus, now: datetime) -> None:
    """Close this run's record with what it did; never raises (the database may be what failed)."""
    try:
        with engine.begin() as conn:
            conn.execute(
                update(R)
                .where(R.c.id == summary.run_id)
                .values(
                    status=status.value,
                    finishedAt=now,
                    **_figures(summary),
                    error=summary.error,
                )
            )
    except Exception:
        log.exception("[CheckExpiringPointsJob] could not record the end of run %s", summary.run_id)


def describe_error(exc: BaseException) -> str:
    """One line for the run record and the log: the driver's message, not the whole SQL."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"[:500]
