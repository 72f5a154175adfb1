"""The seed's psql verification and monitoring queries, verbatim, on PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

pytestmark = pytest.mark.postgres_only


@pytest.fixture
def pg(engine: Engine) -> Engine:
    return engine


def test_verification_queries_run_verbatim(pg: Engine) -> None:
    with pg.begin() as conn:
        conn.execute(text("""INSERT INTO "User" ("id") VALUES ('u1')"""))
        assert conn.execute(text('SELECT * FROM "NotificationLog" LIMIT 1;')).all() == []
        assert conn.execute(text('SELECT "emailNotifications" FROM "User" LIMIT 1;')).all() == [
            (True,)
        ]
        rows = (
            conn.execute(text("SELECT * FROM pg_indexes WHERE tablename = 'NotificationLog';"))
            .mappings()
            .all()
        )
    assert {r["indexname"] for r in rows} >= {
        "NotificationLog_pkey",
        "NotificationLog_userId_notificationType_expirationDate_idx",
        "NotificationLog_status_createdAt_idx",
    }


def test_monitoring_queries_run_verbatim(pg: Engine) -> None:
    with pg.begin() as conn:
        conn.execute(text("""INSERT INTO "User" ("id") VALUES ('u1')"""))
        conn.execute(
            text(
                """INSERT INTO "NotificationLog" ("id", "userId", "notificationType", "status",
                   "expirationDate", "pointsExpiring")
                   VALUES ('n1', 'u1', 'EXPIRATION_7_DAYS', 'SENT', now(), 10),
                          ('n2', 'u1', 'EXPIRATION_1_DAY', 'FAILED', now(), 10)"""
            )
        )
        assert conn.execute(text('SELECT COUNT(*) FROM "NotificationLog";')).scalar_one() == 2
        counts = conn.execute(
            text(
                """
  SELECT status, COUNT(*) as count
  FROM "NotificationLog"
  GROUP BY status;
"""
            )
        ).all()
        assert sorted(counts) == [("FAILED", 1), ("SENT", 1)]
        # The seed's query names the column ``indexname``; PostgreSQL's view calls it
        # ``indexrelname`` (the README gives this corrected form).
        usage = conn.execute(
            text(
                """
  SELECT indexrelname, idx_scan, idx_tup_read
  FROM pg_stat_user_indexes
  WHERE indexrelname LIKE '%expiresAt%' OR indexrelname LIKE '%NotificationLog%';
"""
            )
        ).all()
    assert {name for name, *_ in usage} >= {
        "PointLedger_expiresAt_idx",
        "PointLedger_expiresAt_credit_idx",
        "PointLedger_accountId_expiresAt_idx",
        "NotificationLog_status_createdAt_idx",
    }


def test_troubleshooting_queries_run_verbatim(pg: Engine) -> None:
    with pg.begin() as conn:
        found = conn.execute(
            text(
                """
  SELECT column_name FROM information_schema.columns
  WHERE table_name = 'User' AND column_name = 'emailNotifications';
"""
            )
        ).all()
        assert found == [("emailNotifications",)]
        conn.execute(text('ANALYZE "PointLedger";'))
        conn.execute(text('ANALYZE "NotificationLog";'))
        conn.execute(text("SET enable_seqscan = off;"))
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                text(
                    """EXPLAIN (ANALYZE, BUFFERS)
SELECT * FROM "PointLedger"
WHERE "expiresAt" BETWEEN now() AND (now() + interval '30 days');"""
                )
            )
        )
    assert "Index" in plan
    assert "expiresAt_" in plan


def test_backup_check_queries_run_verbatim(pg: Engine) -> None:
    with pg.connect() as conn:
        assert conn.execute(text('SELECT COUNT(*) FROM "User";')).scalar_one() == 0
        assert conn.execute(text('SELECT COUNT(*) FROM "PointLedger";')).scalar_one() == 0
