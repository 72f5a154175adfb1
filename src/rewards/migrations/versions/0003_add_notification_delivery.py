"""add_notification_delivery: in-flight reminders, one live row per key, job runs.

* ``NotificationLog.status`` gains ``PENDING`` (written before a message leaves)
  and a CHECK on the known statuses;
* a partial unique index allows one live (``PENDING``/``SENT``/``SKIPPED``) row
  per (user, type, expiration date), so two racing jobs cannot both send;
* a partial unique index allows one ``EXPIRE`` entry per account and expiry instant;
* ``NotificationJobRun`` records every run of the daily job.

Revision ID: add_notification_delivery
Revises: add_notification_system
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rewards.migrations.helpers import timestamp3

revision: str = "add_notification_delivery"
down_revision: str | Sequence[str] | None = "add_notification_system"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = sa.text("\"status\" IN ('PENDING', 'SENT', 'SKIPPED')")
EXPIRE = sa.text("\"entryType\" = 'EXPIRE'")


def upgrade() -> None:
    with op.batch_alter_table("NotificationLog") as batch:
        batch.create_check_constraint(
            "NotificationLog_status_check",
            "\"status\" IN ('PENDING', 'SENT', 'FAILED', 'SKIPPED')",
        )
    op.create_index(
        "NotificationLog_live_key_idx",
        "NotificationLog",
        ["userId", "notificationType", "expirationDate"],
        unique=True,
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )
    op.create_index(
        "PointLedger_expire_once_idx",
        "PointLedger",
        ["accountId", "expiresAt"],
        unique=True,
        postgresql_where=EXPIRE,
        sqlite_where=EXPIRE,
    )
    op.create_table(
        "NotificationJobRun",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("asOf", timestamp3(), nullable=False),
        sa.Column("startedAt", timestamp3(), nullable=False),
        sa.Column("finishedAt", timestamp3(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False, server_default=sa.text("'cli'")),
        sa.Column("expiredEntries", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("expiredPoints", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("planned", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("sent", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("failed", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("skipped", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("resent", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("countsByType", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="NotificationJobRun_pkey"),
        sa.CheckConstraint(
            "\"status\" IN ('RUNNING', 'SUCCEEDED', 'FAILED')",
            name="NotificationJobRun_status_check",
        ),
    )
    op.create_index("NotificationJobRun_startedAt_idx", "NotificationJobRun", ["startedAt"])


def downgrade() -> None:
    op.drop_index("NotificationJobRun_startedAt_idx", table_name="NotificationJobRun")
    op.drop_table("NotificationJobRun")
    op.drop_index("PointLedger_expire_once_idx", table_name="PointLedger")
    op.drop_index("NotificationLog_live_key_idx", table_name="NotificationLog")
    with op.batch_alter_table("NotificationLog") as batch:
        batch.drop_constraint("NotificationLog_status_check", type_="check")
