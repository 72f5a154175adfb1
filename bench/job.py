"""Benchmark of CheckExpiringPointsJob's expire + plan on PostgreSQL.

    python bench/job.py --ledger-rows 1000000          # full size
    python bench/job.py --ledger-rows 20000 --check    # smoke size, as CI runs it

It creates a throwaway database on ``BENCH_DATABASE_URL`` (default: the local
server), bulk-loads a generated programme with COPY (members with several
accounts, a year of credits expiring over the coming year, redemptions, credits
already expired), then measures in one run, on the same rows:

* the job's expire + plan (nothing sent), in a child process whose peak memory
  is reported;
* the lower bound: one bare SQL statement computing the same per-member,
  per-date net amounts, with no dedup and no writes;
* the naive reading: the gross sum of credits expiring in the window;
* the seed's three queries (a date range of expirations, one member's
  expirations, the dedup lookup), with EXPLAIN confirming index use.

``--check`` makes it exit non-zero if the job's plan disagrees with the lower
bound's amounts or a seed query does not use an index.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from sqlalchemy.engine import make_url

from rewards import migrate
from rewards.db import BATCH_WORK_MEM, create_db_engine
from rewards.ledger.queries import post_due_expirations
from rewards.notifications.planner import due_days, plan_due_notifications
from rewards.notifications.tiers import decide

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
AS_OF = datetime(2030, 3, 1, 9, 0)
TIERS = (30, 7, 1)
ZONE = ZoneInfo("UTC")
ROWS_PER_USER = 10


# -- data ----------------------------------------------------------------------------------


def _copy_text(values: tuple[Any, ...]) -> str:
    def field(v: Any) -> str:
        if v is None:
            return "\\N"
        if isinstance(v, datetime):
            return v.isoformat(sep=" ", timespec="milliseconds")
        if isinstance(v, bool):
            return "t" if v else "f"
        return str(v)

    return "\t".join(field(v) for v in values) + "\n"


def generate(ledger_rows: int, seed: int) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """Yield ("User"|"Account"|"PointLedger", row) with about ``ledger_rows`` ledger rows."""
    rng = random.Random(seed)
    users = max(1, ledger_rows // ROWS_PER_USER)
    start = AS_OF - timedelta(days=400)
    row_id = 0
    for u in range(users):
        user_id = f"u{u:08d}"
        roll = rng.random()
        email = None if roll < 0.02 else ("broken@" if roll < 0.03 else f"m{u}@example.com")
        yield "User", (user_id, email, f"Member {u}", start, rng.random() > 0.05)
        n_accounts = rng.choices((1, 2, 3), weights=(80, 15, 5))[0]
        per_account = max(1, round(ROWS_PER_USER / n_accounts))
        for a in range(n_accounts):
            account_id = f"a{u:08d}{a}"
            yield "Account", (account_id, user_id, start)
            credits: list[tuple[int, datetime]] = []
            debits = 0
            moment = start + timedelta(hours=rng.randint(0, 24 * 30))
            for _ in range(per_account):
                moment += timedelta(hours=rng.randint(12, 24 * 70))
                if moment >= AS_OF:
                    break
                row_id += 1
                total = sum(c for c, _ in credits)
                expired = sum(c for c, e in credits if e <= moment)
                available = total - max(debits, expired)
                if credits and rng.random() < 0.2 and available >= 20:
                    points = rng.randint(10, available // 2)
                    debits += points
                    row: tuple[Any, ...] = (
                        f"l{row_id:09d}",
                        account_id,
                        "REDEEM",
                        0,
                        points,
                        None,
                        moment,
                        None,
                    )
                else:
                    points = rng.choice((20, 50, 80, 100, 150, 200, 400))
                    expires = moment + timedelta(days=365, minutes=rng.randint(0, 600))
                    credits.append((points, expires))
                    row = (f"l{row_id:09d}", account_id, "EARN", points, 0, None, moment, expires)
                yield "PointLedger", row


COLUMNS = {
    "User": '"id", "email", "name", "createdAt", "emailNotifications"',
    "Account": '"id", "userId", "createdAt"',
    "PointLedger": (
        '"id", "accountId", "entryType", "credit", "debit", "description", "createdAt", "expiresAt"'
    ),
}


def load(url: str, ledger_rows: int, seed: int) -> dict[str, int]:
    """COPY the generated programme in, streaming (bounded memory), then ANALYZE."""
    counts = dict.fromkeys(COLUMNS, 0)
    buffers = {table: io.StringIO() for table in COLUMNS}
    with psycopg.connect(url, autocommit=False) as conn:

        def flush(table: str) -> None:
            data = buffers[table].getvalue()
            if data:
                with conn.cursor().copy(f'COPY "{table}" ({COLUMNS[table]}) FROM STDIN') as copy:
                    copy.write(data)
            buffers[table] = io.StringIO()

        pending = 0
        for table, row in generate(ledger_rows, seed):
            buffers[table].write(_copy_text(row))
            counts[table] += 1
            pending += 1
            if pending >= 50_000:
                for t in COLUMNS:  # parents first, so foreign keys hold
                    flush(t)
                pending = 0
        for t in COLUMNS:
            flush(t)
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return counts


# -- measurements -------------------------------------------------------------------------


def timed(fn: Any, repeat: int = 3) -> tuple[float, Any]:
    """Median seconds of ``repeat`` calls, and the last result."""
    times = []
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


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

GROSS = """
SELECT a."userId", (l."expiresAt" AT TIME ZONE 'UTC' AT TIME ZONE %(tz)s)::date, SUM(l."credit")
FROM "PointLedger" l JOIN "Account" a ON a."id" = l."accountId"
WHERE l."credit" > 0 AND l."expiresAt" > %(as_of)s AND l."expiresAt" < %(end)s
GROUP BY 1, 2
"""


def job_phase(url: str) -> dict[str, Any]:
    """Run in a child process: the job's expire + plan, nothing sent."""
    engine = create_db_engine(url)
    started = time.perf_counter()
    with engine.begin() as conn:
        entries, points = post_due_expirations(conn, AS_OF)
    expired_at = time.perf_counter()
    planned: dict[tuple[str, str], int] = {}
    decisions = 0
    with engine.connect() as conn:
        for batch in plan_due_notifications(
            conn, as_of=AS_OF, zone=ZONE, tiers=TIERS, max_attempts=3, batch_size=1000
        ):
            for key in batch:
                decisions += decide(key.email, key.email_notifications, key.points).send
                planned[(key.user_id, key.expiration_date.isoformat())] = key.points
    finished = time.perf_counter()
    engine.dispose()
    return {
        "expire_seconds": expired_at - started,
        "plan_seconds": finished - expired_at,
        "total_seconds": finished - started,
        "expired_entries": entries,
        "expired_points": points,
        "planned": len(planned),
        "would_send": decisions,
        "checksum": sum(planned.values()),
        "plan": sorted(f"{u}|{d}|{p}" for (u, d), p in planned.items()),
    }


