"""Settings validate themselves and name the variable at fault.

Every test starts from an environment without the service's variables, so what the
caller's shell exports (``REWARDS_TIMEZONE``, ``DATABASE_URL``…) changes nothing.
"""

from __future__ import annotations

import os

import pytest

from rewards.config import DEFAULT_DATABASE_URL, EmailBackend, SettingsError, load_settings
from rewards.db import normalize_url


def is_a_setting(name: str) -> bool:
    """Would ``Settings`` read this variable? (Names are matched case-insensitively.)"""
    upper = name.upper()
    return upper.startswith("REWARDS_") or upper == "DATABASE_URL"


@pytest.fixture(autouse=True)
def no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if is_a_setting(n)]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgres://u@h:5432/db", "postgresql+psycopg"),
        ("postgresql://u@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
        ("sqlite:///rewards.db", "sqlite+pysqlite"),
    ],
)
def test_database_urls_are_normalised_to_the_shipped_drivers(url: str, driver: str) -> None:
    assert normalize_url(url).drivername == driver


def test_defaults_are_the_embedded_setup() -> None:
    settings = load_settings()
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.is_sqlite
    assert settings.timezone == "UTC"
    assert settings.zone.key == "UTC"
    assert settings.notify_tiers == (30, 7, 1)
    assert settings.notify_cron == "0 9 * * *"
    assert settings.email_backend is EmailBackend.FILE
    assert settings.ledger_sync_seconds == 60


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://x@y/z")
    monkeypatch.setenv("REWARDS_NOTIFY_TIERS", "1, 14,60,3")
    monkeypatch.setenv("REWARDS_TIMEZONE", "Europe/Paris")
    monkeypatch.setenv("REWARDS_EMAIL_BACKEND", "smtp")
    monkeypatch.setenv("REWARDS_LEDGER_SYNC_SECONDS", "0")
    settings = load_settings()
    assert settings.database_url == "postgres://x@y/z"
    assert settings.notify_tiers == (60, 14, 3, 1)
    assert settings.zone.key == "Europe/Paris"
    assert settings.email_backend is EmailBackend.SMTP
    assert settings.ledger_sync_seconds == 0


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DATABASE_URL", "mysql://x/y", "invalid setting DATABASE_URL"),
        ("REWARDS_NOTIFY_TIERS", "30,seven", "invalid setting REWARDS_NOTIFY_TIERS"),
        ("REWARDS_NOTIFY_TIERS", "30,30", "distinct"),
        ("REWARDS_NOTIFY_TIERS", "0", "between 1 and 3650"),
        ("REWARDS_NOTIFY_TIERS", "", "at least one tier"),
        ("REWARDS_TIMEZONE", "Mars/Olympus", "unknown time zone"),
        ("REWARDS_SMTP_PORT", "99999", "invalid setting REWARDS_SMTP_PORT"),
        ("REWARDS_EMAIL_BACKEND", "pigeon", "invalid setting REWARDS_EMAIL_BACKEND"),
        ("REWARDS_NOTIFY_MAX_ATTEMPTS", "0", "invalid setting REWARDS_NOTIFY_MAX_ATTEMPTS"),
        ("REWARDS_LEDGER_SYNC_SECONDS", "-1", "invalid setting REWARDS_LEDGER_SYNC_SECONDS"),
    ],
)
def test_invalid_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=message) as excinfo:
        load_settings()
    assert "\n" not in str(excinfo.value)
