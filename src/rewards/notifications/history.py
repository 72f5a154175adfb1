"""Reading ``NotificationLog``: a member's history and the operators' filtered view.

Pages are keyset-paginated on (``createdAt``, ``id``), newest first, so a page
costs the same however deep it is and rows written meanwhile never shift it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from rewards.paging import newest_first_page
from rewards.tables import notification_log

N = notification_log


@dataclass(frozen=True)
class LogFilter:
    user_id: str | None = None
    status: str | None = None
    notification_type: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None


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
    return newest_first_page(conn, query, N.c.createdAt, N.c.id, limit=limit, cursor=cursor)
