"""Benchmark of the operator console: every page timed against a large database.

    python bench/job.py --ledger-rows 1000000 --keep      # leaves a database; then
    python bench/console.py --url postgresql://postgres@127.0.0.1:5432/rewards_bench_…
    python bench/console.py --ledger-rows 20000 --check   # its own small database, as CI runs it

The database is migrated to head, then given a year of reminder history beside
what it has (``--log-rows`` ``NotificationLog`` rows over 365 days, one job-run
record per day, outbox rows for the last 30 days, a few thousand preference
changes; added once: a second run finds them). The console is served in this
process (uvicorn on a free port), an operator signs in, and every page is asked
for ``--repeat`` times after a warm-up; the table gives the median and the
slowest, against the target of 200 ms.

``--check`` exits 1 if a page is slower than the target or not 200, or if
PostgreSQL, asked to avoid sequential scans (``enable_seqscan = off``), still
needs one on ``NotificationLog``, ``User`` or ``PointLedger`` for any statement a
page ran: a sign that no index serves it, whatever the size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import uvicorn
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from programme import ACCOUNT_COLUMNS, LEDGER_COLUMNS, LOG_COLUMNS, USER_COLUMNS, Horizon, Programme
from rewards import migrate
from rewards.api.app import create_app
from rewards.clock import utcnow
from rewards.config import load_settings
from rewards.db import create_db_engine

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_MS = 200.0
ADMIN_TOKEN = "bench-console-admin"
SCANNED = ("NotificationLog", "User", "PointLedger")
MARK = "bench-console"
"""``NotificationJobRun.trigger`` of the history this benchmark adds (so it adds it once)."""


def say(message: str) -> None:
    print(message, flush=True)


# -- the database ---------------------------------------------------------------------------


def generate(url: str, ledger_rows: int, seed: int) -> None:
    """A programme of about ``ledger_rows`` ledger rows (bench/programme.py), then its lots."""
    now = utcnow()
    programme = Programme(
        Horizon.around(now.replace(hour=9, minute=0, second=0, microsecond=0)), seed
    )
    with psycopg.connect(url, autocommit=True) as conn:

        def drain() -> None:
            for table, columns, lines in (
                ("User", USER_COLUMNS, programme.users),
                ("Account", ACCOUNT_COLUMNS, programme.accounts),
                ("PointLedger", LEDGER_COLUMNS, programme.ledger),
                ("NotificationLog", LOG_COLUMNS, programme.logs),
            ):
                if lines:
                    with conn.cursor().copy(f'COPY "{table}" ({columns}) FROM STDIN') as copy:
                        copy.write("".join(lines))
                    lines.clear()
            programme.new_day.clear()
            programme.truth.clear()

        while programme.history_rows < ledger_rows:
            programme.member()
            if len(programme.ledger) >= 50_000:
                drain()
        drain()
    env = dict(os.environ, DATABASE_URL=url)
    synced = subprocess.run(
        [sys.executable, "-m", "rewards", "ledger", "sync"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if synced.returncode != 0:
        raise RuntimeError(f"rewards ledger sync failed: {synced.stderr}")
    say(f"generated {programme.members:,} members, {programme.history_rows:,} ledger rows")


HISTORY = """
WITH members AS (SELECT array_agg("id" ORDER BY "id") AS ids, count(*) AS n FROM "User"),
rows AS (
    SELECT d, k,
           (date_trunc('day', %(now)s::timestamp) - make_interval(days => d)
            + interval '9 hours' + make_interval(secs => k %% 3600)) AS at
    FROM generate_series(1, %(days)s) AS d, generate_series(0, %(per_day)s - 1) AS k
)
INSERT INTO "NotificationLog" ("id", "userId", "notificationType", "status", "sentAt",
    "failureReason", "expirationDate", "pointsExpiring", "createdAt")