def run_job_child(url: str) -> tuple[dict[str, Any], float]:
    """The job phase in a fresh interpreter; returns its figures and its peak RSS in MiB."""
    args = [sys.executable, __file__, "--phase", "job", "--url", url]
    output = subprocess.run(args, capture_output=True, text=True, check=True, timeout=3600)
    # The only child so far, so the children's peak is this process's peak.
    return json.loads(output.stdout), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def explain_uses_index(
    conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]
) -> tuple[bool, str]:
    plan = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchone()[0]  # type: ignore[index]
    nodes: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        nodes.append(
            f"{node['Node Type']}({node.get('Index Name') or node.get('Relation Name', '')})"
        )
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    seq_on_big = any(
        n.startswith("Seq Scan(PointLedger") or n.startswith("Seq Scan(NotificationLog")
        for n in nodes
    )
    return (not seq_on_big and any("Index" in n or "Bitmap" in n for n in nodes)), " > ".join(nodes)


def seed_queries(url: str) -> list[dict[str, Any]]:
    """The seed's three queries, timed (median of 20) with their plans."""
    results = []
    with psycopg.connect(url, autocommit=True) as conn:
        user_id = conn.execute(
            'SELECT a."userId" FROM "PointLedger" l JOIN "Account" a ON a."id" = l."accountId"'
            ' WHERE l."expiresAt" > %s ORDER BY l."id" LIMIT 1',
            (AS_OF,),
        ).fetchone()[0]  # type: ignore[index]
        log_key = conn.execute(
            'SELECT "userId", "notificationType", "expirationDate" FROM "NotificationLog" LIMIT 1'
        ).fetchone()
        queries = [
            (
                "expirations in a date range (1 day)",
                'SELECT "id", "accountId", "credit", "expiresAt" FROM "PointLedger"'
                ' WHERE "expiresAt" >= %(start)s AND "expiresAt" < %(end)s AND "credit" > 0',
                {"start": AS_OF + timedelta(days=7), "end": AS_OF + timedelta(days=8)},
                0.100,
            ),
            (
                "one member's expirations",
                'SELECT l."expiresAt", l."credit" FROM "PointLedger" l'
                ' JOIN "Account" a ON a."id" = l."accountId"'
                ' WHERE a."userId" = %(user)s AND l."expiresAt" > %(as_of)s ORDER BY l."expiresAt"',
                {"user": user_id, "as_of": AS_OF},
                0.050,
            ),
            (
                "dedup lookup",
                'SELECT "status" FROM "NotificationLog" WHERE "userId" = %(u)s'
                ' AND "notificationType" = %(t)s AND "expirationDate" = %(d)s',
                {"u": log_key[0], "t": log_key[1], "d": log_key[2]} if log_key else {},
                0.010,
            ),
        ]
        for name, sql, params, target in queries:
            if not params:
                continue
            seconds = []
            rows = 0
            for _ in range(20):
                started = time.perf_counter()
                rows = len(conn.execute(sql, params).fetchall())
                seconds.append(time.perf_counter() - started)
            uses_index, plan = explain_uses_index(conn, sql, params)
            results.append(
                {
                    "query": name,
                    "median_ms": statistics.median(seconds) * 1000,
                    "target_ms": target * 1000,
                    "rows": rows,
                    "uses_index": uses_index,
                    "plan": plan,
                }
            )
    return results


