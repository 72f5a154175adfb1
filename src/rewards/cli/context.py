"""What every command needs: settings and an engine, built once per invocation."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import typer
from rich.console import Console
from sqlalchemy import Engine

from rewards.config import Settings, load_settings
from rewards.db import create_db_engine

out = Console()
err = Console(stderr=True, soft_wrap=True)


@dataclass
class AppContext:
    """Lazily built so ``--help`` works even with broken settings."""

    overrides: dict[str, object] = field(default_factory=dict)

    @cached_property
    def settings(self) -> Settings:
        return load_settings(**self.overrides)

    @cached_property
    def engine(self) -> Engine:
        return create_db_engine(self.settings.database_url)


def app_context(ctx: typer.Context) -> AppContext:
    obj = ctx.find_root().obj
    if not isinstance(obj, AppContext):
        obj = AppContext()
        ctx.find_root().obj = obj
    return obj
