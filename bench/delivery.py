"""Benchmark of delivering reminders over SMTP: inline and Celery workers, against postfix's sink.

    python bench/delivery.py                              # 20,000 reminders per mode
    python bench/delivery.py --reminders 2000 --check     # smoke size, as CI runs it
    python bench/delivery.py --reminders 200000 --modes inline,celery2   # memory as N grows
    python bench/delivery.py --profile                    # plus py-spy: where the time goes

It creates a throwaway PostgreSQL database on ``BENCH_DATABASE_URL`` (default:
the local server), generates ``--reminders`` members who each have one credit
expiring within the next 30 days (so each is due exactly one reminder: a mix of
the 30-, 7- and 1-day tiers), loads them with ``COPY`` and runs ``rewards ledger
sync``. It starts postfix's ``smtp-sink`` (Debian package ``postfix``) on a free
local port and then, in one run and against that one sink, measures:

* ``smtp-source -d -s 4 -m N -l SIZE``: postfix's own client, 4 sessions, each
  reusing its connection as the service does, messages of the reminders' size:
  the ceiling of this machine and this sink;
* ``inline``: ``rewards notify run --json`` (``REWARDS_DISPATCH=inline``) in a
  child process, once per ``--smtp-concurrency`` (default 4 and 8);
* ``celery1`` / ``celery2``: one, then two ``rewards worker --concurrency K``
  processes on a RabbitMQ virtual host of their own (created and deleted with
  ``rabbitmqctl``), started and ready before the job, then the same command with
  ``REWARDS_DISPATCH=celery``, which enqueues and waits until every row is settled.
  Two workers each get a host name of their own (a UTS namespace, ``unshare
  --uts``, where it is allowed), as on two machines; without it they share the
  host, each named ``rewards-<pid>@<host>``.

Each mode starts from the same due reminders (the outbox, ``NotificationLog`` and
``NotificationDelivery``, is emptied in between). The rate is end to end: from the
job's start (its run record's ``startedAt``: sync, expiry, plan, outbox, sending)
to the last row settled (the latest ``settledAt``), both written by the service.
Each mode is verified: the sink received N more messages, the outbox has N rows
``SENT`` and none ``PENDING`` or unsettled.

Memory: the job's peak RSS (``/usr/bin/time``, and ``VmHWM`` polled from
``/proc``); a worker's is the peak of its processes' PSS summed (main and pool: the
pages a forked pool shares are counted once), with their RSS summed (an upper bound)
and the largest one's. CPU is what each part of the machine spent per message
(``/proc/<pid>/stat``; PostgreSQL's exited backends are in the postmaster's
children's time; "other" is whatever else ran), and from it the rate the mode's own
CPU allows with the machine to itself: a missed target says what it is short of.

``--profile`` also samples the job and the workers with py-spy ``--gil`` (the
thread holding the GIL: Python's CPU time; the rates measured then are slowed by the
sampler) and prints where each spends it per message: claim, decide, build, send
(the SMTP client), settle, plan and write the outbox, Celery; ``--profile-dir`` keeps
the collapsed stacks.

``--check`` exits non-zero if a reminder is lost, duplicated or left ``PENDING`` in
any mode; what is missing (RabbitMQ, ``smtp-source``, py-spy) is skipped with a
message. Without ``smtp-sink`` the benchmark cannot run at all: it exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from sqlalchemy.engine import make_url

from procfs import process_tree, pss_kib, vm_hwm_kib
from rewards import migrate
from rewards.config import Settings
from rewards.db import create_db_engine
from rewards.ids import new_id
from rewards.notifications.messages import MessageBuilder, Reminder

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672"
SECRET = "delivery-bench-secret-delivery-bench-secret"
EMAIL_FROM = "Acme Rewards <rewards@acme.example>"
PUBLIC_URL = "https://rewards.example.com"
TARGET_RATE = 2000.0
TARGET_MIB = 286.0
"""300 MB in MiB."""
SOURCE_SESSIONS = 4
COPY_ROWS = 50_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
BIN = Path(sys.executable).parent
SPY_RATE = 200
SPY_ARGS = ("record", "--format", "raw", "--nolineno", "--gil", "-r", str(SPY_RATE))
"""py-spy: collapsed stacks of the thread holding the GIL (Python's CPU time), 200 per second."""

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Frances"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson"]
OTHER_NAMES = [
    "José García", "Zoë Ødegård", "Łukasz Wróbel", "Nguyễn Văn An", "Александр Пушкин",
    "山田 太郎", "O'Brien, Pat", 'Ada "AL" Lovelace', "Maria Teresa de los Ángeles García López",
]  # fmt: skip


