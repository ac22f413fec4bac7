"""Live events of an outbound call (SSE), from the moment it is queued to its final status.

Two streams make up the call: its lifecycle as control heard it from Twilio (queued, ringing,
in-progress, the AMD verdict, completed…, on the outbound record's events stream) and, once it
is answered, its media stream's events (transcript, the AMD decision, barge-ins…). They are
followed with one blocking XREAD over both and sent in the order Redis stamped them; the
stream is looked for (every 250 ms while the call is answered but its stream has not started)
and followed from its first event. The SSE ends with the call's final status. A reconnecting
client's `Last-Event-ID` is a Redis id, a time: both streams resume after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import HTTPException, Request, status
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError

from switchboard.messages import Event
from switchboard.outbound import OutboundKeys

from .. import refusals
from ..callstate import decode_event
from ..deps import State
from ..sse_slots import SlotStreamingResponse, client_key
from .store import text

SEARCH_MS = 250
RETRY_AFTER_S = 5
# Sent whatever `types` asks for: the lifecycle of the call is what this stream is for.
ALWAYS = frozenset({Event.OUTBOUND_STATUS, Event.AMD_VERDICT, Event.AMD_DECISION, Event.CALL_ENDED,
                    Event.STREAM_MOVED})


async def ref_of(state: State, call_sid: str) -> str | None:
    ref = await state.redis.get(OutboundKeys(state.keys.prefix).by_callsid(call_sid))
    return text(ref) if ref is not None else None


def respond(state: State, request: Request, call_sid: str, ref: str, wanted: frozenset[str] | None,
            last_event_id: str | None) -> StreamingResponse:
    slot = state.sse.take(client_key(request.headers.get("authorization")))
    if slot is None:
        refusals.count("sse_limit", "too many live-event streams", call_sid=call_sid, open=state.sse.open)
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many open event streams: close one, or retry later",
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    return SlotStreamingResponse(_sse(state, request, call_sid, ref, last_event_id or "0-0", wanted), slot,
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(state: State, request: Request, call_sid: str, ref: str, position: str,
               wanted: frozenset[str] | None) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    try:
        async for chunk in _follow(state, request, call_sid, ref, position, wanted):
            yield chunk
    except RedisError:
        return  # the client reconnects with Last-Event-ID


def _order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


async def _follow(state: State, request: Request, call_sid: str, ref: str, position: str,
                  wanted: frozenset[str] | None) -> AsyncIterator[bytes]:
    okeys = OutboundKeys(state.keys.prefix)
    lifecycle = okeys.events(ref)
    positions: dict[Any, Any] = {lifecycle: position}
    stream_key: str | None = None
    answered = False
    keepalive_ms = int(state.settings.sse_keepalive_s * 1000)
    while True:
        if stream_key is None and answered:
            stream_sid = await state.redis.get(state.keys.call_by_callsid(call_sid))
            if stream_sid is not None:
                stream_key = state.keys.events(text(stream_sid))
                positions[stream_key] = position
        searching = answered and stream_key is None
        response = await state.redis_block.xread(positions, count=500, block=SEARCH_MS if searching else keepalive_ms)
        if not response:
            if await request.is_disconnected() or not await state.redis.exists(okeys.call(ref)):
                return
            if not searching:
                yield b": keepalive\n\n"
            continue
        reply: list[Any] = response  # type: ignore[assignment]  # RESP2 replies: a list of [key, entries]
        entries: list[tuple[bytes, str, dict[bytes, bytes]]] = [
            (entry_id, text(key), fields) for key, items in reply for entry_id, fields in items]
        batch = sorted(entries, key=lambda item: _order(item[0]))
        for entry_id, key, fields in batch:
            positions[key] = entry_id
            event = decode_event(fields)
            if event is None:
                continue
            if key == lifecycle and event["type"] == Event.OUTBOUND_STATUS and event.get("status") in (
                    "connecting", "in-progress"):
                answered = True
            if event["type"] == Event.CALL_ENDED and event.get("reason") == "moved_to_new_stream":
                # The edge was lost and the call went on as a new stream: follow that one.
                moved = await _moved(state, call_sid, key)
                if moved is not None:
                    positions.pop(key, None)
                    stream_key = state.keys.events(moved)
                    positions[stream_key] = "0-0"
                    event = {"type": Event.STREAM_MOVED, "to": moved, "ts": event.get("ts")}
            if wanted is None or event["type"] in wanted | ALWAYS:
                yield _frame(entry_id, event)
            if key == lifecycle and event["type"] == Event.OUTBOUND_STATUS and event.get("final"):
                return
        await asyncio.sleep(0)


async def _moved(state: State, call_sid: str, old_key: str) -> str | None:
    current = await state.redis.get(state.keys.call_by_callsid(call_sid))
    if current is None or state.keys.events(text(current)) == old_key:
        return None
    return text(current)


def _frame(entry_id: bytes, event: dict[str, Any]) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (entry_id, str(event["type"]).encode(), orjson.dumps(event))
