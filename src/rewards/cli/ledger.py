"""``rewards ledger``: keep the lot projection in step with the ledger, and check it."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rewards.cli.context import app_context, err, out
from rewards.clock import utcnow
from rewards.db import check_connection
from rewards.ledger.check import check_projection
from rewards.ledger.projection import SyncStats, count_pending, sync_all
from rewards.migrate import require_current

app = typer.Typer(
    help="The lots derived from the ledger: bring them up to date, check them.",
    no_args_is_help=True,
)

MISMATCHES_SHOWN = 50


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out,
        transient=True,
    )


@app.command()
def sync(ctx: typer.Context) -> None:
    """Apply every change other writers made to the ledger (all accounts, after an upgrade).

    Idempotent, and safe to stop and run again: each batch of accounts commits on its own.
    """
    context = app_context(ctx)
    check_connection(context.engine)
    require_current(context.engine)
    with context.engine.connect() as conn:
        pending = count_pending(conn)
    if not pending:
        out.print("The lots are up to date: no changes to apply.")
        return
    started = time.perf_counter()
    done = 0
    try:
        with _progress() as bar:
            task = bar.add_task("Replaying accounts", total=pending)

            def advance(stats: SyncStats) -> None:
                nonlocal done
                done += stats.accounts
                bar.advance(task, stats.accounts)

            total = sync_all(context.engine, utcnow(), progress=advance)
    except KeyboardInterrupt:
        # The batches that committed stay; those in flight were rolled back.
        err.print(
            f"Stopped: {done:,} of {pending:,} accounts brought up to date. Run `rewards"
            " ledger sync` again to finish.",
            style="yellow",
        )
        raise typer.Exit(130) from None
    seconds = time.perf_counter() - started
    rate = total.rows / seconds if seconds else 0.0
    out.print(
        f"Brought {total.accounts:,} accounts up to date ({total.replayed:,} replayed,"
        f" the rest appended); {total.rows:,} ledger rows read in {seconds:.1f}s"
        f" ({rate:,.0f} rows/s)."
    )


@app.command()
def check(
    ctx: typer.Context,
    sample: Annotated[
        int | None,
        typer.Option("--sample", min=1, help="Check this many accounts chosen at random."),
    ] = None,
) -> None:
    """Replay accounts from the ledger alone and compare with the lots (exit 1 on a mismatch)."""
    context = app_context(ctx)
    check_connection(context.engine)
    require_current(context.engine)
    with context.engine.connect() as conn, _progress() as bar:
        task = bar.add_task("Checking accounts", total=sample)
        report = check_projection(
            conn, utcnow(), sample=sample, progress=lambda n: bar.advance(task, n)
        )
    out.print(
        f"Checked {report.checked:,} accounts: {len(report.mismatches):,} mismatches"
        + (
            f"; {report.pending:,} with changes not yet applied (run `rewards ledger sync`)"
            if report.pending
            else ""
        )
        + "."
    )
    if report.anomalies:
        table = Table("account", "kind", "entry", "points", "at (UTC)", title="Ledger anomalies")
        for a in report.anomalies:
            table.add_row(a.account_id, a.kind, a.entry_id or "", f"{a.points:,}", f"{a.at}")
        out.print(table)
    if report.mismatches:
        for mismatch in report.mismatches[:MISMATCHES_SHOWN]:
            out.print(f"- {mismatch.account_id}: {mismatch.detail}", highlight=False)
        if len(report.mismatches) > MISMATCHES_SHOWN:
            out.print(f"… and {len(report.mismatches) - MISMATCHES_SHOWN:,} more")
        raise typer.Exit(1)
