"""Engines and sessions, for PostgreSQL (production) and SQLite (the embedded default)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.exc import SQLAlchemyError


class DatabaseUnavailable(Exception):
    """The database could not be reached; the message is fit for an operator."""


def normalize_url(url: str) -> URL:
    """Accept the URL forms operators paste and pick the driver we ship.

    ``postgres://`` and ``postgresql://`` both mean PostgreSQL through psycopg 3.
    """
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite+pysqlite")
    raise ValueError(f"unsupported database URL scheme: {parsed.drivername}")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Leave transactions to SQLAlchemy (see _sqlite_begin): the driver's own handling
    # would not open one before statements that start with WITH, nor before DDL.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; for SQLite, make sure the file's folder exists and foreign keys are on."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailable(
                    f"database unavailable ({parsed}): cannot create {folder}: {exc.strerror}"
                ) from exc
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    # Enough kept-open connections for a server's requests in flight (see api/deps.py):
    # a pool smaller than the load opens and closes a connection per request, and each
    # opening costs PostgreSQL a new backend process.
    kwargs.setdefault("pool_size", 16)
    kwargs.setdefault("max_overflow", 4)
    connect_args = kwargs.setdefault("connect_args", {})
    connect_args.setdefault("connect_timeout", 10)
    connect_args.setdefault("application_name", "rewards")
    # Stored instants are UTC; make CURRENT_TIMESTAMP defaults agree whatever the server's zone.
    connect_args.setdefault("options", "-c timezone=UTC")
    return create_engine(parsed, **kwargs)


def check_connection(engine: Engine) -> None:
    """Raise :class:`DatabaseUnavailable` with one readable line if the database does not answer."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(describe_db_error(engine, exc)) from exc


def describe_db_error(engine: Engine, exc: BaseException) -> str:
    """One line an operator can act on, without a traceback or a password."""
    where = engine.url.render_as_string(hide_password=True)
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"database unavailable ({where}): {text}"


BATCH_WORK_MEM = "64MB"


def tune_for_batch(conn: Connection) -> None:
    """Session settings for the job's few large set-based statements (PostgreSQL only).

    More sort/hash memory keeps window sorts and hash joins in RAM; JIT
    compilation costs more than it saves on statements that run once a day; and a
    streamed (server-side cursor) result is read to the end, so it should be
    planned for total time, not for its first rows. Applies to the current
    transaction only.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            f"SELECT set_config('work_mem', '{BATCH_WORK_MEM}', true),"
            " set_config('jit', 'off', true), set_config('cursor_tuple_fraction', '1.0', true)"
        )


@contextmanager
def keyed_reads(conn: Connection) -> Iterator[None]:
    """Session settings for the projection's sync (PostgreSQL only), within the block.

    A sync reads a few thousand accounts' rows out of millions, by key. PostgreSQL's
    statistics often misjudge how many rows one account has (the distinct count of a
    column with millions of values is estimated from a sample), and its default costs
    take every index probe for a disk read: a plan that scans a whole table for every
    batch costs seconds where the index costs milliseconds. One statement each way:
    the settings before, and back.
    """
    if conn.dialect.name != "postgresql":
        yield
        return
    before = conn.exec_driver_sql(
        "SELECT current_setting('enable_seqscan'), current_setting('jit'),"
        " set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true)"
    ).one()
    yield
    conn.exec_driver_sql(
        "SELECT set_config('enable_seqscan', %(seqscan)s, true), set_config('jit', %(jit)s, true)",
        {"seqscan": before[0], "jit": before[1]},
    )
