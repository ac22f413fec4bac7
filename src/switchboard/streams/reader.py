"""The multi-key reader: one blocking XREAD over every stream an instance follows.

It is woken by an entry in the instance's own wake stream when a stream is added, so no
connection is blocked per call, and hands each stream's batch to a synchronous handler. On a
Redis Cluster, where XREAD cannot span hash slots, there is one such read per slot in use (a
`_Lane`, with a wake stream of its own in that slot): with the calls' keys in a few hash-tag
buckets (`keys.Keys.cluster_buckets`) that is a handful of reads, whatever the number of calls.
A failed read is retried until Redis is back (`READ_RETRY`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisError

from .. import keys as keyspace
from .. import resp
from ..besteffort import best_effort
from ..retry import Backoff, Retry
from .direct import WRITE_TIMEOUT_S, ClusterNodes, DirectConnection, single_node
from .rate import SmoothedRate

log = logging.getLogger(__name__)

# 25-50 ms first, doubling up to 1-2 s: a reader spends its life blocked, a slower retry costs nothing.
READ_RETRY = Retry(base_s=0.05, cap_s=2.0)
# Read pacing: while entries arrive so often that a pause of `pace_s` would gather at least
# this many more, the next XREAD waits out the pause (one read for several writers' batches);
# a quiet reader reads again at once.
PACE_MIN_GAIN = 1.0

StreamHandler = Callable[[str, list[tuple[bytes, dict[bytes, bytes]]]], None]


def _slot_wake_key(wake_key: str, stream_key: str) -> str:
    """The instance's wake stream for one cluster slot: its name with the stream's hash tag.

    Redis hashes the first `{...}` of a key, so the instance's own tag is dropped for the stream's.
    """
    start = stream_key.find("{")
    end = stream_key.find("}", start + 1)
    tag = stream_key[start + 1:end] if start >= 0 and end > start + 1 else stream_key
    return wake_key.replace("{", "").replace("}", "") + "{" + tag + "}"


class StreamReader:
    """Follows many streams with one blocking XREAD (per cluster slot); hands each batch to a sync handler."""

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
        self._block_ms = block_ms
        self._streams: dict[str, bytes | str] = {}
        self._on_error = on_error
        self._last_failure: float | None = None
        self._xread = resp.XreadPacker(count, block_ms)
        self._nodes = None if single_node(client) else ClusterNodes(client)  # type: ignore[arg-type]
        # Single node: one lane for every stream. Cluster: one per slot in use, keyed by slot.
        self._lanes: dict[int, _Lane] = {}
        self._lanes_changed = asyncio.Event()
        self._stopping = False
        self._pace_s = pace_s  # the most a read waits for company after the last one (0: never)
        self._rate = SmoothedRate()

    def _lane_for(self, key: str) -> _Lane:
        slot = 0 if self._nodes is None else key_slot(key.encode())
        lane = self._lanes.get(slot)
        if lane is None:
            wake_key = self._wake_key if self._nodes is None else _slot_wake_key(self._wake_key, key)
            lane = self._lanes[slot] = _Lane(slot, wake_key)
            self._lanes_changed.set()
        return lane

    def add(self, key: str, last_id: bytes | str = "0-0") -> None:
        self._streams[key] = last_id
        lane = self._lane_for(key)
        lane.keys.add(key)
        self._wake(lane)

    def remove(self, key: str) -> None:
        self._streams.pop(key, None)
        self._xread.forget(key)
        lane = self._lanes.get(0 if self._nodes is None else key_slot(key.encode()))
        if lane is not None:
            lane.keys.discard(key)

    async def close(self) -> None:
        for lane in self._lanes.values():
            if lane.direct is not None:
                await lane.direct.close()

    def healthy_for(self, seconds: float) -> bool:
        """True if reads have not failed within the last `seconds`."""
        failed_at = self._last_failure
        return failed_at is None or time.monotonic() - failed_at > seconds

    def stop(self) -> None:
        """End `run` after the reads in flight, even if the task's cancellation is lost."""
        self._stopping = True
        self._lanes_changed.set()

    async def run(self) -> None:
        if self._nodes is None:
            self._lane_for("")  # the one lane, there before the first stream: it reads the wake stream
        tasks: dict[_Lane, asyncio.Task[None]] = {}
        try:
            while not self._stopping:
                for lane in [lane for lane, task in tasks.items() if task.done()]:
                    task = tasks.pop(lane)
                    if not task.cancelled() and (exc := task.exception()) is not None:
                        raise exc  # a bug, not Redis: let the supervisor see it
                for lane in self._lanes.values():
                    if lane not in tasks:
                        tasks[lane] = asyncio.create_task(self._run_lane(lane), name=f"stream reader {lane.wake_key}")
                        tasks[lane].add_done_callback(lambda _task: self._lanes_changed.set())
                self._lanes_changed.clear()
                await self._lanes_changed.wait()
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def _run_lane(self, lane: _Lane) -> None:
        try:
            await self._read_lane(lane)
        finally:
            if lane.direct is not None:
                await lane.direct.close()

    async def _read_lane(self, lane: _Lane) -> None:
        backoff = READ_RETRY.backoff()
        while not self._stopping and not self._lane_ends(lane):
            streams = self._streams
            request = {lane.wake_key: lane.wake_last, **{key: streams[key] for key in lane.keys if key in streams}}
            lane.blocked = True
            try:
                response = await self._read(lane, request)
            except RedisError as exc:
                lane.blocked = False
                await self._failed(exc, backoff)
                await self._recover(lane, exc)
                continue
            lane.blocked = False
            backoff.reset()
            pause = self._pause_now(self._dispatch(response, lane))
            if pause:
                await asyncio.sleep(pause)

    def _lane_ends(self, lane: _Lane) -> bool:
        """A cluster lane with no stream left ends; checked and dropped with no await between."""
        if self._nodes is None or lane.keys:
            return False
        del self._lanes[lane.slot]
        return True

    async def _read(self, lane: _Lane, request: dict[str, bytes | str]) -> list[Any]:
        if lane.direct is None:
            lane.direct = (DirectConnection.of_client(self._redis) if self._nodes is None
                           else DirectConnection.of_node(await self._nodes.node_for(lane.slot)))
        # The server answers within BLOCK; a silent network is noticed a little after that.
        timeout_s = self._block_ms / 1000 + WRITE_TIMEOUT_S
        (raw,) = await lane.direct.execute(self._xread.pack(request.items()), 1, timeout_s)
        return resp.entries_from_xread(raw)

    async def _failed(self, exc: RedisError, backoff: Backoff) -> None:
        self._last_failure = time.monotonic()
        if self._on_error:
            self._on_error(exc)
        log.warning("redis read failed, will retry: %s", exc)
        await backoff.wait(exc)

    async def _recover(self, lane: _Lane, exc: RedisError) -> None:
        """After a failed read on a cluster: the slot may live on another node now."""
        if self._nodes is None or not isinstance(exc, MovedError | RedisConnectionError):
            return
        async with best_effort("learn the cluster's slots again", logger=log):
            await self._nodes.refresh()
        if lane.direct is not None:
            await lane.direct.close()
            lane.direct = None

    def _wake(self, lane: _Lane) -> None:
        if not lane.blocked:
            return  # the next XREAD includes the new stream anyway
        if lane.wake_pending:
            lane.rewake = True  # that wake may already have been read: send another after it
            return
        lane.wake_pending = True
        lane.wake_task = asyncio.get_running_loop().create_task(self._send_wake(lane))

    async def _send_wake(self, lane: _Lane) -> None:
        try:
            # Lost, the wake only delays the new stream's first read to the end of the current BLOCK.
            async with best_effort("wake the stream reader", logger=log):
                pipe = self._waker.pipeline(transaction=False)
                pipe.xadd(lane.wake_key, {b"w": b"1"}, maxlen=keyspace.WAKE_STREAM_MAXLEN, approximate=True)
                pipe.expire(lane.wake_key, keyspace.WAKE_TTL_S)  # instances come and go; their wake keys too
                await pipe.execute()
        finally:
            lane.wake_pending = False
            if lane.rewake:
                lane.rewake = False
                self._wake(lane)

    def _pause_now(self, entries: int, now: float | None = None) -> float:
        """After a read of `entries`: how long to wait before the next (0 unless that gathers enough)."""
        if not self._pace_s:
            return 0.0
        now = time.monotonic() if now is None else now
        self._rate.count(entries, now)
        return self._pace_s if self._rate.per_s * self._pace_s >= PACE_MIN_GAIN else 0.0

    def _dispatch(self, response: list[Any], lane: _Lane) -> int:
        """Hand each stream's entries to the handler; how many entries there were."""
        total = 0
        for raw_key, entries in response or ():
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            if not entries:
                continue
            if key == lane.wake_key:
                lane.wake_last = entries[-1][0]
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


@dataclass(eq=False, slots=True)
class _Lane:
    """One blocking XREAD's state: the streams of one slot (single node: all of them) and its own wake stream."""

    slot: int
    wake_key: str
    keys: set[str] = field(default_factory=set)
    # A concrete id (not "$"): a wake written just before the XREAD reaches Redis is still seen.
    wake_last: bytes | str = "0-0"
    blocked: bool = False
    wake_pending: bool = False
    rewake: bool = False
    wake_task: asyncio.Task[None] | None = None
    direct: DirectConnection | None = None
