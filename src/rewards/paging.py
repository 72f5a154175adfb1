"""Keyset pagination on (``createdAt``, ``id``), newest first.

A page costs the same however deep it is, and rows written meanwhile never
shift it. The cursor is opaque to clients: the last row's key, base64-encoded.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, and_, or_


class InvalidCursor(ValueError):
    """A pagination cursor that this service did not hand out."""


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


def newest_first_page(
    conn: Connection,
    query: Select[Any],
    created_at: ColumnElement[datetime],
    row_id: ColumnElement[str],
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[Any], str | None]:
    """One page of ``query``'s rows, newest first, and the cursor of the next (or None)."""
    if cursor is not None:
        after_at, after_id = decode_cursor(cursor)
        query = query.where(
            or_(created_at < after_at, and_(created_at == after_at, row_id < after_id))
        )
    rows = list(conn.execute(query.order_by(created_at.desc(), row_id.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last._mapping[created_at], last._mapping[row_id])
