"""Outbound calls over REST: place one (`POST /v1/calls`), cancel one while it rings.

Every refusal is a clear 4xx (or 502/503 when Twilio or the fleet is the reason) and is counted
in `switchboard_control_outbound_refused_total{reason}`:

| status | reason | when |
|---|---|---|
| 403 | outbound_disabled, not_allowed, premium_rate, caller_id | the toll-fraud guard |
| 422 | invalid_number, caller_id, twilio_invalid_number, twilio_caller_id, twilio_refused | the numbers |
| 429 | rate_limited, twilio_rate_limited | OUTBOUND_RATE_LIMIT_PER_MIN, or Twilio's (with Retry-After) |
| 502 | twilio_auth, twilio_server, twilio_unreachable | Twilio refused our credentials, failed, or is unreachable |
| 503 | no_capacity | no free agent slot (Retry-After) |
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, Response, status

from switchboard.outbound import FINAL, OField, TwilioStatus
from switchboard.twilio_rest import NOT_IN_PROGRESS, TwilioApiError

from ..deps import Auth, State, StateDep
from ..models import CALL_SID, Problem
from . import metrics
from .dialer import DialError, DialSpec
from .models import CallLinks, CancelResult, PlaceCall, PlacedCall
from .service import outbound_of

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/calls", dependencies=[Auth], tags=["outbound"])

CallSid = Annotated[str, Path(pattern=CALL_SID, examples=["CA0123456789abcdef0123456789abcdef"])]
REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem},
    403: {"model": Problem, "description": "Outbound dialing is off, or the number is not allowed (toll-fraud guard)"},
    422: {"description": "An invalid number or caller ID (ours or Twilio's verdict)"},
    429: {"model": Problem, "description": "Too many outbound requests (this token's, or Twilio's); see Retry-After"},
    502: {"model": Problem, "description": "Twilio refused our credentials, failed, or could not be reached"},
    503: {"model": Problem, "description": "No free agent slot; see Retry-After"},
}


async def check_rate(state: State, request: Request) -> None:
    """At most OUTBOUND_RATE_LIMIT_PER_MIN outbound requests per token per minute (a fixed window)."""
    credential = (request.headers.get("authorization") or "").partition(" ")[2].strip()
    who = hashlib.sha256(credential.encode()).hexdigest()[:16] if credential else "anonymous"
    now = time.time()
    window = int(now // 60)
    key = outbound_of(request).store.okeys.rate(who, window)
    pipe = state.redis.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, 120)
    count, _ = await pipe.execute()
    if int(count) > state.settings.outbound_rate_limit_per_min:
        raise refused(DialError(429, "rate_limited", f"more than {state.settings.outbound_rate_limit_per_min} "
                                "outbound requests this minute (OUTBOUND_RATE_LIMIT_PER_MIN)",
                                retry_after_s=max(1, 60 - int(now % 60))))


def refused(error: DialError, **ids: object) -> HTTPException:
    """The API's answer to a call that was not placed (counted, and logged with its reason)."""
    if not error.reason.startswith("twilio_"):
        metrics.REFUSED.labels(error.reason).inc()  # Twilio's refusals are counted by the dialer
    log.info("outbound call refused: %s", error.message, extra={"reason": error.reason, **ids})
    headers = {"Retry-After": str(max(1, round(error.retry_after_s)))} if error.retry_after_s else None
    return HTTPException(error.status, error.message, headers=headers)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=PlacedCall, responses=REFUSALS)
async def place_call(body: PlaceCall, request: Request, response: Response, state: StateDep) -> PlacedCall:
    """Place an outbound call: the agent of `profile` talks to `to` once it answers.

    A worker slot is reserved for it at once; Twilio calls back with its status (`GET /v1/calls`
    lists it from now on, `GET /v1/calls/{callSid}/events` streams it). With `machine_detection`
    the agent waits for Twilio's verdict before it greets: a person is greeted, an answering
    machine gets the profile's `voicemail` behaviour."""
    service = outbound_of(request)
    early = service.dialer.refusal(body.to, body.from_) or service.dialer.webhook_refusal(
        str(body.status_webhook) if body.status_webhook else None)
    if early is not None:
        raise refused(early, to=body.to[:20])
    await check_rate(state, request)
    spec = DialSpec(to=body.to, from_=body.from_, profile=body.profile, settings=body.settings, context=body.context,
                    machine_detection=body.machine_detection, ring_timeout_s=body.ring_timeout_s,
                    time_limit_s=body.time_limit_s,
                    status_webhook=str(body.status_webhook) if body.status_webhook else None)
    try:
        placed = await service.dialer.place(spec)
    except DialError as exc:
        raise refused(exc, to=body.to[:20]) from None
    response.headers["Location"] = f"/v1/calls/{placed.call_sid}"
    return PlacedCall(call_sid=placed.call_sid, status=placed.status, to=body.to, from_=placed.from_,
                      machine_detection=placed.machine_detection, links=_links(placed.call_sid))


def _links(call_sid: str) -> CallLinks:
    return CallLinks(call=f"/v1/calls/{call_sid}", events=f"/v1/calls/{call_sid}/events",
                     cancel=f"/v1/calls/{call_sid}/cancel")


@router.post("/{call_sid}/cancel", response_model=CancelResult, responses={
    401: {"model": Problem}, 404: {"model": Problem, "description": "Not an outbound call of this API"},
    409: {"model": Problem, "description": "The call was answered (use /hangup) or has ended"},
    502: {"model": Problem},
})
async def cancel_call(call_sid: CallSid, request: Request) -> CancelResult:
    """End an outbound call that is queued or ringing (Twilio's `Status=canceled`)."""
    service = outbound_of(request)
    record = await service.store.find(call_sid)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"call {call_sid} is not an outbound call of this API")
    current = record.get(OField.STATUS, "")
    if current in FINAL:
        raise HTTPException(status.HTTP_409_CONFLICT, f"call {call_sid} has ended ({current})")
    if current == TwilioStatus.IN_PROGRESS:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"call {call_sid} was answered: end it with POST /v1/calls/{call_sid}/hangup")
    if service.api is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no Twilio credentials")
    try:
        call = await service.api.cancel(call_sid)
    except TwilioApiError as exc:
        if exc.code == NOT_IN_PROGRESS:
            raise HTTPException(status.HTTP_409_CONFLICT, f"call {call_sid} has ended") from None
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"Twilio did not cancel the call: {exc.message}") from None
    log.info("outbound call canceled", extra={"call_sid": call_sid})
    return CancelResult(call_sid=call_sid, status=str(call.get("status", "canceled")))
