"""What a stream's start writes to Redis: the call record, the announcement, a refusal's record.

The record is written before the announcement (see `announce`), and every key written here
has a lifetime: a call's owner may die before it can set the retention.
"""

from __future__ import annotations

import time

import orjson
import redis.asyncio as redis
from redis.typing import EncodableT

from switchboard import capacity, twilio
from switchboard import keys as keyspace
from switchboard.keys import RESUME_PARAMETER, Keys
from switchboard.messages import CallField, Outcome, RecordState

MAX_CALL_TTL_S = 6 * 3600


def start_fields(start: twilio.Start, edge_id: str) -> dict[EncodableT, EncodableT]:
    now = time.time()
    return {
        CallField.CALL_SID: start.call_sid.encode(),
        CallField.STREAM_SID: start.stream_sid.encode(),
        CallField.ACCOUNT_SID: start.account_sid.encode(),
        CallField.EDGE: edge_id.encode(),
        CallField.PROFILE: start.custom_parameters.get("profile", "").encode(),
        CallField.PARAMS: orjson.dumps(start.custom_parameters),
        # Set only for a resume this edge verified against its one-time grant: the worker trusts
        # this field, never the parameters.
        CallField.RESUME_OF: start.custom_parameters.get(RESUME_PARAMETER, "").encode(),
        CallField.STATE: RecordState.WAITING.encode(),
        CallField.STARTED_AT: repr(now).encode(),
    }


async def write_record(client: redis.Redis, keys: Keys, start: twilio.Start, edge_id: str) -> None:
    """The call record, and the call listed as live (waiting for a worker)."""
    sid = start.stream_sid
    pipe = client.pipeline(transaction=False)
    pipe.hset(keys.call(sid), mapping=start_fields(start, edge_id))
    pipe.expire(keys.call(sid), MAX_CALL_TTL_S)
    pipe.set(keys.call_by_callsid(start.call_sid), sid, ex=MAX_CALL_TTL_S)
    pipe.zadd(keys.live_calls(), {sid: time.time()})
    await pipe.execute()


async def announce(client: redis.Redis, keys: Keys, start: twilio.Start, edge_id: str) -> None:
    """Offer the call to the workers; call only once its record exists.

    On a Redis Cluster one pipeline runs on several nodes in parallel, so a worker could claim
    a call announced in the record's own pipeline before the record is there.
    """
    pipe = client.pipeline(transaction=False)
    pipe.xadd(
        keys.dispatch(),
        {b"stream_sid": start.stream_sid.encode(), b"call_sid": start.call_sid.encode(), b"edge": edge_id.encode()},
        maxlen=keyspace.DISPATCH_STREAM_MAXLEN,
        approximate=True,
    )
    # The slot /twiml reserved for this call (if any) ends only now that the dispatch entry
    # counts it: admission control sees the call twice for a moment, never not at all.
    capacity.drop_reservation(pipe, keys, start.call_sid)
    await pipe.execute()


async def record_refusal(client: redis.Redis, keys: Keys, start: twilio.Start, edge_id: str,
                         retention_s: int) -> None:
    """The call as ended with outcome `no_capacity`: /twiml/continue then answers it per
    admission policy instead of reconnecting it."""
    sid = start.stream_sid
    pipe = client.pipeline(transaction=False)
    pipe.hset(keys.call(sid), mapping={**start_fields(start, edge_id), CallField.STATE: RecordState.ENDED.encode(),
                                       CallField.OUTCOME: Outcome.NO_CAPACITY.encode(),
                                       CallField.END_REASON: Outcome.NO_CAPACITY.encode(),
                                       CallField.ENDED_AT: repr(time.time()).encode()})
    pipe.expire(keys.call(sid), retention_s)
    pipe.set(keys.call_by_callsid(start.call_sid), sid, ex=retention_s)
    pipe.zrem(keys.live_calls(), sid)
    await pipe.execute()
