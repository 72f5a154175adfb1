"""Hypothesis strategies: random histories of earning, redeeming and time passing."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st


@dataclass(frozen=True)
class Earn:
    points: int
    expires_in_hours: int | None


@dataclass(frozen=True)
class Redeem:
    points: int


@dataclass(frozen=True)
class Advance:
    hours: int


Step = Earn | Redeem | Advance

steps = st.lists(
    st.one_of(
        st.builds(
            Earn,
            points=st.integers(1, 500),
            expires_in_hours=st.one_of(st.none(), st.integers(1, 2000)),
        ),
        st.builds(Redeem, points=st.integers(1, 800)),
        st.builds(Advance, hours=st.integers(0, 600)),
    ),
    max_size=25,
)