def fill_notification_log(url: str) -> int:
    """Yesterday's run, as it would have left things: reminders logged, expiry posted."""
    engine = create_db_engine(url)
    yesterday = AS_OF - timedelta(days=1)
    buffer = io.StringIO()
    keys = 0
    with engine.connect() as conn:
        for batch in plan_due_notifications(
            conn, as_of=yesterday, zone=ZONE, tiers=TIERS, max_attempts=3
        ):
            for k in batch:
                row = (
                    uuid.uuid4().hex,
                    k.user_id,
                    k.notification_type,
                    "SENT",
                    yesterday,
                    k.expiration_stamp,
                    k.points,
                    yesterday,
                )
                buffer.write(_copy_text(row))
            keys += len(batch)
    with engine.begin() as conn:
        post_due_expirations(conn, yesterday)
    engine.dispose()
    with psycopg.connect(url, autocommit=True) as conn:
        columns = (
            '"id", "userId", "notificationType", "status", "sentAt", "expirationDate",'
            ' "pointsExpiring", "createdAt"'
        )
        with conn.cursor().copy(f'COPY "NotificationLog" ({columns}) FROM STDIN') as copy:
            copy.write(buffer.getvalue())
        conn.execute(
            'INSERT INTO "NotificationJobRun" ("id", "asOf", "startedAt", "finishedAt", "status")'
            " VALUES ('previous', %(a)s, %(a)s, %(a)s, 'SUCCEEDED')",
            {"a": yesterday},
        )
        conn.execute("ANALYZE")
    return keys


