"""Campaigns in Redis: one hash tag per campaign, so that each script runs on one cluster slot.

    campaign:{id}          hash   spec (JSON), state, reason, created_at, total, name
    campaign:{id}:dest     hash   index → destination state (JSON, switchboard.campaigns.Destination)
    campaign:{id}:due      zset   index → when it may be dialled (ms): pending destinations
    campaign:{id}:flight   zset   index → when its holder must have moved it on (ms): dialling or in a call
    campaign:{id}:counts   hash   outcome:<final outcome> → destinations; attempts → calls placed
    campaign:{id}:pace     string the earliest time (ms) of the next dial

A destination is always in exactly one of due, flight or neither (done). `claim` moves one from
due to flight atomically, and only while the campaign is running and under its concurrency
cap; a dial takes
the campaign's next pace slot right before it asks Twilio: of several control replicas, one
gets each destination. Every later move is a
compare-and-set on the destination's JSON (`update`), so a status callback on one replica and a
dialler on another never both move it. State lives only here: a restarted control API, or
another replica, carries on where the last one was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as redis

from switchboard.campaigns import Destination
from switchboard.outbound import OutboundKeys

from .store import fields_of, text

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS: campaign, due, flight. ARGV: concurrency, lease ms.
# Returns {1, index, now} or {0, reason, wait ms}.
_CLAIM = _NOW + """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return {0, 'not_running', 1000} end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[1]) then return {0, 'concurrency', 250} end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #first == 0 then return {0, 'empty', 1000} end
local due = tonumber(first[2])
if due > now then return {0, 'not_due', due - now} end
redis.call('ZREM', KEYS[2], first[1])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), first[1])
return {1, first[1], now}
"""

# KEYS: pace. ARGV: interval ms. The campaign's next dial time, taken: returns how long to wait (ms)
# before sending the create. Taken right before the request (not at the claim), so that the work
# between the two cannot squeeze two dials closer than the interval.
_PACE = _NOW + """
local slot = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
redis.call('SET', KEYS[1], slot + tonumber(ARGV[1]), 'PX', slot - now + tonumber(ARGV[1]) + 60000)
return slot - now
"""

# KEYS: dest, due, flight, counts. ARGV: index, old JSON, new JSON, due ms ('' = not due),
# flight ms ('' = not in flight), final outcome to count (''), '1' to count an attempt.
_CAS = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1]) else redis.call('ZREM', KEYS[2], ARGV[1]) end
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1]) else redis.call('ZREM', KEYS[3], ARGV[1]) end
if ARGV[6] ~= '' then redis.call('HINCRBY', KEYS[4], 'outcome:' .. ARGV[6], 1) end
if ARGV[7] == '1' then redis.call('HINCRBY', KEYS[4], 'attempts', 1) end
return 1
"""

# KEYS: flight. ARGV: hold ms, most. In-flight destinations whose holder let the time pass: each
# is taken for `hold` ms by whoever asked (so one replica looks at it at a time).
_EXPIRED = _NOW + """
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, item in ipairs(items) do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), item) end
return items
"""

# KEYS: campaign. ARGV: new state, reason, allowed current states (space-separated).
_STATE = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {0, ''} end
for s in string.gmatch(ARGV[3], '%S+') do
  if s == current then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], 'reason', ARGV[2])
    return {1, current}
  end
end
return {0, current}
"""

# KEYS: sent. ARGV: interval ms. Right before a create goes out: 0 (and it is noted as sent now), or how
# long to wait because the previous one went out less than an interval ago (it was late: its event
# loop stalled, or its connection was slow; the slots alone would then let two go out too close).
_SEND = _NOW + """
local last = tonumber(redis.call('GET', KEYS[1]) or '-1e18')
local interval = tonumber(ARGV[1])
if now < last + interval then return last + interval - now end
redis.call('SET', KEYS[1], now, 'PX', interval + 60000)
return 0
"""

CHUNK = 500


@dataclass(frozen=True, slots=True)
class Claim:
    index: int | None
    reason: str
    wait_ms: int


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a destination goes with its new state: due at, in flight until, or neither (done)."""

    due_ms: int | None = None
    flight_ms: int | None = None
    outcome: str = ""  # a final outcome to count
    attempt: bool = False  # a call was placed


Change = Callable[[Destination], tuple[Destination, Placement] | None]


