"""Bulk opt-out: a list of members who asked not to get the reminders, turned off in one go.

The seed's runbook recommends it for members who asked not to receive the new
emails. The list is CSV: one member per line, by id or by email address. A header
row that names a column ``id``, ``userId``, ``member`` or ``email`` picks that
column; otherwise the first column is read. Blank lines and lines starting with
``#`` are ignored.

It goes in two steps, the same from the console, the CLI and the API:

1. :func:`plan_opt_out` reads the list against the database and says what would
   change: the members to opt out, those already opted out, the lines that name
   no member, and the lines that repeat a member already listed;
2. :func:`apply_opt_out` makes the change, each member's recorded in
   ``PreferenceChange`` with the origin and the line it came from. It plans again
   first, so what it changes is what is true when it runs.

A value is looked up as a member id first and, failing that, as an email address
(any case); an address several members share opts out each of them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, func, select

from rewards.members.service import ChangeOrigin, set_reminders_of
from rewards.tables import users

CHUNK = 1000
"""Values looked up (and members changed) per statement."""

HEADER_NAMES = ("id", "userid", "user_id", "member", "memberid", "member_id", "email")


class InvalidMemberList(ValueError):
    """The list cannot be read as CSV (or is empty)."""


@dataclass(frozen=True)
class Line:
    """One member named by the list: its line number (from 1) and what it says."""

    number: int
    value: str


@dataclass(frozen=True)
class Match:
    line: Line
    member_id: str
    email: str | None
    name: str | None


@dataclass
class BulkPlan:
    """What a bulk opt-out would do, line by line."""

    to_change: list[Match] = field(default_factory=list)
    already_opted_out: list[Match] = field(default_factory=list)
    unknown: list[Line] = field(default_factory=list)
    repeated: list[Line] = field(default_factory=list)
    """Lines naming a member an earlier line already named."""
    lines: int = 0
    """Member lines read (blank lines, comments and the header left out)."""

    def as_json(self) -> dict[str, object]:
        def match(m: Match) -> dict[str, object]:
            return {"line": m.line.number, "value": m.line.value, "userId": m.member_id}

        def line(x: Line) -> dict[str, object]:
            return {"line": x.number, "value": x.value}

        return {
            "lines": self.lines,
            "toChange": [match(m) for m in self.to_change],
            "alreadyOptedOut": [match(m) for m in self.already_opted_out],
            "unknown": [line(x) for x in self.unknown],
            "repeated": [line(x) for x in self.repeated],
        }


def read_member_list(text: str) -> list[Line]:
    """The members a CSV list names, with their line numbers; see the module's docstring."""
    if "\x00" in text:
        raise InvalidMemberList("the file is not text (it contains NUL characters)")
    rows: Iterator[list[str]] = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    lines: list[Line] = []
    column: int | None = None
    try:
        for number, row in enumerate(rows, start=1):
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if column is None:
                names = [c.lower() for c in cells]
                header = [i for i, c in enumerate(names) if c in HEADER_NAMES]
                column = header[0] if header else 0
                if header:
                    continue
            value = cells[column] if column < len(cells) else ""
            if value:
                lines.append(Line(number, value))
    except csv.Error as exc:
        raise InvalidMemberList(f"not a CSV file: {exc}") from exc
    return lines


def _chunks(values: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), CHUNK):
        yield list(values[start : start + CHUNK])


def plan_opt_out(conn: Connection, lines: Sequence[Line]) -> BulkPlan:
    """Resolve ``lines`` to members and sort them by what an opt-out would do."""
    by_id: dict[str, tuple[str, str | None, str | None, bool]] = {}
    values = sorted({line.value for line in lines})
    for chunk in _chunks(values):
        for r in conn.execute(
            select(users.c.id, users.c.email, users.c.name, users.c.emailNotifications).where(
                users.c.id.in_(chunk)
            )
        ):
            by_id[r.id] = (r.id, r.email, r.name, bool(r.emailNotifications))
    by_email: dict[str, list[tuple[str, str | None, str | None, bool]]] = {}
    addresses = sorted({v.lower() for v in values if v not in by_id and "@" in v})
    for chunk in _chunks(addresses):
        for e in conn.execute(
            select(
                func.lower(users.c.email).label("key"),
                users.c.id,
                users.c.email,
                users.c.name,
                users.c.emailNotifications,
            )
            .where(func.lower(users.c.email).in_(chunk))
            .order_by(users.c.id)
        ):
            by_email.setdefault(e.key, []).append(
                (e.id, e.email, e.name, bool(e.emailNotifications))
            )
    plan = BulkPlan(lines=len(lines))
    seen: set[str] = set()
    for line in lines:
        found = [by_id[line.value]] if line.value in by_id else by_email.get(line.value.lower())
        if not found:
            plan.unknown.append(line)
            continue
        fresh = [m for m in found if m[0] not in seen]
        if not fresh:
            plan.repeated.append(line)
            continue
        for member_id, email, name, opted_in in fresh:
            seen.add(member_id)
            match = Match(line, member_id, email, name)
            (plan.to_change if opted_in else plan.already_opted_out).append(match)
    return plan


def apply_opt_out(
    conn: Connection,
    lines: Sequence[Line],
    *,
    origin: ChangeOrigin,
    as_of: datetime,
    source: str | None = None,
) -> tuple[BulkPlan, list[str]]:
    """Opt out every member ``lines`` name who still gets reminders; returns the plan it
    followed and the ids it changed. Each change is recorded with ``origin`` and the line
    (of ``source``, e.g. the file's name) it came from."""
    plan = plan_opt_out(conn, lines)
    where = f"{source}, line" if source else "line"
    details = {m.member_id: f"{where} {m.line.number}" for m in plan.to_change}
    changed: list[str] = []
    ids = [m.member_id for m in plan.to_change]
    for chunk in _chunks(ids):
        changed += set_reminders_of(conn, chunk, False, origin=origin, as_of=as_of, details=details)
    return plan, changed
