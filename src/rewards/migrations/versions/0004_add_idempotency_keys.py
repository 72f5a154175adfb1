"""add_idempotency_keys: a client's Idempotency-Key on ledger entries.

A replayed earn or redeem with the same key on the same account returns the
first entry instead of posting again; the unique index makes that hold under
concurrency too.

Revision ID: add_idempotency_keys
Revises: add_notification_delivery
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "add_idempotency_keys"
down_revision: str | Sequence[str] | None = "add_notification_delivery"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HAS_KEY = sa.text('"idempotencyKey" IS NOT NULL')


def upgrade() -> None:
    with op.batch_alter_table("PointLedger") as batch:
        batch.add_column(sa.Column("idempotencyKey", sa.Text(), nullable=True))
    op.create_index(
        "PointLedger_accountId_idempotencyKey_key",
        "PointLedger",
        ["accountId", "idempotencyKey"],
        unique=True,
        postgresql_where=HAS_KEY,
        sqlite_where=HAS_KEY,
    )


def downgrade() -> None:
    op.drop_index("PointLedger_accountId_idempotencyKey_key", table_name="PointLedger")
    with op.batch_alter_table("PointLedger") as batch:
        batch.drop_column("idempotencyKey")
