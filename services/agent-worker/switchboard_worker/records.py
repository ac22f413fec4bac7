"""A call's records in Redis: its events so far, and its end (how it ended, its keys expire, its
dispatch entry goes)."""

from __future__ import annotations

import time
from typing import Any

import orjson

from switchboard import call_ended, ended_calls, redis_types
from switchboard import keys as keyspace
from switchboard.agent_settings import Journal
from switchboard.messages import CallField, RecordState

from .port import WorkerPort


async def end_call(port: WorkerPort, *, stream_sid: str, call_sid: str, dispatch_id: bytes, outcome: str,
                   stop_reason: str, journal: Journal) -> None:
    keys, retention = port.keys, port.settings.call_retention_s
    call_key, journal_key = keys.call(stream_sid), keys.journal(stream_sid)
    ended_at = time.time()
    pipe = port.redis.pipeline(transaction=False)
    pipe.hset(call_key, mapping={CallField.STATE: RecordState.ENDED, CallField.ENDED_AT: repr(ended_at),
                                 CallField.OUTCOME: outcome, CallField.END_REASON: stop_reason})
    for key in keys.per_call(stream_sid):
        pipe.expire(key, journal.retention_s if journal.enabled and key == journal_key else retention)
    if stop_reason != "moved_to_new_stream":  # the callSid now names the new stream
        # A journal kept longer than the call record stays findable by its callSid.
        lookup_s = max(retention, journal.retention_s) if journal.enabled else retention
        pipe.expire(keys.call_by_callsid(call_sid), lookup_s)
        ended_calls.add(pipe, keys, stream_sid, ended_at, retention)  # listed and searchable within retention
        # call.ended for the team's systems, delivered by the control API (it checks the call is really over).
        call_ended.enqueue(pipe, call_ended.OutboxKeys(keys.prefix), call_sid=call_sid, stream_sid=stream_sid,
                           ended_at=ended_at, reason=stop_reason, outcome=outcome)
    pipe.delete(keys.lease(stream_sid))
    pipe.zrem(keys.live_calls(), stream_sid)
    pipe.xack(keys.dispatch(), keyspace.DISPATCH_GROUP, dispatch_id)
    pipe.xdel(keys.dispatch(), dispatch_id)
    await pipe.execute()
    for key in keys.per_call(stream_sid):
        port.writer.forget(key)


async def events(port: WorkerPort, events_key: str) -> list[dict[str, Any]]:
    """The call's recorded events, oldest first (unreadable entries skipped)."""
    raw = redis_types.entries(await port.redis.xrange(events_key, count=keyspace.EVENTS_STREAM_MAXLEN))
    out = []
    for _entry_id, fields in raw:
        try:
            event = orjson.loads(fields.get(b"p", b"{}"))
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return out
