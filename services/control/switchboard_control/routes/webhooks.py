"""call.ended deliveries over REST: the outbox's state and its dead letters (bearer token), and the
recording links a payload carries (their own HMAC, no token: see ..outbox.links)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from .. import refusals
from ..background import BackgroundDep
from ..deps import Auth, StateDep
from ..models import CALL_SID, Problem
from ..outbox import links
from . import journal

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/webhooks/call-ended", dependencies=[Auth], tags=["webhooks"])
public = APIRouter(tags=["webhooks"])

CallSid = Annotated[str, Path(pattern=CALL_SID, examples=["CA0123456789abcdef0123456789abcdef"])]
SCAN = 10_000


class OutboxStatus(BaseModel):
    enabled: bool = Field(..., description="CALL_ENDED_WEBHOOK_URL is set on this replica")
    url_host: str | None = Field(None, description="Where deliveries go (host only)")
    pending: int = Field(..., description="Calls whose call.ended is waiting: for the call to be over, or a retry")
    dead_letters: int


class DeadLetter(BaseModel):
    call_sid: str
    attempts: int
    error: str = Field(..., examples=["HTTP 500"])
    failed_at: float = Field(..., description="Unix time of the last attempt")
    payload: dict[str, Any] | None = Field(None, description="What was sent (with ?payload=true)")


class DeadLetters(BaseModel):
    dead_letters: list[DeadLetter]


class Requeued(BaseModel):
    call_sid: str
    requeued: bool


@router.get("", response_model=OutboxStatus, responses={401: {"model": Problem}})
async def outbox_status(state: StateDep, background: BackgroundDep) -> OutboxStatus:
    """Whether call.ended is delivered, and how many wait or gave up."""
    pending, dead = await background.delivery.store.counts()
    url = state.settings.call_ended_webhook_url
    return OutboxStatus(enabled=url is not None, url_host=url.host if url else None, pending=pending,
                        dead_letters=dead)


@router.get("/dead-letters", response_model=DeadLetters, responses={401: {"model": Problem}})
async def dead_letters(
    background: BackgroundDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    payload: Annotated[bool, Query(description="Include what was sent (transcripts: personal data)")] = False,
) -> DeadLetters:
    """Deliveries that gave up after CALL_ENDED_MAX_ATTEMPTS, newest first."""
    letters = await background.delivery.store.dead_letters(limit)
    return DeadLetters(dead_letters=[
        DeadLetter(call_sid=str(letter.get("call_sid", "")), attempts=int(letter.get("attempts") or 0),
                   error=str(letter.get("error", "")), failed_at=float(letter.get("failed_at") or 0),
                   payload=letter.get("payload") if payload else None)
        for letter in letters
    ])


@router.post("/dead-letters/{call_sid}/retry", response_model=Requeued,
             responses={401: {"model": Problem}, 404: {"model": Problem, "description": "No such dead letter"}})
async def retry_dead_letter(call_sid: CallSid, background: BackgroundDep) -> Requeued:
    """Back into the outbox with its attempts reset: delivered again at once, the same payload."""
    if not await background.delivery.store.revive(call_sid, SCAN):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dead letter for call {call_sid}")
    return Requeued(call_sid=call_sid, requeued=True)


@router.delete("/dead-letters/{call_sid}", status_code=204,
               responses={401: {"model": Problem}, 404: {"model": Problem, "description": "No such dead letter"}})
async def drop_dead_letter(call_sid: CallSid, background: BackgroundDep) -> None:
    if not await background.delivery.store.forget_dead(call_sid, SCAN):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dead letter for call {call_sid}")


@public.get(
    links.PATH, response_class=StreamingResponse,
    responses={200: {"content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}},
               403: {"model": Problem, "description": "Expired link, or not signed by this deployment"},
               404: {"model": Problem}},
)
async def recording_by_link(
    call_sid: CallSid, state: StateDep, background: BackgroundDep,
    expires: Annotated[int, Query(ge=0, le=10**11, description="Unix time the link stops working")],
    sig: Annotated[str, Query(pattern=r"^[0-9a-f]{64}$", description="HMAC-SHA256 of callSid.expires")],
) -> StreamingResponse:
    """A call's recording (WAV) through the expiring link a call.ended payload carries: no bearer token."""
    key = background.link_key
    problem = links.check(key, call_sid, expires, sig) if key is not None else "disabled"
    if problem is not None:
        refusals.count("recording_link", "recording link refused", call_sid=call_sid, problem=problem)
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this recording link is expired or invalid")
    return await journal.get_recording(call_sid, state)
