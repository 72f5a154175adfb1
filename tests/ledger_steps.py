"""Hypothesis strategies: interleaved histories of one account, written by everyone who writes.

:data:`steps` mixes what the service does (earn, redeem, the daily job's expiry) with
time passing (zero hours too: equal timestamps) and what another application does
with plain SQL (credits and debits dated in the past, rows deleted or changed,
``EXPIRE`` rows of its own). :data:`ledger_histories` is a bare list of ledger rows
in any order, for the pure rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from hypothesis import strategies as st

from tests.reference import EXPIRE, Row

Sync = Literal["read", "sync_all", "later"]
"""How another application's change reaches the projection before the step is checked:
a read through the service, ``sync_all`` (what the job does first), or not yet (the
next step's write or read must apply it)."""

IdPrefix = Literal["", "0", "z"]
"""Prepended to a new id: debits at one instant are taken in id order, and ``0…`` sorts
before the service's ``c…`` ids, ``z…`` after them."""


@dataclass(frozen=True)
class Earn:
    """Through the service: a lot expiring this many hours from now (never, if None)."""

    points: int
    expires_in_hours: int | None


@dataclass(frozen=True)
class Redeem:
    """Through the service, with an entry id starting with ``id_prefix``."""

    points: int
    id_prefix: IdPrefix = ""


@dataclass(frozen=True)
class Advance:
    hours: int


@dataclass(frozen=True)
class AdvanceToExpiry:
    """Move the clock to the next instant a lot expires (if any), plus ``hours``.

    Lands on expiry instants exactly, where "not expired at ``t``" is decided.
    """

    hours: int


@dataclass(frozen=True)
class PostExpirations:
    """The daily job: bring the projection up to date, then post what expired by now."""


@dataclass(frozen=True)
class RawCredit:
    """A credit inserted by another application, dated ``hours_ago`` before now."""

    points: int
    hours_ago: int
    expires_after_hours: int | None
    """Its expiry, counted from its own ``createdAt`` (it may have passed already)."""
    entry_type: Literal["EARN", "ADJUST"]
    id_prefix: IdPrefix
    then: Sync


@dataclass(frozen=True)
class RawDebit:
    """A ``REDEEM`` or ``ADJUST`` debit inserted by another application, maybe backdated.

    Nothing checks it against the balance: it may be larger than what its instant had.
    """

    points: int
    hours_ago: int
    entry_type: Literal["REDEEM", "ADJUST"]
    id_prefix: IdPrefix
    then: Sync


@dataclass(frozen=True)
class RawDelete:
    """Another application deletes a row (any kind; ``pick`` modulo the rows, in time order)."""

    pick: int
    then: Sync


@dataclass(frozen=True)
class RawUpdate:
    """Another application changes a row's amount (its credit, or its debit)."""

    pick: int
    points: int
    then: Sync


@dataclass(frozen=True)
class RawBackdate:
    """Another application moves a credit or a debit earlier in time."""

    pick: int
    hours: int
    then: Sync


@dataclass(frozen=True)
class RawExpire:
    """Another application records an expiry instant of one of the lots (``pick``) itself."""

    pick: int
    points: int
    then: Sync


Step = (
    Earn
    | Redeem
    | Advance
    | AdvanceToExpiry
    | PostExpirations
    | RawCredit
    | RawDebit
    | RawDelete
    | RawUpdate
    | RawBackdate
    | RawExpire
)
RawStep = RawCredit | RawDebit | RawDelete | RawUpdate | RawBackdate | RawExpire

points = st.integers(1, 400)
id_prefixes: st.SearchStrategy[IdPrefix] = st.sampled_from(["", "0", "z"])
syncs: st.SearchStrategy[Sync] = st.sampled_from(["read", "sync_all", "later"])
hours_ago = st.one_of(st.just(0), st.integers(0, 300))
picks = st.integers(0, 1000)

earning = st.builds(
    Earn, points=points, expires_in_hours=st.one_of(st.none(), st.integers(1, 2000))
)
never_expiring = st.builds(Earn, points=points, expires_in_hours=st.none())
promotional = st.builds(Earn, points=st.integers(1, 150), expires_in_hours=st.integers(1, 72))
"""Short-lived lots: earned after spending, they expire before the lots spent from."""
spending = st.builds(Redeem, points=st.integers(1, 600), id_prefix=id_prefixes)
time_passing = st.builds(
    Advance, hours=st.one_of(st.just(0), st.integers(0, 24), st.integers(0, 900))
)
to_next_expiry = st.builds(AdvanceToExpiry, hours=st.sampled_from([0, 0, 1]))
expiry_job = st.just(PostExpirations())

raw_steps: st.SearchStrategy[RawStep] = st.one_of(
    st.builds(
        RawCredit,
        points=points,
        hours_ago=hours_ago,
        expires_after_hours=st.one_of(st.none(), st.integers(1, 600)),
        entry_type=st.sampled_from(["EARN", "ADJUST"]),
        id_prefix=id_prefixes,
        then=syncs,
    ),
    st.builds(
        RawDebit,
        points=st.integers(1, 600),
        hours_ago=hours_ago,
        entry_type=st.sampled_from(["REDEEM", "ADJUST"]),
        id_prefix=id_prefixes,
        then=syncs,
    ),
    st.builds(RawDelete, pick=picks, then=syncs),
    st.builds(RawUpdate, pick=picks, points=st.integers(1, 600), then=syncs),
    st.builds(RawBackdate, pick=picks, hours=st.integers(0, 200), then=syncs),
    st.builds(RawExpire, pick=picks, points=points, then=syncs),
)

steps: st.SearchStrategy[list[Step]] = st.lists(
    st.one_of(
        # Hypothesis favours the first branches: the rarer kinds of step come first.
        expiry_job,
        *(raw_steps,) * 4,
        *(time_passing,) * 2,
        to_next_expiry,
        *(spending,) * 3,
        *(promotional, never_expiring, earning),
    ),
    min_size=8,
    max_size=35,
)
"""Interleaved histories: the service, the clock, the job and other applications."""


# -- bare ledger rows, for the pure rule -------------------------------------------------------

T0 = datetime(2030, 1, 1, 12, 0)


@st.composite
def ledger_histories(draw: st.DrawFn) -> list[Row]:
    """Rows of one account in any order: credits, debits (any size), ``EXPIRE`` records.

    Instants are whole hours over a few days, so ties are common; ids come from a
    small alphabet so ties are broken in every order.
    """
    size = draw(st.integers(0, 25))
    ids = draw(
        st.lists(
            st.text("abcxyz", min_size=1, max_size=3), min_size=size, max_size=size, unique=True
        )
    )
    rows: list[Row] = []
    expiry_instants: list[datetime] = []
    for row_id in ids:
        created = T0 + timedelta(hours=draw(st.integers(0, 72)))
        kind = draw(st.sampled_from(["credit", "credit", "debit", "debit", "expire"]))
        if kind == "credit":
            after = draw(st.one_of(st.none(), st.integers(1, 72)))
            expires = None if after is None else created + timedelta(hours=after)
            if expires is not None:
                expiry_instants.append(expires)
            entry_type = draw(st.sampled_from(["EARN", "ADJUST"]))
            rows.append(Row(row_id, entry_type, draw(points), 0, created, expires))
        elif kind == "debit":
            entry_type = draw(st.sampled_from(["REDEEM", "ADJUST"]))
            rows.append(Row(row_id, entry_type, 0, draw(st.integers(1, 600)), created))
        else:
            instant = draw(
                st.one_of(
                    st.sampled_from(expiry_instants) if expiry_instants else st.nothing(),
                    st.builds(lambda h: T0 + timedelta(hours=h), st.integers(0, 150)),
                )
            )
            if instant in {r.expires_at for r in rows if r.entry_type == EXPIRE}:
                continue  # one EXPIRE per account and instant
            rows.append(Row(row_id, EXPIRE, 0, draw(points), instant, instant))
    return draw(st.permutations(rows))
