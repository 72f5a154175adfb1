"""Members: create, read, update; their accounts, expiring points and reminder history."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from rewards.api.deps import Client, ReadConn, SettingsDep, Tx
from rewards.api.schemas import (
    AccountCreate,
    AccountOut,
    ExpiringOut,
    MemberExpiringOut,
    NotificationOut,
    NotificationPage,
    UserCreate,
    UserOut,
    UserUpdate,
    problem_responses,
)
from rewards.clock import utcnow
from rewards.ledger import service as ledger
from rewards.members import service as members
from rewards.notifications.history import LogFilter, list_logs

router = APIRouter(
    prefix="/users",
    tags=["members"],
    dependencies=[Client],
    responses=problem_responses(400, 401, 404, 409, 413, 422),
)

API_CHANGE = members.ChangeOrigin(members.ChangeVia.API, "client application")
"""How a preference changed through ``PATCH /users/{id}`` is recorded."""

Days = Annotated[int, Query(ge=1, le=3650, description="How many days ahead to look.")]
Limit = Annotated[int, Query(ge=1, le=500)]


def user_out(m: members.Member) -> UserOut:
    return UserOut(
        id=m.id,
        email=m.email,
        name=m.name,
        emailNotifications=m.email_notifications,
        createdAt=m.created_at,
    )


def account_out(a: members.AccountInfo) -> AccountOut:
    return AccountOut(id=a.id, userId=a.user_id, createdAt=a.created_at)


def notification_out(row: Any) -> NotificationOut:
    return NotificationOut(
        id=row.id,
        userId=row.userId,
        notificationType=row.notificationType,
        status=row.status,
        sentAt=row.sentAt,
        failureReason=row.failureReason,
        expirationDate=row.expirationDate.date(),
        pointsExpiring=row.pointsExpiring,
        createdAt=row.createdAt,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=UserOut)
def create_user(body: UserCreate, conn: Tx, response: Response) -> UserOut:
    """Create a member. Reminders are on unless ``emailNotifications`` is false."""
    member = members.create_member(
        conn,
        as_of=utcnow(),
        member_id=body.id,
        email=body.email,
        name=body.name,
        email_notifications=body.emailNotifications,
    )
    response.headers["Location"] = f"/users/{member.id}"
    return user_out(member)


@router.get("/{userId}", response_model=UserOut)
def get_user(userId: str, conn: ReadConn) -> UserOut:
    return user_out(members.get_member(conn, userId))


@router.patch("/{userId}", response_model=UserOut)
def update_user(userId: str, body: UserUpdate, conn: Tx) -> UserOut:
    """Change the email, the name or the reminder preference; omitted fields stay as they are.

    A change of the preference is recorded (``PreferenceChange``, via ``API``)."""
    changes = body.model_dump(exclude_unset=True)
    if changes.get("emailNotifications", True) is None:
        del changes["emailNotifications"]
    return user_out(members.update_member(conn, userId, changes, origin=API_CHANGE, as_of=utcnow()))


@router.post("/{userId}/accounts", status_code=status.HTTP_201_CREATED, response_model=AccountOut)
def open_account(
    userId: str, conn: Tx, response: Response, body: AccountCreate | None = None
) -> AccountOut:
    account = members.open_account(
        conn, userId, as_of=utcnow(), account_id=body.id if body else None
    )
    response.headers["Location"] = f"/accounts/{account.id}"
    return account_out(account)


@router.get("/{userId}/expiring-points", response_model=MemberExpiringOut)
def expiring_points(
    userId: str, conn: ReadConn, settings: SettingsDep, days: Days = 30
) -> MemberExpiringOut:
    """The member's spendable points and, per date, the unspent points that will expire."""
    now = utcnow()
    account_ids = members.account_ids_of(conn, userId)
    held = ledger.holdings(
        conn, account_ids, as_of=now, until=now + timedelta(days=days), zone=settings.zone
    )
    return MemberExpiringOut(
        userId=userId,
        available=held.available,
        expiring=[ExpiringOut(date=e.date, points=e.points) for e in held.expiring],
    )


@router.get("/{userId}/notifications", response_model=NotificationPage)
def notifications(
    userId: str, conn: ReadConn, limit: Limit = 50, cursor: str | None = None
) -> NotificationPage:
    """The member's reminder history, newest first."""
    members.get_member(conn, userId)
    rows, next_cursor = list_logs(conn, LogFilter(user_id=userId), limit=limit, cursor=cursor)
    return NotificationPage(items=[notification_out(r) for r in rows], nextCursor=next_cursor)
