"""The ``rewards`` command: one typer sub-app per area.

Domain errors become one clear line on stderr and a non-zero exit; never a traceback.
"""

from __future__ import annotations

import sys

import typer
from sqlalchemy.exc import SQLAlchemyError

from rewards.cli import db, demo
from rewards.cli.context import AppContext, err
from rewards.config import SettingsError
from rewards.db import DatabaseUnavailable
from rewards.migrate import MigrationError

app = typer.Typer(
    name="rewards",
    help="Loyalty points that expire, and the reminders sent before they do.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(db.app, name="db")
app.command(name="demo")(demo.demo)


@app.callback()
def _root(ctx: typer.Context) -> None:
    ctx.obj = AppContext()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    try:
        result = app(args=argv, standalone_mode=False)
    except SettingsError as exc:
        err.print(f"error: {exc}", highlight=False)
        return 2
    except (DatabaseUnavailable, MigrationError) as exc:
        err.print(f"error: {exc}", highlight=False)
        return 1
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        err.print(f"error: database error: {detail[0] if detail else type(exc).__name__}")
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err.print("Aborted.")
        return 1
    except Exception as exc:  # click's usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
