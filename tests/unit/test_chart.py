"""The overview's chart: bars and scale lines drawn where their numbers say."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rewards.console.chart import nice_ceiling, stacked_bars

STATUSES = ("SENT", "FAILED", "SKIPPED", "PENDING")


@pytest.mark.parametrize(("peak", "top"), [(0, 1), (1, 1), (3, 5), (5, 5), (6, 10), (101, 200)])
def test_the_scale_tops_at_1_2_or_5_times_a_power_of_ten(peak: int, top: int) -> None:
    assert nice_ceiling(peak) == top


@given(st.lists(st.dictionaries(st.sampled_from(STATUSES), st.integers(0, 5000)), max_size=30))
def test_every_bar_and_scale_line_stands_at_the_height_of_its_number(
    counts: list[dict[str, int]],
) -> None:
    days = [(date(2026, 11, 1) + timedelta(days=n), c) for n, c in enumerate(counts)]
    chart = stacked_bars(days)
    [zero] = [t for t in chart.ticks if t.value == 0]
    [top] = [t for t in chart.ticks if t.y == min(t.y for t in chart.ticks)]
    per_unit = (zero.y - top.y) / top.value
    for tick in chart.ticks:
        assert zero.y - tick.y == pytest.approx(tick.value * per_unit, abs=0.01)
    for bar in chart.bars:
        assert bar.height == pytest.approx(bar.count * per_unit, abs=0.01)
    assert chart.total == sum(sum(c.values()) for c in counts)
