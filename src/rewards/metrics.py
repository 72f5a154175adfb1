"""Prometheus metrics.

Counts that matter across processes (runs by outcome, reminders by status and
tier, the last successful run) are read from ``NotificationJobRun`` at scrape
time — a small table, one row a day — so a run from the CLI shows up as well
as one from the server's scheduler. SMTP latency is observed in-process.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from datetime import UTC

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from rewards.models import NotificationJobRun
from rewards.notifications.runs import FINISHED_RUN_STATUSES, RunStatus

log = logging.getLogger("rewards.metrics")

SEND_SECONDS = Histogram(
    "rewards_email_send_seconds",
    "Time to hand one reminder to the delivery backend (SMTP: until the server accepted it)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=None,
)


def observe_send(seconds: float) -> None:
    SEND_SECONDS.observe(seconds)


class JobRunCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        runs = CounterMetricFamily(
            "rewards_job_runs",
            "Finished runs of CheckExpiringPointsJob by outcome (succeeded, failed, abandoned)",
            labels=["outcome"],
        )
        running = GaugeMetricFamily(
            "rewards_job_running", "Runs of CheckExpiringPointsJob in progress"
        )
        sent = CounterMetricFamily(
            "rewards_notifications",
            "Reminder decisions recorded by job runs, by status and tier",
            labels=["status", "notification_type"],
        )
        last = GaugeMetricFamily(
            "rewards_job_last_success_timestamp_seconds",
            "When the last successful run of CheckExpiringPointsJob finished (Unix time)",
        )
        up = GaugeMetricFamily("rewards_database_up", "1 if the database answered the scrape")
        R = NotificationJobRun
        try:
            with self.engine.connect() as conn:
                outcomes = conn.execute(select(R.status, func.count()).group_by(R.status)).all()
                finished = conn.scalar(
                    select(func.max(R.finishedAt)).where(R.status == RunStatus.SUCCEEDED.value)
                )
                by_type: Counter[tuple[str, str]] = Counter()
                for (counts,) in conn.execute(
                    select(R.countsByType).where(R.countsByType.is_not(None))
                ):
                    for notification_type, statuses in (counts or {}).items():
                        for status, n in statuses.items():
                            by_type[(status, notification_type)] += int(n)
        except Exception as exc:  # a scrape must not fail because the database did
            log.warning("metrics: database unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        # A counter only grows: a run counts once it has finished; in progress it is a gauge.
        by_outcome: dict[str, int] = {str(status): int(n) for status, n in outcomes}
        for outcome in FINISHED_RUN_STATUSES:
            runs.add_metric([outcome.value.lower()], by_outcome.get(outcome.value, 0))
        running.add_metric([], by_outcome.get(RunStatus.RUNNING.value, 0))
        for (status, notification_type), count in sorted(by_type.items()):
            sent.add_metric([status, notification_type], count)
        if finished is not None:
            last.add_metric([], finished.replace(tzinfo=UTC).timestamp())
        yield from (up, runs, running, sent, last)


def build_registry(engine: Engine) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(JobRunCollector(engine))
    registry.register(SEND_SECONDS)
    return registry
