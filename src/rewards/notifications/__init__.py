"""Expiry reminders: which are due, the emails, their delivery, and the daily job."""
