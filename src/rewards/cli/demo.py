"""``rewards demo``: the embedded default, end to end, on a throwaway SQLite file."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy import func, select

from rewards import migrate
from rewards.cli.context import out
from rewards.cli.notify import print_summary
from rewards.clock import utcnow
from rewards.config import EmailBackend, load_settings
from rewards.db import create_db_engine
from rewards.demo import generate_programme, load_programme
from rewards.models import Account, PointLedger, User
from rewards.notifications.job import CheckExpiringPointsJob


def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the demo database and outbox go.")
    ] = Path("var/demo"),
    members: Annotated[int, typer.Option(min=1, max=1_000_000)] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the generated programme.")] = 42,
) -> None:
    """Build a demo programme in a fresh SQLite database, run the daily job on it, summarise."""
    directory.mkdir(parents=True, exist_ok=True)
    db_path = directory / "rewards.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    engine = create_db_engine(f"sqlite:///{db_path}")
    migrate.upgrade(engine)
    now = utcnow()
    load_programme(engine, generate_programme(now, members=members, seed=seed))

    with engine.connect() as conn:
        users = conn.scalar(select(func.count()).select_from(User))
        opted_out = conn.scalar(select(func.count()).where(User.emailNotifications.is_(False)))
        no_email = conn.scalar(select(func.count()).where(User.email.is_(None)))
        accounts = conn.scalar(select(func.count()).select_from(Account))
        by_type = conn.execute(
            select(
                PointLedger.entryType,
                func.count(),
                func.sum(PointLedger.credit),
                func.sum(PointLedger.debit),
            )
            .group_by(PointLedger.entryType)
            .order_by(PointLedger.entryType)
        ).all()

    table = Table("entry type", "rows", "points credited", "points debited", title="Ledger")
    for entry_type, rows, credited, debited in by_type:
        table.add_row(entry_type, f"{rows:,}", f"{credited or 0:,}", f"{debited or 0:,}")
    out.print(f"Demo database: {db_path}")
    out.print(
        f"{users:,} members ({opted_out:,} opted out, {no_email:,} without an email), "
        f"{accounts:,} accounts"
    )
    out.print(table)

    settings = load_settings(
        database_url=f"sqlite:///{db_path}",
        email_backend=EmailBackend.FILE,
        outbox_dir=directory / "outbox",
    )
    shutil.rmtree(settings.outbox_dir, ignore_errors=True)
    # The demo's missing and malformed emails are on purpose; keep its output to the summary.
    logging.getLogger("rewards").setLevel(logging.ERROR)
    summary = CheckExpiringPointsJob(engine, settings).run(trigger="demo")
    print_summary(summary)
    emails = sorted(settings.outbox_dir.glob("*.eml"))
    out.print(f"{len(emails):,} reminder emails written to {settings.outbox_dir}/")
    if emails:
        out.print(f"  for example: {emails[0]}")
    engine.dispose()
