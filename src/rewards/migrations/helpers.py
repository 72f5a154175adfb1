"""Small idempotency helpers so an upgrade survives a partial earlier attempt."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql


def timestamp3() -> sa.types.TypeEngine[datetime]:
    """``TIMESTAMP(3)`` on PostgreSQL, ``DATETIME`` on SQLite."""
    return sa.DateTime().with_variant(postgresql.TIMESTAMP(precision=3), "postgresql")


def _inspector() -> sa.Inspector:
    return sa.inspect(op.get_bind())


def has_table(table: str) -> bool:
    return _inspector().has_table(table)


def has_column(table: str, column: str) -> bool:
    return any(c["name"] == column for c in _inspector().get_columns(table))


def has_index(table: str, index: str) -> bool:
    return has_table(table) and any(i["name"] == index for i in _inspector().get_indexes(table))


def is_sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"
