"""``rewards serve``: when it refuses to start, what it prints and logs, and how it stops.

``with_tokens`` is the pure decision; the rest runs the real command as an
operator does, always killed (if still alive) on the way out.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine

from rewards.cli.serve import UnsafeServe, with_tokens
from rewards.config import DEFAULT_SECRET_KEY, Settings, load_settings
from tests.process_helpers import LineReader, rewards_env, run_rewards, started_rewards, wait_until
from tests.smtp_server import free_port

READY_SECONDS = 30.0
STOP_SECONDS = 15.0
SCHEDULED = "[CheckExpiringPointsJob] scheduled for"
REGISTERED = "[NotificationsModule] registered successfully"


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": "sqlite://",
        "api_token": None,
        "admin_token": None,
        "secret_key": "a-secret-of-our-own",
    }
    values.update(overrides)
    return load_settings(**values)


def secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


# -- with_tokens: the decision --------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_without_tokens_gets_generated_ones(host: str) -> None:
    original = settings()
    ready, generated = with_tokens(original, host)
    assert set(generated) == {"api_token", "admin_token"}
    assert secret(ready.api_token) == generated["api_token"]
    assert secret(ready.admin_token) == generated["admin_token"]
    assert generated["api_token"] != generated["admin_token"]
    assert len(generated["api_token"]) >= 32
    assert (original.api_token, original.admin_token) == (None, None)


def test_loopback_keeps_a_configured_token_and_generates_the_missing_one() -> None:
    ready, generated = with_tokens(settings(api_token="mine"), "127.0.0.1")
    assert set(generated) == {"admin_token"}
    assert secret(ready.api_token) == "mine"
    assert secret(ready.admin_token) == generated["admin_token"]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "rewards.example.com"])
def test_beyond_loopback_missing_tokens_are_refused(host: str) -> None:
    with pytest.raises(UnsafeServe, match="REWARDS_API_TOKEN, REWARDS_ADMIN_TOKEN"):
        with_tokens(settings(), host)


def test_beyond_loopback_one_missing_token_is_named() -> None:
    with pytest.raises(UnsafeServe, match=r"without REWARDS_ADMIN_TOKEN$"):
        with_tokens(settings(api_token="a"), "0.0.0.0")


def test_beyond_loopback_the_default_secret_key_is_refused() -> None:
    configured = settings(api_token="a", admin_token="b", secret_key=DEFAULT_SECRET_KEY)
    with pytest.raises(UnsafeServe, match="REWARDS_SECRET_KEY"):
        with_tokens(configured, "0.0.0.0")


def test_beyond_loopback_a_configured_server_is_served_as_is() -> None:
    configured = settings(api_token="a", admin_token="b")
    assert with_tokens(configured, "10.0.0.5") == (configured, {})


# -- the real command -------------------------------------------------------------------------


@dataclass
class Served:
    process: subprocess.Popen[str]
    stdout: LineReader
    stderr: LineReader
    base_url: str

    def healthy(self) -> bool:
        try:
            return httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, signum: int) -> int | None:
        """Send ``signum``; the exit code, or None if it is still running after a while."""
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            return None


@contextmanager
def serving(database_url: str, cwd: Path, *args: str) -> Iterator[Served]:
    """``rewards serve`` on a free loopback port, without tokens, until it answers /healthz."""
    port = free_port()
    env = rewards_env(database_url, REWARDS_EMAIL_BACKEND="file")
    with started_rewards("serve", "--port", str(port), *args, env=env, cwd=cwd) as process:
        served = Served(
            process,
            LineReader(process.stdout),
            LineReader(process.stderr),
            f"http://127.0.0.1:{port}",
        )
        ready = wait_until(lambda: served.healthy() or process.poll() is not None, READY_SECONDS)
        assert ready, f"not serving after {READY_SECONDS}s:\n{served.stderr.text()}"
        assert process.poll() is None, served.stderr.text()
        yield served


def test_serve_refuses_to_listen_beyond_loopback_without_tokens(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    args = ("serve", "--host", "0.0.0.0", "--port", str(free_port()))
    result = run_rewards(*args, env=rewards_env(database_url), cwd=tmp_path, timeout=READY_SECONDS)
    assert result.returncode == 2
    assert result.stderr.startswith("error: refusing to serve on 0.0.0.0"), result.stderr
    assert "REWARDS_API_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_serve_on_loopback_prints_tokens_logs_and_serves(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    with serving(database_url, tmp_path) as served:
        printed = dict(
            line.split(" for this session: ", 1)
            for line in served.stdout.text().splitlines()
            if " for this session: " in line
        )
        assert set(printed) == {"REWARDS_API_TOKEN", "REWARDS_ADMIN_TOKEN"}
        assert served.stderr.wait_for(REGISTERED, 5), served.stderr.text()
        assert SCHEDULED in served.stderr.text()
        users = served.base_url + "/users/nobody"
        token = {"Authorization": f"Bearer {printed['REWARDS_API_TOKEN']}"}
        assert httpx.get(users, headers=token, timeout=5).status_code == 404
        assert httpx.get(users, timeout=5).status_code == 401


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_stops_on_a_signal(
    database_url: str, engine: Engine, tmp_path: Path, signum: signal.Signals
) -> None:
    with serving(database_url, tmp_path) as served:
        code = served.stop(signum)
        # A graceful stop exits 0; -signum would mean the signal killed the process.
        assert code == 0, (code, served.stderr.text())
        assert not served.healthy()
        served.stderr.join(5)
        assert "Traceback" not in served.stderr.text()
        assert "Shutting down" in served.stderr.text()
        assert "Application shutdown complete" in served.stderr.text()  # the scheduler too


def test_serve_without_scheduler_does_not_schedule(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    with serving(database_url, tmp_path, "--no-scheduler") as served:
        assert served.stderr.wait_for(REGISTERED, 5), served.stderr.text()
        assert served.stop(signal.SIGINT) is not None
        served.stderr.join(5)
        assert SCHEDULED not in served.stderr.text()


def test_serve_with_several_workers_answers_from_each_and_stops_cleanly(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    with serving(database_url, tmp_path, "--workers", "2") as served:
        token = {
            "Authorization": "Bearer "
            + dict(
                line.split(" for this session: ", 1)
                for line in served.stdout.text().splitlines()
                if " for this session: " in line
            )["REWARDS_API_TOKEN"]
        }
        # Both processes took the generated token from the supervising one.
        assert served.stderr.wait_for("Started server process", 5)
        assert wait_until(lambda: served.stderr.text().count(REGISTERED) == 2, 10)
        with httpx.Client(base_url=served.base_url, headers=token, timeout=5) as client:
            assert client.post("/users", json={"id": "w1"}).status_code == 201
            statuses = {client.get("/users/w1").status_code for _ in range(40)}
        assert statuses == {200}
        assert served.stderr.text().count(SCHEDULED) == 1  # one scheduler, not one per process
        code = served.stop(signal.SIGTERM)
        assert code == 0, (code, served.stderr.text())
        served.stderr.join(5)
        assert "Traceback" not in served.stderr.text()
