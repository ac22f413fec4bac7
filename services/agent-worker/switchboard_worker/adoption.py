"""A new stream of a call continues the conversation of the stream it replaces (after an edge loss).

The transcript moves to the new stream's events (context for Deepgram and the call's history),
live changes carry over, an utterance the caller was in the middle of is heard first, and the
old stream's session, if a worker still holds it, is told to stop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import orjson

from switchboard import entries, redis_types
from switchboard import keys as keyspace
from switchboard.entries import Kind
from switchboard.messages import CallField

from .port import WorkerPort

log = logging.getLogger(__name__)

CARRIED_EVENTS = frozenset({"transcript", "function_call"})  # what a new stream adopts from the one it replaces


@dataclass(slots=True)
class Adopted:
    overrides: bytes | None = None  # the old stream's live prompt/voice changes (JSON)
    audio: list[bytes] = field(default_factory=list)  # an utterance cut by the drop, to be heard first


async def adopt(port: WorkerPort, call_sid: str, old_stream_sid: str, new_events_key: str,
                max_audio_bytes: int) -> Adopted | None:
    """None: the old stream belongs to another call, and nothing is adopted."""
    keys, redis = port.keys, port.redis
    old_call_sid, overrides, utterance_at, answered = await redis.hmget(
        keys.call(old_stream_sid),
        [CallField.CALL_SID, CallField.OVERRIDES, CallField.UTT_POS, CallField.UTT_ANSWERED],
    )
    if old_call_sid is not None and redis_types.text(old_call_sid) != call_sid:
        return None  # defence in depth: the edge resumes only a stream of the same call
    adopted = Adopted(overrides=redis_types.maybe_bytes(overrides) or None)
    if utterance_at and utterance_at != answered:
        # The caller was mid-utterance when the stream dropped: the new session hears it first.
        buffered = 0
        caller_audio = await redis.xrange(keys.caller_audio(old_stream_sid), min=utterance_at)
        for _entry_id, fields in redis_types.entries(caller_audio):
            if fields.get(b"k") == Kind.AUDIO.value and buffered < max_audio_bytes:
                adopted.audio.append(fields[b"p"])
                buffered += len(fields[b"p"])
    old_events = redis_types.entries(
        await redis.xrange(keys.events(old_stream_sid), count=keyspace.EVENTS_STREAM_MAXLEN))
    pipe = redis.pipeline(transaction=False)
    for _entry_id, fields in old_events:
        event = orjson.loads(fields.get(b"p", b"{}"))
        if event.get("type") in CARRIED_EVENTS:
            pipe.xadd(new_events_key, redis_types.writable(fields), maxlen=keyspace.EVENTS_STREAM_MAXLEN,
                      approximate=True)
    pipe.xadd(keys.caller_audio(old_stream_sid), redis_types.writable(entries.stop("moved_to_new_stream").fields()),
              maxlen=keyspace.AUDIO_STREAM_MAXLEN, approximate=True)
    await pipe.execute()
    return adopted
