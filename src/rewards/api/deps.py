"""FastAPI dependencies, declared once as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Literal, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from sqlalchemy import Connection, Engine

from rewards.api.pages import Pages
from rewards.config import Settings

# The plain look-ups below are ``async``: FastAPI runs a sync dependency on a worker
# thread, and a hop to a thread and back for reading an attribute costs more than the
# request's own work when the server is busy.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_pages(request: Request) -> Pages:
    pages: Pages = request.app.state.pages
    return pages


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
PagesDep = Annotated[Pages, Depends(get_pages)]


def transaction(engine: EngineDep) -> Iterator[Connection]:
    """One transaction per request: everything it wrote commits, or nothing does."""
    with engine.begin() as conn:
        yield conn


def read_only(engine: EngineDep) -> Iterator[Connection]:
    """A connection for reads. It commits at the end all the same: a read first applies
    what other applications changed on the accounts it reads, and that is kept."""
    with engine.connect() as conn:
        yield conn
        conn.commit()


T = TypeVar("T")


class OneHop:
    """A request's database work run on one worker thread, connection and commit included.

    A sync dependency and a sync endpoint each take a hop to a worker thread and back, three
    for a request with a connection (open, endpoint, commit). For the calls a shop makes on
    every order (balance, earn, redeem) the hops cost more than the work: with the work
    done in one, the server answered 25% more balance reads and 37% more earns (wrk, 32
    connections, against the same server with three hops).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def read(self, work: Callable[[Connection], T]) -> T:
        """``work`` on a connection that commits what it applied of other writers' changes."""
        return await run_in_threadpool(self._read, work)

    async def write(self, work: Callable[[Connection], T]) -> T:
        """``work`` in one transaction: everything it wrote commits, or nothing does."""
        return await run_in_threadpool(self._write, work)

    def _read(self, work: Callable[[Connection], T]) -> T:
        with self._engine.connect() as conn:
            result = work(conn)
            conn.commit()
            return result

    def _write(self, work: Callable[[Connection], T]) -> T:
        with self._engine.begin() as conn:
            return work(conn)


async def one_hop(engine: EngineDep) -> AsyncIterator[OneHop]:
    yield OneHop(engine)


# scope="function": commit (or roll back) when the endpoint returns, before the response is
# sent, so a client never sees 201 for a write that did not commit.
# max_concurrency: requests beyond it wait their turn on the event loop, first come first
# served, instead of each taking a worker thread. Two reasons. (1) A burst larger than the
# thread pool could otherwise leave requests holding connections without a thread to finish
# on. (2) The threads of one process share one interpreter lock: with twenty of them
# runnable, the lock went to whichever woke first, and some requests waited seconds while
# others were served in three milliseconds (wrk, 32 connections, 2 processes: /healthz p99
# 0.6-1.5 s with time-outs; 8 -> 4 here and a bound on /healthz: p99 31-44 ms). Four in
# flight per kind keep a process's core busy while others wait on the database.
# Tx, ReadConn, Db and /healthz, four each, stay within the pool (rewards.db.create_db_engine:
# 16 kept open, 4 more on demand), so taking a connection never waits on the pool.
DB_CONCURRENCY = 4
HEALTH_CONCURRENCY = 4

Db = Annotated[OneHop, Depends(one_hop, scope="function", max_concurrency=DB_CONCURRENCY)]
Tx = Annotated[Connection, Depends(transaction, scope="function", max_concurrency=DB_CONCURRENCY)]
ReadConn = Annotated[
    Connection, Depends(read_only, scope="function", max_concurrency=DB_CONCURRENCY)
]

_bearer = HTTPBearer(auto_error=False, description="REWARDS_API_TOKEN or REWARDS_ADMIN_TOKEN")


def _matches(given: str, expected: SecretStr | None) -> bool:
    return expected is not None and hmac.compare_digest(
        given.encode(), expected.get_secret_value().encode()
    )


def _token_kind(
    settings: Settings, credentials: HTTPAuthorizationCredentials | None
) -> Literal["admin", "client"]:
    """Which token the request carries; 401 for none or an unknown one."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise HTTPException(401, "a bearer token is required")
    if _matches(credentials.credentials, settings.admin_token):
        return "admin"
    if _matches(credentials.credentials, settings.api_token):
        return "client"
    raise HTTPException(401, "invalid token")


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def require_client(settings: SettingsDep, credentials: Credentials) -> None:
    """Client applications: the API token (operators' admin token works too)."""
    _token_kind(settings, credentials)


async def require_admin(settings: SettingsDep, credentials: Credentials) -> None:
    """Operator endpoints: the admin token only; a client token is the wrong kind (403)."""
    if _token_kind(settings, credentials) != "admin":
        raise HTTPException(403, "this endpoint needs the admin token")


Client = Depends(require_client)
Admin = Depends(require_admin)
