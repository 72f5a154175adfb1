"""add_preference_changes: who changed a member's reminder preference, and the console's indexes.

* ``PreferenceChange``: one row per change of ``User.emailNotifications`` made
  through the service (the unsubscribe link, the member pages, the API, the
  console, a bulk opt-out): the new value, when, who and how;
* on PostgreSQL, ``User_email_search_idx`` / ``User_name_search_idx``:
  ``lower(email)`` and ``lower(name)`` with ``text_pattern_ops``, so the console
  finds a member by the start of an address or a name without reading every
  member (SQLite cannot reflect expression indexes, and its programmes are small);
* ``NotificationLog_createdAt_idx``: (``createdAt``, ``id``), carrying the tier and
  the status on PostgreSQL, so the console's newest-first pages and its counts per
  day read a range of one index instead of the log.

Each step checks first, so the upgrade survives a partial earlier attempt.

Revision ID: add_preference_changes
Revises: add_delivery_outbox
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rewards.migrations.helpers import has_index, has_table, is_sqlite, timestamp3

revision: str = "add_preference_changes"
down_revision: str | Sequence[str] | None = "add_delivery_outbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIAS = ("UNSUBSCRIBE_LINK", "MEMBER_PAGE", "API", "CONSOLE", "BULK_CONSOLE", "BULK_CLI", "BULK_API")
"""As in :data:`rewards.models.PREFERENCE_VIAS` when this revision was written (frozen here)."""

SEARCH_INDEXES = {"User_email_search_idx": "email", "User_name_search_idx": "name"}


def upgrade() -> None:
    if not has_table("PreferenceChange"):
        op.create_table(
            "PreferenceChange",
            sa.Column("id", sa.Text(), nullable=False),
            sa.Column("userId", sa.Text(), nullable=False),
            sa.Column("emailNotifications", sa.Boolean(), nullable=False),
            sa.Column(
                "changedAt",
                timestamp3(),
                nullable=False,
                server_default=sa.text("CURRENT_TIMESTAMP"),
            ),
            sa.Column("via", sa.Text(), nullable=False),
            sa.Column("changedBy", sa.Text(), nullable=False),
            sa.Column("detail", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("id", name="PreferenceChange_pkey"),
            sa.ForeignKeyConstraint(
                ["userId"],
                ["User.id"],
                name="PreferenceChange_userId_fkey",
                ondelete="CASCADE",
                onupdate="CASCADE",
            ),
            sa.CheckConstraint(
                '"via" IN (' + ", ".join(f"'{v}'" for v in VIAS) + ")",
                name="PreferenceChange_via_check",
            ),
        )
    if not has_index("PreferenceChange", "PreferenceChange_userId_changedAt_idx"):
        op.create_index(
            "PreferenceChange_userId_changedAt_idx", "PreferenceChange", ["userId", "changedAt"]
        )
    if not is_sqlite():  # SQLite cannot reflect expression indexes; its members are few
        for name, column in SEARCH_INDEXES.items():
            if not has_index("User", name):
                op.execute(f'CREATE INDEX "{name}" ON "User" (lower("{column}") text_pattern_ops)')
    if not has_index("NotificationLog", "NotificationLog_createdAt_idx"):
        op.create_index(
            "NotificationLog_createdAt_idx",
            "NotificationLog",
            ["createdAt", "id"],
            postgresql_include=["notificationType", "status"],
        )


def downgrade() -> None:
    op.drop_index("NotificationLog_createdAt_idx", table_name="NotificationLog")
    if not is_sqlite():
        for name in SEARCH_INDEXES:
            op.drop_index(name, table_name="User")
    op.drop_index("PreferenceChange_userId_changedAt_idx", table_name="PreferenceChange")
    op.drop_table("PreferenceChange")
