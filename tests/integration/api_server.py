"""The HTTP API served for real: uvicorn on a free local port, in a background thread.

Registered as a pytest plugin by the ``test_api_*`` modules (``pytest_plugins``).
Fixtures:

- ``live_api``: the app built by ``create_app(settings, engine)`` over the test's
  database (both backends, through ``engine``, emptied after each test), sending
  email to an in-process SMTP server, served on ``http://127.0.0.1:<port>``; its
  ``public_url`` is that same address, so links in the emails point back at it.
  The server itself (``api_server``) is started once per backend and stopped at
  the end of the session.
- ``running_api(...)``: the same as a context manager, for a test that needs a
  server of its own (other settings).

Plus the small helpers the API tests share: tokens, headers, problem+json checks,
members/accounts/points created through the API itself, and ledger rows written
with plain SQL where the API rightly refuses them (credits dated in the past).

PYTEST_DONT_REWRITE: the test modules import this module before pytest registers
it as a plugin, so its asserts are plain ones and carry their own messages.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine, func, select, text

from rewards.api.app import create_app
from rewards.config import Settings, load_settings
from rewards.ids import new_id
from rewards.models import PointLedger
from tests.process_helpers import sql_timestamp
from tests.smtp_server import SmtpServer, running_smtp_server

CLIENT_TOKEN = "client-token"
ADMIN_TOKEN = "admin-token"
SECRET_KEY = "test-secret-key-long-enough"
CLIENT = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PROBLEM = "application/problem+json"
STARTUP_SECONDS = 10.0
REQUEST_SECONDS = 30.0


@dataclass
class LiveApi:
    """A running server: its address, its settings, and clients for each kind of caller."""

    base_url: str
    settings: Settings
    engine: Engine
    smtp: SmtpServer
    client: httpx.Client
    """Carries the client application's token (``REWARDS_API_TOKEN``)."""
    admin: httpx.Client
    """Carries the operators' token (``REWARDS_ADMIN_TOKEN``)."""
    anonymous: httpx.Client
    """Carries no token at all."""

    def url(self, path: str) -> str:
        return self.base_url + path


def api_settings(base_url: str, database_url: str, smtp: SmtpServer, **overrides: Any) -> Settings:
    """Settings of a test server at ``base_url`` sending through ``smtp`` without retries."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "api_token": CLIENT_TOKEN,
        "admin_token": ADMIN_TOKEN,
        "secret_key": SECRET_KEY,
        "public_url": base_url,
        "email_backend": "smtp",
        "smtp_host": smtp.host,
        "smtp_port": smtp.port,
        "smtp_security": "none",
        "smtp_timeout": 5.0,
        "smtp_retries": 0,
    }
    values.update(overrides)
    return load_settings(**values)


def _listening_socket() -> socket.socket:
    """A socket bound to a free local port, handed to uvicorn so no other process can take it.

    The protocol is named explicitly: asyncio turns Nagle's algorithm off only for
    sockets whose ``proto`` is TCP, and with it on every response waits ~40 ms for
    a delayed ACK.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class _NoTracebacks(logging.Filter):
    """Keeps uvicorn's "Exception in ASGI application" line, drops its traceback.

    uvicorn logs an unhandled exception's traceback *after* the 500 has gone out,
    so in this thread while pytest may be formatting the test's own failure in
    the main one. Python 3.11 parses source with ``ast`` to format tracebacks, and
    two threads doing so at once can fail with "SystemError: AST constructor
    recursion depth mismatch" (an INTERNALERROR in pytest). The app logs the same
    traceback itself, before it answers.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


@contextmanager
def running_api(
    engine: Engine, database_url: str, smtp: SmtpServer, **overrides: Any
) -> Iterator[LiveApi]:
    """Serve ``create_app`` on a free port until the block ends; the server is always stopped."""
    sock = _listening_socket()
    port: int = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    settings = api_settings(base_url, database_url, smtp, **overrides)
    config = uvicorn.Config(
        create_app(settings, engine),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        log_config=None,  # leave the test process's logging (and caplog) alone
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    no_tracebacks = _NoTracebacks()
    uvicorn_errors = logging.getLogger("uvicorn.error")
    uvicorn_errors.addFilter(no_tracebacks)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start on {base_url}")
            time.sleep(0.01)
        with (
            httpx.Client(base_url=base_url, headers=CLIENT, timeout=REQUEST_SECONDS) as client,
            httpx.Client(base_url=base_url, headers=ADMIN, timeout=REQUEST_SECONDS) as admin,
            httpx.Client(base_url=base_url, timeout=REQUEST_SECONDS) as anonymous,
        ):
            yield LiveApi(base_url, settings, engine, smtp, client, admin, anonymous)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        uvicorn_errors.removeFilter(no_tracebacks)
    assert not thread.is_alive(), "the API server did not stop"


@pytest.fixture(scope="session")
def api_server(session_engine: Engine, database_url: str) -> Iterator[LiveApi]:
    """One server (and SMTP server) per backend for the session, not one per test.

    Starting and stopping a server costs a few tenths of a second; the database is
    emptied after every test by ``engine`` all the same.
    """
    with running_smtp_server() as smtp, running_api(session_engine, database_url, smtp) as api:
        yield api


@pytest.fixture
def live_api(api_server: LiveApi, engine: Engine) -> LiveApi:
    """The API on a real port over the test's database, emptied after the test.

    The SMTP server's record starts empty for each test.
    """
    assert api_server.engine is engine
    api_server.smtp.reset()
    return api_server


# -- helpers ---------------------------------------------------------------------------------


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem with ``status``; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    assert "Traceback" not in response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


def json_of(response: httpx.Response, status: int) -> Any:
    """The JSON body of a response that must have ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return response.json()