def say(message: str = "") -> None:
    print(message, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def one_line(text: str) -> str:
    return " ".join(text.split())


# -- /proc: memory and CPU ----------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (field 3 onwards), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _comm(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return raw[raw.find("(") + 1 : raw.rfind(")")]


def _cpu_ticks(pid: int, *, children: bool = False) -> int:
    """utime + stime (+ cutime + cstime: the children it has reaped) in clock ticks."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks


class TreeMonitor(threading.Thread):
    """Polls a process and its descendants: each one's peak RSS and CPU time, kept after it
    exits (as last seen), and the peak of their PSS summed (what the tree costs the machine:
    pages a prefork pool shares are counted once). Wrappers (``time``, py-spy) are left out."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.hwm: dict[int, int] = {}
        self.ticks: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.pss_peak_kib = 0
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def sample(self) -> None:
        pss = 0
        for pid in process_tree(self.root):
            name = self.names.get(pid) or _comm(pid)
            hwm, ticks = vm_hwm_kib(pid), _cpu_ticks(pid)
            if name not in {"time", "py-spy"}:
                pss += pss_kib(pid)
            with self._lock:
                self.names[pid] = name
                if hwm:
                    self.hwm[pid] = max(self.hwm.get(pid, 0), hwm)
                if ticks:
                    self.ticks[pid] = max(self.ticks.get(pid, 0), ticks)
        with self._lock:
            self.pss_peak_kib = max(self.pss_peak_kib, pss)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def _own(self) -> list[int]:
        """The processes that are the service's (not /usr/bin/time or py-spy around them)."""
        return [p for p in self.hwm if self.names.get(p, "") not in {"time", "py-spy"}]

    @property
    def peak_total_mib(self) -> float:
        with self._lock:
            return sum(self.hwm[p] for p in self._own()) / 1024

    @property
    def peak_max_mib(self) -> float:
        with self._lock:
            return max((self.hwm[p] for p in self._own()), default=0) / 1024

    @property
    def peak_pss_mib(self) -> float:
        return self.pss_peak_kib / 1024

    @property
    def processes(self) -> int:
        with self._lock:
            return len(self._own())

    def cpu_seconds(self) -> float:
        self.sample()
        with self._lock:
            return sum(self.ticks[p] for p in self.ticks if self.names.get(p) != "py-spy") / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all CPUs)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK_TCK


def service_cpu_seconds(sink_pid: int | None) -> dict[str, float]:
    """CPU seconds so far of PostgreSQL (live processes, plus the backends the postmaster
    reaped), RabbitMQ (``beam.smp``) and the sink."""
    postgres = rabbit = 0
    comms: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fields = _stat_fields(pid)
        name = _comm(pid)
        if fields is None:
            continue
        comms[pid] = (name, int(fields[1]))
    for pid, (name, ppid) in comms.items():
        if name == "postgres":
            postmaster = comms.get(ppid, ("", 0))[0] != "postgres"
            postgres += _cpu_ticks(pid, children=postmaster)
        elif name in {"beam.smp", "erl_child_setup", "epmd"}:
            rabbit += _cpu_ticks(pid, children=True)
    sink = _cpu_ticks(sink_pid) if sink_pid else 0
    return {"postgres": postgres / CLK_TCK, "rabbitmq": rabbit / CLK_TCK, "sink": sink / CLK_TCK}


# -- the data -----------------------------------------------------------------------------------


def name_for(rng: random.Random) -> str | None:
    roll = rng.random()
    if roll < 0.10:
        return None
    if roll < 0.80:
        return f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    return rng.choice(OTHER_NAMES)


def generate(url: str, reminders: int, seed: int, today: date) -> float:
    """``reminders`` members, each with one account and one credit expiring at noon UTC 1 to 30
    days from today: one reminder due per member. COPY, in chunks; returns seconds."""
    rng = random.Random(seed)
    started = time.perf_counter()
    created = datetime.combine(today, datetime.min.time()) - timedelta(days=200)
    with psycopg.connect(url, autocommit=True) as conn:
        for first in range(0, reminders, COPY_ROWS):
            members = range(first, min(first + COPY_ROWS, reminders))
            with conn.transaction():
                with conn.cursor().copy(
                    'COPY "User" ("id", "email", "name", "createdAt", "emailNotifications")'
                    " FROM STDIN"
                ) as copy:
                    for n in members:
                        copy.write_row(
                            (f"u{n:07d}", f"member{n}@example.com", name_for(rng), created, True)
                        )
                with conn.cursor().copy(
                    'COPY "Account" ("id", "userId", "createdAt") FROM STDIN'
                ) as copy:
                    for n in members:
                        copy.write_row((f"a{n:07d}", f"u{n:07d}", created))
                with conn.cursor().copy(
                    'COPY "PointLedger" ("id", "accountId", "entryType", "credit", "debit",'
                    ' "description", "createdAt", "expiresAt") FROM STDIN'
                ) as copy:
                    for n in members:
                        earned = created + timedelta(days=rng.randint(0, 150), hours=10)
                        expires = datetime.combine(
                            today + timedelta(days=rng.randint(1, 30)), datetime.min.time()
                        ) + timedelta(hours=12)
                        points = rng.randint(10, 50_000)
                        copy.write_row(
                            (f"l{n:07d}", f"a{n:07d}", "EARN", points, 0, "order", earned, expires)
                        )
    return time.perf_counter() - started


