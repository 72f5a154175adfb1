"""The seed's psql verification, monitoring and backup-check queries, verbatim, on real data.

The database holds what a shop and a day of the service write: members and their
points (plain SQL, as the shop's own application writes them), then one real run
of CheckExpiringPointsJob against a real SMTP server. Each query must return the
numbers that data implies. The counting queries are plain SQL and run on SQLite
too; the rest name PostgreSQL's catalogues and run there only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, Engine, text

from rewards import migrate
from rewards.config import load_settings
from rewards.notifications.job import CheckExpiringPointsJob
from rewards.notifications.runs import JobSummary
from tests.conftest import DatabaseFactory
from tests.process_helpers import Shop, wait_until
from tests.smtp_server import Behaviour, SmtpServer

REFUSED = "eli@example.com"
REFUSAL = "550 5.1.1 mailbox unavailable"

# The seed's monitoring queries, as the runbook types them.
COUNT_LOGS = 'SELECT COUNT(*) FROM "NotificationLog";'
COUNT_BY_STATUS = """
  SELECT status, COUNT(*) as count
  FROM "NotificationLog"
  GROUP BY status;
"""
# The seed names the column ``indexname``; PostgreSQL's view calls it ``indexrelname``
# (the README gives this corrected form).
INDEX_USAGE = """
  SELECT indexrelname, idx_scan, idx_tup_read
  FROM pg_stat_user_indexes
  WHERE indexrelname LIKE '%expiresAt%' OR indexrelname LIKE '%NotificationLog%';
"""
EXPIRING = """SELECT * FROM "PointLedger"
WHERE "expiresAt" BETWEEN now() AND (now() + interval '30 days')"""
EXPLAIN_EXPIRING = f"EXPLAIN (ANALYZE, BUFFERS)\n{EXPIRING};"


@dataclass(frozen=True)
class Member:
    user_id: str
    email: str | None
    points: int
    expires_in: timedelta | None
    opted_in: bool = True


MEMBERS = (
    Member("ann", "ann@example.com", 100, timedelta(days=7)),  # SENT, 7 days
    Member("bea", "bea@example.com", 80, timedelta(days=20)),  # SENT, 30 days
    Member("cat", "cat@example.com", 60, timedelta(days=1)),  # SENT, 1 day
    Member("bob", "bob@example.com", 50, timedelta(days=3), opted_in=False),  # SKIPPED
    Member("cy", None, 70, timedelta(days=2)),  # FAILED: missing email
    Member("dan", "dan@", 40, timedelta(days=5)),  # FAILED: invalid format
    Member("eli", REFUSED, 30, timedelta(days=10)),  # FAILED: the server refuses it
    Member("dee", "dee@example.com", 25, -timedelta(days=10)),  # expired: one EXPIRE row
    Member("fay", "fay@example.com", 90, timedelta(days=45)),  # not due yet
)
NEVER_EXPIRING = 500  # ann also holds points that never expire
EXPECTED_STATUSES = [("FAILED", 3), ("SENT", 3), ("SKIPPED", 1)]
USERS = len(MEMBERS)
LEDGER_ROWS = len(MEMBERS) + 1 + 1  # one credit each, ann's never-expiring one, dee's EXPIRE
EXPIRING_WITHIN_30_DAYS = 7  # ann, bea, cat, bob, cy, dan and eli


def fill_and_run(engine: Engine, database_url: str, smtp: SmtpServer) -> JobSummary:
    """The shop's rows, then today's run of the job (real clock, real SMTP server)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    earned = now - timedelta(days=30)  # before anything expires
    shop = Shop(engine)
    for m in MEMBERS:
        shop.member(m.user_id, email=m.email, name=m.user_id.title(), opted_in=m.opted_in)
        expires = None if m.expires_in is None else now + m.expires_in
        shop.earn(m.user_id, m.points, expires, earned_at=earned)
    shop.earn("ann", NEVER_EXPIRING, None, earned_at=earned)
    settings = load_settings(database_url=database_url, **smtp.settings_overrides(), smtp_retries=0)
    return CheckExpiringPointsJob(engine, settings).run()


@pytest.fixture
def refusing_smtp(make_smtp_server: Callable[[Behaviour], SmtpServer]) -> SmtpServer:
    return make_smtp_server(Behaviour(at="RCPT", reply=REFUSAL, only_for=frozenset({REFUSED})))


@pytest.fixture
def after_a_run(engine: Engine, database_url: str, refusing_smtp: SmtpServer) -> Engine:
    """The session's database of the current backend, after the shop and one run."""
    summary = fill_and_run(engine, database_url, refusing_smtp)
    assert (summary.sent, summary.failed, summary.skipped) == (3, 3, 1)
    assert summary.expired_points == 25
    assert len(refusing_smtp.messages) == 3
    return engine


postgres_only = pytest.mark.postgres_only


def test_monitoring_counts_match_what_the_run_logged(after_a_run: Engine) -> None:
    with after_a_run.connect() as conn:
        assert conn.execute(text(COUNT_LOGS)).scalar_one() == 7
        counts = conn.execute(text(COUNT_BY_STATUS)).all()
        assert sorted(tuple(row) for row in counts) == EXPECTED_STATUSES
        refused = conn.execute(
            text('SELECT "failureReason" FROM "NotificationLog" WHERE "userId" = \'eli\'')
        ).scalar_one()
    assert refused.startswith("550")


