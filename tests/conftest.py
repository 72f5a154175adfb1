"""Fixtures that start the real parts: SQLite files and throwaway PostgreSQL databases.

Every database test runs on both backends through the parametrized ``backend``
fixture. PostgreSQL comes from ``TEST_DATABASE_URL`` (default: the local server);
when it cannot be reached the PostgreSQL cases are skipped, unless
``REWARDS_REQUIRE_POSTGRES=1`` (as in CI), which fails them instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from rewards import migrate
from rewards.db import create_db_engine, normalize_url
from rewards.models import Base

pytest_plugins = ["tests.smtp_server"]

TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("REWARDS_REQUIRE_POSTGRES") == "1"
BACKENDS = ("sqlite", "postgresql")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the SQLite variant of tests marked ``postgres_only``."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_sqlite = callspec is not None and callspec.params.get("backend") == "sqlite"
        (drop if on_sqlite and item.get_closest_marker("postgres_only") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _admin_engine() -> Engine:
    return create_engine(
        normalize_url(TEST_DATABASE_URL),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5},
    )


_postgres_error: str | None = None
_postgres_checked = False


def _postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used, or None; checked once per session."""
    global _postgres_checked, _postgres_error
    if not _postgres_checked:
        _postgres_checked = True
        engine = _admin_engine()
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            _postgres_error = f"PostgreSQL at {TEST_DATABASE_URL} unreachable: {exc}"
        finally:
            engine.dispose()
    return _postgres_error


def require_postgres() -> None:
    reason = _postgres_unavailable()
    if reason is None:
        return
    if REQUIRE_POSTGRES:
        pytest.fail(reason + " (REWARDS_REQUIRE_POSTGRES=1)", pytrace=False)
    pytest.skip(reason)


class DatabaseFactory:
    """Creates empty databases of one backend and removes them at the end of the session."""

    def __init__(self, backend: str, tmp: Path) -> None:
        self.backend = backend
        self.tmp = tmp
        self.created: list[str] = []

    def new_url(self) -> str:
        name = f"rewards_test_{uuid.uuid4().hex[:12]}"
        if self.backend == "sqlite":
            return f"sqlite:///{self.tmp / (name + '.db')}"
        admin = _admin_engine()
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        self.created.append(name)
        return make_url(TEST_DATABASE_URL).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        if not self.created:
            return
        admin = _admin_engine()
        with admin.connect() as conn:
            for name in self.created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def database_factory(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DatabaseFactory]:
    if backend == "postgresql":
        require_postgres()
    factory = DatabaseFactory(backend, tmp_path_factory.mktemp(backend))
    yield factory
    factory.drop_all()


@pytest.fixture
def empty_database_url(database_factory: DatabaseFactory) -> str:
    """A brand-new, empty database of the current backend (for migration tests)."""
    return database_factory.new_url()


@pytest.fixture(scope="session")
def database_url(database_factory: DatabaseFactory) -> str:
    """A database migrated to head, shared by the session's tests of one backend."""
    url = database_factory.new_url()
    engine = create_db_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


GENERIC_PLANS = {
    # Prepare every statement at its first execution and always plan it generically, as
    # PostgreSQL may do after a few executions on a pooled connection: a statement that
    # needs a constant where it has a bound parameter fails at once, not after a while.
    "prepare_threshold": 0,
    "options": "-c timezone=UTC -c plan_cache_mode=force_generic_plan",
}


@pytest.fixture(scope="session")
def session_engine(database_url: str, backend: str) -> Iterator[Engine]:
    engine = create_db_engine(
        database_url, **({"connect_args": dict(GENERIC_PLANS)} if backend == "postgresql" else {})
    )
    yield engine
    engine.dispose()


@pytest.fixture
def engine(session_engine: Engine) -> Iterator[Engine]:
    """The migrated database, emptied after each test."""
    yield session_engine
    with session_engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture
def make_engine() -> Iterator[Callable[[str], Engine]]:
    """Engines created in a test and disposed after it."""
    engines: list[Engine] = []

    def make(url: str) -> Engine:
        engine = create_db_engine(url)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()
