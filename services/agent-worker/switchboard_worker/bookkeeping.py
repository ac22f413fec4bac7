"""Fire-and-forget writes to a call's record that must never delay audio (best effort).

A failed write is counted and logged, never raised: the record lags, the call goes on. The
worker drains what is still in flight before it stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as redis

from switchboard import redis_types
from switchboard.besteffort import best_effort

from . import metrics

log = logging.getLogger(__name__)

# HSET a stream id only if it is past the stored one (ids are "<ms>-<seq>").
_ADVANCE = """
local current = redis.call('hget', KEYS[1], ARGV[1])
if current then
  local cm, cs = string.match(current, '(%d+)-(%d+)')
  local nm, ns = string.match(ARGV[2], '(%d+)-(%d+)')
  if cm and nm and (tonumber(cm) > tonumber(nm) or (tonumber(cm) == tonumber(nm) and tonumber(cs) >= tonumber(ns))) then
    return 0
  end
end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class Bookkeeping:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._tasks: set[asyncio.Task[None]] = set()

    def write(self, key: str, mapping: dict[str, Any]) -> None:
        self._spawn(self._redis.hset(key, mapping=redis_types.writable(mapping)))

    def advance(self, key: str, field: str, stream_id: bytes) -> None:
        """Move a stream position forward only (such writes may land out of order)."""
        self._spawn(self._redis.eval(_ADVANCE, 1, key, field, stream_id))

    def increment(self, key: str, field: str) -> None:
        self._spawn(self._redis.hincrby(key, field, 1))

    async def drain(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, command: Awaitable[Any]) -> None:
        task = asyncio.create_task(_best_effort(command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _best_effort(command: Awaitable[Any]) -> None:
    async with best_effort("write bookkeeping", errors=metrics.REDIS_ERRORS, logger=log):
        await command