def message_size(count: int = 200) -> int:
    """The reminders' average size in bytes, as rendered by the service (for smtp-source)."""
    builder = MessageBuilder(
        Settings(email_from=EMAIL_FROM, public_url=PUBLIC_URL, secret_key=SECRET)
    )
    rng = random.Random(1)
    total = 0
    for n in range(count):
        days = rng.choice((30, 7, 1))
        reminder = Reminder(
            log_id=new_id(),
            user_id=f"u{n:07d}",
            email=f"member{n}@example.com",
            name=name_for(rng),
            points=rng.randint(10, 50_000),
            expiration_date=date.today() + timedelta(days=days),
            notification_type="EXPIRATION_1_DAY" if days == 1 else f"EXPIRATION_{days}_DAYS",
            days_left=days,
        )
        total += len(builder.render(reminder).data)
    return total // count


def reset_outbox(url: str) -> None:
    """Empty the outbox, so the next mode plans and sends the same reminders afresh, from the
    state of a fresh database (no statistics on the outbox's tables until autovacuum's)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute('TRUNCATE "NotificationDelivery", "NotificationLog"')
        conn.execute("CHECKPOINT")


@dataclass(frozen=True)
class Outbox:
    statuses: dict[str, int]
    unsettled: int
    started: datetime | None
    last_settled: datetime | None
    first_settled: datetime | None


def read_outbox(url: str, run_id: str | None) -> Outbox:
    with psycopg.connect(url) as conn:
        statuses: dict[Any, Any] = dict(
            conn.execute('SELECT "status", count(*) FROM "NotificationLog" GROUP BY 1').fetchall()
        )
        row = conn.execute(
            'SELECT count(*) FILTER (WHERE "settledAt" IS NULL), max("settledAt"),'
            ' min("settledAt") FROM "NotificationDelivery"'
        ).fetchone()
        assert row is not None
        started = None
        if run_id:
            found = conn.execute(
                'SELECT "startedAt" FROM "NotificationJobRun" WHERE "id" = %s', (run_id,)
            ).fetchone()
            started = found[0] if found else None
    return Outbox(
        {str(k): int(v) for k, v in statuses.items()}, int(row[0]), started, row[1], row[2]
    )


# -- smtp-sink and smtp-source ---------------------------------------------------------------


class Sink:
    """postfix's ``smtp-sink`` on a free local port, counting the messages it received.

    Options: ``-c`` prints a running count (``mesg=``) after every message, which is
    read from its output file; nothing is dumped to disk (no ``-d``/``-D``) and no
    command is logged (no ``-s``), which would cost it orders of magnitude; ``-4``
    listens on IPv4 only; ``-m 1000`` lets more sessions in at once than the default 256.
    """

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.out = folder / "smtp-sink.out"
        command = [shutil.which("smtp-sink") or "smtp-sink"]
        if os.geteuid() == 0:
            command += ["-u", "root"]  # required as root; it stays root: a throwaway sink
        command += ["-4", "-c", "-m", "1000", f"127.0.0.1:{self.port}", "2000"]
        self._file = self.out.open("wb")
        self.process = subprocess.Popen(
            command, stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"smtp-sink did not start: {self.out.read_text()}") from None
                time.sleep(0.05)

    def received(self) -> int:
        """Messages received so far (its last running count), once the count stops moving."""
        last, stable_since = -1, time.monotonic()
        while True:
            tail = self.out.read_bytes()[-200:].decode(errors="replace")
            counts = re.findall(r"mesg=(\d+)", tail)
            count = int(counts[-1]) if counts else 0
            if count != last:
                last, stable_since = count, time.monotonic()
            elif time.monotonic() - stable_since > 0.3:
                return count
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._file.close()


@dataclass
class Ceiling:
    seconds: float
    messages: int
    size: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def smtp_source(sink: Sink, messages: int, size: int) -> Ceiling:
    """``smtp-source``: 4 sessions, each reusing its connection (``-d``), ``size``-byte bodies."""
    before = sink.received()
    command = [
        shutil.which("smtp-source") or "smtp-source",
        "-d",
        "-s",
        str(SOURCE_SESSIONS),
        "-m",
        str(messages),
        "-l",
        str(size),
        "-f",
        "rewards@acme.example",
        "-t",
        "member@example.com",
        f"127.0.0.1:{sink.port}",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    return Ceiling(seconds, sink.received() - before, size)


# -- RabbitMQ -----------------------------------------------------------------------------------


def broker_problem(broker: str) -> str | None:
    """Why Celery cannot be measured here, or None."""
    parts = urlsplit(broker)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            pass
    except OSError as exc:
        return f"RabbitMQ at {parts.hostname}:{parts.port or 5672} does not answer ({exc})"
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed (needed to create a virtual host)"
    return None


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@contextmanager
def virtual_host(broker: str) -> Iterator[str]:
    """A RabbitMQ virtual host of the benchmark's own; the broker URL on it."""
    vhost = f"rewards-bench-{uuid.uuid4().hex[:8]}"
    user = urlsplit(broker).username or "guest"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield f"{broker.rstrip('/')}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


# -- the service's processes --------------------------------------------------------------------


