"""add_delivery_outbox: the outbox's bookkeeping, so dispatchers anywhere can share the sending.

* ``NotificationDelivery``: one row per ``NotificationLog`` row, with the run
  responsible for it, when it was queued, the lease a dispatcher holds on it
  (``leaseUntil``, ``claimedBy``), how many times it was claimed, and when it
  was settled; a partial index on the unsettled ones, for the sweep;
* ``SendRateBucket``: the token bucket of ``REWARDS_SEND_RATE``, shared by all workers;
* ``PENDING`` rows left by an earlier version are queued, so the next run (or
  any worker's sweep) sends them.

Revision ID: add_delivery_outbox
Revises: add_point_lots
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rewards.migrations.helpers import timestamp3

revision: str = "add_delivery_outbox"
down_revision: str | Sequence[str] | None = "add_point_lots"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNSETTLED = sa.text('"settledAt" IS NULL')


def upgrade() -> None:
    op.create_table(
        "NotificationDelivery",
        sa.Column("logId", sa.Text(), nullable=False),
        sa.Column("runId", sa.Text(), nullable=True),
        sa.Column("queuedAt", timestamp3(), nullable=False),
        sa.Column("leaseUntil", timestamp3(), nullable=True),
        sa.Column("claimedBy", sa.Text(), nullable=True),
        sa.Column("tries", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("settledAt", timestamp3(), nullable=True),
        sa.PrimaryKeyConstraint("logId", name="NotificationDelivery_pkey"),
        sa.ForeignKeyConstraint(
            ["logId"],
            ["NotificationLog.id"],
            name="NotificationDelivery_logId_fkey",
            ondelete="CASCADE",
        ),
    )
    op.create_index("NotificationDelivery_runId_idx", "NotificationDelivery", ["runId"])
    op.create_index(
        "NotificationDelivery_unsettled_idx",
        "NotificationDelivery",
        ["queuedAt"],
        postgresql_where=UNSETTLED,
        sqlite_where=UNSETTLED,
    )
    op.create_table(
        "SendRateBucket",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("refilledAt", timestamp3(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="SendRateBucket_pkey"),
    )
    # Rows an earlier version left in flight: queued, with a lease already run out.
    op.execute(
        'INSERT INTO "NotificationDelivery" ("logId", "queuedAt", "tries")'
        ' SELECT "id", "createdAt", 1 FROM "NotificationLog" WHERE "status" = \'PENDING\''
    )


def downgrade() -> None:
    op.drop_table("SendRateBucket")
    op.drop_index("NotificationDelivery_unsettled_idx", table_name="NotificationDelivery")
    op.drop_index("NotificationDelivery_runId_idx", table_name="NotificationDelivery")
    op.drop_table("NotificationDelivery")
