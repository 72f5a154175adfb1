"""The lot projection's statements on PostgreSQL: plain SQL to the driver, with arrays.

A sync batch touches thousands of accounts. Each statement here takes them all as one
array parameter (``= ANY(%b)``, ``unnest``), so a batch is a handful of round trips
whatever its size, and none of its time goes to building statements or to
SQLAlchemy's per-value processing: psycopg sends Python lists as arrays and returns
plain tuples. Arrays go in binary (``%b``): a text array has each element quoted in
Python, ten times the cost (5 ms for 4,000 values).

Predicates meant to match a partial index are spelled with constants, as in
:mod:`rewards.models` (a prepared statement's generic plan cannot match a parameter
against an index predicate).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.errors import DeadlockDetected as DeadlockDetected  # what these statements raise
from psycopg.errors import UniqueViolation as UniqueViolation
from sqlalchemy import Connection

COPY_THRESHOLD = 100
"""From this many rows, ``COPY``; below, one pipelined ``INSERT`` per row."""


@dataclass(frozen=True)
class Columns:
    """A projection table's columns as written, with their PostgreSQL types: ``COPY`` in
    binary format needs them, and takes a third of the time of the text format (on
    both sides: no formatting here, no parsing in the server)."""

    table: str
    names: tuple[str, ...]
    types: tuple[str, ...]


LOTS = Columns(
    "PointLot",
    ("id", "accountId", "userId", "credited", "remaining", "createdAt", "expiresAt", "expired"),
    ("text", "text", "text", "int4", "int4", "timestamp", "timestamp", "bool"),
)
ALLOCATIONS = Columns(
    "PointAllocation",
    ("debitId", "lotId", "accountId", "points"),
    ("text", "text", "text", "int4"),
)
ANOMALIES = Columns(
    "LedgerAnomaly",
    ("id", "accountId", "kind", "entryId", "points", "at", "detectedAt"),
    ("text", "text", "text", "text", "int8", "timestamp", "timestamp"),
)

LOCK = """
SELECT "id", "userId" FROM "Account" WHERE "id" = ANY(%b::text[]) ORDER BY "id" FOR UPDATE
"""
"""Locked in id order, so two lockers of overlapping sets cannot deadlock. Whatever the
sync reads of an account, it reads in later statements: their snapshot is taken once
the lock is held, so they see what a writer that held it before committed."""
LOCK_SKIP_LOCKED = LOCK.rstrip() + " SKIP LOCKED"

PENDING_AMONG = """
SELECT DISTINCT "accountId" FROM "LedgerChange" WHERE "accountId" = ANY(%b::text[]) ORDER BY 1
"""

MEMBERS = 'SELECT "id", "userId" FROM "Account" WHERE "id" = ANY(%b::text[])'

TAKE_CHANGES = """
WITH taken AS (
    DELETE FROM "LedgerChange" WHERE "accountId" = ANY(%b::text[])
    RETURNING "accountId", "since"
)
SELECT t."accountId", bool_or(t."since" IS NULL), min(t."since"),
       (SELECT s."syncedThrough" FROM "LedgerSyncState" AS s WHERE s."accountId" = t."accountId")
FROM taken AS t GROUP BY t."accountId"
"""
"""The accounts' change records, deleted; per account whether one calls for a replay,
the earliest ``since``, and how far the lots account for its ledger (by key: a join
was planned as a scan of every state, to merge in id order)."""

STATES = """
SELECT "accountId", "syncedThrough" FROM "LedgerSyncState" WHERE "accountId" = ANY(%b::text[])
"""

LEDGER = (
    'SELECT "accountId", "id", "entryType", "credit", "debit", "createdAt", "expiresAt"'
    ' FROM "PointLedger" WHERE "accountId" = ANY(%b::text[])'
)

NEW_ROWS = """
SELECT s.account_id, x.latest,
       l."id", l."entryType", l."credit", l."debit", l."createdAt", l."expiresAt"
