"""Reading ``NotificationLog``: a member's history and the operators' filtered view.

Pages are keyset-paginated on (``createdAt``, ``id``), newest first, so a page
costs the same however deep it is and rows written meanwhile never shift it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, and_, or_, select

from rewards.models import NotificationLog

N: Table = NotificationLog.__table__  # type: ignore[assignment]


class InvalidCursor(ValueError):
    """A pagination cursor that this service did not hand out."""


@dataclass(frozen=True)
class LogFilter:
    user_id: str | None = None
    status: str | None = None
    notification_type: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, row_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), row_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("invalid cursor") from exc


def list_logs(
    conn: Connection, filters: LogFilter, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[Any], str | None]:
    """One page of rows matching ``filters`` and the cursor of the next page (or None)."""
    query = select(*N.c)
    if filters.user_id is not None:
        query = query.where(N.c.userId == filters.user_id)
    if filters.status is not None:
        query = query.where(N.c.status == filters.status)
    if filters.notification_type is not None:
        query = query.where(N.c.notificationType == filters.notification_type)
    if filters.created_from is not None:
        query = query.where(N.c.createdAt >= filters.created_from)
    if filters.created_to is not None:
        query = query.where(N.c.createdAt < filters.created_to)
    if cursor is not None:
        created_at, row_id = decode_cursor(cursor)
        query = query.where(
            or_(N.c.createdAt < created_at, and_(N.c.createdAt == created_at, N.c.id < row_id))
        )
    rows = list(conn.execute(query.order_by(N.c.createdAt.desc(), N.c.id.desc()).limit(limit + 1)))
    next_cursor = (
        encode_cursor(rows[limit - 1].createdAt, rows[limit - 1].id) if len(rows) > limit else None
    )
    return rows[:limit], next_cursor
