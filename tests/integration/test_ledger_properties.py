"""The ledger on real databases agrees, after every step, with the step-by-step simulation.

Each example is a fresh account and a random history (:mod:`tests.ledger_steps`):
earning and spending through the service, time passing, the daily job posting
expiry, and another application writing ``PointLedger`` with plain SQL (backdated
credits and debits, deletes, updates, ``EXPIRE`` rows of its own). After each step
the service's answers (``balance``, ``upcoming_expirations``) and everything the
projection stores (``PointLot.remaining``, ``PointAllocation``, ``SHORTFALL``
anomalies, the ``EXPIRE`` entries posted, ``LedgerSyncState``) must equal
:class:`tests.reference.SimulatedAccount`, whether another application's change
reached the projection through a read of the service, through ``sync_all`` or
through the service's next write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, select, text

from rewards.ids import new_id
from rewards.ledger import service
from rewards.ledger.errors import InsufficientPoints
from rewards.ledger.projection import SHORTFALL, projection_writes, sync_all
from rewards.ledger.queries import post_due_expirations
from rewards.tables import (
    accounts,
    allocations,
    anomalies,
    changes,
    ledger,
    lots,
    sync_state,
    users,
)
from tests.ledger_steps import (
    Advance,
    AdvanceToExpiry,
    Earn,
    PostExpirations,
    RawBackdate,
    RawCredit,
    RawDebit,
    RawDelete,
    RawExpire,
    RawUpdate,
    Redeem,
    Step,
    Sync,
    steps,
)
from tests.process_helpers import sql_timestamp
from tests.reference import EXPIRE, Row, SimulatedAccount

T0 = datetime(2030, 1, 1, 12, 0)
UTC = ZoneInfo("UTC")
HORIZON = timedelta(days=3650)
"""``upcoming_expirations`` is asked about everything that expires in this window."""

EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def hours(n: int) -> timedelta:
    return timedelta(hours=n)


def new_account(engine: Engine) -> str:
    user_id, account_id = new_id(), new_id()
    with engine.begin() as conn:
        conn.execute(users.insert().values(id=user_id))
        conn.execute(accounts.insert().values(id=account_id, userId=user_id))
    return account_id


INSERT_ROW = text(
    'INSERT INTO "PointLedger" ("id", "accountId", "entryType", "credit", "debit",'
    ' "createdAt", "expiresAt") VALUES (:id, :account, :type, :credit, :debit, :created, :expires)'
)


@dataclass
class Example:
    """One account in the database and its simulation, stepped together."""

    engine: Engine
    account: str
    sim: SimulatedAccount
    now: datetime = T0
    check_every_step: bool = True

    @classmethod
    def start(cls, engine: Engine, *, check_every_step: bool = True) -> Example:
        return cls(engine, new_account(engine), SimulatedAccount(), T0, check_every_step)

    # -- steps -----------------------------------------------------------------------------

    def run(self, step: Step) -> None:
        match step:
            case Earn():
                self.earn(step)
                self.check("written")
            case Redeem():
                accepted = self.redeem(step.points, step.id_prefix + new_id())
                self.check("written" if accepted else "read")
            case Advance():
                self.now += hours(step.hours)
                self.check("read")
            case AdvanceToExpiry():
                instants = [
                    r.expires_at for r in self.sim.rows.values() if r.credit and r.expires_at
                ]
                later = [i for i in instants if i > self.now]
                if later:
                    self.now = min(later)
                self.now += hours(step.hours)
                self.check("read")
            case PostExpirations():
                self.post_expirations()
                self.check("written")
            case _:
                self.write_as_another_application(step)
                self.check(step.then)

    def earn(self, step: Earn) -> None:
        expires = None if step.expires_in_hours is None else self.now + hours(step.expires_in_hours)
        with self.engine.begin() as conn:
            entry = service.earn(
                conn, self.account, step.points, as_of=self.now, expires_at=expires
            )
        assert (entry.created_at, entry.expires_at) == (self.now, expires)
        self.sim.add(Row(entry.id, "EARN", step.points, 0, self.now, expires))

    def redeem(self, points: int, entry_id: str) -> bool:
        """Redeem through the service; accepted exactly when the simulation can cover it."""
        available = self.sim.balance(self.now)
        due = self.sim.due_expirations(self.now)
        refused: InsufficientPoints | None = None
        try:
            with self.engine.begin() as conn:
                service.redeem(conn, self.account, points, as_of=self.now, entry_id=entry_id)
        except InsufficientPoints as exc:
            refused = exc
        if refused is not None:
            assert points > available, f"refused {points} with {available} available"
            assert (refused.requested, refused.available) == (points, available)
            return False
        assert points <= available, f"accepted {points} with only {available} available"
        self.sim.add(Row(entry_id, "REDEEM", 0, points, self.now))
        self.adopt_posted_expiries(due)
        return True

    def post_expirations(self) -> None:
        """The daily job: apply other writers' changes, then post what expired by now."""
        due = self.sim.due_expirations(self.now)
        sync_all(self.engine, self.now)
        with self.engine.begin() as conn, projection_writes(conn):
            posted = post_due_expirations(conn, self.now, account_ids=[self.account])
        assert posted == (len(due), sum(due.values()))
        self.adopt_posted_expiries(due)

    def write_as_another_application(self, step: Step) -> None:
        in_order = self.sim.in_order()
        match step:
            case RawCredit():
                created = self.now - hours(step.hours_ago)
                after = step.expires_after_hours
                expires = None if after is None else created + hours(after)
                row_id = step.id_prefix + new_id()
                self.insert(Row(row_id, step.entry_type, step.points, 0, created, expires))
            case RawDebit():
                created = self.now - hours(step.hours_ago)
                row_id = step.id_prefix + new_id()
                self.insert(Row(row_id, step.entry_type, 0, step.points, created))
            case RawDelete() if in_order:
                target = in_order[step.pick % len(in_order)]
                self.execute('DELETE FROM "PointLedger" WHERE "id" = :id', id=target.id)
                self.sim.delete(target.id)
            case RawUpdate() if in_order:
                target = in_order[step.pick % len(in_order)]
                column = "credit" if target.credit else "debit"
                self.execute(
                    f'UPDATE "PointLedger" SET "{column}" = :points WHERE "id" = :id',
                    points=step.points,
                    id=target.id,
                )
                self.sim.change(target.id, **{column: step.points})
            case RawBackdate():
                movable = [r for r in in_order if r.entry_type != EXPIRE]
                if movable:
                    target = movable[step.pick % len(movable)]
                    moved = target.created_at - hours(step.hours)
                    self.execute(
                        'UPDATE "PointLedger" SET "createdAt" = :created WHERE "id" = :id',
                        created=sql_timestamp(moved),
                        id=target.id,
                    )
                    self.sim.change(target.id, created_at=moved)
            case RawExpire():
                recorded = self.sim.recorded_expiries()
                instants = sorted(
                    {r.expires_at for r in in_order if r.credit and r.expires_at} - set(recorded)
                )
                if instants:
                    instant = instants[step.pick % len(instants)]
                    self.insert(Row(new_id(), EXPIRE, 0, step.points, self.now, instant))

    def insert(self, row: Row) -> None:
        self.execute(
            INSERT_ROW,
            id=row.id,
            account=self.account,
            type=row.entry_type,
            credit=row.credit,
            debit=row.debit,
            created=sql_timestamp(row.created_at),
            expires=None if row.expires_at is None else sql_timestamp(row.expires_at),
        )
        self.sim.add(row)

    def execute(self, sql: str | Any, **params: Any) -> None:
        """Plain SQL in a transaction of its own, as another application writes."""
        with self.engine.begin() as conn:
            conn.execute(text(sql) if isinstance(sql, str) else sql, params)

    def adopt_posted_expiries(self, due: dict[datetime, int]) -> None:
        """The ``EXPIRE`` entries the service just posted are exactly ``due``; add them."""
        with self.engine.connect() as conn:
            found = conn.execute(
                select(ledger).where(
                    ledger.c.accountId == self.account, ledger.c.entryType == EXPIRE
                )
            ).all()
            new = [r for r in found if r.id not in self.sim.rows]
            assert {r.expiresAt: r.debit for r in new} == due
            assert len(new) == len(due)  # one per instant
            for r in new:
                assert r.createdAt == r.expiresAt
                self.sim.add(Row(r.id, EXPIRE, 0, r.debit, r.createdAt, r.expiresAt))
            self.assert_due_lots_flagged(conn)

    # -- checks ----------------------------------------------------------------------------

    def check(self, via: Sync | Literal["written"]) -> None:
        """The service and the projection agree with the simulation.

        ``written``: the service's write (which applied pending changes first) left
        the projection exact, before any read; ``sync_all``: so does ``sync_all``;
        ``read``: the service's reads apply pending changes first (in a transaction
        that commits); ``later``: nothing yet, the next step will.
        """
        if via == "later" or not self.check_every_step:
            return
        if via == "sync_all":
            sync_all(self.engine, self.now)
        if via in ("sync_all", "written"):
            with self.engine.connect() as conn:
                self.assert_projection(conn)
        with self.engine.begin() as conn:
            assert service.balance(conn, self.account, self.now) == self.sim.balance(self.now)
            soon = service.upcoming_expirations(
                conn, [self.account], as_of=self.now, until=self.now + HORIZON, zone=UTC
            )
            expected = self.sim.expiring(self.now, self.now + HORIZON)
            assert {e.date: e.points for e in soon} == expected
            self.assert_projection(conn)

    def assert_projection(self, conn: Connection) -> None:
        account = self.account
        stored = {
            r.id: Row(r.id, r.entryType, r.credit, r.debit, r.createdAt, r.expiresAt)
            for r in conn.execute(select(ledger).where(ledger.c.accountId == account))
        }
        assert stored == self.sim.rows, "the ledger is not what the steps wrote"

        expected = self.sim.walk()
        held = conn.execute(select(lots).where(lots.c.accountId == account)).all()
        assert {r.id: (r.credited, r.createdAt, r.expiresAt) for r in held} == {
            b.id: (b.amount, b.created_at, b.expires_at) for b in expected.buckets.values()
        }
        assert {r.id: r.remaining for r in held} == {
            b.id: b.left for b in expected.buckets.values()
        }
        taken = conn.execute(select(allocations).where(allocations.c.accountId == account))
        assert {(r.debitId, r.lotId): r.points for r in taken} == expected.taken
        short = conn.execute(
            select(anomalies).where(anomalies.c.accountId == account, anomalies.c.kind == SHORTFALL)
        )
        assert {r.entryId: (r.points, r.at) for r in short} == expected.shortfalls

        recorded = self.sim.recorded_expiries()
        for r in held:
            if r.expired:
                assert r.expiresAt is not None
                assert r.expiresAt <= self.now, f"lot {r.id} flagged expired ahead of time"
                assert r.expiresAt in recorded, f"lot {r.id} flagged expired, not recorded"
        synced = conn.scalar(
            select(sync_state.c.syncedThrough).where(sync_state.c.accountId == account)
        )
        assert synced == self.sim.expected_synced_through()
        pending = conn.scalar(select(changes.c.id).where(changes.c.accountId == account).limit(1))
        assert pending is None, "changes left pending after the projection was brought up to date"

    def assert_due_lots_flagged(self, conn: Connection) -> None:
        """After expiry is posted, every lot with points left whose expiry passed is flagged."""
        unflagged = conn.execute(
            select(lots.c.id).where(
                lots.c.accountId == self.account,
                lots.c.remaining > 0,
                lots.c.expiresAt <= self.now,
                lots.c.expired.is_(False),
            )
        ).all()
        assert unflagged == []


