"""Accounts: read, earn, redeem, balance."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from rewards.api.deps import Client, Db, ReadConn, SettingsDep
from rewards.api.routes.members import account_out
from rewards.api.schemas import (
    AccountOut,
    BalanceOut,
    EarnRequest,
    EntryOut,
    ExpiringOut,
    LedgerEntryOut,
    LedgerPage,
    LotOut,
    LotPage,
    LotUseOut,
    RedeemRequest,
    problem_responses,
)
from rewards.clock import utcnow
from rewards.ledger import history
from rewards.ledger import service as ledger
from rewards.members import service as members

router = APIRouter(
    prefix="/accounts",
    tags=["ledger"],
    dependencies=[Client],
    responses=problem_responses(400, 401, 404, 409, 413, 422),
)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Replaying a request with the same key returns the first result.",
    ),
]


REPLAY = "A replay of an earlier request with the same Idempotency-Key: the first entry"


def entry_out(entry: ledger.Entry) -> EntryOut:
    return EntryOut(
        id=entry.id,
        accountId=entry.account_id,
        entryType=entry.entry_type,
        credit=entry.credit,
        debit=entry.debit,
        description=entry.description,
        createdAt=entry.created_at,
        expiresAt=entry.expires_at,
    )


def _respond(entry: ledger.Entry, response: Response) -> EntryOut:
    if entry.replayed:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    return entry_out(entry)


@router.get("/{accountId}", response_model=AccountOut)
def get_account(accountId: str, conn: ReadConn) -> AccountOut:
    return account_out(members.get_account(conn, accountId))


@router.post(
    "/{accountId}/earn",
    status_code=status.HTTP_201_CREATED,
    response_model=EntryOut,
    responses={200: {"model": EntryOut, "description": REPLAY}},
)
async def earn(
    accountId: str,
    body: EarnRequest,
    db: Db,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> EntryOut:
    """Credit points; with ``expiresAt`` (in the future) they expire then, else never."""
    entry = await db.write(
        lambda conn: ledger.earn(
            conn,
            accountId,
            body.points,
            as_of=utcnow(),
            expires_at=body.expiresAt,
            description=body.description,
            idempotency_key=idempotency_key,
        )
    )
    return _respond(entry, response)


@router.post(
    "/{accountId}/redeem",
    status_code=status.HTTP_201_CREATED,
    response_model=EntryOut,
    responses={
        200: {"model": EntryOut, "description": REPLAY},
        409: {"description": "Not enough points; nothing was written"},
    },
)
async def redeem(
    accountId: str,
    body: RedeemRequest,
    db: Db,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> EntryOut:
    """Spend points, earliest-expiring first; all or nothing (409 when short)."""
    entry = await db.write(
        lambda conn: ledger.redeem(
            conn,
            accountId,
            body.points,
            as_of=utcnow(),
            description=body.description,
            idempotency_key=idempotency_key,
        )
    )
    return _respond(entry, response)


Limit = Annotated[int, Query(ge=1, le=500)]
Cursor = Annotated[str | None, Query(max_length=500)]


@router.get("/{accountId}/lots", response_model=LotPage)
def lots(accountId: str, conn: ReadConn, limit: Limit = 50, cursor: Cursor = None) -> LotPage:
    """The account's lots, newest first: what each credit left, and when it expires."""
    now = utcnow()
    page, next_cursor = history.account_lots(conn, accountId, now, limit=limit, cursor=cursor)
    return LotPage(
        items=[
            LotOut(
                id=lot.id,
                points=lot.credited,
                pointsLeft=lot.remaining,
                status=lot.status(now),
                createdAt=lot.created_at,
                expiresAt=lot.expires_at,
            )
            for lot in page
        ],
        nextCursor=next_cursor,
    )


@router.get("/{accountId}/ledger", response_model=LedgerPage)
def ledger_history(
    accountId: str, conn: ReadConn, limit: Limit = 50, cursor: Cursor = None
) -> LedgerPage:
    """The account's ledger entries, newest first; each debit with the lots it spent."""
    page, next_cursor = history.account_entries(
        conn, accountId, utcnow(), limit=limit, cursor=cursor
    )
    return LedgerPage(
        items=[
            LedgerEntryOut(
                id=e.id,
                entryType=e.entry_type,
                credit=e.credit,
                debit=e.debit,
                description=e.description,
                createdAt=e.created_at,
                expiresAt=e.expires_at,
                used=[LotUseOut(lotId=u.lot_id, points=u.points) for u in e.used],
            )
            for e in page
        ],
        nextCursor=next_cursor,
    )


@router.get("/{accountId}/balance", response_model=BalanceOut)
async def balance(
    accountId: str,
    db: Db,
    settings: SettingsDep,
    days: Annotated[int, Query(ge=1, le=3650)] = 30,
) -> BalanceOut:
    """Spendable points now and, per date, the unspent points expiring in the next ``days``."""
    now = utcnow()
    held = await db.read(
        lambda conn: ledger.holdings(
            conn, [accountId], as_of=now, until=now + timedelta(days=days), zone=settings.zone
        )
    )
    return BalanceOut(
        accountId=accountId,
        available=held.available,
        expiring=[ExpiringOut(date=e.date, points=e.points) for e in held.expiring],
    )