SELECT 'bench-log-' || d || '-' || k,
       m.ids[1 + ((d * 7919 + k) %% m.n)],
       (ARRAY['EXPIRATION_30_DAYS', 'EXPIRATION_7_DAYS', 'EXPIRATION_1_DAY'])[1 + k %% 3],
       CASE WHEN k %% 25 = 0 THEN 'FAILED' WHEN k %% 17 = 0 THEN 'SKIPPED' ELSE 'SENT' END,
       CASE WHEN k %% 25 = 0 OR k %% 17 = 0 THEN NULL ELSE at END,
       CASE WHEN k %% 25 = 0 THEN (ARRAY['550 5.1.1 no such user: bench',
            '451 4.7.1 try again later: bench', 'missing email', 'invalid format'])[1 + k %% 4]
            WHEN k %% 17 = 0 THEN 'user opted out' END,
       date_trunc('day', at) + interval '40 days',
       10 + k %% 500,
       at
FROM rows, members m
WHERE k < m.n
ON CONFLICT DO NOTHING
"""

RUNS = """
INSERT INTO "NotificationJobRun" ("id", "asOf", "startedAt", "finishedAt", "status", "trigger",
    "planned", "sent", "failed", "skipped", "countsByType")
SELECT 'bench-run-' || day::date, day, day, day + interval '3 minutes', 'SUCCEEDED', %(mark)s,
       count(*), count(*) FILTER (WHERE "status" = 'SENT'),
       count(*) FILTER (WHERE "status" = 'FAILED'), count(*) FILTER (WHERE "status" = 'SKIPPED'),
       '{}'
FROM (SELECT date_trunc('day', "createdAt") + interval '9 hours' AS day, "status"
      FROM "NotificationLog" WHERE "id" LIKE 'bench-log-%%') AS x
GROUP BY day
"""

DELIVERIES = """
INSERT INTO "NotificationDelivery" ("logId", "runId", "queuedAt", "tries", "settledAt")
SELECT "id", 'bench-run-' || "createdAt"::date, "createdAt", 1, "createdAt"
FROM "NotificationLog"
WHERE "id" LIKE 'bench-log-%%' AND "createdAt" >= %(now)s::timestamp - interval '30 days'
"""

CHANGES = """
INSERT INTO "PreferenceChange" ("id", "userId", "emailNotifications", "changedAt", "via",
    "changedBy")
SELECT 'bench-change-' || "id", "id", false, %(now)s::timestamp - interval '3 days',
       'BULK_CLI', 'bench'