def test_backup_check_queries_count_the_rows(after_a_run: Engine) -> None:
    with after_a_run.connect() as conn:
        assert conn.execute(text('SELECT COUNT(*) FROM "User";')).scalar_one() == USERS
        assert conn.execute(text('SELECT COUNT(*) FROM "PointLedger";')).scalar_one() == (
            LEDGER_ROWS
        )


@postgres_only
def test_verification_queries_run_verbatim(after_a_run: Engine) -> None:
    with after_a_run.begin() as conn:
        [log] = conn.execute(text('SELECT * FROM "NotificationLog" LIMIT 1;')).mappings().all()
        statuses = dict(EXPECTED_STATUSES)
        assert log["status"] in statuses
        assert log["userId"] in {m.user_id for m in MEMBERS}
        assert log["pointsExpiring"] == {m.user_id: m.points for m in MEMBERS}[log["userId"]]
        [(opted_in,)] = conn.execute(text('SELECT "emailNotifications" FROM "User" LIMIT 1;'))
        assert opted_in in (True, False)
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


def plan_of(conn: Connection) -> str:
    """The troubleshooting section's forced index scan, run; its plan as text."""
    conn.execute(text('ANALYZE "PointLedger";'))
    conn.execute(text('ANALYZE "NotificationLog";'))
    conn.execute(text("SET enable_seqscan = off;"))
    try:
        return "\n".join(row[0] for row in conn.execute(text(EXPLAIN_EXPIRING)))
    finally:
        conn.execute(text("RESET enable_seqscan"))


def actual_rows(plan: str) -> int:
    """The rows the plan's top node really returned (EXPLAIN ANALYZE's ``actual … rows=N``)."""
    match = re.search(r"actual time=\S+ rows=(\d+)", plan.splitlines()[0])
    assert match, plan
    return int(match.group(1))


@postgres_only
def test_troubleshooting_queries_find_the_points_expiring_within_30_days(
    after_a_run: Engine,
) -> None:
    with after_a_run.begin() as conn:
        found = conn.execute(
            text(
                """
  SELECT column_name FROM information_schema.columns
  WHERE table_name = 'User' AND column_name = 'emailNotifications';
"""
            )
        ).all()
        assert found == [("emailNotifications",)]
        plan = plan_of(conn)
    assert "Index" in plan
    assert "expiresAt_" in plan
    assert actual_rows(plan) == EXPIRING_WITHIN_30_DAYS


def scan_once(conn: Connection) -> int:
    """Run the prepared query; its counters reach the shared view before this returns."""
    found = len(conn.execute(text("EXECUTE expiring")).all())
    # A session hands its counters over when it goes idle; make sure it does now.
    conn.execute(text("SELECT pg_stat_force_next_flush()"))
    conn.commit()
    return found


def other_sessions(engine: Engine) -> int:
    with engine.connect() as conn:
        count: int = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
        return count


def index_usage(engine: Engine) -> dict[str, tuple[int, int]]:
    """The monitoring query's answer (a fresh statistics snapshot each call)."""
    with engine.connect() as conn:
        return {name: (scans, read) for name, scans, read in conn.execute(text(INDEX_USAGE))}


@postgres_only
def test_index_usage_counts_the_scans_of_an_expiring_points_query(
    database_factory: DatabaseFactory,
    make_engine: Callable[[str], Engine],
    refusing_smtp: SmtpServer,
) -> None:
    """On a database of its own, so no earlier test's dead rows or statistics blur the count."""
    url = database_factory.new_url()
    engine = make_engine(url)
    migrate.upgrade(engine)
    fill_and_run(engine, url, refusing_smtp)
    engine.dispose()  # the run's sessions end, and with them their statistics are flushed
    assert wait_until(lambda: other_sessions(engine) == 0, timeout=10), "the run's sessions live on"
    with engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))
        conn.execute(text(f"PREPARE expiring AS {EXPIRING}"))
        scan_once(conn)  # planned here: the planner may probe indexes to estimate
        before = index_usage(engine)
        assert set(before) >= {
            "PointLedger_expiresAt_idx",
            "PointLedger_expiresAt_credit_idx",
            "PointLedger_accountId_expiresAt_idx",
            "NotificationLog_pkey",
            "NotificationLog_userId_notificationType_expirationDate_idx",
            "NotificationLog_status_createdAt_idx",
        }
        assert scan_once(conn) == EXPIRING_WITHIN_30_DAYS  # the cached plan: one index scan
        after = index_usage(engine)

    changed = {
        name: (after[name][0] - scans, after[name][1] - read)
        for name, (scans, read) in before.items()
        if after[name] != (scans, read)
    }
    [(used, counted)] = changed.items()
    assert used in {"PointLedger_expiresAt_idx", "PointLedger_expiresAt_credit_idx"}
    assert counted == (1, EXPIRING_WITHIN_30_DAYS)
