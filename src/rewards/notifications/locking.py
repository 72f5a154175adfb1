"""One instance runs the job at a time.

PostgreSQL: a session-level advisory lock held on a dedicated connection, so it
is released even if the process dies. SQLite: an OS file lock beside the
database file. Several processes may serve the API; only one runs the job.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from sqlalchemy import Engine, text

# An arbitrary, fixed 64-bit key: "rewards" + "job" in ASCII, truncated.
ADVISORY_LOCK_KEY = 0x7265776172646A


class JobAlreadyRunning(Exception):
    def __init__(self) -> None:
        super().__init__("CheckExpiringPointsJob is already running elsewhere; nothing to do")


@contextmanager
def job_lock(engine: Engine) -> Iterator[None]:
    """Hold the job's lock for the block, or raise :class:`JobAlreadyRunning` at once."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            got = conn.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
            ).scalar_one()
            conn.commit()
            if not got:
                raise JobAlreadyRunning()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
                conn.commit()
        return
    database = engine.url.database
    path = Path(f"{database}.job.lock") if database and database != ":memory:" else None
    if path is None:
        yield
        return
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout as exc:
        raise JobAlreadyRunning() from exc
    try:
        yield
    finally:
        lock.release()