def service_env(url: str, sink: Sink, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDS_")}
    env.update(
        DATABASE_URL=url,
        COLUMNS="200",
        REWARDS_EMAIL_BACKEND="smtp",
        REWARDS_SMTP_HOST="127.0.0.1",
        REWARDS_SMTP_PORT=str(sink.port),
        REWARDS_SECRET_KEY=SECRET,
        REWARDS_EMAIL_FROM=EMAIL_FROM,
        REWARDS_PUBLIC_URL=PUBLIC_URL,
        REWARDS_TIMEZONE="UTC",
    )
    env.update({f"REWARDS_{k.upper()}": v for k, v in settings.items()})
    return env


def rewards_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rewards", *args]


def startup_cpu_seconds(env: dict[str, str]) -> float:
    """CPU seconds the ``rewards`` command takes to start (its imports), before a job begins:
    ``rewards notify --help``, the least of three."""
    spent = []
    for _ in range(3):
        before = os.times()
        subprocess.run(rewards_command("notify", "--help"), env=env, capture_output=True)
        after = os.times()
        spent.append(
            after.children_user
            + after.children_system
            - before.children_user
            - before.children_system
        )
    return min(spent)


def py_spy() -> str | None:
    found = BIN / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


@dataclass
class Job:
    returncode: int
    summary: dict[str, Any]
    stderr: str
    wall: float
    peak_mib: float
    cpu_seconds: float


def run_job(env: dict[str, str], folder: Path, profile: Path | None) -> Job:
    """``rewards notify run --json`` in a child: its summary, wall time, peak RSS and CPU."""
    command = rewards_command("notify", "run", "--json")
    spy = py_spy() if profile else None
    if spy and profile:
        command = [spy, *SPY_ARGS, "-o", str(profile), "--", *command]
    peak_file = folder / "job.time"
    time_bin = Path("/usr/bin/time")
    if time_bin.exists():
        command = [str(time_bin), "-f", "%M", "-o", str(peak_file), *command]
    with (folder / "job.out").open("wb") as out, (folder / "job.err").open("wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        monitor = TreeMonitor(process.pid)
        monitor.start()
        process.wait()
        wall = time.perf_counter() - started
        monitor.stop()
    peak = monitor.peak_max_mib
    if peak_file.exists() and not spy:
        reported = peak_file.read_text().strip().splitlines()
        if reported and reported[-1].isdigit():
            peak = max(peak, int(reported[-1]) / 1024)
    stdout = (folder / "job.out").read_text()
    stderr = (folder / "job.err").read_text()
    summary: dict[str, Any] = {}
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            summary = json.loads(line)
            break
    return Job(process.returncode, summary, stderr, wall, peak, monitor.cpu_seconds())


def can_name_hosts() -> bool:
    """Whether a worker can be given a host name of its own (a UTS namespace: root, Linux)."""
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--uts", "sh", "-c", "hostname rewards-bench-probe"]
    return subprocess.run(probe, capture_output=True).returncode == 0


class Worker:
    """``rewards worker --concurrency K``, in its own session; ready when Celery says so.

    With ``hostname``, the worker runs in a UTS namespace of its own under that host
    name, as if on a machine of its own: ``rewards worker`` names its Celery node
    ``rewards@<host>``, so two on one host collide on the node's exclusive
    remote-control queue (``rewards@<host>.celery.pidbox``: RESOURCE_LOCKED) and the
    second one dies.
    """

    def __init__(
        self, env: dict[str, str], concurrency: int, log: Path, hostname: str | None = None
    ) -> None:
        self.log = log
        self._file = log.open("wb")
        command = rewards_command("worker", "--concurrency", str(concurrency))
        if hostname is not None:
            command = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname]
            command += rewards_command("worker", "--concurrency", str(concurrency))
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.monitor = TreeMonitor(self.process.pid, interval=0.1)
        self.spy: subprocess.Popen[bytes] | None = None

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"rewards worker did not become ready:\n{tail}")
            time.sleep(0.1)
        self.monitor.start()

    def profile(self, out: Path) -> None:
        spy = py_spy()
        if spy is None:
            return
        self.spy = subprocess.Popen(
            [
                *(spy, *SPY_ARGS, "--subprocesses"),
                *("-o", str(out), "--pid", str(self.process.pid)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # let it attach to every process of the pool

    def stop(self) -> None:
        if self.spy is not None:
            self.spy.send_signal(signal.SIGINT)
            try:
                self.spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.spy.kill()
                self.spy.wait()
        if self.monitor.is_alive():
            self.monitor.stop()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._file.close()


# -- one mode -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """A worker's memory: its processes (main + pool) together and the largest one, in MiB."""

    pss: float
    """The peak of their PSS summed: what the worker costs the machine (shared pages once)."""
    rss_sum: float
    """Their peak RSS summed: an upper bound, which counts pages the pool shares each time."""
    rss_max: float
    processes: int


@dataclass
class Mode:
    key: str
    label: str
    reminders: int
    seconds: float = 0.0
    """From the job's start to the last row settled."""
    job: Job | None = None
    outbox: Outbox | None = None
    sink: int = 0
    workers: list[Memory] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    problems: list[str] = field(default_factory=list)
    profiles: dict[str, Path] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.reminders / self.seconds if self.seconds else 0.0

    @property
    def sent(self) -> int:
        return self.outbox.statuses.get("SENT", 0) if self.outbox else 0


def run_mode(
    mode: Mode,
    url: str,
    sink: Sink,
    env: dict[str, str],
    folder: Path,
    *,
    workers: Sequence[Worker] = (),
    profiles: Path | None = None,
    startup_cpu: float = 0.0,
) -> Mode:
    """Run the job once with ``env`` (workers already started and ready); verify, measure."""
    before_sink = sink.received()
    job_profile = profiles / f"{mode.key}-job.txt" if profiles else None
    if profiles:
        for n, worker in enumerate(workers):
            path = profiles / f"{mode.key}-worker{n + 1}.txt"
            worker.profile(path)
            mode.profiles[f"worker {n + 1}"] = path
    cpu_before = {f"worker {n + 1}": w.monitor.cpu_seconds() for n, w in enumerate(workers)}
    services_before = service_cpu_seconds(sink.process.pid)
    busy_before = machine_busy_seconds()
    job = run_job(env, folder, job_profile)
    busy = machine_busy_seconds() - busy_before
    services = service_cpu_seconds(sink.process.pid)
    start_up = min(job.cpu_seconds, startup_cpu)
    mode.cpu = {"job": job.cpu_seconds - start_up, "start-up": start_up}
    for n, worker in enumerate(workers):
        name = f"worker {n + 1}"
        mode.cpu[name] = worker.monitor.cpu_seconds() - cpu_before[name]
    for name, seconds in services.items():
        mode.cpu[name] = seconds - services_before[name]
    mode.cpu["other"] = max(0.0, busy - sum(mode.cpu.values()))
    mode.cpu["machine busy"] = busy
    mode.wall = job.wall
    if job_profile is not None:
        mode.profiles["job"] = job_profile
    for worker in workers:
        worker.stop()
        monitor = worker.monitor
        mode.workers.append(
            Memory(
                monitor.peak_pss_mib,
                monitor.peak_total_mib,
                monitor.peak_max_mib,
                monitor.processes,
            )
        )
    mode.job = job
    if job.returncode != 0 or not job.summary:
        mode.problems.append(f"the job failed (exit {job.returncode}): {job.stderr[-2000:]}")
    mode.outbox = read_outbox(url, job.summary.get("runId"))
    mode.sink = sink.received() - before_sink
    if mode.outbox.started and mode.outbox.last_settled:
        mode.seconds = (mode.outbox.last_settled - mode.outbox.started).total_seconds()
    n = mode.reminders
    statuses = mode.outbox.statuses
    if mode.sink < n:
        mode.problems.append(f"the sink received {mode.sink:,} messages of {n:,}: some were lost")
    elif mode.sink > n:
        mode.problems.append(f"the sink received {mode.sink:,} messages for {n:,}: duplicates")
    if statuses.get("SENT", 0) != n or statuses.get("PENDING", 0) or mode.outbox.unsettled:
        mode.problems.append(
            f"the outbox has {json.dumps(statuses)} and {mode.outbox.unsettled:,} rows"
            f" unsettled; expected {n:,} SENT and none PENDING"
        )
    return mode


def describe(mode: Mode) -> str:
    job = mode.job
    assert job is not None
    timings = job.summary.get("timings", {})
    outbox = mode.outbox.statuses if mode.outbox else {}
    workers = "".join(
        f"; worker {n + 1} ({w.processes} processes) peak PSS {w.pss:.0f} MiB, RSS summed"
        f" {w.rss_sum:.0f} MiB, largest process {w.rss_max:.0f} MiB"
        for n, w in enumerate(mode.workers)
    )
    return (
        f"{mode.label}: {mode.reminders:,} reminders in {mode.seconds:.2f}s from the job's start"
        f" to the last settled ({mode.rate:,.0f}/s); job {job.summary.get('durationSeconds')}s"
        f" {json.dumps(timings)}, child wall {job.wall:.2f}s, peak RSS {job.peak_mib:.0f} MiB"
        f"{workers}; sink +{mode.sink:,}; outbox {json.dumps(outbox)}"
    )


# -- profiles -----------------------------------------------------------------------------------

PHASES: list[tuple[str, tuple[str, ...]]] = [
    ("claim", ("_claim (rewards/notifications/dispatch/", "claim (rewards/notifications/outbox")),
    ("decide", ("_decide (rewards/notifications/dispatch/",)),
    (
        "settle",
        ("_settle (rewards/notifications/dispatch/", "settle (rewards/notifications/outbox"),
    ),
    ("rate cap", ("rewards/notifications/rate.py",)),
    (
        "build (render)",
        ("render (rewards/notifications/messages", "rewards/notifications/mime.py", "jinja2/"),
    ),
    ("send (SMTP client)", ("rewards/notifications/delivery/smtp", "tenacity/")),
    ("metrics", ("rewards/metrics.py", "prometheus_client/")),
    (
        "plan + write outbox",
        ("_write_outbox (rewards/notifications/job", "write_planned (", "plan_due_notifications"),
    ),
    ("sync + expire", ("_sync (rewards/notifications/job", "_expire (rewards/notifications/job")),
    ("enqueue (job)", ("enqueue (rewards/notifications/dispatch/celery_app",)),
    ("wait + sweep (job)", ("wait (rewards/notifications/dispatch/celery_app",)),
    ("worker state", ("_worker_state (rewards/notifications/dispatch/celery_app",)),
]
"""Phases by a frame of the service's own, matched from the root of each stack down."""

FALLBACKS: list[tuple[str, tuple[str, ...]]] = [
    ("start-up (imports)", ("<frozen importlib", "importlib/")),
    ("logging", ("logging/",)),
    ("celery/kombu (task in, ack)", ("celery/", "kombu/", "amqp/", "billiard/", "vine/")),
    ("socket I/O on the loop", ("asyncio/selector_events.py",)),
    ("database (other)", ("sqlalchemy/", "psycopg/")),
    ("event loop (asyncio)", ("asyncio/",)),
]
"""Where a stack without a phase frame is, from its leaf up."""


def categorize(stack: list[str]) -> str:
    for frame in stack:
        for name, needles in PHASES:
            if any(n in frame for n in needles):
                return name
    for frame in reversed(stack):
        for name, needles in FALLBACKS:
            if any(n in frame for n in needles):
                return name
    return "other"


def read_profile(path: Path) -> Counter[str]:
    """Samples by phase from py-spy's raw (collapsed) output."""
    counts: Counter[str] = Counter()
    if not path.exists():
        return counts
    for line in path.read_text(errors="replace").splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        counts[categorize(stack.split(";"))] += int(samples)
    return counts


def print_profiles(modes: Sequence[Mode]) -> None:
    """Per process profiled: milliseconds per message holding the GIL in each phase (the
    Python CPU time; a worker's pool processes together)."""
    for mode in modes:
        for who, path in mode.profiles.items():
            counts = read_profile(path)
            total = sum(counts.values())
            if not total:
                say(f"  {mode.label}, {who}: no samples (py-spy could not attach?)")
                continue
            say(
                f"  {mode.label}, {who}: {total / SPY_RATE:.1f} s holding the GIL,"
                f" {total / SPY_RATE * 1000 / mode.reminders:.3f} ms per message:"
            )
            for phase, samples in counts.most_common():
                ms = samples / SPY_RATE * 1000 / mode.reminders
                say(f"    {phase:32} {ms:8.3f} ms/msg  {100 * samples / total:5.1f}%")


# -- the report ---------------------------------------------------------------------------------


@dataclass
class Report:
    rows: list[tuple[str, ...]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        self.rows.append(cells)

    def print(self) -> None:
        widths = [max(len(r[i]) for r in self.rows) for i in range(len(self.rows[0]))]
        for n, row in enumerate(self.rows):
            cells = [
                c.ljust(widths[i]) if i == 0 or i >= len(row) - 2 else c.rjust(widths[i])
                for i, c in enumerate(row)
            ]
            say("  ".join(cells).rstrip())
            if n == 0:
                say("  ".join("-" * w for w in widths))


def verdict(met: bool | None) -> str:
    return "" if met is None else ("ok" if met else "MISSED")


# -- main ---------------------------------------------------------------------------------------


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--reminders", type=int, default=20_000, help="members due one each")
    parser.add_argument(
        "--modes",
        default="source,inline,celery1,celery2",
        help="which to run, of source, inline, celery1, celery2 (default: all)",
    )
    parser.add_argument(
        "--smtp-concurrency",
        default="4,8",
        help="REWARDS_SMTP_CONCURRENCY values for inline (comma-separated; default 4,8)",
    )
    parser.add_argument(
        "--worker-concurrency", type=int, default=2, help="rewards worker --concurrency K"
    )
    parser.add_argument(
        "--worker-smtp-concurrency",
        type=int,
        default=4,
        help="REWARDS_SMTP_CONCURRENCY of each worker process (default 4)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="sample with py-spy (slower)")
    parser.add_argument(
        "--profile-dir", type=Path, help="keep py-spy's raw (collapsed) stacks in this folder"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a reminder is lost")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args()
    modes = {m.strip() for m in args.modes.split(",") if m.strip()}
    unknown = modes - {"source", "inline", "celery1", "celery2"}
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    if shutil.which("smtp-sink") is None:
        print(
            "smtp-sink is not installed: apt-get install postfix (Debian package postfix;"
            " it also brings smtp-source)",
            file=sys.stderr,
        )
        return 2

    server = make_url(os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    name = f"rewards_delivery_bench_{uuid.uuid4().hex[:8]}"
    admin_url = server.set(drivername="postgresql").render_as_string(hide_password=False)
    url = server.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with tempfile.TemporaryDirectory(prefix="rewards-delivery-bench-") as scratch:
            return run_benchmark(url, args, modes, Path(scratch))
    finally:
        if args.keep:
            say(f"kept the database: {url}")
        else:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_benchmark(url: str, args: argparse.Namespace, wanted: set[str], scratch: Path) -> int:
    n = args.reminders
    begun = time.perf_counter()
    today = datetime.now(UTC).date()
    with psycopg.connect(url, autocommit=True) as conn:
        version = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]
        pg = ", ".join(
            f"{s} {conn.execute(f'SHOW {s}').fetchone()[0]}"  # type: ignore[index]
            for s in ("shared_buffers", "synchronous_commit", "max_connections")
        )
    say(
        f"== rewards delivery benchmark: {n:,} reminders due, one per member; {NCPU} CPUs;"
        f" PostgreSQL {version} ({pg})"
    )
    say(f"database {url}")

    engine = create_db_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    load_s = generate(url, n, args.seed, today)
    sync = subprocess.run(
        rewards_command("ledger", "sync"),
        env=dict(os.environ, DATABASE_URL=url, COLUMNS="200"),
        capture_output=True,
        text=True,
    )
    if sync.returncode != 0:
        raise RuntimeError(f"rewards ledger sync failed:\n{sync.stdout}\n{sync.stderr}")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    say(
        f"generated {n:,} members, accounts and credits with COPY in {load_s:.1f}s;"
        f" rewards ledger sync: {one_line(sync.stdout)[-160:]}"
    )

    size = message_size()
    startup = startup_cpu_seconds(dict(os.environ, DATABASE_URL=url))
    sink = Sink(scratch)
    say(
        f"smtp-sink on 127.0.0.1:{sink.port}; the reminders average {size:,} bytes; the rewards"
        f" command's start-up (imports) takes {startup:.2f}s of CPU"
    )
    skipped: list[str] = []
    modes: list[Mode] = []
    ceiling: Ceiling | None = None
    try:
        if "source" in wanted:
            if shutil.which("smtp-source") is None:
                skipped.append("smtp-source: not installed (Debian package postfix)")
            else:
                ceiling = smtp_source(sink, n, size)
                say(
                    f"smtp-source -d -s {SOURCE_SESSIONS} -m {n} -l {size}: {ceiling.messages:,}"
                    f" messages in {ceiling.seconds:.2f}s ({ceiling.rate:,.0f}/s)"
                )
        if args.profile and py_spy() is None:
            skipped.append("--profile: py-spy is not installed (pip install py-spy)")
        profiles: Path | None = None
        if args.profile and py_spy() is not None:
            profiles = args.profile_dir or scratch / "profiles"
            profiles.mkdir(parents=True, exist_ok=True)
        if "inline" in wanted:
            for concurrency in parse_ints(args.smtp_concurrency):
                reset_outbox(url)
                env = service_env(url, sink, dispatch="inline", smtp_concurrency=str(concurrency))
                folder = scratch / f"inline{concurrency}"
                folder.mkdir()
                mode = Mode(f"inline{concurrency}", f"inline, SMTP x{concurrency}", n)
                modes.append(
                    run_mode(mode, url, sink, env, folder, profiles=profiles, startup_cpu=startup)
                )
                say(describe(mode))
        celery = sorted(m for m in wanted if m.startswith("celery"))
        problem = broker_problem(os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER))
        if celery and problem:
            skipped.append(f"Celery: {problem}")
        elif celery:
            with virtual_host(os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER)) as broker:
                say(f"RabbitMQ virtual host: {broker.rsplit('/', 1)[-1]}")
                for key in celery:
                    count = int(key.removeprefix("celery"))
                    reset_outbox(url)
                    folder = scratch / key
                    folder.mkdir()
                    env = service_env(
                        url,
                        sink,
                        dispatch="celery",
                        broker_url=broker,
                        smtp_concurrency=str(args.worker_smtp_concurrency),
                    )
                    hosts: list[str | None] = [None] * count
                    if count > 1 and can_name_hosts():
                        hosts = [f"rewards-bench-worker{i + 1}" for i in range(count)]
                    elif count > 1:
                        say(
                            f"{key}: the workers cannot be given host names of their own"
                            " (unshare --uts needs root): the second one will die on Celery's"
                            " node name, rewards@<host>"
                        )
                    workers = [
                        Worker(
                            env, args.worker_concurrency, folder / f"worker{i + 1}.log", hosts[i]
                        )
                        for i in range(count)
                    ]
                    try:
                        for worker in workers:
                            worker.wait_ready()
                        label = (
                            f"Celery {count} worker{'s' if count > 1 else ''}"
                            f" x {args.worker_concurrency} procs,"
                            f" SMTP x{args.worker_smtp_concurrency}"
                        )
                        mode = Mode(key, label, n)
                        job_env = service_env(url, sink, dispatch="celery", broker_url=broker)
                        modes.append(
                            run_mode(
                                mode,
                                url,
                                sink,
                                job_env,
                                folder,
                                workers=workers,
                                profiles=profiles,
                                startup_cpu=startup,
                            )
                        )
                        say(describe(mode))
                    finally:
                        for worker in workers:
                            worker.stop()
    finally:
        sink.stop()

    return report(args, modes, ceiling, skipped, time.perf_counter() - begun)


def report(
    args: argparse.Namespace,
    modes: Sequence[Mode],
    ceiling: Ceiling | None,
    skipped: Sequence[str],
    seconds: float,
) -> int:
    n = args.reminders
    failures: list[str] = []
    table = Report()
    table.add(
        "mode", "msg/s", "seconds", "/ smtp-source", "job RSS", "worker PSS", "sink", "SENT",
        "PENDING", "rate target", "memory target",
    )  # fmt: skip
    if ceiling is not None:
        table.add(
            f"smtp-source -d -s {SOURCE_SESSIONS} (ceiling)",
            f"{ceiling.rate:,.0f}",
            f"{ceiling.seconds:.2f}",
            "1.00x",
            "",
            "",
            f"{ceiling.messages:,}",
            "",
            "",
            "",
            "",
        )
    best_inline = max((m.rate for m in modes if m.key.startswith("inline")), default=None)
    for mode in modes:
        job_mib = mode.job.peak_mib if mode.job else 0.0
        worker_mib = max((w.pss for w in mode.workers), default=0.0)
        ratio = f"{mode.rate / ceiling.rate:.2f}x" if ceiling and ceiling.rate else ""
        rate_met: bool | None = None
        if mode.key.startswith("inline") or mode.key == "celery2":
            rate_met = mode.rate >= TARGET_RATE
        memory_met = job_mib < TARGET_MIB and (not mode.workers or worker_mib < TARGET_MIB)
        pending = mode.outbox.statuses.get("PENDING", 0) if mode.outbox else 0
        table.add(
            mode.label,
            f"{mode.rate:,.0f}",
            f"{mode.seconds:.2f}",
            ratio,
            f"{job_mib:.0f} MiB",
            f"{worker_mib:.0f} MiB" if mode.workers else "",
            f"{mode.sink:,}",
            f"{mode.sent:,}",
            f"{pending:,}",
            f">= {TARGET_RATE:,.0f}/s {verdict(rate_met)}" if rate_met is not None else "",
            f"< 300 MB {verdict(memory_met)}",
        )
        failures += [f"{mode.label}: {p}" for p in mode.problems]
    say("")
    say(
        f"== {n:,} reminders per mode; rate = reminders / (last settledAt - the run's startedAt);"
        " job RSS = its peak RSS; worker PSS = the peak of its processes' PSS summed"
    )
    table.print()
    if best_inline is not None:
        say(
            f"best inline: {best_inline:,.0f}/s (target >= {TARGET_RATE:,.0f}/s:"
            f" {verdict(best_inline >= TARGET_RATE)})"
        )
    say("")
    say(
        f"CPU per message, ms ({NCPU} CPUs: at {TARGET_RATE:,.0f}/s the whole machine has"
        f" {NCPU * 1000 / TARGET_RATE:.3f} ms of CPU per message); 'of CPUs' = busy / wall"
    )
    print_cpu(modes)
    if args.profile:
        say("")
        say(
            "py-spy --gil: where each process spends its Python CPU time per message (the"
            " sampler slows the rates of this run)"
        )
        print_profiles(modes)
    say("")
    for why in skipped:
        say(f"SKIPPED: {why}")
    for mode in modes:
        verdict_text = "; ".join(mode.problems) or (
            f"sink received {mode.sink:,} = N, {mode.sent:,} SENT, none PENDING or unsettled"
        )
        say(
            f"VERIFIED {mode.label}: {verdict_text}"
            if not mode.problems
            else f"FAILED {mode.label}: {verdict_text}"
        )
    say(f"the whole benchmark took {seconds:.0f}s")
    if failures and args.check:
        for why in failures:
            say(f"CHECK: {why}")
        print("CHECK FAILED", file=sys.stderr)
        return 1
    return 0


def cpu_bound(mode: Mode) -> float:
    """The most messages per second this mode's own CPU per message allows on this machine
    alone: all CPUs for the job, workers, PostgreSQL, RabbitMQ and the sink together, one
    CPU for each Python process (the GIL: the inline job, or a worker's pool process)."""
    per = {k: v * 1000 / mode.reminders for k, v in mode.cpu.items()}
    own = sum(v for k, v in per.items() if k not in {"other", "machine busy", "start-up"})
    bound = NCPU * 1000 / own if own else 0.0
    if not mode.workers and per.get("job"):
        bound = min(bound, 1000 / per["job"])
    pool = sum(max(1, w.processes - 1) for w in mode.workers)
    workers = sum(v for k, v in per.items() if k.startswith("worker"))
    if pool and workers:
        bound = min(bound, pool * 1000 / workers)
    return bound


def print_cpu(modes: Sequence[Mode]) -> None:
    parts = ["start-up", "job", "worker 1", "worker 2", "postgres", "rabbitmq", "sink", "other"]
    width = max(len(m.label) for m in modes) if modes else 4
    header = f"  {'mode':{width}}" + "".join(f"{p:>10}" for p in parts)
    say(header + f"{'busy':>10}{'of CPUs':>9}{'CPU-bound at':>14}")
    for mode in modes:
        per = {k: v * 1000 / mode.reminders for k, v in mode.cpu.items()}
        cells = "".join(f"{per[p]:10.3f}" if p in per else f"{'':>10}" for p in parts)
        busy = mode.cpu.get("machine busy", 0.0)
        share = busy / (NCPU * mode.wall) if mode.wall else 0.0
        bound = f"{cpu_bound(mode):,.0f}/s"
        say(
            f"  {mode.label:{width}}{cells}{per.get('machine busy', 0.0):10.3f}{share:9.0%}"
            f"{bound:>14}"
        )
    say(
        "  ('start-up': the job's imports, as `rewards notify --help` takes, before its run"
        " begins; 'job': the rest; 'other': processes not part of the benchmark; 'CPU-bound at':"
        " the rate the mode's own CPU per message after start-up allows with the machine to"
        " itself, one CPU per Python process)"
    )


if __name__ == "__main__":
    sys.exit(main())
