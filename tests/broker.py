"""RabbitMQ for the tests: a virtual host per test session, and ``rewards worker`` processes.

The broker is the local RabbitMQ (``TEST_BROKER_URL``, default
``amqp://guest:guest@127.0.0.1:5672``). Each session gets a virtual host of its
own (``rabbitmqctl add_vhost``), so queues left by one run never feed another,
and drops it at the end. When RabbitMQ cannot be reached the tests that need it
are skipped, or fail with ``REWARDS_REQUIRE_BROKER=1`` (as in CI).

Registered as a pytest plugin by the modules that use it (``pytest_plugins``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.process_helpers import started_rewards

BROKER = os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672")
REQUIRE_BROKER = os.environ.get("REWARDS_REQUIRE_BROKER") == "1"


def broker_answers() -> bool:
    parts = urlsplit(BROKER)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            return True
    except OSError:
        return False


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


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
def start_worker(tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Start ``rewards worker`` processes; each is killed (with its children) at the end."""
    with ExitStack() as stack:

        def start(env: dict[str, str], *args: str) -> object:
            return stack.enter_context(started_rewards("worker", *args, env=env, cwd=tmp_path))

        yield start
