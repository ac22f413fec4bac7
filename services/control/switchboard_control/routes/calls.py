"""Calls: the live list, one call's detail and transcript, its live event stream, and commands.

Commands go to whichever worker owns the call, through the call's command stream, and the
answer says whether that worker applied it: 200 applied or refused (`applied` false, with the
reason), 404 unknown call, 409 ended call, 504 no acknowledgement in time.
`?wait=false` returns 202 at once without waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError

from switchboard import messages, redis_types, settings_store
from switchboard.agent_settings import Speak
from switchboard.settings_secrets import MASK, MaskedSecretError, restore_secrets

from .. import callstate, commander, refusals
from ..deps import Auth, State, StateDep
from ..models import CALL_SID, PROFILE_NAME, CallDetail, CallList, CommandResult, Problem
from ..outbound import sse as outbound_sse
from ..outbound import views as outbound_views
from ..sse_slots import SlotStreamingResponse, client_key
from . import ended as ended_routes

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/calls", dependencies=[Auth], tags=["calls"])

CallSid = Annotated[str, Path(pattern=CALL_SID, examples=["CA0123456789abcdef0123456789abcdef"])]
Wait = Annotated[bool, Query(description="Wait for the owner's acknowledgement (false: 202 at once)")]
COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": CommandResult, "description": "Sent, not waited for (?wait=false)"},
    401: {"model": Problem},
    404: {"model": Problem, "description": "Unknown call"},
    409: {"model": Problem, "description": "The call has ended"},
    504: {"model": Problem, "description": "No acknowledgement in time; the command expires unapplied"},
}
SSE_RETRY_AFTER_S = 5
# The event types the live stream sends by default (a timeline, not every mark).
SSE_EVENT_TYPES = "transcript,barge_in,function_call,error,warning,prompt_updated,speak_updated,injection_refused,"\
    "agent_started_speaking,agent_audio_done,dtmf,hangup_requested,command_result,deepgram_connected,call_ended,"\
    "reply_heard,turn_latency,dead_air,dtmf_entry,transfer,precall"


@router.get("", response_model=CallList | ended_routes.EndedCallList, responses={401: {"model": Problem}})
async def list_calls(
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ended: Annotated[bool, Query(description="Ended calls within retention instead, newest first "
                                 "(as GET /v1/calls/ended, whose filters follow)")] = False,
    since: Annotated[float | None, Query(ge=0, le=1e11, description="ended=true: ended at or after (Unix s)")] = None,
    until: Annotated[float | None, Query(ge=0, le=1e11, description="ended=true: ended at or before")] = None,
    outcome: Annotated[str | None, Query(pattern=r"^[a-z0-9_]{1,64}$", description="ended=true")] = None,
    profile: Annotated[str | None, Query(pattern=PROFILE_NAME, description="ended=true")] = None,
    direction: Annotated[Literal["inbound", "outbound"] | None, Query(description="ended=true")] = None,
    before: Annotated[float | None, Query(ge=0, le=1e11, description="ended=true: the next page's cursor")] = None,
) -> CallList | ended_routes.EndedCallList:
    """Calls not yet ended, oldest first; with `ended=true`, ended calls filtered by time, outcome,
    profile and direction, newest first (`limit` up to 500, `before` = the previous page's `next_before`)."""
    if ended:
        return await ended_routes.list_ended_calls(state, since=since, until=until, outcome=outcome, profile=profile,
                                                   direction=direction, number=None, before=before,
                                                   limit=min(limit, 500))
    calls, total = await callstate.live_calls(state, limit, offset)
    calls, total = await outbound_views.listed(state, calls, total, limit, offset)  # outbound: from `queued` on
    return CallList(calls=calls, total=total)


@router.get("/{call_sid}", response_model=CallDetail, responses={401: {"model": Problem}, 404: {"model": Problem}})
async def get_call(call_sid: CallSid, state: StateDep) -> CallDetail:
    """One call with its transcript; ended calls stay readable for CALL_RETENTION_S."""
    record = await callstate.find(state, call_sid)
    if record is None:
        return await outbound_views.detail(state, call_sid)  # an outbound call not answered (yet), or 404
    return await outbound_views.decorate(state, await callstate.detail(state, record))


@router.get(
    "/{call_sid}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
              "description": "Server-sent events: `id` = stream entry id, `event` = type, `data` = JSON"},
        401: {"model": Problem},
        404: {"model": Problem},
        429: {"model": Problem, "description": "Too many open event streams (per token or in all); see Retry-After"},
    },
)
async def call_events(
    call_sid: CallSid,
    request: Request,
    state: StateDep,
    types: Annotated[
        str, Query(pattern=r"^[a-z_,]{1,400}$", description="Comma-separated event types, or 'all'")
    ] = SSE_EVENT_TYPES,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", pattern=r"^[0-9]{1,20}-[0-9]{1,20}$")] = None,
) -> StreamingResponse:
    """The call's events as they happen: history first (from `Last-Event-ID` if given), then live,
    until `call_ended`. Each replica serves at most CONTROL_SSE_MAX_PER_TOKEN streams per token
    and CONTROL_SSE_MAX_TOTAL in all; over that the answer is 429 with Retry-After."""
    wanted = None if types == "all" else frozenset(types.split(","))
    if (ref := await outbound_sse.ref_of(state, call_sid)) is not None:  # lifecycle + media stream, queued on
        return outbound_sse.respond(state, request, call_sid, ref, wanted, last_event_id)
    record = await callstate.require(state, call_sid)
    slot = state.sse.take(client_key(request.headers.get("authorization")))
    if slot is None:
        refusals.count("sse_limit", "too many live-event streams", call_sid=call_sid, open=state.sse.open)
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many open event streams: close one, or retry later",
                            headers={"Retry-After": str(SSE_RETRY_AFTER_S)})
    stream = _sse(state, request, record, last_event_id or "0-0", wanted)
    return SlotStreamingResponse(
        stream, slot, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def _sse(
    state: State, request: Request, record: callstate.CallRecord, position: str, wanted: frozenset[str] | None
) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    try:
        async for chunk in _follow(state, request, record, position, wanted):
            yield chunk
    except RedisError as exc:
        # The response has started: no status to change any more. End the stream; the client
        # reconnects with Last-Event-ID and continues where it was.
        log.warning("event stream of %s stopped: %r", record.stream_sid, exc)


async def _follow(
    state: State, request: Request, record: callstate.CallRecord, position: str, wanted: frozenset[str] | None
) -> AsyncIterator[bytes]:
    stream_sid = record.stream_sid
    key = state.keys.events(stream_sid)
    block_ms = int(state.settings.sse_keepalive_s * 1000)
    skipping = False  # in a new stream, the conversation copied over from the old one
    while True:
        # One client here and one connection for it from the blocking pool; XREAD from 0-0 replays
        # the history in pages before it starts to block.
        response = await state.redis_block.xread({key: position}, count=500, block=block_ms)
        if not response:
            if await request.is_disconnected():
                return
            if not await state.redis.exists(state.keys.call(stream_sid)):
                return  # retention is over: nothing more will come
            yield b": keepalive\n\n"
            continue
        moved_to = None
        for _key, items in redis_types.streams(response):
            for entry_id, fields in items:
                position = entry_id.decode()
                event = callstate.decode_event(fields)
                if event is None:
                    continue
                if skipping:
                    skipping = event["type"] != "resumed_from_stream"
                    continue
                if event["type"] == "call_ended" and event.get("reason") == "moved_to_new_stream":
                    # The edge was lost and the call went on as a new stream: follow it there.
                    moved_to = await _current_stream(state, record.call_sid, stream_sid)
                    if moved_to is not None:
                        event = {"type": "stream_moved", "from": stream_sid, "to": moved_to, "ts": event.get("ts")}
                if wanted is not None and event["type"] not in wanted | _ALWAYS_SENT:
                    continue
                yield b"id: %s\nevent: %s\ndata: %s\n\n" % (
                    entry_id, event["type"].encode(), orjson.dumps(event)
                )
                if event["type"] == "call_ended" and event.get("outcome") != messages.Outcome.TRANSFERRING:
                    return  # (a warm transfer's agent stream goes on: its steps, then the real end)
                if moved_to is not None:
                    break
        if moved_to is not None:
            stream_sid, key, position, skipping = moved_to, state.keys.events(moved_to), "0-0", True
        await asyncio.sleep(0)  # a long history must not hog the loop


# Sent whatever `types` asks for: the end of the call, and the switch to a new stream.
_ALWAYS_SENT = frozenset({"call_ended", "stream_moved"})


async def _current_stream(state: State, call_sid: str, old_stream_sid: str) -> str | None:
    current = redis_types.maybe_text(await state.redis.get(state.keys.call_by_callsid(call_sid)))
    if current is None or current == old_stream_sid:
        return None
    return current


async def _run(state: State, call_sid: str, command: messages.Command, wait: bool, response: Response) -> CommandResult:
    record = await callstate.require(state, call_sid, live=True)
    return await send_command(state, record, command, wait, response)


async def send_command(state: State, record: callstate.CallRecord, command: messages.Command, wait: bool,
                       response: Response) -> CommandResult:
    """Send a live command to the call's owner: 202 unless waited for, 504 when no worker acknowledges it."""
    try:
        result = await commander.send(state, record, command, wait=wait)
    except commander.CommandTimeout as exc:
        detail = commander.timeout_response_detail(state, exc.command_id)
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, detail) from None
    if not wait:
        response.status_code = status.HTTP_202_ACCEPTED
    return result


