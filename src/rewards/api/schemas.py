"""Request and response bodies; JSON field names are the schema's camelCase names.

Timestamps are ISO 8601. One without a zone is read as UTC; responses are
always UTC with a ``Z``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
)

from rewards.ledger.rules import MAX_POINTS


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("the timestamp is outside the supported range") from exc


def _serialize_utc(value: datetime) -> str:
    return _as_utc(value).isoformat().replace("+00:00", "Z")


def _valid_email(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from exc


UtcDatetime = Annotated[
    datetime,
    AfterValidator(_as_utc),
    PlainSerializer(_serialize_utc, return_type=str),
    Field(description="ISO 8601; without a time zone it is read as UTC."),
]
Points = Annotated[int, Field(ge=1, le=MAX_POINTS, strict=True, description="Whole points.")]
ClientId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$"),
    Field(description="An id of the client's choosing; generated when omitted."),
]
Email = Annotated[
    Annotated[str, StringConstraints(max_length=320)] | None, AfterValidator(_valid_email)
]
Name = Annotated[str, StringConstraints(max_length=200)] | None
Description = Annotated[str, StringConstraints(max_length=500)] | None


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- members and accounts -----------------------------------------------------------------


class UserCreate(Body):
    id: ClientId | None = None
    email: Email = None
    name: Name = None
    emailNotifications: bool = True


class UserUpdate(Body):
    email: Email = None
    name: Name = None
    emailNotifications: bool | None = None


class UserOut(BaseModel):
    id: str
    email: str | None
    name: str | None
    emailNotifications: bool
    createdAt: UtcDatetime


class AccountCreate(Body):
    id: ClientId | None = None


class AccountOut(BaseModel):
    id: str
    userId: str
    createdAt: UtcDatetime


# -- ledger -----------------------------------------------------------------------------------


class EarnRequest(Body):
    points: Points
    expiresAt: UtcDatetime | None = None
    description: Description = None


class RedeemRequest(Body):
    points: Points
    description: Description = None


class EntryOut(BaseModel):
    id: str
    accountId: str
    entryType: str
    credit: int
    debit: int
    description: str | None
    createdAt: UtcDatetime
    expiresAt: UtcDatetime | None


class LotUseOut(BaseModel):
    lotId: str
    points: int


class LedgerEntryOut(BaseModel):
    id: str
    entryType: str
    credit: int
    debit: int
    description: str | None
    createdAt: UtcDatetime
    expiresAt: UtcDatetime | None
    used: list[LotUseOut] = Field(
        description="For a debit, the lots it spent and how much of each; for an EXPIRE,"
        " the lots whose remainder it records. Empty for a credit."
    )


class LedgerPage(BaseModel):
    items: list[LedgerEntryOut]
    nextCursor: str | None = Field(description="Pass as `cursor` for the next page.")


class LotOut(BaseModel):
    id: str = Field(description="The id of the credit's ledger entry.")
    points: int = Field(description="Points credited.")
    pointsLeft: int = Field(
        description="Points not spent. For an EXPIRED lot, what expired; 0 once SPENT."
    )
    status: Literal["LIVE", "SPENT", "EXPIRED"]
    createdAt: UtcDatetime
    expiresAt: UtcDatetime | None


class LotPage(BaseModel):
    items: list[LotOut]
    nextCursor: str | None = Field(description="Pass as `cursor` for the next page.")


class AnomalyOut(BaseModel):
    id: str
    accountId: str
    kind: Literal["SHORTFALL", "EXPIRY_TOO_LARGE"] = Field(
        description="SHORTFALL: a debit larger than what its account had at its instant (only"
        " rows written by other applications can be); EXPIRY_TOO_LARGE: more points expiring at"
        " one instant than one ledger entry holds."
    )
    entryId: str | None = Field(description="The debit, for a SHORTFALL.")
    points: int = Field(description="What the debit could not take, or what expired.")
    at: UtcDatetime
    detectedAt: UtcDatetime


class AnomalyPage(BaseModel):
    items: list[AnomalyOut]
    nextCursor: str | None = Field(description="Pass as `cursor` for the next page.")


class ExpiringOut(BaseModel):
    date: date
    points: int


class BalanceOut(BaseModel):
    accountId: str
    available: int
    expiring: list[ExpiringOut]


class MemberExpiringOut(BaseModel):
    userId: str
    available: int
    expiring: list[ExpiringOut]


# -- notifications ------------------------------------------------------------------------------


class NotificationOut(BaseModel):
    id: str
    userId: str
    notificationType: str
    status: str
    sentAt: UtcDatetime | None
    failureReason: str | None
    expirationDate: date
    pointsExpiring: int
    createdAt: UtcDatetime


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    nextCursor: str | None = Field(description="Pass as `cursor` for the next page.")


class JobRunRequest(Body):
    asOf: date | None = Field(default=None, description="Run as of this date's scheduled time.")
    dryRun: bool = False


class JobSummaryOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    asOf: str
    dryRun: bool
    expiredPoints: int
    planned: int
    sent: int
    failed: int
    skipped: int
    byType: dict[str, dict[str, int]]
    durationSeconds: float
    timings: dict[str, float] = Field(
        description="Seconds per step: sync, expire, then plan (a dry run) or send."
    )
    syncedAccounts: int = Field(
        description="Accounts whose ledger other applications changed, brought up to date first."
    )
    ledgerAnomalies: int = Field(
        description="Debits among those that no lot could cover at their instant (anomalies)."
    )


class StatsOut(BaseModel):
    byStatus: dict[str, int]
    byTypeAndStatus: dict[str, dict[str, int]]
    failuresByReason: dict[str, int]
    recentRuns: list[dict[str, Any]]


class JobRunsOut(BaseModel):
    items: list[dict[str, Any]]


class Health(BaseModel):
    status: str
    database: str


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldError] | None = Field(default=None, description="Invalid fields (422).")
    available: int | None = Field(default=None, description="Points available (409 redeem).")
    requested: int | None = Field(default=None, description="Points requested (409 redeem).")


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error statuses; the app documents them as problem+json."""
    descriptions = {
        400: "Malformed request (e.g. invalid JSON)",
        401: "Missing or invalid bearer token",
        403: "The wrong kind of token",
        404: "Unknown id",
        409: "Conflict (e.g. not enough points, a taken id, a run in progress)",
        413: "Request body over 64 KiB",
        422: "Invalid values",
        503: "The database is unavailable",
    }
    return {status: {"description": descriptions[status]} for status in statuses}
