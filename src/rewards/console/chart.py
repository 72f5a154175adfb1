"""The overview's chart, drawn on the server: reminders per day as stacked bars, in SVG.

Pure: counts in, shapes out (:class:`Chart`), which a template writes as SVG
elements. No script, no library, no inline style: colours come from classes in
the console's stylesheet, so the page keeps its strict content security policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

STACK = ("SENT", "SKIPPED", "FAILED", "PENDING")
"""Bottom to top: what went out, what was decided not to, what failed, what is in flight."""

WIDTH = 720
HEIGHT = 220
LEFT = 44
"""Room for the scale's numbers."""
RIGHT = 18
"""Room for the last date's label."""
BOTTOM = 24
"""Room for the dates."""
TOP = 8


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    status: str
    day: date
    count: int

    @property
    def label(self) -> str:
        return f"{self.day.isoformat()}: {self.count:,} {self.status.lower()}"


@dataclass(frozen=True)
class Tick:
    y: float
    value: int


@dataclass(frozen=True)
class DayLabel:
    x: float
    text: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    plot_bottom: float
    bars: list[Bar]
    ticks: list[Tick]
    labels: list[DayLabel]
    total: int
    peak: int

    @property
    def empty(self) -> bool:
        return self.total == 0


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^n at or above ``value`` (at least 1): the scale's top."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def stacked_bars(
    days: Sequence[tuple[date, Mapping[str, int]]],
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
    label_every: int = 7,
) -> Chart:
    """Bars for ``days`` (each a date and its counts by status), oldest on the left.

    The scale starts at zero and ends at a round number at or above the busiest day;
    every ``label_every``-th date, counted back from the last, is written below.
    """
    plot_height = height - TOP - BOTTOM
    plot_width = width - LEFT - RIGHT
    totals = [sum(counts.get(s, 0) for s in STACK) for _, counts in days]
    peak = max(totals, default=0)
    top = nice_ceiling(peak)
    slot = plot_width / max(len(days), 1)
    bar_width = max(slot * 0.7, 1.0)
    bars: list[Bar] = []
    labels: list[DayLabel] = []
    bottom = TOP + plot_height
    for index, (day, counts) in enumerate(days):
        x = LEFT + index * slot + (slot - bar_width) / 2
        y: float = bottom
        for status in STACK:
            count = counts.get(status, 0)
            if count <= 0:
                continue
            h = plot_height * count / top
            y -= h
            bars.append(
                Bar(round(x, 2), round(y, 2), round(bar_width, 2), round(h, 2), status, day, count)
            )
        if (len(days) - 1 - index) % label_every == 0:
            labels.append(DayLabel(round(x + bar_width / 2, 2), f"{day.day} {day:%b}"))
    # A middle line only where it falls on a whole number (not at 2.5 of 5).
    fractions = (0, 0.5, 1) if top % 2 == 0 else (0, 1)
    ticks = [Tick(round(bottom - plot_height * f, 2), round(top * f)) for f in fractions]
    return Chart(width, height, LEFT, bottom, bars, ticks, labels, sum(totals), peak)
