"""Benchmark of the lot projection and the daily job on PostgreSQL, in one run on the same rows.

    python bench/job.py --ledger-rows 1000000          # full size
    python bench/job.py --ledger-rows 20000 --check    # smoke size, as CI runs it

It creates a throwaway database on ``BENCH_DATABASE_URL`` (default: the local
server), migrates it to head, and generates a programme relative to the real
clock (:mod:`programme`): two years of history up to yesterday's run, lots
expiring up to a year ahead, promotional credits, never-expiring adjustments,
redemptions that respect the chronological rule, ``EXPIRE`` entries for past
expiry instants and yesterday's ``NotificationLog`` rows. Then, in order:

1. the history goes in with ``COPY``, as another application writes it (the
   triggers record its accounts in ``LedgerChange``);
2. ``rewards ledger sync`` builds the lots, in a child process (duration, rows/s,
   peak memory); then the projection's tables are vacuumed, as autovacuum would
   soon do in a deployment;
3. the storage of the ledger and of the projection;
4. one more day of activity goes in with ``COPY``; the daily job's dry run for
   today (sync + expire + plan) runs in a child process, three times (it rolls
   back), against the seed's gross read of the window as the baseline; the child
   first settles as the scheduler's process is (a pooled connection, its start-up
   heap collected: :func:`settle_like_a_scheduler`). Between two runs the tables a
   run writes are vacuumed: a rolled-back run leaves its rows behind as dead
   tuples, which the next would otherwise step over (a real run commits once a day,
   and autovacuum tidies up in between);
5. a second ``rewards ledger sync`` applies the day for real, so the lots say what
   is left at the run's instant; the pooled formula of the earlier version is
   compared with them, member-date by member-date; then the daily run's dry run
   three times more, with nothing left to apply: its cost where the scheduler's
   ledger sync (``REWARDS_LEDGER_SYNC_SECONDS``) kept the lots current through the day;
6. the seed's three look-ups, timed, with ``EXPLAIN`` confirming index use;
7. ``rewards ledger check --sample 2000``;
8. the write cost of the projection's triggers: single-row inserts and a bulk
   ``COPY`` with the triggers enabled and disabled, alternated.

``--check`` exits non-zero if the ledger check finds a mismatch, a seed look-up
does not use an index, or the job's plan (or the projection) disagrees with the
generator's own chronological simulation of every account.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import queue
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import make_url

from procfs import tree_pss_kib, vm_hwm_kib
from programme import (
    ACCOUNT_COLUMNS,
    LEDGER_COLUMNS,
    LOG_COLUMNS,
    USER_COLUMNS,
    WINDOW_DAYS,
    Horizon,
    Programme,
    stamp,
    to_ms,
)
from rewards import migrate
from rewards.clock import utcnow
from rewards.config import load_settings
from rewards.db import BATCH_WORK_MEM, create_db_engine
from rewards.notifications.job import CheckExpiringPointsJob
from rewards.notifications.planner import DueKey

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RUN_HOUR = 9
TIERS = (30, 7, 1)
CHUNK_ROWS = 100_000
"""Ledger rows per COPY statement of the history load (flushed at a member boundary)."""
JOB_RUNS = 3
SINGLE_INSERTS = 2000
SINGLE_BLOCK = 250
TRIGGER_COPY_ROWS = 100_000
TRIGGER_COPY_ROUNDS = 3
RUN_TABLES = (
    "PointLedger",
    "PointLot",
    "PointAllocation",
    "LedgerSyncState",
    "LedgerChange",
    "Account",
)
"""What the daily run's dry run writes (or locks), and rolls back."""
PROJECTION_TABLES = (
    "PointLot",
    "PointAllocation",
    "LedgerAnomaly",
    "LedgerChange",
    "LedgerSyncState",
)


def say(message: str) -> None:
    print(message, flush=True)


# -- the clock ------------------------------------------------------------------------------


def choose_as_of() -> tuple[datetime, bool]:
    """Today's scheduled run if it is past, else now; and whether it is the scheduled one."""
    now = utcnow()
    scheduled = datetime.combine(now.date(), datetime.min.time()).replace(hour=RUN_HOUR)
    if now >= scheduled:
        return scheduled, True
    return now.replace(microsecond=0), False


# -- child processes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Child:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_mib: float
    """The child's own peak RSS."""
    tree_peak_mib: float = 0.0
    """The peak of the PSS of the child and its worker processes summed (polled)."""

    @property
    def memory_mib(self) -> float:
        """What the command costs the machine at its peak: the child's own peak RSS, or its
        processes' summed PSS where it starts workers (a large ``rewards ledger sync``)."""
        return max(self.peak_mib, self.tree_peak_mib)


TIME = Path("/usr/bin/time")


