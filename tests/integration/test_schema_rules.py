"""The database itself enforces the ledger's shape and the seed's defaults."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError


@pytest.fixture
def account(engine: Engine) -> str:
    with engine.begin() as conn:
        conn.execute(
            text("""INSERT INTO "User" ("id", "email") VALUES ('u1', 'ann@example.com')""")
        )
        conn.execute(text("""INSERT INTO "Account" ("id", "userId") VALUES ('a1', 'u1')"""))
    return "a1"


def test_raw_inserts_get_server_side_defaults(engine: Engine, account: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                """INSERT INTO "PointLedger" ("id", "accountId", "entryType", "credit")
                   VALUES ('l1', :a, 'EARN', 10)"""
            ),
            {"a": account},
        )
        user = conn.execute(
            text('SELECT "emailNotifications", "createdAt" FROM "User" WHERE "id" = \'u1\'')
        ).one()
        entry = conn.execute(
            text('SELECT "debit", "createdAt", "expiresAt" FROM "PointLedger" WHERE "id" = \'l1\'')
        ).one()
    assert bool(user.emailNotifications) is True
    assert user.createdAt is not None
    assert entry.debit == 0
    assert entry.createdAt is not None
    assert entry.expiresAt is None


@pytest.mark.parametrize(
    ("entry_type", "credit", "debit"),
    [
        ("EARN", 10, 10),  # both sides
        ("EARN", 0, 0),  # neither side
        ("EARN", -5, 0),  # negative credit
        ("REDEEM", 0, -5),  # negative debit
        ("BONUS", 10, 0),  # unknown entry type
        ("EARN", 0, 10),  # an EARN that takes points away
        ("REDEEM", 10, 0),  # a REDEEM that adds points
        ("EXPIRE", 10, 0),  # an EXPIRE that adds points
    ],
)
def test_check_constraints_reject_malformed_entries(
    engine: Engine, account: str, entry_type: str, credit: int, debit: int
) -> None:
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            text(
                """INSERT INTO "PointLedger" ("id", "accountId", "entryType", "credit", "debit")
                   VALUES ('bad', :a, :t, :c, :d)"""
            ),
            {"a": account, "t": entry_type, "c": credit, "d": debit},
        )


@pytest.mark.parametrize(("entry_type", "credit", "debit"), [("ADJUST", 5, 0), ("ADJUST", 0, 5)])
def test_adjustments_may_go_either_way(
    engine: Engine, account: str, entry_type: str, credit: int, debit: int
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                """INSERT INTO "PointLedger" ("id", "accountId", "entryType", "credit", "debit")
                   VALUES (:id, :a, :t, :c, :d)"""
            ),
            {"id": f"adj-{credit}", "a": account, "t": entry_type, "c": credit, "d": debit},
        )
        count = conn.execute(text('SELECT count(*) FROM "PointLedger"')).scalar_one()
    assert count == 1


def test_ledger_rows_need_an_existing_account(engine: Engine) -> None:
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            text(
                """INSERT INTO "PointLedger" ("id", "accountId", "entryType", "credit")
                   VALUES ('orphan', 'no-such-account', 'EARN', 1)"""
            )
        )


@pytest.mark.parametrize(
    "referencing",
    [
        """INSERT INTO "NotificationLog" ("id", "userId", "notificationType", "status",
           "expirationDate", "pointsExpiring")
           VALUES ('n1', 'u1', 'EXPIRATION_1_DAY', 'SENT', '2030-01-01', 5)""",
        """SELECT 1""",  # the account alone restricts too
    ],
)
def test_deleting_a_user_with_history_is_restricted(
    engine: Engine, account: str, referencing: str
) -> None:
    with engine.begin() as conn:
        conn.execute(text(referencing))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("""DELETE FROM "User" WHERE "id" = 'u1'"""))


def test_renaming_a_user_id_cascades_to_notification_logs(engine: Engine, account: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                """INSERT INTO "NotificationLog" ("id", "userId", "notificationType", "status",
                   "expirationDate", "pointsExpiring")
                   VALUES ('n1', 'u1', 'EXPIRATION_1_DAY', 'SENT', '2030-01-01', 5)"""
            )
        )
        conn.execute(text("""UPDATE "User" SET "id" = 'u2' WHERE "id" = 'u1'"""))
        owner = conn.execute(text('SELECT "userId" FROM "NotificationLog"')).scalar_one()
        account_owner = conn.execute(text('SELECT "userId" FROM "Account"')).scalar_one()
    assert (owner, account_owner) == ("u2", "u2")
