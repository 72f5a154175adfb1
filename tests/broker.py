"""RabbitMQ for the tests: a virtual host per test session, and ``rewards worker`` processes.

The broker is the local RabbitMQ (``TEST_BROKER_URL``, default
``amqp://guest:guest@127.0.0.1:5672``). Each session gets a virtual host of its
own (``rabbitmqctl add_vhost``), so queues left by one run never feed another,
and drops it at the end. When RabbitMQ cannot be reached the tests that need it
are skipped, or fail with ``REWARDS_REQUIRE_BROKER=1`` (as in CI).

Sessions share the one broker, and a test may restart it (the ``restart_broker`` fixture)
while another session's tests use it (``pytest -n 2``): everything here that talks
to RabbitMQ waits for it to come back rather than failing, and the tests keep
their leases short so the outbox's sweep recovers what a restart interrupted.

Registered as a pytest plugin by the modules that use it (``pytest_plugins``).
Fixtures: ``broker_url`` (the session's virtual host), ``broker`` (that host,
its delivery queue emptied before the test), ``restart_broker`` and ``start_worker``.
Test modules import from here only for type checking, so the plugin is imported (and
its asserts rewritten) by pytest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from kombu.connection import Connection

from rewards.notifications.dispatch.celery_app import QUEUE
from tests.process_helpers import rewards_command, wait_until

BROKER = os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672")
REQUIRE_BROKER = os.environ.get("REWARDS_REQUIRE_BROKER") == "1"
BACK_WITHIN = 60.0
"""Seconds the broker may take to come back (from another session's restart) before a
helper gives up on it."""

T = TypeVar("T")


def broker_answers() -> bool:
    parts = urlsplit(BROKER)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            return True
    except OSError:
        return False


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl ARGS``; while the broker is down (another session restarting it),
    wait for it to start and try again."""
    deadline = time.monotonic() + BACK_WITHIN
    while True:
        result = subprocess.run(
            ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=BACK_WITHIN
        )
        if result.returncode == 0:
            return result.stdout
        if time.monotonic() > deadline:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
        subprocess.run(
            ["rabbitmqctl", "-q", "await_startup", "--timeout", "30"],
            capture_output=True,
            timeout=BACK_WITHIN,
            check=False,
        )
        time.sleep(0.2)


def restart(down_for: float = 0.5) -> None:
    """Stop RabbitMQ's application (every connection to it drops), wait ``down_for`` seconds,
    start it again and wait until it serves. Queues declared durable and their persistent
    messages survive, as in a real restart."""
    rabbitmqctl("stop_app")
    try:
        time.sleep(down_for)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


@dataclass(frozen=True)
class Broker:
    """The session's virtual host, and what a test does to its queues."""

    url: str
    vhost: str

    def _on_channel(self, action: Callable[[Any], T], *, absent: T) -> T:
        """``action(channel)`` on a fresh connection, again if the broker drops it meanwhile;
        ``absent`` if the queue it acts on does not exist."""
        deadline = time.monotonic() + BACK_WITHIN
        while True:
            connection: Any = Connection(self.url, connect_timeout=2)  # type: ignore[no-untyped-call]
            try:
                with connection:
                    connection.ensure_connection(
                        max_retries=60, interval_start=0.2, interval_step=0.2, interval_max=1
                    )
                    try:
                        return action(connection.channel())
                    except connection.channel_errors:  # 404: no such queue
                        return absent
            except (OSError, *connection.connection_errors):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def queue_depth(self, queue: str = QUEUE) -> int:
        """Messages ready in ``queue`` (0 when it does not exist)."""
        return self._on_channel(
            lambda channel: int(channel.queue_declare(queue=queue, passive=True).message_count),
            absent=0,
        )

    def purge(self, queue: str = QUEUE) -> int:
        """Drop the messages ready in ``queue``; returns how many (0 when it does not exist)."""
        return self._on_channel(
            lambda channel: int(channel.queue_purge(queue=queue) or 0), absent=0
        )

    def delete_queue(self, queue: str = QUEUE) -> None:
        """Delete ``queue`` with what it holds; consumers are told (``basic.cancel``)."""
        self._on_channel(lambda channel: channel.queue_delete(queue=queue), absent=None)


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """A broker URL on a virtual host of this session's own."""
    if not broker_answers() or shutil.which("rabbitmqctl") is None:
        reason = f"RabbitMQ at {BROKER} does not answer (or rabbitmqctl is missing)"
        if REQUIRE_BROKER:
            pytest.fail(reason + " (REWARDS_REQUIRE_BROKER=1)", pytrace=False)
        pytest.skip(reason)
    vhost = f"rewards-test-{uuid.uuid4().hex[:8]}"
    user = urlsplit(BROKER).username or "guest"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    try:
        yield f"{BROKER.rstrip('/')}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def broker(broker_url: str) -> Broker:
    """The session's virtual host, its delivery queue emptied of earlier tests' tasks."""
    found = Broker(broker_url, urlsplit(broker_url).path.lstrip("/"))
    found.purge()
    return found


@pytest.fixture
def restart_broker() -> Callable[..., None]:
    """:func:`restart`: stop RabbitMQ, wait ``down_for`` seconds, start it and wait for it."""
    return restart


READY = " ready."
"""What Celery logs once a worker consumes."""


class Worker:
    """A ``rewards worker`` process (its own process group, with its pool processes)."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Return once it consumes from the queue; fail with its log if it dies or overruns."""
        ready = wait_until(
            lambda: READY in self.log() or self.process.poll() is not None, timeout, 0.05
        )
        if not ready or self.process.poll() is not None:
            pytest.fail(f"the worker did not start:\n{self.log()[-3000:]}", pytrace=False)

    def pool_pids(self) -> list[int]:
        """Its pool processes (they run the tasks), from ``/proc``."""
        children: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                # The command name may hold spaces and parentheses: the fields after it count.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.pid:
                    children.append(int(entry.name))
        return children

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a lost machine would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start ``rewards worker ARGS`` processes with a given environment; each logs to a file
    in ``tmp_path`` and is killed (with its pool) at the end of the test."""
    workers: list[Worker] = []

    def start(env: dict[str, str], *args: str) -> Worker:
        log_path = tmp_path / f"worker-{len(workers) + 1}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                rewards_command("worker", *args),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp_path,
                start_new_session=True,  # its own process group: the pool goes with it
            )
        worker = Worker(process, log_path)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill()