@EXAMPLES
@given(history=steps)
def test_the_ledger_agrees_with_the_simulation_after_every_step(
    engine: Engine, history: list[Step]
) -> None:
    example = Example.start(engine)
    for step in history:
        example.run(step)
    example.check("read")


def snapshot(engine: Engine, account: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the ledger and its projection hold for ``account``."""
    with engine.connect() as conn:
        return {
            table.name: sorted(
                tuple(str(v) for v in row)
                for row in conn.execute(select(table).where(table.c.accountId == account))
            )
            for table in (ledger, lots, allocations, anomalies, sync_state, changes)
        }


@EXAMPLES
@given(history=steps, data=st.data())
def test_a_redemption_never_spends_more_than_is_available_at_its_instant(
    engine: Engine, history: list[Step], data: st.DataObject
) -> None:
    example = Example.start(engine, check_every_step=False)
    for step in history:
        example.run(step)
    now = example.now
    available = example.sim.balance(now)
    points = data.draw(
        st.one_of(
            st.sampled_from([available, available + 1]).filter(lambda p: p >= 1),
            st.integers(1, available + 100),
        ),
        label="points",
    )
    before = snapshot(engine, example.account)
    debit_id = new_id()
    accepted = example.redeem(points, debit_id)

    assert accepted is (points <= available)
    if not accepted:
        assert snapshot(engine, example.account) == before, "a refused redemption wrote something"
        return
    with engine.connect() as conn:
        taken = conn.execute(
            select(allocations.c.points, lots.c.createdAt, lots.c.expiresAt)
            .join(lots, lots.c.id == allocations.c.lotId)
            .where(allocations.c.debitId == debit_id)
        ).all()
        short = conn.scalar(select(anomalies.c.id).where(anomalies.c.entryId == debit_id))
    assert sum(points for points, _, _ in taken) == points
    assert all(
        created <= now and (expires is None or expires > now) for _, created, expires in taken
    )
    assert short is None
    example.check_every_step = True
    example.check("read")