FROM unnest(%b::text[], %b::timestamp[]) AS s(account_id, synced)
CROSS JOIN LATERAL (
    SELECT max(e."expiresAt") AS latest FROM "PointLedger" AS e
    WHERE e."accountId" = s.account_id AND e."entryType" = 'EXPIRE'
) AS x
JOIN "PointLedger" AS l ON l."accountId" = s.account_id AND l."createdAt" > s.synced
"""
"""Per (account, ``syncedThrough``): the rows after it, each with the account's latest
recorded expiry. Index ranges of ``(accountId, createdAt)`` and of the ``EXPIRE`` entries."""

LIVE_LOTS = """
SELECT "accountId", "id", "credited", "remaining", "createdAt", "expiresAt"
FROM "PointLot"
WHERE "accountId" = ANY(%b::text[]) AND "remaining" > 0 AND NOT "expired"
"""

UPDATE_LOTS = """
UPDATE "PointLot" AS l
SET "remaining" = coalesce(v.remaining, l."remaining"), "expired" = l."expired" OR v.expired
FROM unnest(%b::text[], %b::integer[], %b::boolean[]) AS v(id, remaining, expired)
WHERE l."id" = v.id
"""

SAVE_STATES = """
INSERT INTO "LedgerSyncState" ("accountId", "syncedThrough")
SELECT * FROM unnest(%b::text[], %b::timestamp[])
ON CONFLICT ("accountId") DO UPDATE SET "syncedThrough" = EXCLUDED."syncedThrough"
"""

CLEAR = """
WITH gone_lots AS (
    DELETE FROM "PointLot"
    WHERE "accountId" = ANY(%(accounts)b::text[]) OR "id" = ANY(%(lots)b::text[])
), gone_allocations AS (
    DELETE FROM "PointAllocation"
    WHERE "accountId" = ANY(%(accounts)b::text[]) OR "debitId" = ANY(%(debits)b::text[])
), gone_anomalies AS (
    DELETE FROM "LedgerAnomaly"
    WHERE ("accountId" = ANY(%(accounts)b::text[]) AND "kind" = 'SHORTFALL')
       OR "id" = ANY(%(anomalies)b::text[])
), gone_states AS (
    DELETE FROM "LedgerSyncState" WHERE "accountId" = ANY(%(accounts)b::text[])
)
SELECT 1
"""
"""Everything derived for the accounts, and the rows about to be written again by id
(rows another application moved between accounts keep their ids): one round trip."""


def driver(conn: Connection) -> Any:
    """The psycopg connection under ``conn``, in ``conn``'s transaction."""
    raw = conn.connection.driver_connection
    assert raw is not None
    return raw


def rows(conn: Connection, sql: str, params: Any) -> list[tuple[Any, ...]]:
    with driver(conn).cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []


def stream(conn: Connection, sql: str, params: Any) -> Iterator[tuple[Any, ...]]:
    """The rows as tuples, made one at a time (the result itself is held by the driver)."""
    with driver(conn).cursor() as cursor:
        cursor.execute(sql, params)
        yield from cursor


def execute(conn: Connection, sql: str, params: Any) -> None:
    with driver(conn).cursor() as cursor:
        cursor.execute(sql, params)


def insert_rows(conn: Connection, columns: Columns, values: Sequence[tuple[Any, ...]]) -> None:
    """Insert many rows: binary ``COPY`` when there are many, else pipelined ``INSERT`` s."""
    if not values:
        return
    names = ", ".join(f'"{c}"' for c in columns.names)
    with driver(conn).cursor() as cursor:
        if len(values) < COPY_THRESHOLD:
            marks = ", ".join(["%s"] * len(columns.names))
            cursor.executemany(f'INSERT INTO "{columns.table}" ({names}) VALUES ({marks})', values)
            return
        with cursor.copy(f'COPY "{columns.table}" ({names}) FROM STDIN (FORMAT BINARY)') as copy:
            copy.set_types(list(columns.types))
            for row in values:
                copy.write_row(row)


def update_lots(conn: Connection, remaining: Mapping[str, int], expired: Sequence[str]) -> None:
    """New ``remaining`` values and ``expired`` flags, in one statement."""
    if not remaining and not expired:
        return
    flagged = set(expired)
    ids = sorted(set(remaining) | flagged)
    execute(
        conn,
        UPDATE_LOTS,
        (ids, [remaining.get(i) for i in ids], [i in flagged for i in ids]),
    )


def save_states(conn: Connection, states: Mapping[str, datetime]) -> None:
    """Upsert ``syncedThrough`` per account."""
    if states:
        ids = sorted(states)
        execute(conn, SAVE_STATES, (ids, [states[a] for a in ids]))


def clear(
    conn: Connection,
    account_ids: list[str],
    lot_ids: list[str],
    debit_ids: list[str],
    anomaly_ids: list[str],
) -> None:
    execute(
        conn,
        CLEAR,
        {"accounts": account_ids, "lots": lot_ids, "debits": debit_ids, "anomalies": anomaly_ids},
    )
