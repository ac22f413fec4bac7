"""Ended calls, newest first, searchable within retention (CALL_RETENTION_S).

Served at `GET /v1/calls/ended` (registered before `/v1/calls/{call_sid}`, so "ended" is never
taken for a callSid) from the index the worker writes where a call ends
(`switchboard.ended_calls`). Filters: end time (since/until), outcome, profile, direction and
a caller or callee number (a part of it). One page looks at no more than
`ended_calls.SCAN_LIMIT` index entries; `next_before` continues the search.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from switchboard import ended_calls

from .. import callstate
from ..deps import Auth, StateDep
from ..models import PROFILE_NAME, CallSummary, Problem

router = APIRouter(prefix="/v1/calls", dependencies=[Auth], tags=["calls"])


class EndedCall(CallSummary):
    ended_at: float | None = None
    outcome: str | None = None
    end_reason: str | None = None
    direction: str = Field("inbound", examples=["inbound"])
    from_number: str | None = Field(None, alias="from", examples=["+14155550100"])
    to_number: str | None = Field(None, alias="to", examples=["+14155550199"])

    model_config = {"populate_by_name": True}


class EndedCallList(BaseModel):
    calls: list[EndedCall]
    next_before: float | None = Field(None, description="Pass as `before` for the next (older) page; null: no more")


@router.get("/ended", response_model=EndedCallList, response_model_by_alias=True,
            responses={401: {"model": Problem}})
async def list_ended_calls(
    state: StateDep,
    since: Annotated[float | None, Query(ge=0, le=1e11, description="Ended at or after (Unix time)")] = None,
    until: Annotated[float | None, Query(ge=0, le=1e11, description="Ended at or before (Unix time)")] = None,
    outcome: Annotated[str | None, Query(pattern=r"^[a-z0-9_]{1,64}$", examples=["completed"])] = None,
    profile: Annotated[str | None, Query(pattern=PROFILE_NAME)] = None,
    direction: Literal["inbound", "outbound"] | None = None,
    number: Annotated[str | None, Query(pattern=r"^\+?[0-9 ]{2,20}$", description="Part of From or To")] = None,
    before: Annotated[float | None, Query(ge=0, le=1e11, description="Continue below this end time")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> EndedCallList:
    """Calls that ended within retention, newest first, filtered."""
    wanted = ended_calls.Filter(since=since, until=until, outcome=outcome, profile=profile, direction=direction,
                                number=number)
    found, cursor = await ended_calls.search(state.redis, state.keys, wanted, limit=limit, before=before)
    calls = []
    for ended_at, fields in found:
        params = ended_calls.parameters(fields)
        caller, callee = ended_calls.numbers(fields, params)
        calls.append(EndedCall(**{
            **callstate.summary(fields).model_dump(), "ended_at": ended_at, "outcome": fields.get("outcome") or None,
            "end_reason": fields.get("end_reason") or None, "direction": ended_calls.direction(fields, params),
            "from_number": caller or None, "to_number": callee or None,
        }))
    return EndedCallList(calls=calls, next_before=cursor)