# -- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ledger-rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--check", action="store_true", help="exit 1 on a wrong plan or a scan")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument("--phase", choices=["job"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase == "job":
        print(json.dumps(job_phase(args.url)))
        return 0

    server = make_url(os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    name = f"rewards_bench_{uuid.uuid4().hex[:8]}"
    admin_url = server.set(drivername="postgresql").render_as_string(hide_password=False)
    url = server.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        return run_benchmark(url, args)
    finally:
        if not args.keep:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_benchmark(url: str, args: argparse.Namespace) -> int:
    engine = create_db_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    print(
        f"== rewards job benchmark: {args.ledger_rows:,} ledger rows requested,"
        f" as of {AS_OF:%Y-%m-%d %H:%M} UTC"
    )
    started = time.perf_counter()
    counts = load(url, args.ledger_rows, args.seed)
    print(
        f"loaded {counts['User']:,} members, {counts['Account']:,} accounts,"
        f" {counts['PointLedger']:,} ledger rows with COPY in {time.perf_counter() - started:.1f}s"
    )
    started = time.perf_counter()
    log_rows = fill_notification_log(url)
    print(
        f"previous day's run: {log_rows:,} NotificationLog rows, expiry posted"
        f" ({time.perf_counter() - started:.1f}s)"
    )

    job, peak_mib = run_job_child(url)

    window_end = due_days(AS_OF, ZONE, TIERS)[-1].ends
    params = {"as_of": AS_OF, "end": window_end, "tz": "UTC"}
    with psycopg.connect(url, autocommit=True) as conn:
        # The same session settings the job uses for its batch statements.
        conn.execute(f"SET work_mem = '{BATCH_WORK_MEM}'")
        conn.execute("SET jit = off")
        lower_s, lower_rows = timed(lambda: conn.execute(LOWER_BOUND, params).fetchall())
        gross_s, gross_rows = timed(lambda: conn.execute(GROSS, params).fetchall())

    lower = {(u, d.isoformat()): p for u, d, p in lower_rows}
    gross = {(u, d.isoformat()): int(p) for u, d, p in gross_rows}
    planned = {tuple(k.rsplit("|", 1)[0].split("|")): int(k.rsplit("|", 1)[1]) for k in job["plan"]}
    # The job leaves out keys settled yesterday; those must be a subset of the lower bound's.
    plan_ok = all(lower.get(k) == p for k, p in planned.items())
    overstated = sum(1 for k, p in gross.items() if p > lower.get(k, 0))

    print()
    print(f"{'step':44} {'seconds':>9} {'rows':>10}")
    print(
        f"{'job: post due expirations':44} {job['expire_seconds']:9.3f}"
        f" {job['expired_entries']:10,}"
    )
    print(
        f"{'job: plan (net amounts, tiers, dedup)':44} {job['plan_seconds']:9.3f}"
        f" {job['planned']:10,}"
    )
    print(f"{'job: expire + plan':44} {job['total_seconds']:9.3f}")
    print(f"{'lower bound: one bare SQL statement':44} {lower_s:9.3f} {len(lower):10,}")
    print(f"{'naive: gross credits expiring in window':44} {gross_s:9.3f} {len(gross):10,}")
    print()
    ratio = job["total_seconds"] / lower_s if lower_s else float("inf")
    print(f"expire + plan / lower bound: {ratio:.2f}x   (target <= 2x; <= 3 s at 1M rows)")
    print(f"job process peak memory: {peak_mib:.0f} MiB (target < 300 MiB)")
    print(
        f"plan agrees with the lower bound on every key: {'yes' if plan_ok else 'NO'};"
        f" the naive gross sum overstates {overstated:,} of {len(gross):,} member-dates"
    )
    print()
    print(f"{'seed query':38} {'median ms':>10} {'target':>8} {'rows':>7}  index?  plan")
    seeds = seed_queries(url)
    for q in seeds:
        print(
            f"{q['query']:38} {q['median_ms']:10.2f} {q['target_ms']:8.0f} {q['rows']:7,}"
            f"  {'yes' if q['uses_index'] else 'NO ':3}     {q['plan']}"
        )
    ok = plan_ok and all(q["uses_index"] for q in seeds)
    if args.check and not ok:
        print("CHECK FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
