"""baseline: members, accounts and the points ledger, before notifications.

Revision ID: baseline
Revises:
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rewards.migrations.helpers import timestamp3

revision: str = "baseline"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("CURRENT_TIMESTAMP")


def upgrade() -> None:
    op.create_table(
        "User",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("createdAt", timestamp3(), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="User_pkey"),
    )
    op.create_table(
        "Account",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=False),
        sa.Column("createdAt", timestamp3(), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="Account_pkey"),
        sa.ForeignKeyConstraint(
            ["userId"],
            ["User.id"],
            name="Account_userId_fkey",
            ondelete="RESTRICT",
            onupdate="CASCADE",
        ),
    )
    op.create_index("Account_userId_idx", "Account", ["userId"])
    op.create_table(
        "PointLedger",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("accountId", sa.Text(), nullable=False),
        sa.Column("entryType", sa.Text(), nullable=False),
        sa.Column("credit", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("debit", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("createdAt", timestamp3(), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="PointLedger_pkey"),
        sa.ForeignKeyConstraint(
            ["accountId"],
            ["Account.id"],
            name="PointLedger_accountId_fkey",
            ondelete="RESTRICT",
            onupdate="CASCADE",
        ),
        sa.CheckConstraint(
            '"credit" >= 0 AND "debit" >= 0', name="PointLedger_amounts_nonnegative"
        ),
        sa.CheckConstraint(
            '("credit" > 0 AND "debit" = 0) OR ("debit" > 0 AND "credit" = 0)',
            name="PointLedger_credit_xor_debit",
        ),
        sa.CheckConstraint(
            "\"entryType\" IN ('EARN', 'REDEEM', 'EXPIRE', 'ADJUST')",
            name="PointLedger_entryType_check",
        ),
        sa.CheckConstraint(
            '("entryType" <> \'EARN\' OR "credit" > 0)'
            " AND (\"entryType\" NOT IN ('REDEEM', 'EXPIRE') OR \"debit\" > 0)",
            name="PointLedger_entryType_direction",
        ),
    )
    op.create_index(
        "PointLedger_accountId_createdAt_idx", "PointLedger", ["accountId", "createdAt"]
    )


def downgrade() -> None:
    op.drop_table("PointLedger")
    op.drop_table("Account")
    op.drop_table("User")
