"""The outbox's own rules, on SQLite and PostgreSQL: who may claim a row, and when it comes back.

Every guarantee of delivery rests on four functions of
:mod:`rewards.notifications.outbox`: a *claim* takes a lease no one else can take
until it runs out (two claims of one chunk, even at once, get disjoint rows);
*settle* closes a reminder only while it is still ``PENDING``; *requeue_stale*
hands back what a dead worker held (an expired lease) or what a lost queue never
delivered (never claimed, queued more than a lease ago), and nothing else;
*adopt_orphans* gives a delivery row to ``PENDING`` log rows that have none.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, select, text, update

from rewards.notifications.outbox import (
    Claimed,
    PlannerStatistics,
    Settled,
    adopt_orphans,
    claim,
    requeue_stale,
    settle,
    unsettled,
    write_planned,
)
from rewards.notifications.planner import DueKey
from rewards.notifications.tiers import MISSING_EMAIL, OPTED_OUT, SEND, Decision, Status
from rewards.tables import deliveries, notification_log, users

NOW = datetime(2030, 6, 1, 12, 0)
LEASE = timedelta(seconds=60)
EXPIRES_ON = date(2030, 6, 8)
RUN = "run-1"


def key(user_id: str) -> DueKey:
    return DueKey(
        user_id=user_id,
        notification_type="EXPIRATION_7_DAYS",
        expiration_date=EXPIRES_ON,
        days_left=7,
        points=100,
        email=f"{user_id}@example.com",
        name=f"Member {user_id}",
        email_notifications=True,
    )


def write_members(engine: Engine, user_ids: Sequence[str]) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(users),
            [{"id": u, "email": f"{u}@example.com", "name": f"Member {u}"} for u in user_ids],
        )


def write_outbox(
    engine: Engine,
    count: int,
    *,
    at: datetime = NOW,
    run_id: str = RUN,
    prefix: str = "m",
    decision: Decision = SEND,
) -> list[str]:
    """``count`` reminders written as the job writes them; returns their log ids, in order."""
    user_ids = [f"{prefix}{n:02d}" for n in range(count)]
    write_members(engine, user_ids)
    planned = [(f"log-{u}", key(u), decision) for u in user_ids]
    with engine.begin() as conn:
        written = write_planned(conn, planned, run_id=run_id, now=at)
    return [w.log_id for w in written]


def claim_now(
    engine: Engine, log_ids: Sequence[str], *, at: datetime = NOW, worker: str = "w1"
) -> list[Claimed]:
    with engine.begin() as conn:
        return claim(conn, log_ids, now=at, lease_until=at + LEASE, worker=worker)


def claimed_ids(claimed: Sequence[Claimed]) -> list[str]:
    return sorted(c.log_id for c in claimed)


@dataclass(frozen=True)
class DeliveryRow:
    run_id: str | None
    queued_at: datetime
    lease_until: datetime | None
    claimed_by: str | None
    tries: int
    settled_at: datetime | None


def delivery(engine: Engine, log_id: str) -> DeliveryRow:
    with engine.connect() as conn:
        row = conn.execute(
            select(
                deliveries.c.runId,
                deliveries.c.queuedAt,
                deliveries.c.leaseUntil,
                deliveries.c.claimedBy,
                deliveries.c.tries,
                deliveries.c.settledAt,
            ).where(deliveries.c.logId == log_id)
        ).one()
    return DeliveryRow(*row)


def log_row(engine: Engine, log_id: str) -> tuple[str, str | None, datetime | None]:
    """(status, failureReason, sentAt) of one log row."""
    with engine.connect() as conn:
        status, reason, sent_at = conn.execute(
            select(
                notification_log.c.status,
                notification_log.c.failureReason,
                notification_log.c.sentAt,
            ).where(notification_log.c.id == log_id)
        ).one()
    return status, reason, sent_at


# -- writing ---------------------------------------------------------------------------------


def test_reminders_to_send_are_written_unsettled_and_the_rest_settled_at_once(
    engine: Engine,
) -> None:
    [to_send] = write_outbox(engine, 1, prefix="send")
    [skipped] = write_outbox(engine, 1, prefix="skip", decision=Decision(Status.SKIPPED, OPTED_OUT))
    [failed] = write_outbox(
        engine, 1, prefix="fail", decision=Decision(Status.FAILED, MISSING_EMAIL)
    )

    assert delivery(engine, to_send) == DeliveryRow(RUN, NOW, None, None, 0, None)
    assert delivery(engine, skipped).settled_at == NOW
    assert delivery(engine, failed).settled_at == NOW
    assert log_row(engine, skipped) == ("SKIPPED", OPTED_OUT, None)
    assert log_row(engine, failed) == ("FAILED", MISSING_EMAIL, None)
    with engine.connect() as conn:
        assert unsettled(conn, RUN) == 1


# -- claiming --------------------------------------------------------------------------------


def test_a_claim_takes_a_lease_and_reads_the_member_as_they_are_now(engine: Engine) -> None:
    [log_id] = write_outbox(engine, 1)
    with engine.begin() as conn:
        conn.execute(
            update(users)
            .where(users.c.id == "m00")
            .values(email="new@example.com", emailNotifications=False)
        )

    [claimed] = claim_now(engine, [log_id], worker="host:42")

    assert (claimed.email, claimed.email_notifications, claimed.tries) == (
        "new@example.com",
        False,
        1,
    )
    row = delivery(engine, log_id)
    assert (row.lease_until, row.claimed_by, row.tries) == (NOW + LEASE, "host:42", 1)


def test_two_claims_of_the_same_chunk_get_disjoint_rows(engine: Engine) -> None:
    """A chunk delivered twice (or to two workers) is sent once."""
    ids = write_outbox(engine, 5)
    first = claim_now(engine, ids, worker="w1")
    second = claim_now(engine, ids, worker="w2")
    assert claimed_ids(first) == sorted(ids)
    assert second == []


def test_claims_racing_on_one_chunk_split_it(engine: Engine) -> None:
    """Two workers claiming at the same instant: the first holds six rows in a transaction
    not yet committed when the second claims all nine. PostgreSQL skips the locked rows
    (``SKIP LOCKED``); SQLite makes the second wait for the first. Either way the second
    gets the other three and no row is claimed twice."""
    ids = write_outbox(engine, 9)
    second: list[Claimed] = []
    errors: list[BaseException] = []

    def second_worker() -> None:
        try:
            second.extend(claim_now(engine, ids, worker="w2"))
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    with engine.connect() as conn, conn.begin() as transaction:
        first = claim(conn, ids[:6], now=NOW, lease_until=NOW + LEASE, worker="w1")
        racer = threading.Thread(target=second_worker)
        racer.start()
        racer.join(timeout=0.5 if engine.dialect.name == "postgresql" else 0.2)
        transaction.commit()
    racer.join(timeout=30)

    assert not racer.is_alive()
    assert errors == []
    assert claimed_ids(first) == sorted(ids[:6])
    assert claimed_ids(second) == sorted(ids[6:])
    assert {delivery(engine, i).tries for i in ids} == {1}


@pytest.mark.parametrize(
    ("seconds_later", "claimable"),
    [
        (1, False),
        (59, False),
        (60, False),  # the lease runs until leaseUntil, inclusive
        (61, True),
    ],
)
def test_a_claimed_row_is_not_claimable_until_its_lease_runs_out(
    engine: Engine, seconds_later: int, claimable: bool
) -> None:
    [log_id] = write_outbox(engine, 1)
    claim_now(engine, [log_id], worker="dead")

    again = claim_now(engine, [log_id], at=NOW + timedelta(seconds=seconds_later), worker="w2")

    assert claimed_ids(again) == ([log_id] if claimable else [])
    row = delivery(engine, log_id)
    assert row.claimed_by == ("w2" if claimable else "dead")
    assert row.tries == (2 if claimable else 1)  # a second claim is a re-send


def test_a_settled_row_is_never_claimed_again(engine: Engine) -> None:
    [log_id] = write_outbox(engine, 1)
    claim_now(engine, [log_id])
    with engine.begin() as conn:
        settle(conn, [Settled(log_id, Status.SENT, at=NOW)], now=NOW)

    assert claim_now(engine, [log_id], at=NOW + 2 * LEASE) == []


def test_a_claim_of_no_rows_or_unknown_rows_takes_nothing(engine: Engine) -> None:
    write_outbox(engine, 1)
    assert claim_now(engine, []) == []
    assert claim_now(engine, ["no-such-row"]) == []


# -- settling --------------------------------------------------------------------------------


def test_settling_records_each_outcome_and_releases_the_lease(engine: Engine) -> None:
    sent, failed, skipped = write_outbox(engine, 3)
    claim_now(engine, [sent, failed, skipped])
    sent_at = NOW + timedelta(seconds=1)
    with engine.begin() as conn:
        settle(
            conn,
            [
                Settled(sent, Status.SENT, at=sent_at),
                Settled(failed, Status.FAILED, "550 5.1.1 mailbox unavailable"),
                Settled(skipped, Status.SKIPPED, OPTED_OUT),
            ],
            now=NOW + timedelta(seconds=2),
        )

    assert log_row(engine, sent) == ("SENT", None, sent_at)
    assert log_row(engine, failed) == ("FAILED", "550 5.1.1 mailbox unavailable", None)
    assert log_row(engine, skipped) == ("SKIPPED", OPTED_OUT, None)
    for log_id in (sent, failed, skipped):
        row = delivery(engine, log_id)
        assert (row.settled_at, row.lease_until) == (NOW + timedelta(seconds=2), None)
    with engine.connect() as conn:
        assert unsettled(conn, RUN) == 0


@pytest.mark.parametrize(
    ("first", "late"),
    [
        (Settled("x", Status.SENT), Settled("x", Status.FAILED, "451 4.3.0 try again later")),
        (Settled("x", Status.SENT), Settled("x", Status.SENT)),
        (Settled("x", Status.SKIPPED, OPTED_OUT), Settled("x", Status.SENT)),
        (Settled("x", Status.FAILED, MISSING_EMAIL), Settled("x", Status.SENT)),
    ],
    ids=["sent-then-failed", "sent-twice", "skipped-then-sent", "failed-then-sent"],
)
def test_settle_only_changes_a_reminder_that_is_still_pending(
    engine: Engine, first: Settled, late: Settled
) -> None:
    """A late settle (a worker whose lease ran out, settling after another worker did)
    never overwrites the outcome already recorded."""
    [log_id] = write_outbox(engine, 1)
    first_at, late_at = NOW + timedelta(seconds=1), NOW + timedelta(seconds=5)
    with engine.begin() as conn:
        settle(conn, [Settled(log_id, first.status, first.reason, at=first_at)], now=first_at)
    recorded = log_row(engine, log_id)

    with engine.begin() as conn:
        settle(conn, [Settled(log_id, late.status, late.reason, at=late_at)], now=late_at)

    assert log_row(engine, log_id) == recorded
    assert recorded[0] == first.status.value


# -- sweeping ----------------------------------------------------------------------------------


def test_requeue_stale_takes_expired_leases_and_rows_never_claimed_for_a_lease(
    engine: Engine,
) -> None:
    old = NOW - 2 * LEASE
    dead_worker, live_worker, lost_task, settled_row = write_outbox(engine, 4, at=old, prefix="o")
    [just_queued] = write_outbox(engine, 1, at=NOW - LEASE / 2, prefix="new")
    claim_now(engine, [dead_worker], at=old)  # its lease ran out at NOW - LEASE
    claim_now(engine, [live_worker], at=NOW - LEASE / 2)  # held until NOW + LEASE / 2
    claim_now(engine, [settled_row], at=old)
    with engine.begin() as conn:
        settle(conn, [Settled(settled_row, Status.SENT)], now=old)

    with engine.begin() as conn:
        stale = requeue_stale(
            conn, now=NOW, lease_seconds=int(LEASE.total_seconds()), run_id="run-2"
        )

    assert sorted(stale) == sorted([dead_worker, lost_task])
    assert delivery(engine, dead_worker) == DeliveryRow("run-2", NOW, None, "w1", 1, None)
    assert delivery(engine, lost_task) == DeliveryRow("run-2", NOW, None, None, 0, None)
    assert delivery(engine, live_worker).run_id == RUN
    assert delivery(engine, just_queued).run_id == RUN
    # Marked queued now: a second sweeper (another worker, the job) does not take them too.
    with engine.begin() as conn:
        assert requeue_stale(conn, now=NOW, lease_seconds=int(LEASE.total_seconds())) == []
    # Anyone may claim them now; the dead worker's row goes out as a re-send.
    tries = {c.log_id: c.tries for c in claim_now(engine, [dead_worker, lost_task, live_worker])}
    assert tries == {dead_worker: 2, lost_task: 1}


def test_requeue_stale_without_a_run_keeps_each_row_s_run(engine: Engine) -> None:
    [log_id] = write_outbox(engine, 1, at=NOW - 2 * LEASE)
    with engine.begin() as conn:
        assert requeue_stale(conn, now=NOW, lease_seconds=int(LEASE.total_seconds())) == [log_id]
    assert delivery(engine, log_id).run_id == RUN


def test_requeue_stale_takes_the_oldest_first_up_to_its_limit(engine: Engine) -> None:
    older = write_outbox(engine, 3, at=NOW - 3 * LEASE, prefix="a")
    write_outbox(engine, 3, at=NOW - 2 * LEASE, prefix="b")
    with engine.begin() as conn:
        first = requeue_stale(conn, now=NOW, lease_seconds=60, limit=3)
        rest = requeue_stale(conn, now=NOW, lease_seconds=60, limit=10)
    assert sorted(first) == sorted(older)
    assert len(rest) == 3
    assert set(first).isdisjoint(rest)


# -- orphans -----------------------------------------------------------------------------------


def test_pending_log_rows_without_a_delivery_row_are_adopted_as_interrupted(
    engine: Engine,
) -> None:
    """Log rows written ``PENDING`` by an earlier version (or by hand) get a delivery row,
    as queued when they were written and tried once; rows already closed are left alone."""
    write_members(engine, ["p", "s"])
    created = NOW - 2 * LEASE
    with engine.begin() as conn:
        conn.execute(
            text(
                'INSERT INTO "NotificationLog" ("id", "userId", "notificationType", "status",'
                ' "expirationDate", "pointsExpiring", "createdAt")'
                " VALUES (:id, :user, 'EXPIRATION_7_DAYS', :status, :day, 100, :at)"
            ),
            [
                {
                    "id": "orphan",
                    "user": "p",
                    "status": "PENDING",
                    "day": "2030-06-08",
                    "at": created,
                },
                {"id": "closed", "user": "s", "status": "SENT", "day": "2030-06-08", "at": created},
            ],
        )
    [kept] = write_outbox(engine, 1, prefix="k")

    with engine.begin() as conn:
        assert adopt_orphans(conn) == 1
    with engine.begin() as conn:
        assert adopt_orphans(conn) == 0

    assert delivery(engine, "orphan") == DeliveryRow(None, created, None, None, 1, None)
    with engine.connect() as conn:
        assert conn.scalar(select(deliveries.c.logId).where(deliveries.c.logId == "closed")) is None
    # The sweep treats it as any row a sender left behind, and its next claim is a re-send.
    with engine.begin() as conn:
        stale = requeue_stale(conn, now=NOW, lease_seconds=int(LEASE.total_seconds()))
    assert stale == ["orphan"]
    assert kept not in stale
    [claimed] = claim_now(engine, ["orphan"])
    assert claimed.tries == 2


# -- cost --------------------------------------------------------------------------------------


OUTBOX_TABLES = ("NotificationLog", "NotificationDelivery")


def scanned(plan: dict[str, Any]) -> int:
    """Rows of the outbox's tables that the scans of an ``EXPLAIN (ANALYZE, FORMAT JSON)``
    plan produced or threw away (index scans name only their index)."""
    own = 0
    relation = plan.get("Relation Name") or plan.get("Index Name") or ""
    if "Scan" in plan["Node Type"] and relation.startswith(OUTBOX_TABLES):
        own = int(plan["Actual Rows"] * plan["Actual Loops"])
        own += int(plan.get("Rows Removed by Filter", 0))
        own += int(plan.get("Rows Removed by Index Recheck", 0))
    return own + sum(scanned(child) for child in plan.get("Plans", []))


def write_outbox_in_bulk(engine: Engine, count: int, *, prefix: str) -> None:
    """``count`` members, each with a reminder in the outbox, in three statements
    (PostgreSQL): an outbox large enough that the planner's choices matter."""
    numbered = "FROM generate_series(0, CAST(:count AS integer) - 1) AS n"
    member = "concat(CAST(:prefix AS text), lpad(n::text, 5, '0'))"
    with engine.begin() as conn:
        for statement in (
            f"INSERT INTO \"User\" (id, email) SELECT {member}, {member} || '@example.com'"
            f" {numbered}",
            'INSERT INTO "NotificationLog" (id, "userId", "notificationType", status,'
            ' "expirationDate", "pointsExpiring", "createdAt")'
            f" SELECT 'log-' || {member}, {member}, 'EXPIRATION_7_DAYS', 'PENDING',"
            f" CAST(:day AS timestamp), 100, CAST(:at AS timestamp) {numbered}",
            'INSERT INTO "NotificationDelivery" ("logId", "runId", "queuedAt", tries)'
            f" SELECT 'log-' || {member}, CAST(:run AS text), CAST(:at AS timestamp), 0 {numbered}",
        ):
            conn.execute(
                text(statement),
                {"count": count, "prefix": prefix, "day": EXPIRES_ON, "at": NOW, "run": RUN},
            )


