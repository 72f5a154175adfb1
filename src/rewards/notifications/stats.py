"""Operator views of the reminders: counts by status and tier, runs, failure reasons."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, func, select

from rewards.models import NotificationJobRun, NotificationLog

N: Table = NotificationLog.__table__  # type: ignore[assignment]
R: Table = NotificationJobRun.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Stats:
    by_status: dict[str, int]
    by_type_and_status: dict[str, dict[str, int]]
    failures_by_reason: dict[str, int]
    recent_runs: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {
            "byStatus": self.by_status,
            "byTypeAndStatus": self.by_type_and_status,
            "failuresByReason": self.failures_by_reason,
            "recentRuns": self.recent_runs,
        }


def run_as_json(row: Any) -> dict[str, Any]:
    def stamp(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat() + "Z"

    return {
        "id": row.id,
        "asOf": stamp(row.asOf),
        "startedAt": stamp(row.startedAt),
        "finishedAt": stamp(row.finishedAt),
        "status": row.status,
        "trigger": row.trigger,
        "expiredEntries": row.expiredEntries,
        "expiredPoints": row.expiredPoints,
        "planned": row.planned,
        "sent": row.sent,
        "failed": row.failed,
        "skipped": row.skipped,
        "resent": row.resent,
        "byType": row.countsByType or {},
        "error": row.error,
    }


def recent_runs(conn: Connection, limit: int = 10) -> list[dict[str, Any]]:
    rows = conn.execute(select(R).order_by(R.c.startedAt.desc(), R.c.id.desc()).limit(limit))
    return [run_as_json(r) for r in rows]


def notification_stats(conn: Connection, *, runs: int = 10) -> Stats:
    """The runbook's ``GROUP BY status`` query, by tier too, plus why reminders failed."""
    by_status: dict[str, int] = dict(
        conn.execute(select(N.c.status, func.count()).group_by(N.c.status)).all()
    )
    by_type: dict[str, dict[str, int]] = {}
    for notification_type, status, count in conn.execute(
        select(N.c.notificationType, N.c.status, func.count()).group_by(
            N.c.notificationType, N.c.status
        )
    ):
        by_type.setdefault(notification_type, {})[status] = count
    reasons: dict[str | None, int] = dict(
        conn.execute(
            select(N.c.failureReason, func.count())
            .where(N.c.status == "FAILED")
            .group_by(N.c.failureReason)
            .order_by(func.count().desc())
        ).all()
    )
    return Stats(
        by_status=dict(sorted(by_status.items())),
        by_type_and_status=dict(sorted(by_type.items())),
        failures_by_reason={str(k): v for k, v in reasons.items()},
        recent_runs=recent_runs(conn, runs),
    )
