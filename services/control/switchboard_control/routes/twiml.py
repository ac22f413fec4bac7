"""Twilio's voice webhook: a signed form POST answered with `<Connect><Stream>` to the edge.

The stream gets the profile and the caller's data as `<Parameter>`s (Twilio does not put
From/To into the stream's `start` message). After `</Connect>` comes a `<Redirect>` to
`/twiml/continue`: Twilio runs it when the stream cannot be opened or closes.

Admission control (CONTROL_ADMISSION): a new call is connected only if the fleet has a free
slot, which it then reserves until the stream starts (switchboard.capacity). Otherwise the
caller hears the busy message and Twilio hangs up (`reject`), or hears the hold message,
pauses and comes back to `/twiml?queued=N` until a slot frees, first come first served, or
CONTROL_ADMISSION_MAX_WAIT_S has passed (`queue`). A dropped stream of a call in progress is
reconnected without a capacity check: its old session holds a slot that frees within
CALLER_TIMEOUT_S, and turning it away would cut a conversation short.
"""

from __future__ import annotations

import logging
import math
import secrets
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from switchboard import capacity, signature
from switchboard.messages import CallField, Outcome

from .. import callstate, metrics, stream_grants
from ..deps import State, StateDep
from ..models import PROFILE_NAME, Problem
from ..settings import ControlSettings
from ..twiml_documents import (
    CALLER_FIELDS,
    busy,
    caller_parameters,
    continue_url,
    form_value,
    goodbye,
    hold,
    public_base,
    render,
    signed_url,
)

router = APIRouter(tags=["twilio"])
log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024

_FORM_SCHEMA = {
    "type": "object",
    "properties": {name: {"type": "string", "maxLength": 200} for name in ("AccountSid", *CALLER_FIELDS)},
    "example": {"AccountSid": "AC0123", "CallSid": "CA0123", "From": "+14155550100", "To": "+14155550199"},
}


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/xml": {"schema": {"type": "string"}}}, "description": "TwiML"},
    403: {"model": Problem, "description": "Missing or invalid X-Twilio-Signature"},
    413: {"model": Problem},
    503: {"model": Problem, "description": "TWILIO_AUTH_TOKEN is not configured"},
}
_FORM_BODY = {
    "requestBody": {"required": False, "content": {"application/x-www-form-urlencoded": {"schema": _FORM_SCHEMA}}}
}
ProfileQuery = Annotated[str | None, Query(pattern=PROFILE_NAME, description="Agent profile of this number")]
MAX_RECONNECTS = 3  # per call, after its stream dropped
QueuedQuery = Annotated[int, Query(ge=0, le=10_000, description="Looks for a free slot so far while on hold")]


@router.post("/twiml", response_class=Response, openapi_extra=_FORM_BODY, responses=_RESPONSES)
async def twiml(request: Request, state: StateDep, profile: ProfileQuery = None, queued: QueuedQuery = 0) -> Response:
    """Twilio voice webhook (POST, form-encoded, signed by Twilio; no bearer token).

    With no free slot in the fleet the answer is the busy message and `<Hangup/>`, or in
    queue mode the hold message, a `<Pause>` and a `<Redirect>` back here (`queued=N`).
    """
    form = await _verified_form(request, state.settings)
    held = await _admission(state, request, form, profile, queued)
    if held is not None:
        return _xml(held)
    parameters = caller_parameters(form, profile)
    await stream_grants.issue(state, form, parameters, step="twiml")
    return _xml(render(state.settings, parameters, continue_url(state.settings, request, profile, 1)))


@router.post("/twiml/continue", response_class=Response, openapi_extra=_FORM_BODY, responses=_RESPONSES)
async def twiml_continue(
    request: Request,
    state: StateDep,
    profile: ProfileQuery = None,
    attempt: Annotated[int, Query(ge=1, le=100, description="Reconnects so far")] = 1,
) -> Response:
    """Where Twilio goes when a call's stream has closed (the `<Redirect>` after `</Connect>`).

    A call Switchboard ended on purpose hangs up (with an apology if the agent failed); a
    stream that dropped (its edge died or was restarted) is reconnected to a healthy edge as a
    new stream of the same call, and the worker carries the conversation over.
    """
    settings = state.settings
    form = await _verified_form(request, settings)
    call_sid = form_value(form, "CallSid")
    record = await callstate.find(state, call_sid) if call_sid else None
    if record is not None and record.fields.get(CallField.HANGUP_REQUESTED):
        reason = record.fields[CallField.HANGUP_REQUESTED]
        metrics.TWIML.labels("hangup").inc()
        return _xml(goodbye(settings, apologise=reason.startswith("deepgram")))
    if attempt > MAX_RECONNECTS:
        metrics.TWIML.labels("gave_up").inc()
        log.warning("stream kept failing; ending the call", extra={"call_sid": call_sid[:64]})
        return _xml(goodbye(settings, apologise=True))
    if record is None or record.fields.get(CallField.OUTCOME) == Outcome.NO_CAPACITY:
        # The stream never reached a worker (refused for want of a slot, or never started):
        # admitted like a new call.
        held = await _admission(state, request, form, profile, 0)
        if held is not None:
            return _xml(held)
    parameters = caller_parameters(form, profile or (record.fields.get(CallField.PROFILE) if record else None))
    resume_of = None
    if record is not None and record.fields.get(CallField.OUTCOME) != Outcome.NO_CAPACITY:
        resume_of = record.stream_sid
        if state.settings.control_admission != "off":
            metrics.ADMISSIONS.labels("reconnect_admitted").inc()
    await stream_grants.issue(state, form, parameters, step=f"continue:{attempt}", resume_of=resume_of)
    metrics.TWIML.labels("reconnect").inc()
    log.info("reconnecting a dropped stream", extra={"call_sid": call_sid[:64], "attempt": attempt,
                                                      "stream_sid": record.stream_sid if record else ""})
    return _xml(render(settings, parameters, continue_url(settings, request, profile, attempt + 1)))