def run_child(args: Sequence[str], env: dict[str, str] | None = None) -> Child:
    """Run ``args`` and measure its own peak RSS.

    Not with ``getrusage``/``wait4`` on the child directly: Linux folds the memory
    the process had before ``exec`` (a copy of this large parent) into its
    ``ru_maxrss``. ``/usr/bin/time`` is a small process in between, so the figure
    it reports is the child's own; without it, ``VmHWM`` is polled from ``/proc``.
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as peak,
    ):
        command = list(args)
        if TIME.exists():
            command = [str(TIME), "-f", "%M", "-o", peak.name, *command]
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        polled = tree = 0
        while process.poll() is None:
            polled = max(polled, vm_hwm_kib(process.pid))
            tree = max(tree, tree_pss_kib(process.pid))
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        reported = peak.read().strip().splitlines()
        kib = int(reported[-1]) if reported and reported[-1].isdigit() else polled
        out.seek(0)
        err.seek(0)
        return Child(
            process.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            seconds,
            kib / 1024,
            tree / 1024,
        )


def rewards_cli(url: str, *args: str) -> Child:
    env = dict(os.environ, DATABASE_URL=url, COLUMNS="200")
    return run_child([sys.executable, "-m", "rewards", *args], env=env)


def one_line(text: str) -> str:
    return " ".join(text.split())


# -- loading --------------------------------------------------------------------------------


@dataclass
class Load:
    seconds: float = 0.0
    generator_cpu: float = 0.0
    chunks: int = 0


class CopyWriter:
    """COPY chunks on a thread of their own, so the server works while the next one is made."""

    def __init__(self, url: str) -> None:
        self.queue: queue.Queue[list[tuple[str, str, str]] | None] = queue.Queue(maxsize=3)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self.thread.start()

    def _run(self, url: str) -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                while (chunk := self.queue.get()) is not None:
                    for table, columns, data in chunk:
                        if data:
                            with conn.cursor().copy(
                                f'COPY "{table}" ({columns}) FROM STDIN'
                            ) as copy:
                                copy.write(data)
        except BaseException as exc:
            self.error = exc
            while self.queue.get() is not None:  # let the producer finish
                pass

    def put(self, chunk: list[tuple[str, str, str]]) -> None:
        if self.error is not None:
            raise RuntimeError("COPY failed") from self.error
        self.queue.put(chunk)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise RuntimeError("COPY failed") from self.error


def load_history(
    url: str, programme: Programme, ledger_rows: int, new_day: Path, truth: Path
) -> Load:
    """Generate and COPY the history, members first (foreign keys), a chunk at a time.

    Each chunk is its own transaction, as another application's bulk writes would
    be. The next day's rows and the truth of the window go to files.
    """
    report = Load()
    started = time.perf_counter()
    cpu = time.thread_time()
    writer = CopyWriter(url)
    with new_day.open("w") as day_file, truth.open("w") as truth_file:

        def drain() -> None:
            chunk = [
                ("User", USER_COLUMNS, "".join(programme.users)),
                ("Account", ACCOUNT_COLUMNS, "".join(programme.accounts)),
                ("PointLedger", LEDGER_COLUMNS, "".join(programme.ledger)),
                ("NotificationLog", LOG_COLUMNS, "".join(programme.logs)),
            ]
            for lines in (programme.users, programme.accounts, programme.ledger, programme.logs):
                lines.clear()
            day_file.writelines(programme.new_day)
            programme.new_day.clear()
            truth_file.writelines(programme.truth)
            programme.truth.clear()
            report.chunks += 1
            writer.put(chunk)

        while programme.history_rows < ledger_rows:
            programme.member()
            if len(programme.ledger) >= CHUNK_ROWS:
                drain()
        drain()
        report.generator_cpu = time.thread_time() - cpu
        writer.close()
    report.seconds = time.perf_counter() - started
    return report


def copy_file(url: str, path: Path) -> tuple[float, int]:
    """COPY a spooled file of ledger rows in one statement; (seconds, rows)."""
    data = path.read_text()
    started = time.perf_counter()
    with (
        psycopg.connect(url, autocommit=True) as conn,
        conn.cursor().copy(f'COPY "PointLedger" ({LEDGER_COLUMNS}) FROM STDIN') as copy,
    ):
        copy.write(data)
    return time.perf_counter() - started, data.count("\n")


def vacuum_analyze(url: str, tables: Iterable[str] = ()) -> float:
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        names = ", ".join(f'"{t}"' for t in tables)
        conn.execute(f"VACUUM ANALYZE {names}")
    return time.perf_counter() - started


def snapshot(url: str, name: str) -> None:
    """A copy of the benchmark's database as it stands (no one may be connected to it)."""
    source = make_url(url)
    admin = source.set(database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source.database}" STRATEGY FILE_COPY')
    say(f"snapshot of the database before the daily run: {name}")


