"""Outbound call records in Redis (control's side): create, bind to a callSid, apply Twilio's
status callbacks in order, record the AMD verdict, end.

Every change that a client following the call should see is also appended to the record's own
events stream (`OutboundKeys.events`): the call's lifecycle exists before its media stream does.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as redis

from switchboard import outbound
from switchboard.keys import Keys
from switchboard.messages import CallField, Event
from switchboard.outbound import OField, OutboundKeys

# KEYS[1] record; ARGV[1] status, ARGV[2] its rank, ARGV[3..] field, value pairs to set with it.
# Returns {1, previous status} when the status moved on, {0, current} for a stale or repeated
# callback, {-1, ""} when there is no such record.
_APPLY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, ''} end
local current = redis.call('HGET', KEYS[1], 'status') or ''
local rank = tonumber(redis.call('HGET', KEYS[1], 'status_rank') or '-1')
if tonumber(ARGV[2]) <= rank then return {0, current} end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'status_rank', ARGV[2], unpack(ARGV, 3))
return {1, current}
"""


@dataclass(frozen=True, slots=True)
class Moved:
    previous: str
    status: str
    fields: dict[str, str]  # the record after the change


def text(value: Any) -> str:
    """A Redis reply as text (the clients answer bytes)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def fields_of(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


class OutboundStore:
    def __init__(self, client: redis.Redis, keys: Keys, retention_s: int) -> None:
        self.redis = client
        self.keys = keys
        self.okeys = OutboundKeys(keys.prefix)
        self.retention_s = retention_s

    async def create(self, ref: str, fields: Mapping[Any, str]) -> None:
        now = time.time()
        record: dict[Any, Any] = {**fields, OField.REF: ref, OField.STATUS: outbound.TwilioStatus.QUEUED,
                  OField.STATUS_RANK: "0", OField.CREATED_AT: repr(now), OField.UPDATED_AT: repr(now)}
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.okeys.call(ref), mapping=record)
        pipe.expire(self.okeys.call(ref), outbound.RECORD_TTL_S)
        pipe.zadd(self.okeys.pending(), {ref: int(now * 1000)})
        self._event(pipe, ref, {"type": Event.OUTBOUND_STATUS, "status": "queued", "to": fields.get(OField.TO)})
        await pipe.execute()

    async def get(self, ref: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self.okeys.call(ref))
        return fields_of(raw) if raw else None

    async def ref_of(self, call_sid: str) -> str | None:
        ref = await self.redis.get(self.okeys.by_callsid(call_sid))
        return text(ref) if ref is not None else None

    async def find(self, call_sid: str) -> dict[str, str] | None:
        ref = await self.ref_of(call_sid)
        return await self.get(ref) if ref else None

    async def bind(self, ref: str, call_sid: str) -> bool:
        """The callSid Twilio gave the call (from its answer or its first callback): True the first time."""
        first = bool(await self.redis.hsetnx(self.okeys.call(ref), OField.CALL_SID, call_sid))
        await self.redis.set(self.okeys.by_callsid(call_sid), ref, ex=outbound.BY_CALLSID_TTL_S)
        return first

    async def apply_status(self, ref: str, status: str, extra: dict[str, str]) -> Moved | None:
        """Twilio's status for the call, unless the record is already past it (None then)."""
        if outbound.rank(status) < 0:
            return None
        pairs: list[str] = [OField.UPDATED_AT, repr(time.time())]
        for name, value in extra.items():
            pairs += [name, value]
        moved, previous = await self.redis.eval(_APPLY, 1, self.okeys.call(ref), status, outbound.rank(status),
                                                *pairs)
        if int(moved) != 1:
            return None
        fields = await self.get(ref) or {}
        await self.event(ref, {"type": Event.OUTBOUND_STATUS, "status": status,
                               "final": status in outbound.FINAL})
        return Moved(text(previous), status, fields)

    async def set_amd(self, ref: str, answered_by: str, detection_ms: int | None) -> bool:
        """Twilio's verdict (the first one only: True if this was it)."""
        key = self.okeys.call(ref)
        if not await self.redis.hsetnx(key, OField.ANSWERED_BY, answered_by):
            return False
        if detection_ms is not None:
            await self.redis.hset(key, OField.AMD_MS, str(detection_ms))
        await self.event(ref, {"type": Event.AMD_VERDICT, "answered_by": answered_by, "detection_ms": detection_ms})
        return True

    async def end(self, ref: str, outcome: str, extra: dict[str, str] | None = None) -> None:
        """The call is over (outcome set once): it leaves the pending list and expires after the retention."""
        key = self.okeys.call(ref)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(key, OField.OUTCOME, outcome)
        ended: dict[Any, Any] = {OField.ENDED_AT: repr(time.time()), **(extra or {})}
        pipe.hset(key, mapping=ended)
        pipe.zrem(self.okeys.pending(), ref)
        pipe.expire(key, self.retention_s)
        pipe.expire(self.okeys.events(ref), self.retention_s)
        await pipe.execute()

    async def fail(self, ref: str, error: str) -> None:
        """Twilio never took the call: ended as `error`, with why."""
        await self.redis.hset(self.okeys.call(ref), mapping={OField.STATUS: outbound.TwilioStatus.FAILED,
                                                             OField.STATUS_RANK: "4", OField.ERROR: error[:500]})
        await self.end(ref, "error")
        await self.event(ref, {"type": Event.OUTBOUND_STATUS, "status": "failed", "final": True, "error": error[:500]})

    async def event(self, ref: str, event: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self._event(pipe, ref, event)
        await pipe.execute()

    def _event(self, pipe: Any, ref: str, event: dict[str, Any]) -> None:
        event = {**event, "ts": round(time.time(), 3)}
        pipe.xadd(self.okeys.events(ref), {"k": b"e", "p": orjson.dumps(event)}, maxlen=outbound.EVENTS_MAXLEN,
                  approximate=True)
        pipe.expire(self.okeys.events(ref), outbound.RECORD_TTL_S)

    # --- the call's media stream, as the edge and the worker recorded it ------------------------------
    async def stream_of(self, call_sid: str) -> str | None:
        sid = await self.redis.get(self.keys.call_by_callsid(call_sid))
        return text(sid) if sid is not None else None

    async def stream_outcome(self, call_sid: str) -> str | None:
        """How Switchboard ended the call's stream (`voicemail` after a machine…), if it did."""
        stream_sid = await self.stream_of(call_sid)
        if stream_sid is None:
            return None
        value = await self.redis.hget(self.keys.call(stream_sid), CallField.OUTCOME)
        return text(value) if value else None

    async def stream_amd(self, call_sid: str) -> tuple[str | None, int | None]:
        """(action, waited ms) of the call's answering-machine decision, as the worker recorded it."""
        stream_sid = await self.stream_of(call_sid)
        if stream_sid is None:
            return None, None
        action, waited = await self.redis.hmget(self.keys.call(stream_sid),
                                                [CallField.AMD_ACTION, CallField.AMD_WAITED_MS])
        waited_text = text(waited) if waited else ""
        return (text(action) if action else None, int(waited_text) if waited_text.isdigit() else None)