async def _verified_form(request: Request, settings: ControlSettings) -> dict[str, list[str]]:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, "request body too large")
    form = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    if settings.twilio_auth_token is None:
        if not (settings.control_insecure_no_auth or settings.control_insecure_twiml):
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "TWILIO_AUTH_TOKEN is not configured")
    elif not signature.is_valid(
        settings.twilio_auth_token.get_secret_value(),
        signed_url(settings, request),
        request.headers.get("X-Twilio-Signature"),
        form,
    ):
        metrics.TWIML.labels("bad_signature").inc()
        log.warning("TwiML request with a bad signature", extra={"call_sid": form_value(form, "CallSid")[:64]})
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid X-Twilio-Signature")
    metrics.TWIML.labels("ok").inc()
    return form


async def _admission(
    state: State, request: Request, form: dict[str, list[str]], profile: str | None, queued: int
) -> bytes | None:
    """None: connect the call now (a slot is reserved for it). Else the TwiML that holds or turns it away."""
    settings = state.settings
    mode = settings.control_admission
    if mode == "off":
        return None
    call_sid = form_value(form, "CallSid")[:64] or f"anonymous-{secrets.token_hex(8)}"
    view, _ = await capacity.read(state.redis, state.keys)
    ticket = await capacity.admit(state.redis, state.keys, call_sid, view.unreserved_free, queue=mode == "queue",
                                  stale_ms=_hold_stale_ms(settings))
    metrics.FLEET_FREE.set(max(0, ticket.available - int(ticket.admitted)))
    metrics.ADMISSION_QUEUE.set(ticket.queue_length)
    ids = {"call_sid": call_sid, "queued": queued, "fleet_free": ticket.available, "fleet_capacity": view.capacity}
    if ticket.admitted:
        if queued:
            metrics.ADMISSIONS.labels("dequeued").inc()
            metrics.QUEUE_WAIT.observe(ticket.waited_ms / 1000)
            log.info("call on hold got a free slot", extra={**ids, "waited_ms": ticket.waited_ms})
        else:
            metrics.ADMISSIONS.labels("admitted").inc()
        return None
    if mode == "queue" and ticket.waited_ms < settings.control_admission_max_wait_s * 1000 \
            and queued < _max_polls(settings):
        if not queued:
            metrics.ADMISSIONS.labels("queued").inc()
            log.info("no free slot: call on hold", extra={**ids, "ahead": ticket.ahead})
        return hold(settings, _retry_url(settings, request, profile, queued + 1))
    if queued or mode == "queue":
        await capacity.leave_queue(state.redis, state.keys, call_sid)
    outcome = "queue_timeout" if mode == "queue" else "rejected"
    metrics.ADMISSIONS.labels(outcome).inc()
    log.warning("no free slot: busy message and hang-up", extra={**ids, "outcome": outcome,
                                                                  "waited_ms": ticket.waited_ms})
    return busy(settings)


def _hold_stale_ms(settings: ControlSettings) -> int:
    # A caller on hold comes back after the hold message (Twilio speaks roughly 15
    # characters a second) and the pause; one who misses that by far has hung up and must
    # not keep the callers behind it waiting.
    say_s = len(settings.control_admission_hold_say) / 10
    return int((settings.control_admission_hold_pause_s + say_s + 15) * 1000)


def _max_polls(settings: ControlSettings) -> int:
    # Bounds the hold even if Redis lost the queue (and with it the time already waited).
    return math.ceil(settings.control_admission_max_wait_s / settings.control_admission_hold_pause_s) + 2


def _retry_url(settings: ControlSettings, request: Request, profile: str | None, queued: int) -> str:
    base = public_base(settings, request)
    query = urlencode({**({"profile": profile} if profile else {}), "queued": queued})
    return f"{base}/twiml?{query}"


def _xml(document: bytes) -> Response:
    return Response(document, media_type="application/xml")