@router.post("/{call_sid}/say", response_model=CommandResult, responses=COMMAND_RESPONSES)
async def say(call_sid: CallSid, body: messages.Say, state: StateDep, response: Response,
              wait: Wait = True) -> CommandResult:
    """The agent says this text (Deepgram `InjectAgentMessage`)."""
    return await _run(state, call_sid, body, wait, response)


@router.post("/{call_sid}/user-message", response_model=CommandResult, responses=COMMAND_RESPONSES)
async def user_message(
    call_sid: CallSid, body: messages.InjectUser, state: StateDep, response: Response, wait: Wait = True
) -> CommandResult:
    """The agent hears this text as if the caller had said it (Deepgram `InjectUserMessage`)."""
    return await _run(state, call_sid, body, wait, response)


@router.post("/{call_sid}/hangup", response_model=CommandResult, responses=COMMAND_RESPONSES)
async def hangup(
    call_sid: CallSid, state: StateDep, response: Response, body: messages.Hangup | None = None, wait: Wait = True
) -> CommandResult:
    """End the call, at once or after the agent's current reply (`after_reply`)."""
    return await _run(state, call_sid, body or messages.Hangup(), wait, response)


@router.post("/{call_sid}/prompt", response_model=CommandResult, responses=COMMAND_RESPONSES)
async def update_prompt(
    call_sid: CallSid, body: messages.UpdatePrompt, state: StateDep, response: Response, wait: Wait = True
) -> CommandResult:
    """Change the running call's prompt (Deepgram `UpdatePrompt`); the call's stored settings stay."""
    return await _run(state, call_sid, body, wait, response)


@router.post("/{call_sid}/voice", response_model=CommandResult, responses=COMMAND_RESPONSES)
async def update_voice(
    call_sid: CallSid, body: messages.UpdateSpeak, state: StateDep, response: Response, wait: Wait = True
) -> CommandResult:
    """Change the running call's voice (Deepgram `UpdateSpeak`); "***" keeps the call's stored secrets."""
    speak = callstate.speak_payload(body.speak)
    if MASK in orjson.dumps(speak).decode():
        record = await callstate.require(state, call_sid, live=True)
        profile = record.fields.get("profile") or None
        current = await settings_store.resolve(state.redis, state.keys, call_sid, profile)
        try:
            stored = {"speak": callstate.speak_payload(current.settings.speak)}
            speak = restore_secrets({"speak": speak}, stored)["speak"]
        except MaskedSecretError as exc:
            problem = {"loc": ("body", "speak"), "msg": str(exc), "type": "masked_secret"}
            raise RequestValidationError([problem]) from None
    return await _run(state, call_sid, messages.UpdateSpeak(speak=Speak.model_validate(speak)), wait, response)
