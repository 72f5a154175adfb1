"""Alembic environment: runs on the connection :mod:`rewards.migrate` hands over."""

from __future__ import annotations

from alembic import context

from rewards.models import Base

config = context.config
connection = config.attributes["connection"]
sqlite = connection.dialect.name == "sqlite"

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=sqlite,
    transaction_per_migration=True,
    compare_type=True,
)

with context.begin_transaction():
    context.run_migrations()