def create_user(api: LiveApi, **fields: Any) -> dict[str, Any]:
    body = {"email": "ann@example.com", "name": "Ann Lee", **fields}
    user: dict[str, Any] = json_of(api.client.post("/users", json=body), 201)
    return user


def open_account(api: LiveApi, user_id: str) -> str:
    account: dict[str, Any] = json_of(api.client.post(f"/users/{user_id}/accounts"), 201)
    return str(account["id"])


def earn(
    api: LiveApi, account_id: str, points: int, expires_at: str | None = None, **fields: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"points": points, "expiresAt": expires_at, **fields}
    entry: dict[str, Any] = json_of(api.client.post(f"/accounts/{account_id}/earn", json=body), 201)
    return entry


def available(api: LiveApi, account_id: str) -> int:
    balance: dict[str, Any] = json_of(api.client.get(f"/accounts/{account_id}/balance"), 200)
    return int(balance["available"])


def today() -> date:
    """Today's date in UTC, the programme's time zone in these tests."""
    return datetime.now(UTC).date()


def noon(day: date) -> datetime:
    """Midday UTC on ``day``: far from any date boundary."""
    return datetime.combine(day, clock_time(12, 0))


def noon_in(days: int) -> tuple[date, str]:
    """The date ``days`` from today and its midday as an ISO timestamp the API accepts."""
    day = today() + timedelta(days=days)
    return day, noon(day).isoformat() + "Z"


def insert_credit(
    engine: Engine, account_id: str, points: int, expires_at: datetime, created_at: datetime
) -> str:
    """An EARN row written with plain SQL, as another application would.

    The API rightly refuses what tests of past dates need: credits dated in the past.
    """
    entry_id = new_id()
    with engine.begin() as conn:
        conn.execute(
            text(
                'INSERT INTO "PointLedger" ("id", "accountId", "entryType", "credit",'
                ' "createdAt", "expiresAt") VALUES (:id, :account, \'EARN\', :credit,'
                " :created, :expires)"
            ),
            {
                "id": entry_id,
                "account": account_id,
                "credit": points,
                "created": sql_timestamp(created_at),
                "expires": sql_timestamp(expires_at),
            },
        )
    return entry_id


def ledger_totals(engine: Engine, account_id: str) -> tuple[int, int, int]:
    """(rows, total credits, total debits) of one account, read straight from the table."""
    with engine.connect() as conn:
        rows, credits, debits = conn.execute(
            select(
                func.count(),
                func.coalesce(func.sum(PointLedger.credit), 0),
                func.coalesce(func.sum(PointLedger.debit), 0),
            ).where(PointLedger.accountId == account_id)
        ).one()
    return int(rows), int(credits), int(debits)
