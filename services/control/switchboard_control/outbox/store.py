"""The call.ended outbox's Redis operations (keys in `switchboard.call_ended`): claim with a lease,
deliver once, retry, dead-letter, and bring a dead letter back.

Every operation is one script on the `{outbox}` slot, so replicas never see half of one: a
claimed entry's `due` moves past its lease at once (another replica takes it only if this one
died), and `sent:<callSid>` is set in the same step that removes the entry.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as redis

from switchboard.call_ended import ENABLED_TTL_S, SENT_TTL_S, OutboxKeys, parse_item

# KEYS: due; ARGV: now, lease until, count
_CLAIM = """
local ids = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('zadd', KEYS[1], 'XX', ARGV[2], id) end
return ids
"""

# KEYS: due, items, attempts, payloads, sent; ARGV: callSid, sent ttl
_DELIVERED = """
redis.call('set', KEYS[5], '1', 'EX', ARGV[2])
redis.call('zrem', KEYS[1], ARGV[1])
redis.call('hdel', KEYS[2], ARGV[1])
redis.call('hdel', KEYS[3], ARGV[1])
redis.call('hdel', KEYS[4], ARGV[1])
return 1
"""

# KEYS: due, items, attempts, payloads, dead; ARGV: callSid, dead letter JSON, max dead letters
_DEAD = """
redis.call('lpush', KEYS[5], ARGV[2])
redis.call('ltrim', KEYS[5], 0, tonumber(ARGV[3]) - 1)
redis.call('zrem', KEYS[1], ARGV[1])
redis.call('hdel', KEYS[2], ARGV[1])
redis.call('hdel', KEYS[3], ARGV[1])
redis.call('hdel', KEYS[4], ARGV[1])
return 1
"""

# KEYS: dead, due, items, payloads, attempts; ARGV: the dead letter JSON, callSid, item JSON, payload, now
_REVIVE = """
if redis.call('lrem', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('hset', KEYS[3], ARGV[2], ARGV[3])
if ARGV[4] ~= '' then redis.call('hset', KEYS[4], ARGV[2], ARGV[4]) else redis.call('hdel', KEYS[4], ARGV[2]) end
redis.call('hdel', KEYS[5], ARGV[2])
redis.call('zadd', KEYS[2], ARGV[5], ARGV[2])
return 1
"""


class OutboxStore:
    def __init__(self, client: redis.Redis, keys: OutboxKeys) -> None:
        self._redis = client
        self.keys = keys

    async def announce(self) -> None:
        """Workers enqueue while this key lives: refreshed by the delivery loop."""
        await self._redis.set(self.keys.enabled(), b"1", ex=ENABLED_TTL_S)

    async def withdraw(self) -> None:
        await self._redis.delete(self.keys.enabled())

    async def claim(self, now: float, lease_s: float, count: int) -> list[str]:
        ids = await self._redis.eval(_CLAIM, 1, self.keys.due(), repr(now), repr(now + lease_s), count)
        return [i.decode() for i in ids or ()]

    async def item(self, call_sid: str) -> dict[str, Any] | None:
        raw: Any = await self._redis.hget(self.keys.items(), call_sid)
        return parse_item(raw)

    async def already_sent(self, call_sid: str) -> bool:
        return bool(await self._redis.exists(self.keys.sent(call_sid)))

    async def payload(self, call_sid: str) -> bytes | None:
        raw: Any = await self._redis.hget(self.keys.payloads(), call_sid)
        return bytes(raw) if raw else None

    async def keep_payload(self, call_sid: str, payload: bytes) -> None:
        await self._redis.hset(self.keys.payloads(), call_sid, payload)

    async def later(self, call_sid: str, when: float) -> None:
        await self._redis.zadd(self.keys.due(), {call_sid: when}, xx=True)

    async def failed(self, call_sid: str) -> int:
        """One more failed attempt; how many so far."""
        return int(await self._redis.hincrby(self.keys.attempts(), call_sid, 1))

    async def delivered(self, call_sid: str) -> None:
        k = self.keys
        await self._redis.eval(_DELIVERED, 5, k.due(), k.items(), k.attempts(), k.payloads(), k.sent(call_sid),
                               call_sid, SENT_TTL_S)

    async def drop(self, call_sid: str) -> None:
        """Forget an entry that will never be delivered (already sent, or no such call any more)."""
        k = self.keys
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(k.due(), call_sid)
        pipe.hdel(k.items(), call_sid)
        pipe.hdel(k.attempts(), call_sid)
        pipe.hdel(k.payloads(), call_sid)
        await pipe.execute()

    async def dead(self, call_sid: str, *, item: dict[str, Any], attempts: int, error: str, payload: bytes | None,
                   keep: int) -> None:
        letter = orjson.dumps({"call_sid": call_sid, "attempts": attempts, "error": error[:500],
                               "failed_at": round(time.time(), 3), "item": item,
                               "payload": orjson.loads(payload) if payload else None})
        k = self.keys
        await self._redis.eval(_DEAD, 5, k.due(), k.items(), k.attempts(), k.payloads(), k.dead(), call_sid, letter,
                               keep)

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        raw = await self._redis.lrange(self.keys.dead(), 0, limit - 1)
        letters = []
        for value in raw:
            try:
                letter = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(letter, dict):
                letters.append(letter)
        return letters

    async def revive(self, call_sid: str, max_scan: int) -> bool:
        """Put a dead letter back in the outbox with its attempts reset: due now, same payload."""
        for value in await self._redis.lrange(self.keys.dead(), 0, max_scan - 1):
            try:
                letter = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(letter, dict) or letter.get("call_sid") != call_sid:
                continue
            k = self.keys
            payload = orjson.dumps(letter["payload"]) if letter.get("payload") is not None else b""
            item = orjson.dumps(letter.get("item") or {})
            revived = await self._redis.eval(_REVIVE, 5, k.dead(), k.due(), k.items(), k.payloads(), k.attempts(),
                                             value, call_sid, item, payload, repr(time.time()))
            return bool(revived)
        return False

    async def forget_dead(self, call_sid: str, max_scan: int) -> bool:
        values: list[Any] = await self._redis.lrange(self.keys.dead(), 0, max_scan - 1)
        for value in values:
            try:
                letter = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(letter, dict) and letter.get("call_sid") == call_sid:
                return bool(await self._redis.lrem(self.keys.dead(), 1, value))
        return False

    async def counts(self) -> tuple[int, int]:
        """(entries in the outbox, dead letters)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zcard(self.keys.due())
        pipe.llen(self.keys.dead())
        due, dead = await pipe.execute()
        return int(due), int(dead)
