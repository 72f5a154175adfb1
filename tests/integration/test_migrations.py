"""Migrations: the seed's schema appears, rolls back exactly, and re-applies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, text

from rewards import migrate

SEED_LEDGER_INDEXES = {
    "PointLedger_expiresAt_idx": ["expiresAt"],
    "PointLedger_expiresAt_credit_idx": ["expiresAt", "credit"],
    "PointLedger_accountId_expiresAt_idx": ["accountId", "expiresAt"],
}
SEED_LOG_INDEXES = {
    "NotificationLog_userId_notificationType_expirationDate_idx": [
        "userId",
        "notificationType",
        "expirationDate",
    ],
    "NotificationLog_status_createdAt_idx": ["status", "createdAt"],
}
SEED_LOG_COLUMNS = [
    "id",
    "userId",
    "notificationType",
    "status",
    "sentAt",
    "failureReason",
    "expirationDate",
    "pointsExpiring",
    "createdAt",
]


def snapshot(engine: Engine) -> dict[str, Any]:
    """Tables, columns (name, nullability) and indexes, comparable across runs."""
    insp = inspect(engine)
    result: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        if table == "alembic_version":
            continue
        result[table] = {
            "columns": [(c["name"], c["nullable"]) for c in insp.get_columns(table)],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"])) for i in insp.get_indexes(table)
            ),
        }
    return result


def indexes(engine: Engine, table: str) -> dict[str, list[str]]:
    return {
        str(i["name"]): [str(c) for c in i["column_names"]]
        for i in inspect(engine).get_indexes(table)
    }


def columns(engine: Engine, table: str) -> list[str]:
    return [c["name"] for c in inspect(engine).get_columns(table)]


def test_upgrade_creates_the_seed_schema(
    empty_database_url: str, make_engine: Callable[[str], Engine]
) -> None:
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine)

    assert columns(engine, "NotificationLog") == SEED_LOG_COLUMNS
    log_indexes = indexes(engine, "NotificationLog")
    for name, cols in SEED_LOG_INDEXES.items():
        assert log_indexes[name] == cols
    assert "emailNotifications" in columns(engine, "User")
    assert "expiresAt" in columns(engine, "PointLedger")
    ledger_indexes = indexes(engine, "PointLedger")
    for name, cols in SEED_LEDGER_INDEXES.items():
        assert ledger_indexes[name] == cols
    fks = {fk["name"]: fk for fk in inspect(engine).get_foreign_keys("NotificationLog")}
    assert fks["NotificationLog_userId_fkey"]["referred_table"] == "User"
    assert migrate.schema_differences(engine) == []


def test_downgrade_removes_exactly_what_the_seed_rollback_removes_and_keeps_users(
    empty_database_url: str, make_engine: Callable[[str], Engine]
) -> None:
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine, "baseline")
    baseline = snapshot(engine)
    migrate.upgrade(engine, "add_notification_system")
    with engine.begin() as conn:
        conn.execute(
            text("""INSERT INTO "User" ("id", "email", "name") VALUES ('u1', 'a@b.co', 'Ann')""")
        )
        conn.execute(text("""INSERT INTO "Account" ("id", "userId") VALUES ('a1', 'u1')"""))
        conn.execute(
            text(
                """INSERT INTO "PointLedger" ("id", "accountId", "entryType", "credit")
                   VALUES ('l1', 'a1', 'EARN', 100)"""
            )
        )
        conn.execute(
            text(
                """INSERT INTO "NotificationLog" ("id", "userId", "notificationType", "status",
                   "expirationDate", "pointsExpiring")
                   VALUES ('n1', 'u1', 'EXPIRATION_7_DAYS', 'SENT', '2030-01-01', 100)"""
            )
        )

    migrate.downgrade(engine, "-1")

    assert migrate.current_revision(engine) == "baseline"
    assert snapshot(engine) == baseline
    assert "NotificationLog" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(text('SELECT "id", "email", "name" FROM "User"')).all() == [
            ("u1", "a@b.co", "Ann")
        ]
        assert conn.execute(text('SELECT "credit" FROM "PointLedger"')).scalar_one() == 100


def test_downgrading_from_head_to_baseline_restores_the_baseline(
    empty_database_url: str, make_engine: Callable[[str], Engine]
) -> None:
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine, "baseline")
    baseline = snapshot(engine)
    migrate.upgrade(engine)
    migrate.downgrade(engine, "baseline")
    assert snapshot(engine) == baseline


@pytest.mark.parametrize("steps_back", ["-1", "baseline"])
def test_upgrade_after_downgrade_reapplies_and_a_second_upgrade_changes_nothing(
    steps_back: str, empty_database_url: str, make_engine: Callable[[str], Engine]
) -> None:
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine)
    at_head = snapshot(engine)
    migrate.downgrade(engine, steps_back)
    migrate.upgrade(engine)
    assert snapshot(engine) == at_head
    migrate.upgrade(engine)
    assert snapshot(engine) == at_head
    assert migrate.status(engine).up_to_date
    assert migrate.schema_differences(engine) == []


def test_upgrade_survives_a_partial_earlier_attempt(
    empty_database_url: str, make_engine: Callable[[str], Engine]
) -> None:
    """The seed's "Column Already Exists" case: some of the changes were made by hand."""
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine, "baseline")
    with engine.begin() as conn:
        conn.execute(
            text('ALTER TABLE "User" ADD COLUMN "emailNotifications" BOOLEAN NOT NULL DEFAULT true')
        )
        conn.execute(text('ALTER TABLE "PointLedger" ADD COLUMN "expiresAt" TIMESTAMP(3)'))
        conn.execute(text('CREATE INDEX "PointLedger_expiresAt_idx" ON "PointLedger"("expiresAt")'))

    migrate.upgrade(engine)

    assert migrate.current_revision(engine) == migrate.status(engine).head
    assert set(SEED_LEDGER_INDEXES) <= set(indexes(engine, "PointLedger"))


def test_schema_differences_reports_pending_migrations_and_drift(
    empty_database_url: str, make_engine: Callable[[str], Engine]
) -> None:
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine, "baseline")
    assert "migration pending: add_notification_system" in migrate.schema_differences(engine)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text('DROP INDEX "PointLedger_expiresAt_credit_idx"'))
    problems = migrate.schema_differences(engine)
    assert any("PointLedger_expiresAt_credit_idx" in p for p in problems)


@pytest.mark.parametrize("revision", ["nonexistent", "+99"])
def test_an_unknown_revision_is_a_clear_error(
    revision: str, empty_database_url: str, make_engine: Callable[[str], Engine]
) -> None:
    engine = make_engine(empty_database_url)
    with pytest.raises(migrate.MigrationError):
        migrate.upgrade(engine, revision)


def test_history_lists_revisions_in_order_with_applied_flags(
    empty_database_url: str, make_engine: Callable[[str], Engine]
) -> None:
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine, "baseline")
    revisions = migrate.history(engine)
    assert [r.id for r in revisions][:3] == [
        "baseline",
        "add_notification_system",
        "add_notification_delivery",
    ]
    assert [r.applied for r in revisions][:3] == [True, False, False]
