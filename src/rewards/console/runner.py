"""Runs started from the console: the job on a background thread, so the page answers at once.

A real run writes its own record (``NotificationJobRun``, trigger ``console``) and
its progress into it about once a second; the console shows that record. A dry
run writes nothing, so its result is kept here, in this process, until it is
read (the last :data:`KEPT` tasks). With ``rewards serve --workers N`` each
process keeps its own tasks: a task page served by another process says so,
and the run itself is on the Runs page all the same.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import Engine

from rewards.clock import utcnow
from rewards.config import Settings
from rewards.ids import new_id
from rewards.notifications.job import CheckExpiringPointsJob
from rewards.notifications.runs import JobSummary

log = logging.getLogger("rewards.console")

TRIGGER = "console"
"""``NotificationJobRun.trigger`` of runs started from the console."""
KEPT = 20


class TaskState(StrEnum):
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"


@dataclass
class Task:
    """One run or dry run started from the console, as this process knows it."""

    id: str
    dry_run: bool
    day: date | None
    operator: str
    started_at: datetime
    state: TaskState = TaskState.RUNNING
    summary: JobSummary | None = None
    error: str | None = None
    finished_at: datetime | None = None
    thread: threading.Thread | None = field(default=None, repr=False)


class ConsoleRunner:
    """Starts job runs on threads of their own and remembers the last few."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        job_factory: Callable[[Engine, Settings], CheckExpiringPointsJob] = CheckExpiringPointsJob,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._clock = clock
        self._job_factory = job_factory
        self._tasks: OrderedDict[str, Task] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, *, day: date | None, dry_run: bool, operator: str) -> Task:
        """Start a run (or a dry run) as of ``day`` (default: now) and return at once."""
        task = Task(new_id(), dry_run, day, operator, self._clock())
        thread = threading.Thread(
            target=self._run, args=(task,), name=f"console-run-{task.id}", daemon=True
        )
        task.thread = thread
        with self._lock:
            self._tasks[task.id] = task
            while len(self._tasks) > KEPT:
                oldest = next(iter(self._tasks.values()))
                if oldest.state is TaskState.RUNNING:
                    break
                self._tasks.popitem(last=False)
        log.info(
            "[console] %s started a %s as of %s",
            operator,
            "dry run" if dry_run else "run",
            day.isoformat() if day else "now",
        )
        thread.start()
        return task

    def _run(self, task: Task) -> None:
        try:
            job = self._job_factory(self._engine, self._settings)
            task.summary = job.run(day=task.day, dry_run=task.dry_run, trigger=TRIGGER)
            task.state = TaskState.DONE
        except Exception as exc:  # shown on the task's page; the run's record has it too
            task.error = str(exc) or type(exc).__name__
            task.state = TaskState.FAILED
            log.warning("[console] the run started by %s failed: %s", task.operator, task.error)
        finally:
            task.finished_at = self._clock()

    def get(self, task_id: str) -> Task | None:
        with self._lock:
            return self._tasks.get(task_id)

    def running(self) -> list[Task]:
        with self._lock:
            return [t for t in self._tasks.values() if t.state is TaskState.RUNNING]

    def close(self, timeout: float = 60.0) -> None:
        """Wait for the runs still going (the server is stopping)."""
        for task in self.running():
            if task.thread is not None:
                task.thread.join(timeout)
