"""``rewards members``: what operators do to members in bulk."""

from __future__ import annotations

import getpass
import json
import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rewards.cli.context import app_context, err, out
from rewards.clock import utcnow
from rewards.db import check_connection
from rewards.members.bulk import (
    BulkPlan,
    InvalidMemberList,
    Line,
    Match,
    apply_opt_out,
    plan_opt_out,
    read_member_list,
)
from rewards.members.service import ChangeOrigin, ChangeVia
from rewards.migrate import require_current

app = typer.Typer(help="Members in bulk: opt-outs.", no_args_is_help=True)

SHOWN = 50
"""Lines listed per group; the counts are always whole."""


def _who(given: str | None) -> str:
    if given:
        return " ".join(given.split())[:80]
    try:
        user = getpass.getuser()
    except Exception:
        user = "someone"
    return f"{user}@{socket.gethostname()} (CLI)"


def _matches(title: str, rows: list[Match]) -> None:
    table = Table("line", "as written", "member", "email", title=title)
    for m in rows[:SHOWN]:
        table.add_row(str(m.line.number), m.line.value, m.member_id, m.email or "")
    out.print(table)
    if len(rows) > SHOWN:
        out.print(f"… and {len(rows) - SHOWN:,} more")


def _lines(title: str, rows: list[Line]) -> None:
    table = Table("line", "as written", title=title)
    for x in rows[:SHOWN]:
        table.add_row(str(x.number), x.value)
    out.print(table)
    if len(rows) > SHOWN:
        out.print(f"… and {len(rows) - SHOWN:,} more")


def print_plan(plan: BulkPlan, *, done: bool) -> None:
    out.print(
        f"{plan.lines:,} member lines: {len(plan.to_change):,}"
        f" {'opted out' if done else 'to opt out'}, {len(plan.already_opted_out):,} already"
        f" opted out, {len(plan.unknown):,} unknown"
        + (f", {len(plan.repeated):,} repeated" if plan.repeated else ""),
        highlight=False,
    )
    if plan.unknown:
        _lines("Unknown: no member has this id or email", plan.unknown)
    if plan.already_opted_out:
        _matches("Already opted out: nothing changes", plan.already_opted_out)
    if plan.to_change:
        _matches("Opted out" if done else "Will be opted out", plan.to_change)


@app.command("opt-out")
def opt_out(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="CSV of member ids or emails."
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what would change.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before changing.")] = False,
    by: Annotated[
        str | None, typer.Option("--by", help="Who asks (recorded); default: user@host.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Stop the reminders of every member FILE names, by id or email (one per line).

    Shows what will change (unknown and already-opted-out lines listed) and asks
    before changing anything, unless --yes. Each change is recorded with who and how.
    """
    context = app_context(ctx)
    try:
        lines = read_member_list(file.read_text(encoding="utf-8", errors="replace"))
    except InvalidMemberList as exc:
        err.print(f"error: {file}: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from exc
    check_connection(context.engine)
    require_current(context.engine)
    with context.engine.connect() as conn:
        plan = plan_opt_out(conn, lines)
    if dry_run or not plan.to_change:
        if as_json:
            print(json.dumps({"dryRun": True, "changed": 0, **plan.as_json()}))
        else:
            print_plan(plan, done=False)
            if not dry_run:
                out.print("Nothing to change.")
        return
    if not as_json:
        print_plan(plan, done=False)
    if not yes and not typer.confirm(
        f"Opt out {len(plan.to_change):,} members?", default=False, err=True
    ):
        err.print("Nothing was changed.")
        raise typer.Exit(1)
    origin = ChangeOrigin(ChangeVia.BULK_CLI, _who(by))
    with context.engine.begin() as conn:
        plan, changed = apply_opt_out(conn, lines, origin=origin, as_of=utcnow(), source=file.name)
    if as_json:
        print(json.dumps({"dryRun": False, "changed": len(changed), **plan.as_json()}))
    else:
        out.print(f"Opted out {len(changed):,} members; each change is recorded.")
