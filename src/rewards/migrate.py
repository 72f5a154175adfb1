"""Schema migrations (Alembic, shipped inside the package) as plain functions.

The CLI's ``rewards db …`` commands are thin wrappers over these, so tests and
operators run exactly the same code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine

from rewards.models import Base


class MigrationError(Exception):
    """A migration command could not run; the message is fit for an operator."""


@dataclass(frozen=True)
class Revision:
    id: str
    down: str | None
    doc: str
    applied: bool


@dataclass(frozen=True)
class Status:
    current: str | None
    head: str
    pending: list[str]

    @property
    def up_to_date(self) -> bool:
        return not self.pending


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "rewards:migrations")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


@contextmanager
def _alembic(engine: Engine) -> Iterator[Config]:
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch mode rebuilds tables, which SQLite's foreign keys would block. The pragma
            # only works outside a transaction, so it goes straight to the driver.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
        try:
            with connection.begin():
                yield _config(connection)
        except CommandError as exc:
            raise MigrationError(str(exc)) from exc
        finally:
            if sqlite:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys = ON")  # type: ignore[union-attr]


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``; a no-op when already there."""
    with _alembic(engine) as cfg:
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Revert to ``revision`` (``-1``, ``base`` or an id)."""
    with _alembic(engine) as cfg:
        command.downgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def status(engine: Engine) -> Status:
    script = _script()
    current = current_revision(engine)
    head = script.get_current_head()
    assert head is not None
    pending = [
        rev.revision
        for rev in reversed(list(script.iterate_revisions(head, current or "base")))
        if rev.revision != current
    ]
    return Status(current=current, head=head, pending=pending)


def require_current(engine: Engine) -> None:
    """Raise :class:`MigrationError` unless the database is at the head revision."""
    state = status(engine)
    if not state.up_to_date:
        where = state.current or "an empty database"
        raise MigrationError(
            f"the database schema is at {where}, not {state.head}: run `rewards db upgrade`"
        )


def history(engine: Engine) -> list[Revision]:
    """All revisions, oldest first, with whether each is applied."""
    script = _script()
    current = current_revision(engine)
    applied: set[str] = set()
    if current is not None:
        applied = {rev.revision for rev in script.iterate_revisions(current, "base")}
    revisions = list(reversed(list(script.walk_revisions())))
    return [
        Revision(
            id=rev.revision,
            down=rev.down_revision if isinstance(rev.down_revision, str) else None,
            doc=(rev.doc or "").strip(),
            applied=rev.revision in applied,
        )
        for rev in revisions
    ]


def schema_differences(engine: Engine) -> list[str]:
    """What differs between the models and the database, like ``prisma validate``.

    An empty list means they agree. Pending migrations are reported first.
    """
    problems = [f"migration pending: {rev}" for rev in status(engine).pending]
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diffs = compare_metadata(context, Base.metadata)
    problems.extend(_describe(diff) for diff in diffs)
    return problems


def _describe(diff: Any) -> str:
    if isinstance(diff, list):  # column-level changes come grouped
        return "; ".join(_describe(d) for d in diff)
    kind, *rest = diff
    subject = rest[0] if rest else ""
    name = getattr(subject, "name", None) or getattr(subject, "fullname", None) or subject
    if kind.startswith("modify_"):
        return f"{kind}: {rest[1]}.{rest[2]}"
    return f"{kind}: {name}"
