"""How calls come to this worker: new ones from the dispatch stream, and those whose owner went quiet.

New calls: `XREADGROUP` on the dispatch stream with COUNT = free slots, so a worker never
holds more than its capacity and load spreads without a scheduler; past its load threshold it
claims none. The dispatch entry stays pending while the call lives: its owner refreshes the
entry's idle time and the call's lease on every heartbeat (worker.py). If a worker dies, both
lapse, and another worker takes the call over with `XAUTOCLAIM`. Either way `start` takes the
call's lease and starts its session.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from switchboard import keys as keyspace
from switchboard import redis_types
from switchboard.besteffort import Outage, best_effort
from switchboard.keys import Keys
from switchboard.loadmeter import LoadMeter
from switchboard.redis_types import Fields

from . import metrics
from .settings import WorkerSettings

OVERLOADED_RECHECK_S = 0.25
# A claim blocks this long at most: a worker that crosses its load threshold stops claiming
# within it (the read already waiting would still hand it a call).
CLAIM_BLOCK_MS = 250  # released sessions stop within ms; this bounds only a lost cancellation


class StartCall(Protocol):
    """Take the call's lease and start its session (the worker's)."""

    async def __call__(self, entry_id: bytes, fields: Fields, *, takeover: bool) -> None: ...


class Claims:
    def __init__(self, settings: WorkerSettings, keys: Keys, client: redis.Redis, claim_client: redis.Redis,
                 rng: random.Random, load: LoadMeter, *, free_slots: Callable[[], int], start: StartCall) -> None:
        self._settings = settings
        self._keys = keys
        self._redis = client
        self._redis_claim = claim_client  # blocking reads get a connection of their own
        self._random = rng
        self._load = load
        self._free_slots = free_slots
        self._start = start
        self._slot_freed = asyncio.Event()
        self._claim_outage, self._takeover_outage = Outage(), Outage()
        # The loops also stop on this flag: a cancellation that lands while redis-py sends a
        # command can be lost on Python 3.11 (see Worker.drain).
        self.stopped = False

    def slot_freed(self) -> None:
        self._slot_freed.set()

    def stop(self) -> None:
        self.stopped = True

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._keys.dispatch(), keyspace.DISPATCH_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def new_calls(self) -> None:
        dispatch = self._keys.dispatch()
        while not self.stopped:
            free = self._free_slots()
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            if self._load.overloaded:
                # New calls wait for a worker that can serve them well; calls in progress (and
                # takeovers of a dead worker's calls) are served here as before.
                await asyncio.sleep(OVERLOADED_RECHECK_S)
                continue
            async with best_effort("claim calls", errors=metrics.REDIS_ERRORS, outage=self._claim_outage) as attempt:
                response = await self._redis_claim.xreadgroup(
                    keyspace.DISPATCH_GROUP, self._settings.worker_id, {dispatch: ">"}, count=free,
                    block=CLAIM_BLOCK_MS,
                )
            if attempt.failed:
                await asyncio.sleep(0.5 + self._random.random())
                await self._after_dispatch_error(attempt.error)
                continue
            for _key, items in redis_types.streams(response):
                for entry_id, fields in items:
                    await self._start(entry_id, fields, takeover=False)

    async def takeovers(self) -> None:
        """Adopt calls whose owner stopped refreshing them (dead or partitioned worker)."""
        settings = self._settings
        period = settings.lease_ms / 4000
        cursor: bytes | str = "0-0"
        while not self.stopped:
            await asyncio.sleep(period * (0.75 + self._random.random() / 2))
            if self._free_slots() <= 0:
                continue
            async with best_effort("scan for calls to take over", errors=metrics.REDIS_ERRORS,
                                   outage=self._takeover_outage) as attempt:
                reply = await self._redis.xautoclaim(
                    self._keys.dispatch(), keyspace.DISPATCH_GROUP, settings.worker_id,
                    # The margin lets the owner's lease key (renewed just after the idle reset) expire first.
                    min_idle_time=settings.lease_ms + 100, start_id=cursor, count=self._free_slots(),
                )
                # XAUTOCLAIM scans at most COUNT*10 entries per call: page through the whole
                # backlog across scans, or a dead worker's newer calls are never reached.
                cursor, claimed = reply[0], reply[1]
            if attempt.failed:
                await self._after_dispatch_error(attempt.error)
                continue
            for entry_id, fields in claimed:
                if fields:
                    await self._start(entry_id, fields, takeover=True)

    async def _after_dispatch_error(self, error: RedisError | None) -> None:
        if "NOGROUP" in str(error):  # Redis lost its data (restart without persistence)
            async with best_effort("recreate the dispatch group yet", errors=metrics.REDIS_ERRORS):
                await self.ensure_group()
