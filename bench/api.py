"""Benchmark of the HTTP API on the lot projection: wrk against ``rewards serve --workers N``.

    python bench/api.py                      # 10 s per measurement, 2 server processes
    python bench/api.py --seconds 3 --check  # smoke size

It creates a throwaway PostgreSQL database on ``BENCH_DATABASE_URL`` (default:
the local server), fills it with members and accounts — one account holding
``--lots`` lots, as a member of many years would — syncs the lots, starts
``rewards serve --workers N --no-scheduler`` and drives it with ``wrk`` (Debian
package ``wrk``), ``--connections`` at a time, measuring in one run:

* ``GET /healthz``: the server's ceiling for a request that touches the database;
* ``GET /accounts/{id}/balance`` of the account with many lots: its requests per
  second against the ceiling (target: at least half);
* ``POST /accounts/{id}/earn`` spread over many accounts: latency percentiles and
  errors (target: p99 under 50 ms, no errors);
* the same earns offered at fixed rates (``--earn-rates``, open loop, see
  :class:`OpenLoop`): the latency a shop sees at a given load, rather than at the
  server's saturation, where 32 connections always waiting make the queue the latency.

``--check`` exits non-zero when a request fails or a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy.engine import make_url

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TOKEN = "bench-client-token"
ADMIN = "bench-admin-token"
EARN_ACCOUNTS = 1000

EARN_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
local n = 0
request = function()
    n = n + 1
    local account = string.format("e%%05d", math.random(0, %(accounts)d - 1))
    local body = '{"points": 10, "expiresAt": "%(expires)s", "description": "order ' .. n .. '"}'
    return wrk.format(nil, "/accounts/" .. account .. "/earn", nil, body)
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fill(url: str, lots: int) -> str:
    """Members and accounts; one account with ``lots`` lots. Returns that account's id."""
    now = datetime.now(UTC).replace(tzinfo=None)
    with psycopg.connect(url) as conn:
        with conn.cursor().copy('COPY "User" ("id", "email", "name") FROM STDIN') as copy:
            copy.write_row(("rich", "rich@example.com", "Rich"))
            for n in range(EARN_ACCOUNTS):
                copy.write_row((f"m{n:05d}", f"m{n}@example.com", f"Member {n}"))
        with conn.cursor().copy('COPY "Account" ("id", "userId") FROM STDIN') as copy:
            copy.write_row(("rich-1", "rich"))
            for n in range(EARN_ACCOUNTS):
                copy.write_row((f"e{n:05d}", f"m{n:05d}"))
        columns = '"id", "accountId", "entryType", "credit", "debit", "createdAt", "expiresAt"'
        with conn.cursor().copy(f'COPY "PointLedger" ({columns}) FROM STDIN') as copy:
            for n in range(lots):
                created = now - timedelta(days=lots - n)
                expires = created + timedelta(days=365 + n % 90)
                copy.write_row((f"lot{n:05d}", "rich-1", "EARN", 100 + n, 0, created, expires))
                if n % 4 == 3:
                    copy.write_row((f"spend{n:05d}", "rich-1", "REDEEM", 0, 150, created, None))
    return "rich-1"


