"""The daily job on the lot projection: other writers' rows count, and a dry run leaves nothing.

Rows another application wrote with plain SQL (backdated ones included) are
applied before the job expires and plans, so its amounts follow the
chronological rule; a dry run does exactly the same work in a transaction it
rolls back.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from rewards.config import Settings
from rewards.models import (
    LedgerChange,
    NotificationJobRun,
    NotificationLog,
    PointAllocation,
    PointLedger,
    PointLot,
)
from rewards.notifications.job import CheckExpiringPointsJob
from rewards.notifications.runs import JobSummary
from tests.integration.test_job import EXPIRES, Programme, clock, logs, make_settings

__all__ = ["make_settings"]  # a fixture, used by name

D = date(2030, 2, 10)


@pytest.fixture
def programme(engine: Engine) -> Programme:
    return Programme(engine)


@pytest.fixture
def run(engine: Engine, make_settings: Callable[..., Settings]) -> Callable[..., JobSummary]:
    def run_job(day: date, *, dry_run: bool = False, **overrides: Any) -> JobSummary:
        job = CheckExpiringPointsJob(engine, make_settings(**overrides), clock=clock)
        return job.run(day=day, dry_run=dry_run)

    return run_job


def shop_row(
    engine: Engine,
    account: str,
    entry_id: str,
    *,
    at: datetime,
    credit: int = 0,
    debit: int = 0,
    expires_at: datetime | None = None,
) -> None:
    """A ledger row as another application writes it: plain SQL, any date."""
    with engine.begin() as conn:
        conn.execute(
            text(
                'INSERT INTO "PointLedger" ("id", "accountId", "entryType", "credit", "debit",'
                ' "createdAt", "expiresAt") VALUES (:id, :a, :t, :c, :d, :at, :e)'
            ),
            {
                "id": entry_id,
                "a": account,
                "t": "EARN" if credit else "REDEEM",
                "c": credit,
                "d": debit,
                "at": at.isoformat(sep=" "),
                "e": None if expires_at is None else expires_at.isoformat(sep=" "),
            },
        )


def counts(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:

        def n(table: Any) -> int:
            return int(conn.scalar(select(func.count()).select_from(table)) or 0)

        return {
            "changes": n(LedgerChange),
            "lots": sorted(conn.execute(select(PointLot.id, PointLot.remaining, PointLot.expired))),
            "allocations": n(PointAllocation),
            "ledger": n(PointLedger),
            "log": n(NotificationLog),
            "runs": n(NotificationJobRun),
        }


def test_a_backdated_redemption_written_by_another_application_counts_in_the_plan(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine
) -> None:
    user = programme.member()
    account = programme.account(user)
    programme.earn(account, 100, EXPIRES, at=datetime(2029, 12, 1, 10, 0))
    programme.earn(account, 100, datetime(2030, 6, 1, 12, 0), at=datetime(2029, 12, 1, 10, 0))
    # Written by the shop on 2 Jan, dated 1 Jan: it spent 60 of the lot expiring on D first.
    shop_row(engine, account, "shop-1", at=datetime(2030, 1, 1, 9, 0), debit=60)
    summary = run(D - timedelta(days=7))
    assert summary.synced_accounts == 1
    assert [(t, d, s, p) for _, t, d, s, p, _ in logs(engine)] == [
        ("EXPIRATION_7_DAYS", D, "SENT", 40)
    ]


def test_a_promotional_lot_earned_after_spending_is_reminded_before_it_expires(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine
) -> None:
    # The SPEC's example: the redemption used the year-long lot, so the promotional
    # points are what expires on D, and their reminder is due.
    user = programme.member()
    account = programme.account(user)
    programme.earn(account, 1000, datetime(2031, 1, 1), at=datetime(2030, 1, 1))
    programme.redeem(account, 1000, at=datetime(2030, 1, 5))
    programme.earn(account, 100, EXPIRES, at=datetime(2030, 2, 1))
    summary = run(D - timedelta(days=7))
    assert summary.counts_by_type() == {"EXPIRATION_7_DAYS": {"SENT": 1}}
    assert [p for *_, p, _ in logs(engine)] == [100]


def test_a_dry_run_is_exact_and_leaves_nothing_behind(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine
) -> None:
    user = programme.member()
    account = programme.account(user)
    programme.earn(account, 100, EXPIRES, at=datetime(2029, 12, 1, 10, 0))
    programme.earn(account, 70, datetime(2030, 1, 10, 12, 0), at=datetime(2029, 12, 1, 10, 0))
    shop_row(engine, account, "shop-1", at=datetime(2030, 1, 1, 9, 0), debit=30)
    shop_row(
        engine,
        account,
        "shop-2",
        at=datetime(2030, 1, 2, 9, 0),
        credit=15,
        expires_at=EXPIRES,
    )
    before = counts(engine)
    assert before["changes"] == 2

    preview = run(D - timedelta(days=7), dry_run=True)
    assert counts(engine) == before  # nothing written: not the lots, not the log, not a run
    assert (preview.synced_accounts, preview.expired_entries, preview.expired_points) == (1, 1, 40)
    assert preview.counts_by_type() == {"EXPIRATION_7_DAYS": {"SENT": 1}}

    real = run(D - timedelta(days=7))
    assert (real.expired_entries, real.expired_points) == (1, 40)
    assert real.counts_by_type() == preview.counts_by_type()
    # The 30 went to the lot expiring first (10 Jan): 40 of it expired, all 115 are left.
    assert [p for *_, p, _ in logs(engine)] == [115]


def test_a_run_reports_debits_their_instant_could_not_cover(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine
) -> None:
    user = programme.member()
    account = programme.account(user)
    programme.earn(account, 50, EXPIRES, at=datetime(2029, 12, 1, 10, 0))
    shop_row(engine, account, "too-big", at=datetime(2030, 1, 1, 9, 0), debit=80)
    summary = run(D - timedelta(days=7))
    assert summary.ledger_anomalies == 1
    assert summary.as_json()["ledgerAnomalies"] == 1
    assert summary.planned == 0  # the 50 were spent; the 30 short were not taken elsewhere


def test_an_account_moved_to_another_member_is_reminded_to_its_new_member(
    programme: Programme, run: Callable[..., JobSummary], engine: Engine
) -> None:
    # Lots carry their account's member; another application moving the account (two
    # memberships merged, say) is recorded, and the account's lots follow it.
    first = programme.member(email="ann@example.com")
    second = programme.member(email="bob@example.com", name="Bob Lee")
    account = programme.account(first)
    programme.earn(account, 100, EXPIRES, at=datetime(2029, 12, 1, 10, 0))
    with engine.begin() as conn:
        conn.execute(
            text('UPDATE "Account" SET "userId" = :u WHERE "id" = :a'), {"u": second, "a": account}
        )
    summary = run(D - timedelta(days=7))
    assert summary.synced_accounts == 1
    assert [(u, p) for u, *_, p, _ in logs(engine)] == [(second, 100)]