def scalar(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


# -- the daily job, in a child process --------------------------------------------------------


class _PlanRecordingJob(CheckExpiringPointsJob):
    """The job, unchanged, that also writes each planned key to a file as it goes."""

    plan_out: Path | None = None

    def _plan(self, conn: Connection, as_of: datetime) -> Iterable[list[DueKey]]:
        if self.plan_out is None:
            yield from super()._plan(conn, as_of)
            return
        with self.plan_out.open("w") as out:
            for batch in super()._plan(conn, as_of):
                out.write(
                    "".join(
                        f"{k.user_id}\t{k.notification_type}\t{k.expiration_date}\t{k.points}\n"
                        for k in batch
                    )
                )
                yield batch


def job_phase(args: argparse.Namespace) -> int:
    """The job's dry run for the as-of day; prints its summary as JSON."""
    as_of = datetime.fromisoformat(args.as_of)
    settings = load_settings(
        database_url=args.url,
        email_backend="file",
        outbox_dir=Path(args.outbox),
        timezone="UTC",
        notify_cron=f"0 {RUN_HOUR} * * *",
        notify_tiers=TIERS,
    )
    engine = create_db_engine(settings.database_url)
    if args.fixed_clock:  # before today's scheduled time: the run happens "now", frozen
        job = _PlanRecordingJob(engine, settings, clock=lambda: as_of)
        day = None
    else:
        job = _PlanRecordingJob(engine, settings)
        day = as_of.date()
    job.plan_out = Path(args.plan_out) if args.plan_out else None
    settle_like_a_scheduler(engine)
    summary = job.run(day=day, dry_run=True)
    engine.dispose()
    print(json.dumps(summary.as_json()))
    return 0


def settle_like_a_scheduler(engine: Engine) -> None:
    """Put this fresh child in the state of the process the job runs in every day (the
    scheduler of ``rewards serve``): a connection in the pool, and the start-up heap
    settled. Else the run pays for this process's start, not for its work: the
    connection and the dialect's first queries, and CPython's first full collection,
    which scans every object the imports made (30-150 ms, whatever the ledger's size).
    """
    with engine.connect():
        pass
    gc.collect()
    gc.freeze()


def run_job_child(
    url: str, as_of: datetime, fixed_clock: bool, plan_out: Path | None, outbox: str
) -> tuple[dict[str, Any], Child]:
    args = [sys.executable, __file__, "--phase", "job", "--url", url, "--as-of", as_of.isoformat()]
    args += ["--outbox", outbox]
    if fixed_clock:
        args.append("--fixed-clock")
    if plan_out is not None:
        args += ["--plan-out", str(plan_out)]
    child = run_child(args)
    if child.returncode != 0:
        raise RuntimeError(f"the job's child failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1]), child


# -- the window: gross, pooled, projection, truth -------------------------------------------

GROSS = """
SELECT a."userId", (l."expiresAt" AT TIME ZONE 'UTC' AT TIME ZONE %(tz)s)::date, SUM(l."credit")
FROM "PointLedger" l JOIN "Account" a ON a."id" = l."accountId"
WHERE l."credit" > 0 AND l."expiresAt" > %(as_of)s AND l."expiresAt" < %(end)s
GROUP BY 1, 2
"""

LOWER_BOUND = """
WITH due AS (
    SELECT DISTINCT "accountId" FROM "PointLedger"
    WHERE "credit" > 0 AND "expiresAt" > %(as_of)s AND "expiresAt" < %(end)s
), live AS (
    SELECT l."accountId", l."expiresAt", l."credit",
           SUM(l."credit") OVER (PARTITION BY l."accountId"
                                 ORDER BY l."expiresAt", l."createdAt", l."id") AS running
    FROM "PointLedger" l JOIN due USING ("accountId")
    WHERE l."credit" > 0 AND l."expiresAt" > %(as_of)s AND l."expiresAt" < %(end)s
), totals AS (
    SELECT l."accountId", SUM(l."debit") AS d,
           SUM(CASE WHEN l."credit" > 0 AND l."expiresAt" <= %(as_of)s
                    THEN l."credit" ELSE 0 END) AS s
    FROM "PointLedger" l JOIN due USING ("accountId")
    GROUP BY l."accountId"
)
SELECT a."userId",
       (l."expiresAt" AT TIME ZONE 'UTC' AT TIME ZONE %(tz)s)::date AS day,
       SUM(GREATEST(0, LEAST(l.running - GREATEST(t.d - t.s, 0), l."credit")))::int AS points
FROM live l JOIN totals t USING ("accountId") JOIN "Account" a ON a."id" = l."accountId"
GROUP BY 1, 2
HAVING SUM(GREATEST(0, LEAST(l.running - GREATEST(t.d - t.s, 0), l."credit"))) > 0
"""
"""The earlier version's pooled formula, ``clamp(C_i - D, 0, credit_i)`` per lot."""

PROJECTION_WINDOW = """
SELECT a."userId", (l."expiresAt" AT TIME ZONE 'UTC' AT TIME ZONE %(tz)s)::date,
       SUM(l."remaining")
FROM "PointLot" l JOIN "Account" a ON a."id" = l."accountId"
WHERE l."remaining" > 0 AND NOT l."expired"
  AND l."expiresAt" > %(as_of)s AND l."expiresAt" < %(end)s
GROUP BY 1, 2
"""
"""What the lots say is left, per member and date of the window."""

COMPARE = """
SELECT count(*) FILTER (WHERE coalesce(x.points, 0) <> coalesce(y.points, 0)),
       count(*) FILTER (WHERE coalesce(x.points, 0) > coalesce(y.points, 0)),
       count(*) FILTER (WHERE coalesce(x.points, 0) < coalesce(y.points, 0)),
       count(*) FILTER (WHERE x.points IS NULL),
       count(*)
FROM bench.{x} x FULL JOIN bench.{y} y USING (user_id, day)
"""
"""(differ, x higher, x lower, missing from x, member-dates in either)."""

EXPECTED_PLAN = """
WITH keyed AS (
    SELECT t.user_id, t.day, t.points,
           CASE WHEN t.day - %(today)s <= 1 THEN 'EXPIRATION_1_DAY'
                WHEN t.day - %(today)s <= 7 THEN 'EXPIRATION_7_DAYS'
                ELSE 'EXPIRATION_30_DAYS' END AS kind
    FROM bench.truth t
), expected AS (
    SELECT k.* FROM keyed k
    WHERE NOT EXISTS (
        SELECT 1 FROM "NotificationLog" n
        WHERE n."userId" = k.user_id AND n."notificationType" = k.kind
          AND n."expirationDate" = k.day::timestamp AND n."status" <> 'FAILED')
      AND (SELECT count(*) FROM "NotificationLog" n
           WHERE n."userId" = k.user_id AND n."notificationType" = k.kind
             AND n."expirationDate" = k.day::timestamp AND n."status" = 'FAILED') < 3
)
{select}
FROM expected e FULL JOIN bench.plan p USING (user_id, kind, day)
"""
"""The job's plan against the generator's truth minus the keys yesterday's run settled."""


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median seconds of ``repeat`` calls, and the last result."""
    times = []
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


@dataclass
class Window:
    gross_seconds: float = 0.0
    gross_keys: int = 0
    pooled_seconds: float = 0.0
    pooled: tuple[int, ...] = ()
    gross: tuple[int, ...] = ()
    truth: tuple[int, ...] = ()
    plan: tuple[int, ...] = ()
    examples: list[tuple[Any, ...]] = field(default_factory=list)


def batch_session(conn: psycopg.Connection[Any]) -> None:
    """The session settings the job's planner uses for its batch statements."""
    conn.execute(f"SET work_mem = '{BATCH_WORK_MEM}'")
    conn.execute("SET jit = off")


def time_gross(url: str, params: dict[str, Any]) -> tuple[float, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        batch_session(conn)
        seconds, rows = timed(lambda: conn.execute(GROSS, params).fetchall(), repeat=5)
    return seconds, len(rows)


def compare_window(
    url: str, params: dict[str, Any], truth: Path, plan: Path, window: Window
) -> None:
    """Load the generator's truth and the job's plan next to the database's own answers."""
    with psycopg.connect(url, autocommit=True) as conn:
        batch_session(conn)
        conn.execute("CREATE SCHEMA bench")
        for name in ("truth", "projection", "pooled", "gross"):
            conn.execute(f"CREATE TABLE bench.{name} (user_id text, day date, points bigint)")
        conn.execute("CREATE TABLE bench.plan (user_id text, kind text, day date, points bigint)")
        for name, path in (("truth", truth), ("plan", plan)):
            with conn.cursor().copy(f"COPY bench.{name} FROM STDIN") as copy:
                copy.write(path.read_text())
        conn.execute(f"INSERT INTO bench.projection {PROJECTION_WINDOW}", params)
        conn.execute(f"INSERT INTO bench.gross {GROSS}", params)
        started = time.perf_counter()
        conn.execute(f"INSERT INTO bench.pooled {LOWER_BOUND}", params)
        window.pooled_seconds = time.perf_counter() - started
        conn.execute("ANALYZE bench.truth, bench.plan, bench.projection, bench.pooled, bench.gross")

        def compare(x: str, y: str) -> tuple[int, ...]:
            row = conn.execute(COMPARE.format(x=x, y=y)).fetchone()
            assert row is not None
            return tuple(int(v) for v in row)

        window.pooled = compare("pooled", "projection")
        window.gross = compare("gross", "projection")
        window.truth = compare("truth", "projection")
        today = {"today": params["as_of"].date()}
        counted = EXPECTED_PLAN.format(
            select="SELECT count(*) FILTER (WHERE e.points IS DISTINCT FROM p.points),"
            " count(e.user_id), count(p.user_id)"
        )
        row = conn.execute(counted, today).fetchone()
        assert row is not None
        window.plan = tuple(int(v) for v in row)
        # A few examples of any disagreement, to start looking from.
        examples = EXPECTED_PLAN.format(
            select="SELECT 'plan', user_id, kind, day, e.points AS expected, p.points AS planned"
        )
        window.examples = conn.execute(
            f"SELECT * FROM ({examples}) x WHERE expected IS DISTINCT FROM planned LIMIT 5", today
        ).fetchall()
        window.examples += conn.execute(
            "SELECT 'lots', user_id, day, t.points AS simulated, p.points AS projected"
            " FROM bench.truth t FULL JOIN bench.projection p USING (user_id, day)"
            " WHERE t.points IS DISTINCT FROM p.points LIMIT 5"
        ).fetchall()


# -- the seed's look-ups ----------------------------------------------------------------------


@dataclass
class Lookup:
    name: str
    median_ms: float
    server_ms: float
    target_ms: float
    rows: int
    uses_index: bool
    plan: str


def plan_nodes(plan: dict[str, Any]) -> list[str]:
    nodes: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        nodes.append(
            f"{node['Node Type']}({node.get('Index Name') or node.get('Relation Name', '')})"
        )
        for child in node.get("Plans", []):
            walk(child)

    walk(plan)
    return nodes


def seed_lookups(
    url: str, as_of: datetime, member: str, log_key: tuple[str, str, datetime] | None
) -> list[Lookup]:
    """The seed's three queries, timed (median of 20), with EXPLAIN ANALYZE's plan."""
    queries: list[tuple[str, str, dict[str, Any], float]] = [
        (
            "expirations in a date range (7 days)",
            'SELECT "id", "accountId", "credit", "expiresAt" FROM "PointLedger"'
            ' WHERE "expiresAt" >= %(start)s AND "expiresAt" < %(end)s AND "credit" > 0',
            {"start": as_of, "end": as_of + timedelta(days=7)},
            100.0,
        ),
        (
            "one member's expirations",
            'SELECT l."expiresAt", l."credit" FROM "PointLedger" l'
            ' JOIN "Account" a ON a."id" = l."accountId"'
            ' WHERE a."userId" = %(user)s AND l."expiresAt" > %(as_of)s ORDER BY l."expiresAt"',
            {"user": member, "as_of": as_of},
            50.0,
        ),
    ]
    if log_key is not None:
        queries.append(
            (
                "dedup lookup",
                'SELECT "status" FROM "NotificationLog" WHERE "userId" = %(u)s'
                ' AND "notificationType" = %(t)s AND "expirationDate" = %(d)s',
                {"u": log_key[0], "t": log_key[1], "d": log_key[2]},
                10.0,
            )
        )
    results = []
    with psycopg.connect(url, autocommit=True) as conn:
        for name, sql, params, target in queries:
            seconds = []
            rows = 0
            for _ in range(20):
                started = time.perf_counter()
                rows = len(conn.execute(sql, params).fetchall())
                seconds.append(time.perf_counter() - started)
            explained = scalar(conn, f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)[0]
            nodes = plan_nodes(explained["Plan"])
            scans = any(
                n.startswith(("Seq Scan(PointLedger", "Seq Scan(NotificationLog")) for n in nodes
            )
            indexed = any("Index" in n or "Bitmap" in n for n in nodes)
            results.append(
                Lookup(
                    name,
                    statistics.median(seconds) * 1000,
                    float(explained["Execution Time"]),
                    target,
                    rows,
                    indexed and not scans,
                    " > ".join(nodes),
                )
            )
    return results


# -- the write cost of the triggers -----------------------------------------------------------


@dataclass
class TriggerCost:
    single_on_ms: float = 0.0
    single_off_ms: float = 0.0
    singles: int = 0
    copy_on_s: float = 0.0
    copy_off_s: float = 0.0
    copy_rows: int = 0
    changes_left: int = 0
    rows_left: int = 0


def set_triggers(conn: psycopg.Connection[Any], enabled: bool) -> None:
    conn.execute(f'ALTER TABLE "PointLedger" {"ENABLE" if enabled else "DISABLE"} TRIGGER USER')


def trigger_costs(url: str, members: int, as_of: datetime, seed: int) -> TriggerCost:
    """Another application's writes with the change triggers on and off, alternated (ABAB).

    The rows (ids ``cy…``) and the ``LedgerChange`` records they caused are removed
    afterwards, with the triggers off, so the projection is left as it was.
    """
    rng = random.Random(seed)
    cost = TriggerCost()

    def account() -> str:
        return f"ca{rng.randrange(members) * 4:023d}"

    counter = 0

    def next_id() -> str:
        nonlocal counter
        counter += 1
        return f"cy{counter:023d}"

    with psycopg.connect(url, autocommit=True) as conn:
        mark = int(scalar(conn, 'SELECT coalesce(max("id"), 0) FROM "LedgerChange"'))
        moment = as_of + timedelta(hours=1)
        insert = (
            'INSERT INTO "PointLedger" ("id", "accountId", "entryType", "credit", "createdAt",'
            ' "expiresAt") VALUES (%s, %s, %s, %s, %s, %s)'
        )
        on: list[float] = []
        off: list[float] = []
        for block in range(SINGLE_INSERTS // SINGLE_BLOCK):
            enabled = block % 2 == 0
            set_triggers(conn, enabled)
            timings = on if enabled else off
            for _ in range(SINGLE_BLOCK):
                moment += timedelta(milliseconds=7)
                values = (next_id(), account(), "EARN", 50, moment, moment + timedelta(days=365))
                started = time.perf_counter()
                conn.execute(insert, values)
                timings.append(time.perf_counter() - started)
        set_triggers(conn, True)
        cost.singles = len(on) + len(off)
        cost.single_on_ms = statistics.median(on) * 1000
        cost.single_off_ms = statistics.median(off) * 1000
        cleanup(conn, mark)

        cost.copy_rows = TRIGGER_COPY_ROWS
        copy_on: list[float] = []
        copy_off: list[float] = []
        for round_ in range(TRIGGER_COPY_ROUNDS * 2):
            enabled = round_ % 2 == 0
            lines = []
            for _ in range(cost.copy_rows):
                moment += timedelta(milliseconds=3)
                ms = to_ms(moment)
                lines.append(
                    f"{next_id()}\t{account()}\tEARN\t{rng.choice((20, 50, 100))}\t0\t\\N"
                    f"\t{stamp(ms)}\t{stamp(ms + 365 * 86_400_000)}\n"
                )
            data = "".join(lines)
            set_triggers(conn, enabled)
            started = time.perf_counter()
            with conn.cursor().copy(f'COPY "PointLedger" ({LEDGER_COLUMNS}) FROM STDIN') as copy:
                copy.write(data)
            (copy_on if enabled else copy_off).append(time.perf_counter() - started)
            set_triggers(conn, True)
            cleanup(conn, mark)
        cost.copy_on_s = statistics.median(copy_on)
        cost.copy_off_s = statistics.median(copy_off)
        cost.changes_left = int(scalar(conn, 'SELECT count(*) FROM "LedgerChange"'))
        cost.rows_left = int(
            scalar(
                conn, """SELECT count(*) FROM "PointLedger" WHERE "id" >= 'cy' AND "id" < 'cz'"""
            )
        )
    return cost


def cleanup(conn: psycopg.Connection[Any], mark: int) -> None:
    """Remove the bench's rows without recording them, and the changes they recorded."""
    set_triggers(conn, False)
    conn.execute("""DELETE FROM "PointLedger" WHERE "id" >= 'cy' AND "id" < 'cz'""")
    set_triggers(conn, True)
    conn.execute('DELETE FROM "LedgerChange" WHERE "id" > %s', (mark,))


# -- storage ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Storage:
    table: str
    heap: int
    indexes: int
    total: int


def storage(url: str) -> list[Storage]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname, pg_relation_size(c.oid), pg_indexes_size(c.oid),"
            " pg_total_relation_size(c.oid) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'"
            " WHERE c.relname = ANY(%s)",
            (["PointLedger", *PROJECTION_TABLES],),
        ).fetchall()
    found = {r[0]: Storage(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows}
    return [found[t] for t in ("PointLedger", *PROJECTION_TABLES)]


def mib(size: float) -> str:
    return f"{size / 2**20:,.1f} MiB"


# -- the report ------------------------------------------------------------------------------


@dataclass
class Report:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, what: str, value: str, target: str = "", met: bool | None = None) -> None:
        verdict = "" if met is None else ("ok" if met else "MISSED")
        self.rows.append((what, value, target, verdict))

    def section(self, title: str) -> None:
        self.rows.append((f"-- {title}", "", "", ""))

    def fail(self, why: str) -> None:
        self.failures.append(why)

    def print(self) -> None:
        lines = [r for r in self.rows if not r[0].startswith("-- ")]
        width = max(len(r[0]) for r in lines)
        value_width = max(len(r[1]) for r in lines)
        target_width = max(len(r[2]) for r in lines)
        say("")
        say(f"{'measure':{width}}  {'value':>{value_width}}  {'target':{target_width}}")
        for what, value, target, verdict in self.rows:
            if what.startswith("-- "):
                say(what)
                continue
            say(f"{what:{width}}  {value:>{value_width}}  {target:{target_width}}  {verdict}")


def parse_sync(child: Child) -> tuple[int, int, int, float]:
    """(accounts, replayed, rows read, seconds) from ``rewards ledger sync``'s last line."""
    text = one_line(child.stdout)
    if "up to date: no changes" in text:
        return 0, 0, 0, 0.0
    found = re.search(
        r"Brought ([\d,]+) accounts up to date \(([\d,]+) replayed.*?([\d,]+) ledger rows read"
        r" in ([\d.]+)s",
        text,
    )
    if found is None:
        raise RuntimeError(f"unexpected output from rewards ledger sync: {text}\n{child.stderr}")
    accounts, replayed, rows = (int(found.group(i).replace(",", "")) for i in (1, 2, 3))
    return accounts, replayed, rows, float(found.group(4))


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--ledger-rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--check", action="store_true", help="exit 1 on a wrong plan or a scan")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument(
        "--snapshot",
        metavar="NAME",
        help="copy the database as it stands before the daily run into NAME (to investigate)",
    )
    parser.add_argument("--phase", choices=["job"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--as-of", help=argparse.SUPPRESS)
    parser.add_argument("--fixed-clock", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plan-out", help=argparse.SUPPRESS)
    parser.add_argument("--outbox", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase == "job":
        return job_phase(args)

    server = make_url(os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    name = f"rewards_bench_{uuid.uuid4().hex[:8]}"
    admin_url = server.set(drivername="postgresql").render_as_string(hide_password=False)
    url = server.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with tempfile.TemporaryDirectory(prefix="rewards-bench-") as scratch:
            return run_benchmark(url, args, Path(scratch))
    finally:
        if args.keep:
            say(f"kept the database: {url}")
        else:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_benchmark(url: str, args: argparse.Namespace, scratch: Path) -> int:
    as_of, scheduled = choose_as_of()
    horizon = Horizon.around(as_of, RUN_HOUR)
    report = Report()
    say(
        f"== rewards benchmark: {args.ledger_rows:,} ledger rows requested; today's run as of"
        f" {as_of:%Y-%m-%d %H:%M:%S} UTC ({'scheduled' if scheduled else 'now'}), history"
        f" from {as_of - timedelta(days=730):%Y-%m-%d} to yesterday's run"
        f" ({horizon.yesterday:%Y-%m-%d %H:%M})"
    )
    say(f"database {url}")
    with psycopg.connect(url, autocommit=True) as conn:
        settings = ", ".join(
            f"{name} {scalar(conn, f'SHOW {name}')}"
            for name in ("shared_buffers", "work_mem", "random_page_cost", "jit")
        )
        version = str(scalar(conn, "SHOW server_version")).split()[0]
    say(f"server: PostgreSQL {version}; {settings} (as the server is configured)")
    begun = time.perf_counter()

    started = time.perf_counter()
    engine = create_db_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    say(f"migrated to head in {time.perf_counter() - started:.1f}s")

    # 1. The history, by COPY, as another application writes it.
    programme = Programme(horizon, args.seed)
    new_day, truth = scratch / "new_day.tsv", scratch / "truth.tsv"
    load = load_history(url, programme, args.ledger_rows, new_day, truth)
    rows = programme.history_rows
    counts = ", ".join(f"{k} {v:,}" for k, v in programme.counts.items())
    say(
        f"generated and loaded {programme.members:,} members, {programme.account_count:,}"
        f" accounts, {rows:,} ledger rows ({counts}) and {programme.log_rows:,} NotificationLog"
        f" rows of yesterday's run with COPY in {load.seconds:.1f}s ({rows / load.seconds:,.0f}"
        f" rows/s; the generator's own CPU {load.generator_cpu:.1f}s; {load.chunks} chunks)"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        recorded = conn.execute(
            'SELECT count(*), count(DISTINCT "accountId") FROM "LedgerChange"'
        ).fetchone()
    assert recorded is not None
    say(f"the triggers recorded {recorded[0]:,} changes for {recorded[1]:,} accounts")
    vacuum_s = vacuum_analyze(url)
    say(f"VACUUM ANALYZE after the load: {vacuum_s:.1f}s")

    # 2. The sync that builds every account's lots.
    sync = rewards_cli(url, "ledger", "sync")
    if sync.returncode != 0:
        raise RuntimeError(f"rewards ledger sync failed:\n{sync.stdout}\n{sync.stderr}")
    synced, replayed, read, sync_s = parse_sync(sync)
    say(
        f"rewards ledger sync: {one_line(sync.stdout)} [child: {sync.seconds:.1f}s wall,"
        f" peak RSS {sync.peak_mib:.0f} MiB; with its workers, PSS summed {sync.tree_peak_mib:.0f}"
        " MiB]"
    )
    # What autovacuum does in a deployment, soon after: the sync deleted every change
    # record and wrote every lot (a dry run's index-only scans want the visibility map).
    vacuum_s = vacuum_analyze(url, PROJECTION_TABLES)
    say(f"VACUUM ANALYZE of the projection after the sync (as autovacuum would): {vacuum_s:.1f}s")

    # 3. Storage, right after the sync.
    sizes = storage(url)

    # 4. One more day, then the daily run (dry run, three times: it rolls back).
    day_s, day_rows = copy_file(url, new_day)
    with psycopg.connect(url, autocommit=True) as conn:
        pending = int(scalar(conn, 'SELECT count(DISTINCT "accountId") FROM "LedgerChange"'))
    say(
        f"one more day: {day_rows:,} ledger rows with COPY in {day_s:.2f}s; {pending:,} accounts"
        " recorded as changed"
    )
    if args.snapshot:
        snapshot(url, args.snapshot)
    plan_file = scratch / "plan.tsv"
    runs: list[dict[str, Any]] = []
    job_peak = 0.0
    for run in range(JOB_RUNS):
        if run:
            vacuum_analyze(url, RUN_TABLES)
        summary, child = run_job_child(
            url, as_of, not scheduled, plan_file if run == 0 else None, str(scratch / "outbox")
        )
        runs.append(summary)
        job_peak = max(job_peak, child.peak_mib)
        say(
            f"daily run {run + 1} (dry run): {summary['durationSeconds']:.3f}s"
            f" {json.dumps(summary['timings'])}; synced {summary['syncedAccounts']:,} accounts,"
            f" expired {summary['expiredEntries']:,} entries ({summary['expiredPoints']:,}"
            f" points), planned {summary['planned']:,} keys {json.dumps(summary['byType'])}"
            f" [child: {child.seconds:.1f}s wall, peak RSS {child.peak_mib:.0f} MiB]"
        )
    job = sorted(runs, key=lambda s: float(s["durationSeconds"]))[len(runs) // 2]
    window_end = datetime.combine(
        as_of.date() + timedelta(days=WINDOW_DAYS + 1), datetime.min.time()
    )
    params = {"as_of": as_of, "end": window_end, "tz": "UTC"}
    window = Window()
    window.gross_seconds, window.gross_keys = time_gross(url, params)
    say(
        f"gross read of the window: {window.gross_seconds:.3f}s, {window.gross_keys:,} member-dates"
    )

    # 5. The day applied for real, then the window compared.
    day_sync = rewards_cli(url, "ledger", "sync")
    if day_sync.returncode != 0:
        raise RuntimeError(f"rewards ledger sync failed:\n{day_sync.stdout}\n{day_sync.stderr}")
    day_synced, day_replayed, day_read, day_sync_s = parse_sync(day_sync)
    say(f"rewards ledger sync of the day: {one_line(day_sync.stdout)}")
    compare_window(url, params, truth, plan_file, window)

    # 5b. The daily run again, the day already applied: what it costs where the scheduler's
    # ledger sync (REWARDS_LEDGER_SYNC_SECONDS) kept the lots current through the day.
    current: list[float] = []
    for _ in range(JOB_RUNS):
        vacuum_analyze(url, RUN_TABLES)
        summary, _child = run_job_child(url, as_of, not scheduled, None, str(scratch / "outbox"))
        current.append(float(summary["durationSeconds"]))
        say(
            f"daily run, the day already applied (dry run): {summary['durationSeconds']:.3f}s"
            f" {json.dumps(summary['timings'])}; synced {summary['syncedAccounts']:,} accounts"
        )
    kept_current = statistics.median(current)

    # 6. The seed's look-ups.
    lookups = seed_lookups(url, as_of, programme.heaviest[1], programme.sample_log_key)

    # 7. The projection checked against the ledger by the service's own command.
    checked = rewards_cli(url, "ledger", "check", "--sample", "2000")
    say(f"rewards ledger check --sample 2000: {one_line(checked.stdout)[:400]}")

    # 8. What the triggers cost other writers.
    triggers = trigger_costs(url, programme.members, as_of, args.seed)

    # -- the table --------------------------------------------------------------------------
    ten_m = rows >= 5_000_000
    report.section(
        f"programme: {programme.members:,} members, {programme.account_count:,} accounts,"
        f" {rows:,} ledger rows, as of {as_of:%Y-%m-%d %H:%M} UTC"
    )
    report.add(
        "generate + load the history (COPY, triggers on)",
        f"{load.seconds:.1f} s",
        "<= ~600 s at 10M",
        load.seconds <= 600 if ten_m else None,
    )
    report.add("  load rate", f"{rows / load.seconds:,.0f} rows/s")
    report.section("rewards ledger sync of the whole history (child process)")
    rate = read / sync_s if sync_s else 0.0
    report.add(
        "  duration (CLI's own figure; child wall time)",
        f"{sync_s:.1f} s; {sync.seconds:.1f} s",
    )
    report.add(f"  accounts ({replayed:,} replayed), ledger rows read", f"{synced:,}; {read:,}")
    report.add("  rows/s", f"{rate:,.0f}", ">= 100,000 at 10M", rate >= 100_000 if ten_m else None)
    report.add(
        "  peak memory (the CLI and its workers, PSS summed)",
        f"{sync.memory_mib:.0f} MiB",
        "< 300 MB",
        sync.memory_mib < 286,
    )

    report.section(f"the daily run, dry run for today (median of {JOB_RUNS}, child process)")
    timings = job["timings"]
    for step in ("sync", "expire", "plan"):
        report.add(f"  {step}", f"{timings.get(step, 0.0):.3f} s")
    daily = float(job["durationSeconds"])
    one_m = 500_000 <= rows < 5_000_000
    report.add(
        "  sync + expire + plan (durationSeconds)",
        f"{daily:.3f} s",
        "< 1 s at 1M",
        daily < 1.0 if one_m else None,
    )
    report.add(
        "  synced accounts; expired entries; planned keys",
        f"{job['syncedAccounts']:,}; {job['expiredEntries']:,}; {job['planned']:,}",
    )
    report.add("  peak RSS (max of the runs)", f"{job_peak:.0f} MiB", "< 300 MB", job_peak < 286)
    report.add(
        "gross read of the window (the seed's baseline, median of 5)",
        f"{window.gross_seconds:.3f} s",
    )
    ratio = daily / window.gross_seconds if window.gross_seconds else float("inf")
    report.add(
        "  daily run / gross read",
        f"{ratio:.2f}x",
        "<= 1.5x at 10M; <= 3x at 1M",
        (ratio <= 1.5) if ten_m else ((ratio <= 3.0) if one_m else None),
    )
    report.add(
        "  the same, the day already applied (scheduler's sync kept up)",
        f"{kept_current:.3f} s = {kept_current / window.gross_seconds:.2f}x"
        if window.gross_seconds
        else f"{kept_current:.3f} s",
    )
    report.add(
        "rewards ledger sync of the day (for real, child)",
        f"{day_sync_s:.2f} s; {day_synced:,} accounts ({day_replayed:,} replayed);"
        f" {day_read:,} rows",
    )

    report.section("the window, member-date by member-date")
    differ, higher, lower, missing, union = window.pooled
    say("")
    say(
        f"the pooled formula gets {differ:,} of {union:,} member-dates wrong ({higher:,}"
        f" overstated: reminders for points already spent; {lower:,} understated, {missing:,}"
        " of them missed entirely: promotional points it charges an earlier redemption to)"
    )
    report.add("pooled formula wrong (of member-dates)", f"{differ:,} of {union:,}")
    report.add("  its statement, once", f"{window.pooled_seconds:.3f} s")
    report.add(
        "gross sum overstated (of member-dates)", f"{window.gross[1]:,} of {window.gross[4]:,}"
    )
    truth_ok = window.truth[0] == 0
    report.add(
        "projection vs the generator's simulation",
        f"{window.truth[0]:,} of {window.truth[4]:,} differ",
        "0",
        truth_ok,
    )
    plan_wrong, expected_keys, planned_keys = window.plan
    plan_ok = plan_wrong == 0 and planned_keys == int(job["planned"])
    report.add(
        "job's plan vs the simulation minus yesterday's keys",
        f"{plan_wrong:,} differ ({planned_keys:,} planned, {expected_keys:,} expected)",
        "0",
        plan_ok,
    )
    if not truth_ok:
        report.fail("the projection disagrees with the generator's simulation")
    if not plan_ok:
        report.fail("the job's plan disagrees with the generator's simulation")

    report.section(
        "the seed's look-ups (median of 20, client side; server time from EXPLAIN ANALYZE)"
    )
    for q in lookups:
        met = q.median_ms <= q.target_ms
        report.add(
            f"  {q.name} ({q.rows:,} rows)",
            f"{q.median_ms:.2f} ms (server {q.server_ms:.2f})",
            f"{q.target_ms:.0f} ms at 10M",
            met if ten_m else None,
        )
        report.add("    index", "yes" if q.uses_index else "NO", "yes", q.uses_index)
        if not q.uses_index:
            report.fail(f"{q.name} does not use an index")
    report.section("rewards ledger check --sample 2000")
    report.add("  exit code", str(checked.returncode), "0", checked.returncode == 0)
    if checked.returncode != 0:
        report.fail("rewards ledger check reported a mismatch")

    report.section("write cost of the change triggers (ABAB, on vs off)")
    single_ratio = triggers.single_on_ms / triggers.single_off_ms
    report.add(
        f"  single-row INSERT, autocommit (median of {triggers.singles // 2:,} each)",
        f"{triggers.single_on_ms:.3f} vs {triggers.single_off_ms:.3f} ms",
    )
    report.add("    ratio", f"{single_ratio:.2f}x", "<= 1.5x", single_ratio <= 1.5)
    copy_ratio = triggers.copy_on_s / triggers.copy_off_s
    report.add(
        f"  COPY of {triggers.copy_rows:,} rows (median of {TRIGGER_COPY_ROUNDS} each)",
        f"{triggers.copy_on_s:.2f} vs {triggers.copy_off_s:.2f} s",
    )
    report.add("    ratio", f"{copy_ratio:.2f}x", "<= 1.3x", copy_ratio <= 1.3)
    report.add(
        "  left behind (rows; LedgerChange records)",
        f"{triggers.rows_left}; {triggers.changes_left}",
        "0; 0",
        triggers.rows_left == 0 and triggers.changes_left == 0,
    )

    report.section("storage after the sync (pg_total_relation_size: heap + indexes)")
    for s in sizes:
        report.add(f"  {s.table}", f"{mib(s.total)} ({mib(s.heap)} + {mib(s.indexes)} idx)")
    ledger_total = sizes[0].total
    projection_total = sum(s.total for s in sizes[1:])
    report.add(
        "  projection / ledger",
        f"{mib(projection_total)} / {mib(ledger_total)} = {projection_total / ledger_total:.2f}",
    )
    report.print()
    say(f"\nthe whole benchmark took {time.perf_counter() - begun:.0f}s")
    for f in report.failures:
        say(f"CHECK: {f}")
    for example in window.examples:
        say(f"  disagreement: {example}")
    if report.failures and args.check:
        print("CHECK FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
