"""add_notification_system: the seed's migration.

``NotificationLog`` with its two indexes, ``User.emailNotifications``,
``PointLedger.expiresAt`` and the three ``PointLedger`` indexes, all with the
seed's names. Each step checks first, so an upgrade survives a partial earlier
attempt (the seed's "Column Already Exists" case). The downgrade is the seed's
manual rollback, plus dropping ``expiresAt`` so the baseline is restored.

Revision ID: add_notification_system
Revises: baseline
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rewards.migrations.helpers import has_column, has_index, has_table, is_sqlite, timestamp3

revision: str = "add_notification_system"
down_revision: str | Sequence[str] | None = "baseline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEDGER_INDEXES = {
    "PointLedger_expiresAt_idx": ["expiresAt"],
    "PointLedger_expiresAt_credit_idx": ["expiresAt", "credit"],
    "PointLedger_accountId_expiresAt_idx": ["accountId", "expiresAt"],
}
LOG_INDEXES = {
    "NotificationLog_userId_notificationType_expirationDate_idx": [
        "userId",
        "notificationType",
        "expirationDate",
    ],
    "NotificationLog_status_createdAt_idx": ["status", "createdAt"],
}


def upgrade() -> None:
    if not has_table("NotificationLog"):
        op.create_table(
            "NotificationLog",
            sa.Column("id", sa.Text(), nullable=False),
            sa.Column("userId", sa.Text(), nullable=False),
            sa.Column("notificationType", sa.Text(), nullable=False),
            sa.Column("status", sa.Text(), nullable=False),
            sa.Column("sentAt", timestamp3(), nullable=True),
            sa.Column("failureReason", sa.Text(), nullable=True),
            sa.Column("expirationDate", timestamp3(), nullable=False),
            sa.Column("pointsExpiring", sa.Integer(), nullable=False),
            sa.Column(
                "createdAt",
                timestamp3(),
                nullable=False,
                server_default=sa.text("CURRENT_TIMESTAMP"),
            ),
            sa.PrimaryKeyConstraint("id", name="NotificationLog_pkey"),
            sa.ForeignKeyConstraint(
                ["userId"],
                ["User.id"],
                name="NotificationLog_userId_fkey",
                ondelete="RESTRICT",
                onupdate="CASCADE",
            ),
        )
    for name, columns in LOG_INDEXES.items():
        if not has_index("NotificationLog", name):
            op.create_index(name, "NotificationLog", columns)

    if not has_column("User", "emailNotifications"):
        with op.batch_alter_table("User") as batch:
            batch.add_column(
                sa.Column(
                    "emailNotifications",
                    sa.Boolean(),
                    nullable=False,
                    server_default=sa.text("true"),
                )
            )

    if not has_column("PointLedger", "expiresAt"):
        with op.batch_alter_table("PointLedger") as batch:
            batch.add_column(sa.Column("expiresAt", timestamp3(), nullable=True))
    for name, columns in LEDGER_INDEXES.items():
        if not has_index("PointLedger", name):
            op.create_index(name, "PointLedger", columns)


def downgrade() -> None:
    # The seed's manual rollback, step by step.
    op.execute('DROP TABLE IF EXISTS "NotificationLog"' + ("" if is_sqlite() else " CASCADE"))
    if has_column("User", "emailNotifications"):
        with op.batch_alter_table("User") as batch:
            batch.drop_column("emailNotifications")
    for name in LEDGER_INDEXES:
        op.execute(f'DROP INDEX IF EXISTS "{name}"')
    # The seed adds expiresAt "if it doesn't exist"; the baseline has none, so remove it.
    if has_column("PointLedger", "expiresAt"):
        with op.batch_alter_table("PointLedger") as batch:
            batch.drop_column("expiresAt")
