"""add_point_lots: the lot projection, and triggers that notice other writers.

* ``PointLot`` (one per credit: what is left, when it expires), ``PointAllocation``
  (which lots each debit consumed), ``LedgerAnomaly`` and ``LedgerSyncState``;
* ``LedgerChange`` and triggers on ``PointLedger`` that record the accounts whose
  rows anyone but the service inserts, updates, deletes or truncates. PostgreSQL:
  statement-level triggers with transition tables, so a bulk ``COPY`` records each
  account once; the service's own writes set ``rewards.projection_writer`` and
  are not recorded. SQLite: row-level triggers;
* every account that already has ledger rows is recorded as changed, so
  ``rewards ledger sync`` (or the next run of the job) builds its lots;
* on PostgreSQL the seed's ``PointLedger_expiresAt_credit_idx`` (same name, same
  key) also carries ``accountId`` and ``id``, so the seed's date-range read of
  credits is an index-only scan;
* a lot carries its account's member (``userId``), so the plan sums per member
  without joining ``Account``; a trigger on ``Account`` records an account that
  changes member in ``LedgerChange``, and the next sync rewrites its lots;
* ``NotificationLog_expirationDate_idx``: the plan reads the rows of its window's
  dates in one range to leave out settled keys.

Revision ID: add_point_lots
Revises: record_abandoned_runs
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from rewards.migrations.helpers import is_sqlite, timestamp3

revision: str = "add_point_lots"
down_revision: str | Sequence[str] | None = "record_abandoned_runs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE_LOT = sa.text('"remaining" > 0 AND NOT "expired"')

POSTGRES_FUNCTION = """
CREATE FUNCTION rewards_ledger_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('rewards.projection_writer', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO "LedgerChange" ("accountId", "since")
        SELECT "accountId", min("createdAt") FROM new_rows GROUP BY "accountId";
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO "LedgerChange" ("accountId")
        SELECT "accountId" FROM old_rows UNION SELECT "accountId" FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO "LedgerChange" ("accountId") SELECT DISTINCT "accountId" FROM old_rows;
    ELSE
        INSERT INTO "LedgerChange" ("accountId") SELECT "id" FROM "Account";
    END IF;
    RETURN NULL;
END
$$
"""

POSTGRES_ACCOUNT_FUNCTION = """
CREATE FUNCTION rewards_account_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO "LedgerChange" ("accountId") VALUES (NEW."id");
    RETURN NULL;
END
$$
"""

ACCOUNT_TRIGGER = "Account_moved"
"""Row-level (accounts rarely move), and only when ``userId`` really changes."""

POSTGRES_ACCOUNT_TRIGGER = (
    'AFTER UPDATE OF "userId" ON "Account" FOR EACH ROW'
    ' WHEN (OLD."userId" IS DISTINCT FROM NEW."userId")'
    " EXECUTE FUNCTION rewards_account_moved()"
)

SQLITE_ACCOUNT_TRIGGER = """AFTER UPDATE OF "userId" ON "Account"
    WHEN OLD."userId" IS NOT NEW."userId" BEGIN
        INSERT INTO "LedgerChange" ("accountId") VALUES (NEW."id");
    END"""

POSTGRES_TRIGGERS = {
    "PointLedger_changed_insert": 'AFTER INSERT ON "PointLedger"'
    " REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT",
    "PointLedger_changed_update": 'AFTER UPDATE ON "PointLedger"'
    " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT",
    "PointLedger_changed_delete": 'AFTER DELETE ON "PointLedger"'
    " REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT",
    "PointLedger_changed_truncate": 'AFTER TRUNCATE ON "PointLedger" FOR EACH STATEMENT',
}

SQLITE_TRIGGERS = {
    "PointLedger_changed_insert": """AFTER INSERT ON "PointLedger" BEGIN
        INSERT INTO "LedgerChange" ("accountId", "since")
        VALUES (NEW."accountId", NEW."createdAt");
    END""",
    "PointLedger_changed_update": """AFTER UPDATE ON "PointLedger" BEGIN
        INSERT INTO "LedgerChange" ("accountId") VALUES (OLD."accountId");
        INSERT INTO "LedgerChange" ("accountId") SELECT NEW."accountId"
        WHERE NEW."accountId" <> OLD."accountId";
    END""",
    "PointLedger_changed_delete": """AFTER DELETE ON "PointLedger" BEGIN
        INSERT INTO "LedgerChange" ("accountId") VALUES (OLD."accountId");
    END""",
}


def upgrade() -> None:
    op.create_table(
        "PointLot",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("accountId", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=False),
        sa.Column("credited", sa.Integer(), nullable=False),
        sa.Column("remaining", sa.Integer(), nullable=False),
        sa.Column("createdAt", timestamp3(), nullable=False),
        sa.Column("expiresAt", timestamp3(), nullable=True),
        sa.Column("expired", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.PrimaryKeyConstraint("id", name="PointLot_pkey"),
    )
    op.create_index(
        "PointLot_accountId_createdAt_idx", "PointLot", ["accountId", "createdAt", "id"]
    )
    op.create_index(
        "PointLot_live_account_idx",
        "PointLot",
        ["accountId", "expiresAt"],
        postgresql_include=["remaining", "createdAt"],
        postgresql_where=LIVE_LOT,
        sqlite_where=LIVE_LOT,
    )
    op.create_index(
        "PointLot_live_expiresAt_idx",
        "PointLot",
        ["expiresAt"],
        postgresql_include=["accountId", "userId", "remaining"],
        postgresql_where=LIVE_LOT,
        sqlite_where=LIVE_LOT,
    )
    op.create_table(
        "PointAllocation",
        sa.Column("debitId", sa.Text(), nullable=False),
        sa.Column("lotId", sa.Text(), nullable=False),
        sa.Column("accountId", sa.Text(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("debitId", "lotId", name="PointAllocation_pkey"),
    )
    op.create_index("PointAllocation_accountId_idx", "PointAllocation", ["accountId"])
    op.create_table(
        "LedgerAnomaly",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("accountId", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("entryId", sa.Text(), nullable=True),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("at", timestamp3(), nullable=False),
        sa.Column(
            "detectedAt", timestamp3(), nullable=False, server_default=sa.text("CURRENT_TIMESTAMP")
        ),
        sa.PrimaryKeyConstraint("id", name="LedgerAnomaly_pkey"),
        sa.CheckConstraint(
            "\"kind\" IN ('SHORTFALL', 'EXPIRY_TOO_LARGE')", name="LedgerAnomaly_kind_check"
        ),
    )
    op.create_index("LedgerAnomaly_accountId_idx", "LedgerAnomaly", ["accountId"])
    op.create_table(
        "LedgerChange",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        sa.Column("accountId", sa.Text(), nullable=False),
        sa.Column("since", timestamp3(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="LedgerChange_pkey"),
        sqlite_autoincrement=True,
    )
    op.create_index("LedgerChange_accountId_idx", "LedgerChange", ["accountId"])
    op.create_table(
        "LedgerSyncState",
        sa.Column("accountId", sa.Text(), nullable=False),
        sa.Column("syncedThrough", timestamp3(), nullable=False),
        sa.PrimaryKeyConstraint("accountId", name="LedgerSyncState_pkey"),
    )

    op.create_index(
        "NotificationLog_expirationDate_idx",
        "NotificationLog",
        ["expirationDate"],
        postgresql_include=["userId", "notificationType", "status"],
    )

    if is_sqlite():
        for name, body in SQLITE_TRIGGERS.items():
            op.execute(f'CREATE TRIGGER "{name}" {body}')
        op.execute(f'CREATE TRIGGER "{ACCOUNT_TRIGGER}" {SQLITE_ACCOUNT_TRIGGER}')
    else:
        op.execute(POSTGRES_FUNCTION)
        for name, when in POSTGRES_TRIGGERS.items():
            op.execute(f'CREATE TRIGGER "{name}" {when} EXECUTE FUNCTION rewards_ledger_changed()')
        op.execute(POSTGRES_ACCOUNT_FUNCTION)
        op.execute(f'CREATE TRIGGER "{ACCOUNT_TRIGGER}" {POSTGRES_ACCOUNT_TRIGGER}')
    if not is_sqlite():
        # The seed's index, covering: its date-range read of credits needs no heap fetch.
        op.drop_index("PointLedger_expiresAt_credit_idx", table_name="PointLedger")
        op.create_index(
            "PointLedger_expiresAt_credit_idx",
            "PointLedger",
            ["expiresAt", "credit"],
            postgresql_include=["accountId", "id"],
        )
    # Existing ledgers: every account with rows gets its lots at the next sync.
    op.execute(
        'INSERT INTO "LedgerChange" ("accountId")'
        ' SELECT DISTINCT "accountId" FROM "PointLedger" ORDER BY "accountId"'
    )


def downgrade() -> None:
    if is_sqlite():
        for name in SQLITE_TRIGGERS:
            op.execute(f'DROP TRIGGER IF EXISTS "{name}"')
        op.execute(f'DROP TRIGGER IF EXISTS "{ACCOUNT_TRIGGER}"')
    else:
        for name in POSTGRES_TRIGGERS:
            op.execute(f'DROP TRIGGER IF EXISTS "{name}" ON "PointLedger"')
        op.execute("DROP FUNCTION IF EXISTS rewards_ledger_changed()")
        op.execute(f'DROP TRIGGER IF EXISTS "{ACCOUNT_TRIGGER}" ON "Account"')
        op.execute("DROP FUNCTION IF EXISTS rewards_account_moved()")
        op.drop_index("PointLedger_expiresAt_credit_idx", table_name="PointLedger")
        op.create_index("PointLedger_expiresAt_credit_idx", "PointLedger", ["expiresAt", "credit"])
    op.drop_index("NotificationLog_expirationDate_idx", table_name="NotificationLog")
    for table in (
        "LedgerSyncState",
        "LedgerChange",
        "LedgerAnomaly",
        "PointAllocation",
        "PointLot",
    ):
        op.drop_table(table)
