"""The ``rewards`` command: one typer sub-app per area.

Domain errors become one clear line on stderr and a non-zero exit; never a traceback.
"""

from __future__ import annotations

import sys

import typer
from sqlalchemy.exc import SQLAlchemyError

from rewards.cli import db, demo, ledger, members, notify, scheduler, serve, worker
from rewards.cli.context import AppContext, err
from rewards.config import SettingsError
from rewards.db import DatabaseUnavailable
from rewards.ledger.errors import LedgerError
from rewards.logs import configure_logging
from rewards.migrate import MigrationError
from rewards.notifications.job import JobError

app = typer.Typer(
    name="rewards",
    help="Loyalty points that expire, and the reminders sent before they do.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(db.app, name="db")
app.add_typer(ledger.app, name="ledger")
app.add_typer(members.app, name="members")
app.add_typer(notify.app, name="notify")
app.command(name="scheduler")(scheduler.scheduler)
app.command(name="serve")(serve.serve)
app.command(name="demo")(demo.demo)
app.command(name="worker")(worker.worker)


@app.callback()
def _root(ctx: typer.Context) -> None:
    ctx.obj = AppContext()
    configure_logging()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code.

    Typer handles usage errors and ``--help`` itself (raising ``SystemExit``);
    the domain's errors are caught here and shown as one line.
    """
    try:
        app(args=argv, prog_name="rewards")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except SettingsError as exc:
        return _fail(str(exc), 2)
    except JobError as exc:
        return _fail(str(exc), 2)
    except (DatabaseUnavailable, MigrationError, LedgerError) as exc:
        return _fail(str(exc), 1)
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return _fail(f"database error: {detail[0] if detail else type(exc).__name__}", 1)
    return 0


def _fail(message: str, code: int) -> int:
    err.print(f"error: {message}", highlight=False, markup=False)
    return code


if __name__ == "__main__":
    sys.exit(main())
