"""Members and accounts: create, read, update. Works inside the caller's transaction.

A change of a member's reminder preference (``emailNotifications``) made here is
recorded in ``PreferenceChange`` with who made it and how (:class:`ChangeOrigin`),
in the same transaction, and only when the preference really changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from rewards.clock import utc_naive
from rewards.ids import new_id
from rewards.ledger.errors import LedgerError, UnknownAccount, UnknownUser
from rewards.models import PREFERENCE_VIAS, Account, User
from rewards.tables import preference_changes

U: Table = User.__table__  # type: ignore[assignment]
A: Table = Account.__table__  # type: ignore[assignment]


class ChangeVia(StrEnum):
    """How a member's reminder preference was changed (``PreferenceChange.via``)."""

    UNSUBSCRIBE_LINK = "UNSUBSCRIBE_LINK"
    """The member followed the unsubscribe link of an email (one-click or the page's button)."""
    MEMBER_PAGE = "MEMBER_PAGE"
    """The member turned reminders back on from their own page."""
    API = "API"
    """A client application: ``PATCH /users/{id}``."""
    CONSOLE = "CONSOLE"
    """An operator, on the member's page in the console."""
    BULK_CONSOLE = "BULK_CONSOLE"
    """A bulk opt-out uploaded in the console."""
    BULK_CLI = "BULK_CLI"
    """``rewards members opt-out FILE``."""
    BULK_API = "BULK_API"
    """``POST /admin/members/opt-out``."""


assert tuple(ChangeVia) == PREFERENCE_VIAS, "the table's CHECK names the same values"


@dataclass(frozen=True)
class ChangeOrigin:
    """Who is changing a preference and how, as recorded with the change."""

    via: ChangeVia
    by: str
    """Who: ``member``, ``client application``, ``operator Ann``, ``ann@host (CLI)``, …"""
    detail: str | None = None


MEMBER = "member"
"""``changedBy`` of a change the member made through a signed link."""


@dataclass(frozen=True)
class PreferenceChangeView:
    id: str
    user_id: str
    email_notifications: bool
    changed_at: datetime
    via: str
    changed_by: str
    detail: str | None


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


def update_member(
    conn: Connection,
    member_id: str,
    changes: dict[str, Any],
    *,
    origin: ChangeOrigin,
    as_of: datetime,
) -> Member:
    """Apply ``changes`` (keys: ``email``, ``name``, ``emailNotifications``); a change of the
    preference is recorded as made by ``origin`` at ``as_of``."""
    allowed = {k: v for k, v in changes.items() if k in ("email", "name")}
    if "emailNotifications" in changes:
        set_reminders(
            conn, member_id, bool(changes["emailNotifications"]), origin=origin, as_of=as_of
        )
    if not allowed:
        return get_member(conn, member_id)
    row = conn.execute(
        update(U).where(U.c.id == member_id).values(**allowed).returning(*U.c)
    ).one_or_none()
    if row is None:
        raise UnknownUser(member_id)
    return _member(row)


def set_reminders(
    conn: Connection, member_id: str, enabled: bool, *, origin: ChangeOrigin, as_of: datetime
) -> bool:
    """Turn one member's reminder emails on or off; True if that changed anything.

    A change is recorded in ``PreferenceChange``; setting what is already set records
    nothing. :class:`UnknownUser` if there is no such member.
    """
    changed = set_reminders_of(conn, [member_id], enabled, origin=origin, as_of=as_of)
    if not changed:
        get_member(conn, member_id)
    return bool(changed)


def set_reminders_of(
    conn: Connection,
    member_ids: Sequence[str],
    enabled: bool,
    *,
    origin: ChangeOrigin,
    as_of: datetime,
    details: dict[str, str] | None = None,
) -> list[str]:
    """Set the preference of many members at once; returns the ids it changed, each recorded.

    Members unknown or already so are left out. ``details`` gives a member's change its
    own ``detail`` (e.g. the line of a bulk file), instead of ``origin.detail``.
    """
    if not member_ids:
        return []
    changed = [
        r.id
        for r in conn.execute(
            update(U)
            .where(U.c.id.in_(list(member_ids)), U.c.emailNotifications.is_not(enabled))
            .values(emailNotifications=enabled)
            .returning(U.c.id)
        )
    ]
    if changed:
        at = utc_naive(as_of)
        conn.execute(
            insert(preference_changes),
            [
                {
                    "id": new_id(),
                    "userId": member_id,
                    "emailNotifications": enabled,
                    "changedAt": at,
                    "via": origin.via.value,
                    "changedBy": origin.by,
                    "detail": (details or {}).get(member_id, origin.detail),
                }
                for member_id in changed
            ],
        )
    return changed


def opt_out(conn: Connection, member_id: str, *, origin: ChangeOrigin, as_of: datetime) -> bool:
    """Stop reminder emails for one member (the unsubscribe link); True if they were on."""
    return set_reminders(conn, member_id, False, origin=origin, as_of=as_of)


def preference_history(
    conn: Connection, member_id: str, *, limit: int = 50
) -> list[PreferenceChangeView]:
    """The member's recorded preference changes, newest first."""
    p = preference_changes
    rows = conn.execute(
        select(p)
        .where(p.c.userId == member_id)
        .order_by(p.c.changedAt.desc(), p.c.id.desc())
        .limit(limit)
    )
    return [
        PreferenceChangeView(
            r.id,
            r.userId,
            bool(r.emailNotifications),
            r.changedAt,
            r.via,
            r.changedBy,
            r.detail,
        )
        for r in rows
    ]


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
