"""A call's journal (opt-in recording, see switchboard.journal): as JSON lines, and its audio as WAV.

A call is named by its callSid (its current stream; the worker keeps that mapping as long as
the journal) or by a streamSid (e.g. the first stream of a call that moved after an edge loss).

Both are streamed a page of entries at a time: a journal may hold a million entries, and
neither its records nor its audio are ever all in memory. The WAV's header needs the file's
length first, so its journal is read three times (see switchboard.wav), each time only up to
the entry that was last when the request came, so that a call still recording cannot change
the file under way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, HTTPException, Path, status
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError

from switchboard import redis_types, wav
from switchboard.journal import JournalRecord, decode_journal, export_info, header_line, record_to_json

from ..deps import Auth, State, StateDep
from ..models import CALL_SID, Problem

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/calls", dependencies=[Auth], tags=["calls"])
T = TypeVar("T")

CallSid = Annotated[str, Path(pattern=CALL_SID, description="callSid, or streamSid after the call record expired",
                              examples=["CA0123456789abcdef0123456789abcdef"])]
PAGE = 1000
NOT_FOUND = {"model": Problem, "description": "No such call, or it has no journal (journal.enabled was off)"}


async def _stream_sid(state: State, call: str) -> str:
    stream_sid = redis_types.maybe_text(await state.redis.get(state.keys.call_by_callsid(call)))
    if stream_sid is not None and await state.redis.exists(state.keys.journal(stream_sid)):
        return stream_sid
    if await state.redis.exists(state.keys.journal(call)):
        return call
    if stream_sid is not None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"call {call} has no journal: journal.enabled was off for "
                                                       "its settings, or the journal's retention is over")
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"no call or stream {call} with a journal")


async def _pages(state: State, key: str, last: str = "+") -> AsyncIterator[list[tuple[bytes, dict[bytes, bytes]]]]:
    start = "-"
    while True:
        page = redis_types.entries(await state.redis.xrange(key, min=start, max=last, count=PAGE))
        if page:
            yield page
        if len(page) < PAGE:
            return
        start = "(" + page[-1][0].decode()


async def _each_page(state: State, key: str, last: str, use: Callable[[list[JournalRecord]], T]) -> AsyncIterator[T]:
    """`use` applied to each page's records, off the event loop (decoding and mixing cost CPU)."""
    async for page in _pages(state, key, last):
        yield await asyncio.to_thread(_decoded, use, page)


def _decoded(use: Callable[[list[JournalRecord]], T], page: list[tuple[bytes, dict[bytes, bytes]]]) -> T:
    return use(decode_journal(page, strict=False))


async def _info(state: State, call: str, stream_sid: str) -> dict[str, Any]:
    key = state.keys.journal(stream_sid)
    fields = await state.redis.hmget(state.keys.call(stream_sid), ["call_sid", "params"])
    record = {name: redis_types.text(value, errors="replace") for name, value in zip(("call_sid", "params"), fields)
              if value}
    return export_info(call, stream_sid, key, record, await state.redis.xlen(key), await state.redis.ttl(key))


@router.get(
    "/{call_sid}/journal",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/x-ndjson": {"schema": {"type": "string"}}},
              "description": "JSON lines: a header (format, call ids, key, ttl), then one line per record, "
                             "oldest first; audio as base64. The same as `switchboard-journal dump`."},
        401: {"model": Problem},
        404: NOT_FOUND,
    },
)
async def get_journal(call_sid: CallSid, state: StateDep) -> StreamingResponse:
    """The call's journal, for `switchboard-journal replay --file` or `wav --file`."""
    stream_sid = await _stream_sid(state, call_sid)
    info = await _info(state, call_sid, stream_sid)

    async def lines() -> AsyncIterator[bytes]:
        yield header_line(**info)
        async for chunk in _each_page(state, info["key"], "+", _json_lines):
            yield chunk

    filename = f"{info['call_sid'] or stream_sid}.jsonl"
    return StreamingResponse(lines(), media_type="application/x-ndjson",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _json_lines(records: list[JournalRecord]) -> bytes:
    return b"".join(orjson.dumps(record_to_json(record)) + b"\n" for record in records)


@router.get(
    "/{call_sid}/recording.wav",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}},
              "description": "Stereo 8 kHz 16-bit PCM: caller left, agent right, on the call's timeline"},
        401: {"model": Problem},
        404: {"model": Problem, "description": "No such call, no journal, or a journal recorded without audio"},
        409: {"model": Problem, "description": "The journal's timestamps cannot be laid out (a clock jumped)"},
    },
)
async def get_recording(call_sid: CallSid, state: StateDep) -> StreamingResponse:
    """Both audio tracks of a call recorded with `journal.audio` on."""
    stream_sid = await _stream_sid(state, call_sid)
    key = state.keys.journal(stream_sid)
    newest = redis_types.entries(await state.redis.xrevrange(key, count=1))
    if not newest:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no call or stream {call_sid} with a journal")
    last = newest[0][0].decode()
    survey = wav.Survey()
    try:
        async for _ in _each_page(state, key, last, survey.feed):
            pass
        planner = wav.Planner(survey.start_us)
        async for _ in _each_page(state, key, last, planner.feed):
            pass
    except wav.NoAudio:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"the journal of {call_sid} holds no audio: "
                                                       "it was recorded with journal.audio off") from None
    except wav.BadTimeline as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"cannot lay out the audio: {exc}") from None
    mixer = wav.Mixer(planner.plan())

    async def body() -> AsyncIterator[bytes]:
        yield mixer.header()
        try:
            async for chunk in _each_page(state, key, last, mixer.feed):
                if chunk:
                    yield chunk
        except RedisError as exc:
            # The response has started: the client sees a file shorter than its Content-Length.
            log.warning("recording of %s stopped: %r", stream_sid, exc, extra={"stream_sid": stream_sid})
            return
        yield mixer.finish()

    name = call_sid if call_sid != stream_sid else stream_sid
    headers = {"Content-Disposition": f'attachment; filename="{name}.wav"',
               "Content-Length": str(len(mixer.header()) + 4 * mixer.plan.frames)}
    return StreamingResponse(body(), media_type="audio/wav", headers=headers)
