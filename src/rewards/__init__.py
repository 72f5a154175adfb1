"""rewards: loyalty points that expire, and the reminder emails sent before they do."""

__version__ = "0.1.0"
