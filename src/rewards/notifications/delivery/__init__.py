"""Delivery backends behind one small ``Sender`` interface, chosen once from settings."""

from __future__ import annotations

from rewards.config import EmailBackend, Settings
from rewards.notifications.delivery.base import Outcome, Sender
from rewards.notifications.delivery.console import ConsoleSender
from rewards.notifications.delivery.file import FileSender
from rewards.notifications.delivery.smtp import SmtpSender

__all__ = ["ConsoleSender", "FileSender", "Outcome", "Sender", "SmtpSender", "create_sender"]


def create_sender(settings: Settings) -> Sender:
    """The backend named by ``REWARDS_EMAIL_BACKEND``; nothing connects until it is used."""
    match settings.email_backend:
        case EmailBackend.SMTP:
            return SmtpSender(settings)
        case EmailBackend.FILE:
            return FileSender(settings.outbox_dir)
        case EmailBackend.CONSOLE:
            return ConsoleSender()