class CampaignStore:
    def __init__(self, client: redis.Redis, okeys: OutboundKeys) -> None:
        self.redis = client
        self.k = okeys

    async def create(self, cid: str, meta: dict[str, str], destinations: list[Destination], due_ms: list[int],
                     created_ms: int) -> None:
        k = self.k
        for start in range(0, len(destinations), CHUNK):
            pipe = self.redis.pipeline(transaction=False)
            part = destinations[start:start + CHUNK]
            pipe.hset(k.campaign_destinations(cid), mapping={
                str(start + i): orjson.dumps(d.to_json()) for i, d in enumerate(part)})
            pipe.zadd(k.campaign_due(cid), {str(start + i): due_ms[start + i] for i in range(len(part))})
            await pipe.execute()
        # Written last: the dialers see a campaign only once all of it is there.
        pipe = self.redis.pipeline(transaction=False)
        record: dict[Any, Any] = {**meta, "state": "running", "total": str(len(destinations))}
        pipe.hset(k.campaign(cid), mapping=record)
        pipe.zadd(k.campaigns(), {cid: created_ms})
        pipe.sadd(k.campaigns_active(), cid)
        await pipe.execute()

    async def meta(self, cid: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self.k.campaign(cid))
        return fields_of(raw) if raw else None

    async def ids(self, offset: int, limit: int) -> tuple[list[str], int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.k.campaigns())
        pipe.zrevrange(self.k.campaigns(), offset, offset + limit - 1)
        total, ids = await pipe.execute()
        return [text(i) for i in ids], int(total)

    async def active(self) -> list[str]:
        return sorted(text(i) for i in await self.redis.smembers(self.k.campaigns_active()))

    async def retire(self, cid: str) -> None:
        await self.redis.srem(self.k.campaigns_active(), cid)

    async def progress(self, cid: str) -> tuple[int, int, dict[str, int], int, float | None]:
        """(pending, in flight, final outcome counts, attempts, earliest due as Unix time)."""
        k = self.k
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(k.campaign_due(cid))
        pipe.zcard(k.campaign_flight(cid))
        pipe.hgetall(k.campaign_counts(cid))
        pipe.zrange(k.campaign_due(cid), 0, 0, withscores=True)
        pending, flight, counts, first = await pipe.execute()
        outcomes = {name.decode()[8:]: int(n) for name, n in counts.items() if name.startswith(b"outcome:")}
        attempts = int(counts.get(b"attempts", 0))
        return int(pending), int(flight), outcomes, attempts, (first[0][1] / 1000 if first else None)

    async def claim(self, cid: str, concurrency: int, lease_ms: int) -> Claim:
        k = self.k
        reply = await self.redis.eval(_CLAIM, 3, k.campaign(cid), k.campaign_due(cid), k.campaign_flight(cid),
                                      concurrency, lease_ms)
        if int(reply[0]) == 1:
            return Claim(int(reply[1]), "claimed", 0)
        reason = text(reply[1])
        return Claim(None, reason, max(1, int(reply[2])))

    async def pace(self, cid: str, interval_ms: int) -> int:
        """Take the campaign's next dial time; the ms to wait until it."""
        return int(await self.redis.eval(_PACE, 1, self.k.campaign_pace(cid), interval_ms))

    async def sending(self, cid: str, interval_ms: int) -> int:
        """0: send the create now (noted); else the ms to wait first."""
        return int(await self.redis.eval(_SEND, 1, self.k.campaign_sent(cid), interval_ms))

    async def destination(self, cid: str, index: int) -> tuple[bytes, Destination] | None:
        raw = await self.redis.hget(self.k.campaign_destinations(cid), str(index))
        if not isinstance(raw, bytes):
            return None
        return raw, Destination.from_json(orjson.loads(raw))

    async def update(self, cid: str, index: int, change: Change, *, tries: int = 8) -> Destination | None:
        """Apply `change` to the destination atomically (compare-and-set, retried on a conflict);
        None if `change` declined it (it has moved on) or it does not exist."""
        k = self.k
        for _ in range(tries):
            current = await self.destination(cid, index)
            if current is None:
                return None
            raw, dest = current
            decided = change(dest)
            if decided is None:
                return None
            new, where = decided
            ok = await self.redis.eval(
                _CAS, 4, k.campaign_destinations(cid), k.campaign_due(cid), k.campaign_flight(cid),
                k.campaign_counts(cid), str(index), raw, orjson.dumps(new.to_json()),
                "" if where.due_ms is None else str(where.due_ms),
                "" if where.flight_ms is None else str(where.flight_ms),
                where.outcome, "1" if where.attempt else "",
            )
            if int(ok) == 1:
                return new
        raise RuntimeError(f"campaign {cid} destination {index}: too many concurrent changes")

    async def expired(self, cid: str, hold_ms: int, most: int = 50) -> list[int]:
        items = await self.redis.eval(_EXPIRED, 1, self.k.campaign_flight(cid), hold_ms, most)
        return [int(i) for i in items]

    async def set_state(self, cid: str, state: str, *, reason: str = "", allowed: tuple[str, ...]) -> str | None:
        """Move the campaign to `state` if it is in one of `allowed`; returns the state it was in (None: unchanged)."""
        moved, previous = await self.redis.eval(_STATE, 1, self.k.campaign(cid), state, reason, " ".join(allowed))
        return text(previous) if int(moved) == 1 else None

    async def due_indexes(self, cid: str) -> list[int]:
        return [int(text(i)) for i in await self.redis.zrange(self.k.campaign_due(cid), 0, -1)]

    async def flight_indexes(self, cid: str) -> list[int]:
        return [int(text(i)) for i in await self.redis.zrange(self.k.campaign_flight(cid), 0, -1)]

    async def page(self, cid: str, offset: int, limit: int) -> list[tuple[int, Destination]]:
        indexes = [str(i) for i in range(offset, offset + limit)]
        values = await self.redis.hmget(self.k.campaign_destinations(cid), indexes)
        return [(int(i), Destination.from_json(orjson.loads(v))) for i, v in zip(indexes, values) if v is not None]


def decode_spec(meta: dict[str, str]) -> dict[str, Any]:
    try:
        spec = orjson.loads(meta.get("spec", "{}"))
    except orjson.JSONDecodeError:
        return {}
    return spec if isinstance(spec, dict) else {}
