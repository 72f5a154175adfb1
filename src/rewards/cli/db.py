"""``rewards db``: migrations.

The equivalents of Prisma's ``migrate deploy|resolve|status|history|validate``.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from rewards import migrate
from rewards.cli.context import app_context, out
from rewards.db import check_connection

app = typer.Typer(help="Database migrations.", no_args_is_help=True)

# Relative revisions such as ``-1`` start with a dash: take them as written, not as options.
REVISION_ARGUMENT = {"ignore_unknown_options": True}


@app.command(context_settings=REVISION_ARGUMENT)
def upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply pending migrations (a no-op when up to date)."""
    engine = app_context(ctx).engine
    check_connection(engine)
    before = migrate.current_revision(engine)
    migrate.upgrade(engine, revision)
    after = migrate.current_revision(engine)
    if before == after:
        out.print(f"Already at {after or 'base'}; nothing to apply.")
    else:
        out.print(f"Upgraded {before or 'base'} -> {after}.")


@app.command(context_settings=REVISION_ARGUMENT)
def downgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target: -1, base, or a revision id.")],
) -> None:
    """Revert migrations down to REVISION."""
    engine = app_context(ctx).engine
    check_connection(engine)
    before = migrate.current_revision(engine)
    migrate.downgrade(engine, revision)
    after = migrate.current_revision(engine)
    out.print(f"Downgraded {before or 'base'} -> {after or 'base'}.")


@app.command()
def status(ctx: typer.Context) -> None:
    """Show the current revision and the pending ones."""
    engine = app_context(ctx).engine
    check_connection(engine)
    state = migrate.status(engine)
    out.print(f"Current revision: {state.current or 'base (empty database)'}")
    out.print(f"Head revision:    {state.head}")
    if state.up_to_date:
        out.print("Database schema is up to date.")
    else:
        out.print(f"{len(state.pending)} pending: {', '.join(state.pending)}")


@app.command()
def history(ctx: typer.Context) -> None:
    """List every migration, oldest first, and whether it is applied."""
    engine = app_context(ctx).engine
    check_connection(engine)
    table = Table("revision", "applied", "description")
    for rev in migrate.history(engine):
        table.add_row(rev.id, "yes" if rev.applied else "no", rev.doc)
    out.print(table)


@app.command()
def check(ctx: typer.Context) -> None:
    """Verify that the database matches the models (exit 1 if not)."""
    engine = app_context(ctx).engine
    check_connection(engine)
    problems = migrate.schema_differences(engine)
    if problems:
        for problem in problems:
            out.print(f"- {problem}")
        raise typer.Exit(1)
    out.print("Database schema matches the models.")
