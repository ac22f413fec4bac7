"""An admission slot for each outbound call, from before it is dialled until its stream starts.

An outbound call takes a worker slot the moment it is answered, so the slot is reserved before
Twilio is asked to dial: in the same sorted set the TwiML endpoint's reservations live in
(switchboard.capacity), so inbound admission counts it too, and the edge lets its stream in
at once and drops the reservation when it announces the call. Unlike an inbound reservation
(10 s) it must outlast the ringing: its score is set that far into the future, and every
reader lapses reservations only `RESERVATION_TTL_MS` after their score. It is made under the
call's `ref` (there is no callSid before Twilio answers) and renamed to the callSid once known.
A call that never connects (busy, no answer, failed, canceled) gives its slot back at once.
"""

from __future__ import annotations

from typing import Any

from switchboard import capacity
from switchboard.keys import Keys

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS[1] reservations. ARGV: member, free slots before reservations, hold ms, reservation ttl ms.
# Returns 1 (reserved, or already held), 0 (no free slot).
_RESERVE = _NOW + """
local hold, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1]) <= 0 then return 0 end
redis.call('ZADD', KEYS[1], now + hold, ARGV[1])
if redis.call('PTTL', KEYS[1]) < hold + 2 * ttl then redis.call('PEXPIRE', KEYS[1], hold + 2 * ttl) end
return 1
"""

# KEYS[1] reservations. ARGV: old member (ref), new member (callSid). Keeps the score.
_RENAME = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
redis.call('ZADD', KEYS[1], score, ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""


async def reserve(redis: Any, keys: Keys, ref: str, hold_s: float) -> bool:
    """A slot for this call for `hold_s` (dialling + ringing + answer) if the fleet has one free."""
    view, _ = await capacity.read(redis, keys)
    reply = await redis.eval(_RESERVE, 1, keys.admission_reserved(), ref, view.unreserved_free,
                             int(hold_s * 1000), capacity.RESERVATION_TTL_MS)
    return int(reply) == 1


async def rename(redis: Any, keys: Keys, ref: str, call_sid: str) -> None:
    await redis.eval(_RENAME, 1, keys.admission_reserved(), ref, call_sid)


async def release(redis: Any, keys: Keys, *members: str) -> None:
    """The call will not start a stream (or has one): its slot is free again."""
    if members:
        await redis.zrem(keys.admission_reserved(), *members)
