"""record_abandoned_runs: runs whose process died are told apart; big run totals fit.

* ``NotificationJobRun.status`` gains ``ABANDONED``: a run left ``RUNNING`` by a
  process that is gone (``kill -9``, a lost machine), as noticed by the next run
  that takes the job lock, with the moment it noticed in ``abandonedAt``;
* ``NotificationJobRun.expiredPoints`` becomes 64-bit, as every sum of points is.

Revision ID: record_abandoned_runs
Revises: add_idempotency_keys
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rewards.migrations.helpers import timestamp3

revision: str = "record_abandoned_runs"
down_revision: str | Sequence[str] | None = "add_idempotency_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECK = "NotificationJobRun_status_check"


def upgrade() -> None:
    with op.batch_alter_table("NotificationJobRun") as batch:
        batch.drop_constraint(CHECK, type_="check")
        batch.create_check_constraint(
            CHECK, "\"status\" IN ('RUNNING', 'SUCCEEDED', 'FAILED', 'ABANDONED')"
        )
        batch.add_column(sa.Column("abandonedAt", timestamp3(), nullable=True))
        batch.alter_column(
            "expiredPoints",
            type_=sa.BigInteger(),
            existing_type=sa.Integer(),
            existing_nullable=False,
            existing_server_default=sa.text("0"),
        )


def downgrade() -> None:
    op.execute(
        'UPDATE "NotificationJobRun" SET "status" = \'FAILED\' WHERE "status" = \'ABANDONED\''
    )
    with op.batch_alter_table("NotificationJobRun") as batch:
        batch.drop_constraint(CHECK, type_="check")
        batch.create_check_constraint(CHECK, "\"status\" IN ('RUNNING', 'SUCCEEDED', 'FAILED')")
        batch.drop_column("abandonedAt")
        batch.alter_column(
            "expiredPoints",
            type_=sa.Integer(),
            existing_type=sa.BigInteger(),
            existing_nullable=False,
            existing_server_default=sa.text("0"),
        )
