"""Operators: bulk opt-out, the same as the console's upload and ``rewards members opt-out``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rewards.api.deps import Admin, EngineDep
from rewards.api.schemas import problem_responses
from rewards.clock import utcnow
from rewards.ledger.errors import InvalidEntry
from rewards.members.bulk import (
    BulkPlan,
    InvalidMemberList,
    Line,
    apply_opt_out,
    plan_opt_out,
    read_member_list,
)
from rewards.members.service import ChangeOrigin, ChangeVia

router = APIRouter(
    prefix="/admin",
    tags=["operators"],
    dependencies=[Admin],
    responses=problem_responses(400, 401, 403, 413, 422),
)

MAX_MEMBERS = 200_000

ORIGIN = ChangeOrigin(ChangeVia.BULK_API, "operator (admin API)")


class OptOutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    csv: str | None = Field(
        default=None,
        max_length=4 * 1024 * 1024,
        description="A CSV list: one member id or email per line; a header naming an `id` or"
        " `email` column picks that column.",
    )
    members: list[Annotated[str, Field(max_length=320)]] | None = Field(
        default=None,
        max_length=MAX_MEMBERS,
        description="Member ids or email addresses, instead of `csv`.",
    )
    dryRun: bool = Field(default=False, description="Only say what would change.")
    source: str | None = Field(
        default=None, max_length=200, description="Where the list came from, kept with each change."
    )

    @model_validator(mode="after")
    def _one_list(self) -> OptOutRequest:
        if (self.csv is None) == (self.members is None):
            raise ValueError("give the list as `csv` or as `members`, not both")
        return self


class OptOutLine(BaseModel):
    line: int
    value: str
    userId: str | None = None


class OptOutOut(BaseModel):
    dryRun: bool
    lines: int = Field(description="Member lines read.")
    toChange: list[OptOutLine] = Field(description="Members opted out (or, dry, to be).")
    alreadyOptedOut: list[OptOutLine]
    unknown: list[OptOutLine] = Field(description="Lines that name no member.")
    repeated: list[OptOutLine] = Field(description="Lines naming a member named earlier.")
    changed: int = Field(description="Members whose preference this request changed.")


def _out(plan: BulkPlan, *, dry_run: bool, changed: int) -> OptOutOut:
    return OptOutOut(dryRun=dry_run, changed=changed, **plan.as_json())


@router.post("/members/opt-out", response_model=OptOutOut)
async def bulk_opt_out(body: OptOutRequest, engine: EngineDep) -> OptOutOut:
    """Turn reminders off for every member the list names; each change is recorded.

    With ``dryRun``, say what would change: the members to opt out, those already
    opted out, and the lines that name no member (422 for a list that is not CSV).
    """
    if body.csv is not None:
        try:
            lines = read_member_list(body.csv)
        except InvalidMemberList as exc:
            raise InvalidEntry(str(exc)) from exc
    else:
        lines = [Line(n, v.strip()) for n, v in enumerate(body.members or [], 1) if v.strip()]

    def work() -> OptOutOut:
        with engine.begin() as conn:
            if body.dryRun:
                return _out(plan_opt_out(conn, lines), dry_run=True, changed=0)
            plan, changed = apply_opt_out(
                conn, lines, origin=ORIGIN, as_of=utcnow(), source=body.source
            )
            return _out(plan, dry_run=False, changed=len(changed))

    return await run_in_threadpool(work)
