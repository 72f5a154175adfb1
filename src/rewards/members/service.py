"""Members and accounts: create, read, update. Works inside the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from rewards.clock import utc_naive
from rewards.ids import new_id
from rewards.ledger.errors import LedgerError, UnknownAccount, UnknownUser
from rewards.models import Account, User

U: Table = User.__table__  # type: ignore[assignment]
A: Table = Account.__table__  # type: ignore[assignment]


class DuplicateId(LedgerError):
    """A client-supplied id is already taken."""


@dataclass(frozen=True)
class Member:
    id: str
    email: str | None
    name: str | None
    email_notifications: bool
    created_at: datetime


@dataclass(frozen=True)
class AccountInfo:
    id: str
    user_id: str
    created_at: datetime


def _member(row: Any) -> Member:
    return Member(row.id, row.email, row.name, bool(row.emailNotifications), row.createdAt)


def create_member(
    conn: Connection,
    *,
    as_of: datetime,
    member_id: str | None = None,
    email: str | None = None,
    name: str | None = None,
    email_notifications: bool = True,
) -> Member:
    values = {
        "id": member_id or new_id(),
        "email": email,
        "name": name,
        "emailNotifications": email_notifications,
        "createdAt": utc_naive(as_of),
    }
    try:
        row = conn.execute(insert(U).values(**values).returning(*U.c)).one()
    except IntegrityError as exc:
        raise DuplicateId(f"user {values['id']!r} already exists") from exc
    return _member(row)


def get_member(conn: Connection, member_id: str) -> Member:
    row = conn.execute(select(*U.c).where(U.c.id == member_id)).one_or_none()
    if row is None:
        raise UnknownUser(member_id)
    return _member(row)


def update_member(conn: Connection, member_id: str, changes: dict[str, Any]) -> Member:
    """Apply ``changes`` (keys: ``email``, ``name``, ``emailNotifications``)."""
    allowed = {k: v for k, v in changes.items() if k in ("email", "name", "emailNotifications")}
    if not allowed:
        return get_member(conn, member_id)
    row = conn.execute(
        update(U).where(U.c.id == member_id).values(**allowed).returning(*U.c)
    ).one_or_none()
    if row is None:
        raise UnknownUser(member_id)
    return _member(row)


def opt_out(conn: Connection, member_id: str) -> Member:
    """Stop reminder emails for one member (the unsubscribe link)."""
    return update_member(conn, member_id, {"emailNotifications": False})


def open_account(
    conn: Connection, member_id: str, *, as_of: datetime, account_id: str | None = None
) -> AccountInfo:
    get_member(conn, member_id)
    values = {"id": account_id or new_id(), "userId": member_id, "createdAt": utc_naive(as_of)}
    try:
        row = conn.execute(insert(A).values(**values).returning(*A.c)).one()
    except IntegrityError as exc:
        raise DuplicateId(f"account {values['id']!r} already exists") from exc
    return AccountInfo(row.id, row.userId, row.createdAt)


def get_account(conn: Connection, account_id: str) -> AccountInfo:
    row = conn.execute(select(*A.c).where(A.c.id == account_id)).one_or_none()
    if row is None:
        raise UnknownAccount(account_id)
    return AccountInfo(row.id, row.userId, row.createdAt)


def account_ids_of(conn: Connection, member_id: str) -> list[str]:
    get_member(conn, member_id)
    return list(conn.scalars(select(A.c.id).where(A.c.userId == member_id).order_by(A.c.id)))