def rewards(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rewards", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )


def wrk(
    url: str, seconds: int, connections: int, *, headers: dict[str, str], script: Path | None = None
) -> dict[str, Any]:
    """Run wrk; requests/s, latency percentiles (ms) and failed requests."""
    args = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    if script is not None:
        args += ["-s", str(script)]
    output = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    percentiles = {
        int(p): _ms(v, unit)
        for p, v, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    }
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    socket_errors = sum(int(x) for x in errors.groups()) if errors else 0
    return {
        "rps": rps,
        "latency_ms": percentiles,
        "failed": int(failed.group(1)) if failed else 0,
        "socket_errors": socket_errors,
    }


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


class OpenLoop:
    """Earns sent on a fixed schedule, ``rate`` a second, whether or not earlier ones have
    been answered, each on a keep-alive connection that is free at that instant (a new one
    when none is). Latency counts from the instant a request was due, not from when a
    connection let it go: a closed loop (wrk's) sends no new request while the server is
    slow, and so leaves its slowest moments out of its percentiles.
    """

    def __init__(self, port: int, rate: int, expires: str) -> None:
        self.port, self.rate, self.expires = port, rate, expires
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.latencies: list[float] = []
        self.failed = 0
        self.opened = 0

    def request(self, n: int) -> bytes:
        account = f"e{random.randrange(EARN_ACCOUNTS):05d}"
        body = (
            f'{{"points": 10, "expiresAt": "{self.expires}", "description": "order {n}"}}'
        ).encode()
        head = (
            f"POST /accounts/{account}/earn HTTP/1.1\r\nHost: bench\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def one(self, n: int, due: float) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            if self.idle:
                reader, writer = self.idle.pop()
            else:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                self.opened += 1
            writer.write(self.request(n))
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length:\s*(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            self.latencies.append((time.perf_counter() - due) * 1000)
            if not head.startswith(b"HTTP/1.1 201"):
                self.failed += 1
            self.idle.append((reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            self.failed += 1
            if writer is not None:
                writer.close()  # its state is unknown: never reused

    async def run(self, seconds: float) -> dict[str, Any]:
        start = time.perf_counter()
        tasks = []
        for n in range(int(self.rate * seconds)):
            due = start + n / self.rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(self.one(n, due)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        for _, writer in self.idle:
            writer.close()
        ordered = sorted(self.latencies)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0

        return {
            "rate": self.rate,
            "sent": len(tasks),
            "latency_ms": {50: pct(50), 99: pct(99), 100: ordered[-1] if ordered else 0.0},
            "failed": self.failed,
            "connections": self.opened,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lots", type=int, default=200)
    parser.add_argument(
        "--earn-rates",
        default="100,200",
        help="earns per second offered on a fixed schedule (open loop), comma-separated",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 on an error or a missed target"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk (Debian package wrk)", file=sys.stderr)
        return 2

    server = make_url(os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    name = f"rewards_api_bench_{uuid.uuid4().hex[:8]}"
    admin_url = server.set(drivername="postgresql").render_as_string(hide_password=False)
    url = server.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        return run(url, args)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(url: str, args: argparse.Namespace) -> int:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REWARDS_")},
        "DATABASE_URL": url,
        "REWARDS_API_TOKEN": TOKEN,
        "REWARDS_ADMIN_TOKEN": ADMIN,
        "REWARDS_SECRET_KEY": "api-bench-secret",
        "REWARDS_EMAIL_BACKEND": "console",
    }
    rewards("db", "upgrade", env=env)
    account = fill(url, args.lots)
    rewards("ledger", "sync", env=env)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rewards",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--no-scheduler",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                print("the server did not start", file=sys.stderr)
                return 2
            time.sleep(0.2)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        balance = httpx.get(f"{base}/accounts/{account}/balance", headers=auth).json()
        lots = httpx.get(f"{base}/accounts/{account}/lots", headers=auth, params={"limit": 500})
        held = len(lots.json()["items"])
        # Warm both processes' pools and caches.
        wrk(base + "/healthz", 2, args.connections, headers={})
        health = wrk(base + "/healthz", args.seconds, args.connections, headers={})
        reads = wrk(
            f"{base}/accounts/{account}/balance", args.seconds, args.connections, headers=auth
        )
        expires = (datetime.now(UTC) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
        with tempfile.TemporaryDirectory() as folder:
            script = Path(folder) / "earn.lua"
            script.write_text(
                EARN_SCRIPT % {"token": TOKEN, "accounts": EARN_ACCOUNTS, "expires": expires}
            )
            earns = wrk(base + "/", args.seconds, args.connections, headers={}, script=script)
        scheduled = [
            asyncio.run(OpenLoop(port, int(rate), expires).run(args.seconds))
            for rate in args.earn_rates.split(",")
            if rate
        ]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)

    ratio = reads["rps"] / health["rps"] if health["rps"] else 0.0
    p99 = earns["latency_ms"].get(99, float("inf"))
    errors = sum(r["failed"] + r["socket_errors"] for r in (health, reads, earns))
    print(
        f"== rewards API benchmark: serve --workers {args.workers}, wrk {args.connections}"
        f" connections, {args.seconds} s each; the account has {held} lots"
        f" ({balance['available']:,} points available)"
    )
    print(f"{'measure':48} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}")
    for label, r in (
        ("GET /healthz", health),
        (f"GET /accounts/{{id}}/balance ({held} lots)", reads),
        (f"POST /accounts/{{id}}/earn ({EARN_ACCOUNTS:,} accounts)", earns),
    ):
        lat = r["latency_ms"]
        print(
            f"{label:48} {r['rps']:9.0f} {lat.get(50, 0):8.1f} {lat.get(99, 0):8.1f}"
            f" {r['failed'] + r['socket_errors']:7d}"
        )
    for r in scheduled:
        lat = r["latency_ms"]
        print(
            f"{'POST earn at ' + format(r['rate'], ',') + '/s offered (open loop)':48}"
            f" {r['rate']:9d} {lat[50]:8.1f} {lat[99]:8.1f} {r['failed']:7d}"
            f"   max {lat[100]:.0f} ms, {r['connections']} connections"
        )
    errors += sum(r["failed"] for r in scheduled)
    print(f"balance / healthz: {ratio:.2f}x (target >= 0.5x)")
    print(f"earn p99: {p99:.1f} ms (target < 50 ms), failed requests: {errors} (target 0)")
    ok = ratio >= 0.5 and p99 < 50 and errors == 0
    if args.check and not ok:
        print("CHECK FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
