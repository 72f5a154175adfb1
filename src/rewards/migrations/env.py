"""Alembic environment: runs on the connection :mod:`rewards.migrate` hands over."""

from __future__ import annotations

from alembic import context

from rewards.models import Base

config = context.config
connection = config.attributes["connection"]
sqlite = connection.dialect.name == "sqlite"

if sqlite:
    # Batch mode rebuilds tables; SQLite would otherwise enforce foreign keys mid-rebuild.
    connection.exec_driver_sql("PRAGMA foreign_keys = OFF")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=sqlite,
    transaction_per_migration=True,
    compare_type=True,
)

try:
    with context.begin_transaction():
        context.run_migrations()
finally:
    if sqlite:
        connection.exec_driver_sql("PRAGMA foreign_keys = ON")