FROM "User" ORDER BY "id" LIMIT 5000
"""


def add_history(url: str, log_rows: int) -> None:
    """A year of reminders and runs, once; then ANALYZE and VACUUM so plans are realistic."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            'SELECT count(*) FROM "NotificationJobRun" WHERE "trigger" = %s', (MARK,)
        ).fetchone()
        if row and row[0]:
            say("the reminder history is there already")
            return
        started = time.perf_counter()
        params = {"now": utcnow(), "days": 365, "per_day": max(1, log_rows // 365), "mark": MARK}
        conn.execute(HISTORY, params)
        conn.execute(RUNS, params)
        conn.execute(DELIVERIES, params)
        conn.execute(CHANGES, params)
        conn.execute(
            'VACUUM ANALYZE "NotificationLog", "NotificationDelivery", "NotificationJobRun"'
        )
        conn.execute('VACUUM ANALYZE "User", "PreferenceChange"')
        total = conn.execute('SELECT count(*) FROM "NotificationLog"').fetchone()
        say(
            f"added a year of reminder history: {total[0] if total else 0:,} NotificationLog rows"
            f" in all ({time.perf_counter() - started:.1f}s)"
        )


# -- the server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serving(engine: Engine, url: str) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = load_settings(
        database_url=url,
        admin_token=ADMIN_TOKEN,
        api_token="bench-console-client",
        secret_key="bench-console-secret",
        public_url=base,
        email_backend="file",
        outbox_dir="/tmp/rewards-bench-console-outbox",
    )
    config = uvicorn.Config(
        create_app(settings, engine), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(10)


class Statements:
    """Every SELECT the pages run (with its parameters), to EXPLAIN afterwards."""

    def __init__(self, engine: Engine) -> None:
        self.seen: dict[str, tuple[str, Any]] = {}
        self.recording = False
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if self.recording and statement.lstrip().upper().startswith(("SELECT", "WITH")):
            self.seen.setdefault(statement, (statement, params))


def scans(url: str, statements: Statements) -> list[str]:
    """Statements that still scan one of :data:`SCANNED` with sequential scans discouraged."""
    found: list[str] = []
    with psycopg.connect(url) as conn:
        conn.execute("SET enable_seqscan = off")
        for statement, params in statements.seen.values():
            if isinstance(params, list | tuple) and params and isinstance(params[0], dict):
                params = params[0]
            try:
                plan = conn.execute("EXPLAIN (FORMAT JSON) " + statement, params).fetchone()
            except psycopg.Error as exc:
                conn.rollback()
                conn.execute("SET enable_seqscan = off")
                say(f"  (could not EXPLAIN: {exc.__class__.__name__}: {str(exc)[:100]})")
                continue
            text = json.dumps(plan[0] if plan else {})
            for table in SCANNED:
                if re.search(rf'"Node Type": "Seq Scan", [^}}]*"Relation Name": "{table}"', text):
                    found.append(f"{table}: {' '.join(statement.split())[:160]}")
    return found


# -- the pages ------------------------------------------------------------------------------


def samples(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:

        def one(sql: str) -> str:
            row = conn.execute(sql).fetchone()
            return str(row[0]) if row else ""

        return {
            "member": one(
                'SELECT a."userId" FROM "PointLot" l JOIN "Account" a ON a."id" = l."accountId"'
                " GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
            ),
            "email": one(
                'SELECT "email" FROM "User" WHERE "email" IS NOT NULL ORDER BY "id" LIMIT 1'
            ),
            "name": one(
                'SELECT split_part("name", \' \', 1) FROM "User" WHERE "name" IS NOT NULL LIMIT 1'
            ),
            "reminder": one(
                'SELECT "id" FROM "NotificationLog" WHERE "status" = \'FAILED\''
                ' ORDER BY "createdAt" DESC LIMIT 1'
            ),
            "run": one('SELECT "id" FROM "NotificationJobRun" ORDER BY "startedAt" DESC LIMIT 1'),
            "account": one(
                'SELECT "accountId" FROM "PointLot" GROUP BY 1 ORDER BY count(*) DESC LIMIT 1'
            ),
        }


def pages(s: dict[str, str]) -> list[tuple[str, str]]:
    today = utcnow().date()
    week = (today - timedelta(days=7)).isoformat()
    month = (today - timedelta(days=30)).isoformat()
    return [
        ("overview", "/console"),
        ("runs", "/console/runs"),
        ("run detail", f"/console/runs/{s['run']}"),
        ("reminders, newest", "/console/reminders"),
        ("reminders, FAILED this week", f"/console/reminders?status=FAILED&from={week}"),
        (
            "reminders, a tier over 30 days",
            f"/console/reminders?tier=EXPIRATION_1_DAY&from={month}",
        ),
        (
            "reminders, SKIPPED, a year ago",
            f"/console/reminders?status=SKIPPED&to={today.replace(year=today.year - 1)}",
        ),
        ("reminders of a member (email)", f"/console/reminders?member={s['email']}"),
        ("reminders of a run", f"/console/reminders?run={s['run']}"),
        ("reminder detail", f"/console/reminders/{s['reminder']}"),
        ("reminder email (frame)", f"/console/reminders/{s['reminder']}/email"),
        ("members by email prefix", f"/console/members?q={s['email'][:4]}"),
        ("members by name prefix", f"/console/members?q={s['name'][:3]}"),
        ("member page (heaviest)", f"/console/members/{s['member']}"),
        ("account page (heaviest)", f"/console/accounts/{s['account']}"),
        ("bulk opt-out form", "/console/opt-out"),
    ]


def timed(
    client: httpx.Client, method: str, path: str, repeat: int, **kw: Any
) -> tuple[list[float], int]:
    client.request(method, path, **kw)  # warm-up
    seconds = []
    status = 0
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.request(method, path, **kw)
        seconds.append(time.perf_counter() - started)
        status = response.status_code
    return seconds, status


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--url", help="an existing database (e.g. left by bench/job.py --keep)")
    parser.add_argument("--ledger-rows", type=int, default=20_000)
    parser.add_argument("--log-rows", type=int, help="history to add (default: the ledger rows)")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--check", action="store_true", help="exit 1 on a slow page or a scan")
    parser.add_argument("--keep", action="store_true", help="keep a database made here")
    args = parser.parse_args()

    made = None
    url = args.url
    if url is None:
        server = make_url(os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
        made = f"rewards_console_bench_{uuid.uuid4().hex[:8]}"
        admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
        url = server.set(drivername="postgresql", database=made).render_as_string(
            hide_password=False
        )
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{made}"')
    try:
        return run(url, args, generate_first=made is not None)
    finally:
        if made is not None and not args.keep:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(
                    f'DROP DATABASE IF EXISTS "{made}" WITH (FORMAT)'.replace("FORMAT", "FORCE")
                )
        elif made is not None:
            say(f"kept the database: {url}")


def run(url: str, args: argparse.Namespace, *, generate_first: bool) -> int:
    engine = create_db_engine(url)
    migrate.upgrade(engine)
    if generate_first:
        generate(url, args.ledger_rows, args.seed)
    with psycopg.connect(url) as conn:
        ledger = conn.execute('SELECT count(*) FROM "PointLedger"').fetchone()
    ledger_rows = int(ledger[0]) if ledger else 0
    add_history(url, args.log_rows or max(ledger_rows, 10_000))
    with psycopg.connect(url) as conn:
        counts = {
            t: int((conn.execute(f'SELECT count(*) FROM "{t}"').fetchone() or [0])[0])
            for t in ("User", "PointLedger", "NotificationLog", "NotificationJobRun")
        }
    say("database: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))
    statements = Statements(engine)
    failures: list[str] = []
    with serving(engine, url) as base, httpx.Client(base_url=base, timeout=60) as client:
        form = client.get("/console/sign-in")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        signed = client.post(
            "/console/sign-in", data={"csrf": csrf.group(1), "token": ADMIN_TOKEN, "name": "bench"}
        )
        assert signed.status_code == 303, signed.text
        csrf_page = client.get("/console/opt-out").text
        token = re.search(r'name="csrf" value="([^"]+)"', csrf_page)
        assert token is not None
        s = samples(url)
        width = 34
        say(f"\n{'page':{width}}  {'median':>9}  {'slowest':>9}  status  target {TARGET_MS:.0f} ms")
        statements.recording = True
        listing = "\n".join(f"nobody{n}@example.com" for n in range(500)) + "\n" + s["email"]
        checks: list[tuple[str, str, str, dict[str, Any]]] = [
            (name, "GET", path, {}) for name, path in pages(s)
        ]
        checks.append(
            (
                "bulk opt-out preview (501 lines)",
                "POST",
                "/console/opt-out",
                {"data": {"csrf": token.group(1), "step": "preview", "text": listing}},
            )
        )
        for name, method, path, kw in checks:
            seconds, status = timed(client, method, path, args.repeat, **kw)
            median, slowest = statistics.median(seconds) * 1000, max(seconds) * 1000
            ok = status == 200 and median <= TARGET_MS
            verdict = "ok" if ok else "MISSED"
            say(f"{name:{width}}  {median:7.1f}ms  {slowest:7.1f}ms  {status:>6}  {verdict}")
            if not ok:
                failures.append(f"{name}: {median:.0f} ms, status {status}")
        statements.recording = False
    found = scans(url, statements)
    say(f"\n{len(statements.seen)} distinct statements explained; {len(found)} need a scan")
    for line in found:
        say(f"  SCAN {line}")
    engine.dispose()
    if args.check and (failures or found):
        for failure in failures:
            say(f"CHECK: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
