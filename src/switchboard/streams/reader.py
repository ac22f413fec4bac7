"""The multi-key reader: one blocking XREAD over every stream an instance follows.

It is woken by an entry in the instance's own wake stream when a stream is added, so no
connection is blocked per call, and hands each stream's batch to a synchronous handler. On a
Redis Cluster, where XREAD cannot span hash slots, it runs one short-blocking read per slot in
use. A failed read is retried until Redis is back (`READ_RETRY`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from .. import keys as keyspace
from .. import resp
from ..besteffort import best_effort
from ..retry import Backoff, Retry
from .direct import WRITE_TIMEOUT_S, DirectConnection, single_node

log = logging.getLogger(__name__)

CLUSTER_BLOCK_MS = 250
# 25-50 ms first, doubling up to 1-2 s: a reader spends its life blocked, a slower retry costs nothing.
READ_RETRY = Retry(base_s=0.05, cap_s=2.0)
# Read pacing: while entries arrive so often that a pause of `pace_s` would gather at least
# this many more, the next XREAD waits out the pause (one read for several writers' batches);
# a quiet reader reads again at once.
PACE_MIN_GAIN = 1.0
RATE_SMOOTHING_S = 1.0

StreamHandler = Callable[[str, list[tuple[bytes, dict[bytes, bytes]]]], None]


class StreamReader:
    """Follows many streams with one blocking XREAD; hands each batch to a sync handler."""

    def __init__(
        self,
        client: redis.Redis,
        waker: redis.Redis,
        wake_key: str,
        handler: StreamHandler,
        *,
        count: int = 1000,
        block_ms: int = 2000,
        on_error: Callable[[BaseException], None] | None = None,
        pace_s: float = 0.0,
    ) -> None:
        self._redis = client  # dedicated: it spends its life blocked in XREAD
        self._waker = waker
        self._wake_key = wake_key
        self._handler = handler
        self._count = count
        self._block_ms = block_ms
        self._streams: dict[str, bytes | str] = {}
        # A concrete id (not "$"): a wake written just before the XREAD reaches Redis is still seen.
        self._wake_last: bytes | str = "0-0"
        self._blocked = False
        self._on_error = on_error
        self._wake_pending = False
        self._rewake = False
        self._wake_task: asyncio.Task[None] | None = None
        self._last_failure: float | None = None
        self._direct = DirectConnection(client) if single_node(client) else None
        self._xread = resp.XreadPacker(count, block_ms)
        self._slots: dict[int, set[str]] | None = None if single_node(client) else {}
        self._slots_changed = asyncio.Event()
        self._stopping = False
        self._pace_s = pace_s  # the most a read waits for company after the last one (0: never)
        self._rate = 0.0  # entries per second, smoothed
        self._rate_at = time.monotonic()

    def add(self, key: str, last_id: bytes | str = "0-0") -> None:
        self._streams[key] = last_id
        if self._slots is not None:
            self._slots.setdefault(key_slot(key.encode()), set()).add(key)
            self._slots_changed.set()
            return
        self._wake()

    def remove(self, key: str) -> None:
        self._streams.pop(key, None)
        self._xread.forget(key)
        if self._slots is not None:
            self._slots.get(key_slot(key.encode()), set()).discard(key)

    async def _read(self, request: dict[str, bytes | str]) -> list[Any]:
        if self._direct is None:
            return await self._redis.xread(request, count=self._count, block=self._block_ms)  # type: ignore[arg-type, return-value]
        # The server answers within BLOCK; a silent network is noticed a little after that.
        timeout_s = self._block_ms / 1000 + WRITE_TIMEOUT_S
        (raw,) = await self._direct.execute(self._xread.pack(request.items()), 1, timeout_s)
        return resp.entries_from_xread(raw)

    async def close(self) -> None:
        if self._direct is not None:
            await self._direct.close()

    def healthy_for(self, seconds: float) -> bool:
        """True if reads have not failed within the last `seconds`."""
        failed_at = self._last_failure
        return failed_at is None or time.monotonic() - failed_at > seconds

    def _wake(self) -> None:
        if not self._blocked:
            return  # the next XREAD includes the new stream anyway
        if self._wake_pending:
            self._rewake = True  # that wake may already have been read: send another after it
            return
        self._wake_pending = True
        self._wake_task = asyncio.get_running_loop().create_task(self._send_wake())

    async def _send_wake(self) -> None:
        try:
            # Lost, the wake only delays the new stream's first read to the end of the current BLOCK.
            async with best_effort("wake the stream reader", logger=log):
                pipe = self._waker.pipeline(transaction=False)
                pipe.xadd(self._wake_key, {b"w": b"1"}, maxlen=keyspace.WAKE_STREAM_MAXLEN, approximate=True)
                pipe.expire(self._wake_key, keyspace.WAKE_TTL_S)  # instances come and go; their wake keys too
                await pipe.execute()
        finally:
            self._wake_pending = False
            if self._rewake:
                self._rewake = False
                self._wake()

    def stop(self) -> None:
        """End `run` after the read in flight, even if the task's cancellation is lost."""
        self._stopping = True
        self._slots_changed.set()

    async def run(self) -> None:
        if self._slots is not None:
            await self._run_per_slot()
            return
        backoff = READ_RETRY.backoff()
        while not self._stopping:
            request = {self._wake_key: self._wake_last, **self._streams}
            self._blocked = True
            try:
                response = await self._read(request)
            except RedisError as exc:
                self._blocked = False
                await self._failed(exc, backoff)
                continue
            self._blocked = False
            backoff.reset()
            entries = self._dispatch(response)
            pause = self._pause_now(entries)
            if pause:
                await asyncio.sleep(pause)

    async def _failed(self, exc: RedisError, backoff: Backoff) -> None:
        self._last_failure = time.monotonic()
        if self._on_error:
            self._on_error(exc)
        log.warning("redis read failed, will retry: %s", exc)
        await backoff.wait(exc)

    def _pause_now(self, entries: int, now: float | None = None) -> float:
        """After a read of `entries`: how long to wait before the next (0 unless that gathers enough)."""
        if not self._pace_s:
            return 0.0
        now = time.monotonic() if now is None else now
        elapsed = now - self._rate_at
        if elapsed > 0:
            weight = min(1.0, elapsed / RATE_SMOOTHING_S)
            self._rate += (entries / elapsed - self._rate) * weight
            self._rate_at = now
        return self._pace_s if self._rate * self._pace_s >= PACE_MIN_GAIN else 0.0

    def _dispatch(self, response: list[Any]) -> int:
        """Hand each stream's entries to the handler; how many entries there were."""
        total = 0
        for raw_key, entries in response or ():
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            if not entries:
                continue
            if key == self._wake_key:
                self._wake_last = entries[-1][0]
                continue
            if key not in self._streams:
                continue  # removed while the read was in flight
            total += len(entries)
            self._streams[key] = entries[-1][0]
            try:
                self._handler(key, entries)
            except Exception:
                log.exception("stream handler failed", extra={"stream": key})
        return total

    # --- Redis Cluster ----------------------------------------------------------------------
    # XREAD cannot span hash slots, and every call has its own slot: on a cluster there is one
    # reader per slot in use (in practice one per call), each blocking briefly so that a key
    # added to a slot already being read is picked up within CLUSTER_BLOCK_MS.

    async def _run_per_slot(self) -> None:
        assert self._slots is not None
        tasks: dict[int, asyncio.Task[None]] = {}
        try:
            while not self._stopping:
                await self._slots_changed.wait()
                self._slots_changed.clear()
                for slot, keys in list(self._slots.items()):
                    if keys and (slot not in tasks or tasks[slot].done()):
                        tasks[slot] = asyncio.create_task(self._read_slot(slot))
                for slot in [s for s, task in tasks.items() if task.done()]:
                    del tasks[slot]
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def _read_slot(self, slot: int) -> None:
        assert self._slots is not None
        backoff = READ_RETRY.backoff()
        while not self._stopping and (keys := self._slots.get(slot)):
            request = {key: self._streams[key] for key in keys if key in self._streams}
            try:
                response: Any = await self._redis.xread(request, count=self._count,  # type: ignore[arg-type]
                                                        block=CLUSTER_BLOCK_MS)
            except RedisError as exc:
                await self._failed(exc, backoff)
                continue
            backoff.reset()
            self._dispatch(response)
        self._slots.pop(slot, None)
        self._slots_changed.set()