def test_a_claim_and_a_settle_read_their_chunk_not_the_whole_outbox(engine: Engine) -> None:
    """Statistics are taken while the outbox is nearly empty, as autovacuum leaves them
    before a run, and a run then fills it in batches, as the job does: each claim and
    each settle must still read about its chunk. (With the old picture, the planner scanned every
    unsettled row per chunk: at 200,000 reminders the database's time per message grew
    tenfold.)"""
    if engine.dialect.name != "postgresql":
        pytest.skip("the plans of PostgreSQL's planner; SQLite's does not use statistics here")
    write_outbox(engine, 10, prefix="early")
    with engine.connect() as conn:
        conn.execute(text('ANALYZE "NotificationLog", "NotificationDelivery"'))
    statistics = PlannerStatistics(first_at=10_000)
    for batch in range(4):
        write_outbox_in_bulk(engine, 10_000, prefix=f"later{batch}-")
        statistics.wrote(engine, 10_000)
    assert statistics.next_at == 80_000  # analysed at 10,000, 20,000 and 40,000 rows written
    with engine.connect() as conn:  # the members were there long before: known to the planner
        conn.execute(text('ANALYZE "User"'))
    chunk = [f"log-later1-{n:05d}" for n in range(5_000, 5_200)]

    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if not statement.startswith("EXPLAIN"):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert len(claim_now(engine, chunk)) == len(chunk)
        with engine.begin() as conn:
            settle(conn, [Settled(i, Status.SENT, at=NOW) for i in chunk], now=NOW)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert any("unnest" in statement for statement, _ in statements)  # the settle's
    with engine.connect() as conn:
        for statement, parameters in statements:
            with conn.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
                cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters)
                [[[explained]]] = cursor.fetchall()
            conn.rollback()
            assert scanned(explained["Plan"]) <= 10 * len(chunk), statement
