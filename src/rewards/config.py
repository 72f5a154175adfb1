"""Settings: read once from the environment, validated, then passed in.

``DATABASE_URL`` keeps its conventional name; everything else is ``REWARDS_*``.
Nothing here connects to anything, so building settings is always cheap.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///rewards.db"
DEFAULT_SECRET_KEY = "insecure-local-secret-change-me"  # noqa: S105 - refused outside local use


class EmailBackend(StrEnum):
    SMTP = "smtp"
    FILE = "file"
    CONSOLE = "console"


class Dispatch(StrEnum):
    """Who delivers the reminders the job writes to the outbox."""

    INLINE = "inline"
    CELERY = "celery"


class SmtpSecurity(StrEnum):
    """How the SMTP connection is protected."""

    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"


class Settings(BaseSettings):
    """Every knob of the service. Field ``x`` is read from ``REWARDS_X``."""

    model_config = SettingsConfigDict(
        env_prefix="REWARDS_",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
    )

    # Email delivery.
    email_backend: EmailBackend = EmailBackend.FILE
    email_from: str = "Rewards <rewards@localhost>"
    outbox_dir: Path = Path("var/outbox")
    templates_dir: Path | None = None
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: SmtpSecurity = SmtpSecurity.NONE
    smtp_timeout: float = Field(default=30.0, gt=0)
    smtp_concurrency: int = Field(default=4, ge=1, le=64)
    smtp_retries: int = Field(default=3, ge=0, le=10)

    # The daily job.
    notify_cron: str = "0 9 * * *"
    timezone: str = "UTC"
    notify_tiers: Annotated[tuple[int, ...], NoDecode] = (30, 7, 1)
    notify_max_attempts: int = Field(default=3, ge=1, le=100)
    notify_batch_size: int = Field(default=1000, ge=1, le=100_000)
    notify_lease_seconds: int = Field(default=900, ge=1)

    # The lots: how often the scheduler applies what other applications wrote to the
    # ledger (0: only when a result needs it: a read, a redemption, the daily job).
    ledger_sync_seconds: int = Field(default=60, ge=0, le=86_400)

    # Delivery.
    dispatch: Dispatch = Dispatch.INLINE
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    send_rate: float | None = Field(default=None, gt=0, le=1_000_000)

    # HTTP.
    public_url: str = "http://127.0.0.1:8000"
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)
    admin_token: SecretStr | None = None
    api_token: SecretStr | None = None

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        scheme = value.split(":", 1)[0].split("+", 1)[0].lower()
        if scheme not in {"sqlite", "postgres", "postgresql"}:
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("notify_cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from rewards.notifications.schedule import cron_trigger

        try:
            cron_trigger(value)
        except ValueError as exc:
            raise ValueError(f"not a 5-field cron expression ({exc})") from exc
        return value

    @field_validator("notify_tiers", mode="before")
    @classmethod
    def _parse_tiers(cls, value: object) -> tuple[int, ...]:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            try:
                value = [int(p) for p in parts]
            except ValueError as exc:
                raise ValueError("must be comma-separated whole days, e.g. 30,7,1") from exc
        if not isinstance(value, list | tuple) or not value:
            raise ValueError("must list at least one tier, e.g. 30,7,1")
        tiers = tuple(int(v) for v in value)
        if any(t < 1 or t > 3650 for t in tiers):
            raise ValueError("each tier must be between 1 and 3650 days")
        if len(set(tiers)) != len(tiers):
            raise ValueError("tiers must be distinct")
        return tuple(sorted(tiers, reverse=True))

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.lower().startswith("sqlite")

    @property
    def has_own_secret(self) -> bool:
        return self.secret_key.get_secret_value() != DEFAULT_SECRET_KEY


class SettingsError(Exception):
    """Settings could not be built; the message names the offending variable."""


def require_own_secret_to_send(settings: Settings) -> None:
    """Refuse to send real email with the public default secret, which would let anyone forge
    the signed links in it; the file and console backends only write locally."""
    if settings.email_backend is EmailBackend.SMTP and not settings.has_own_secret:
        raise SettingsError(
            "invalid setting REWARDS_SECRET_KEY: the default key is public, so anyone could forge"
            " the links in the emails; set a secret of your own to send through SMTP"
        )


def _env_name(loc: tuple[int | str, ...]) -> str:
    field = str(loc[0]) if loc else "?"
    if field.lower() == "database_url":
        return "DATABASE_URL"
    return "REWARDS_" + field.upper()


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (plus ``overrides``), or raise :class:`SettingsError`."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"invalid setting {_env_name(first['loc'])}: {message}") from exc
