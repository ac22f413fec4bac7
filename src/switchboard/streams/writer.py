"""The coalescing writer: every call on an instance appends here without awaiting.

Once per loop tick (or after a configurable window) all pending entries of all calls go out
in ONE pipeline. Only one pipeline is in flight at a time, so a call's entries reach Redis in
the order they were appended. When Redis is slow, consecutive audio of a call is merged into
one entry instead of waiting: latency never grows to buy throughput. When Redis is away the
batch is put back in front and retried (`WRITE_RETRY`), with bounded audio and journal queues.
After a failure, what Redis had acknowledged in the last moments is written again under the
ids it gave (`recent.RecentWrites`): Redis may have lost it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as redis
from redis.exceptions import RedisError

from .. import keys as keyspace
from .. import resp
from ..besteffort import best_effort
from ..entries import Entry, Kind
from ..retry import Retry
from .direct import WRITE_TIMEOUT_S, ClusterNodes, DirectConnection, single_node
from .rate import SmoothedRate
from .recent import RecentWrites

log = logging.getLogger(__name__)

# Redis is unreachable: how much unsent audio a stream may hold before the oldest is dropped
# (8 kHz mu-law: 8000 B/s), unless the writer is given its own bound. Caller audio comes in
# real time; agent audio comes faster (Deepgram's TTS runs ahead of playback), so the worker
# holds more. Control entries are never dropped.
MAX_PENDING_AUDIO_BYTES = 8000 * 4
# A call journal is best effort: while Redis is away its oldest unsent records go first
# (with audio on, a journal grows by ~16 kB/s per call).
MAX_PENDING_JOURNAL_ITEMS = 2000
# A failed batch is retried until Redis is back (the queues above bound what waits): 25-50 ms
# first, doubling up to 0.5-1 s, so a restarted Redis is written to within a second.
WRITE_RETRY = Retry(base_s=0.05, cap_s=1.0)
# The batch window is adaptive: a write waits up to the window only while entries arrive often
# enough that it would gather at least this many more (many calls, each frame at its own phase
# of the 20 ms period); a quiet writer writes on the next loop tick and adds no latency.
WINDOW_MIN_GAIN = 2.0


class WriterDied(RuntimeError):
    """The writer's loop died of a bug: nothing more will be written."""


class _PartlyWritten(RedisError):
    """Part of a batch reached Redis; `unwritten` is the rest, to be retried."""

    def __init__(self, unwritten: dict[str, _StreamQueue], cause: BaseException | None) -> None:
        super().__init__(str(cause))
        self.unwritten = unwritten


@dataclass(slots=True)
class _Pending:
    kind: Kind
    payload: bytearray | bytes
    t_us: int


@dataclass(slots=True)
class _StreamQueue:
    items: list[_Pending] = field(default_factory=list)
    maxlen: int = keyspace.AUDIO_STREAM_MAXLEN
    audio_bytes: int = 0


class StreamWriter:
    def __init__(
        self,
        client: redis.Redis,
        *,
        batch_window_s: float = 0.0,
        key_ttl_s: int = 6 * 3600,
        on_flush: Callable[[int, float], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        gate: Callable[[], Awaitable[None]] | None = None,
        max_pending_audio_bytes: int = MAX_PENDING_AUDIO_BYTES,
    ) -> None:
        self._redis = client
        self._max_audio = max_pending_audio_bytes
        self._gate = gate
        self._window = batch_window_s  # the most a write waits for company (0: never waits)
        self._appended = 0  # entries appended since the last write was taken
        self._rate = SmoothedRate()
        self._key_ttl_s = key_ttl_s
        self._pending: dict[str, _StreamQueue] = {}
        self._wakeup = asyncio.Event()
        # Batches are numbered when they are taken from `_pending`; an append belongs to the
        # next batch to be taken (not to one already in flight).
        self._taken = 0
        self._generation = 0  # highest batch number written to Redis successfully
        self._appended_generation = 0  # batch number the latest append will belong to
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._expiring: set[str] = set()
        self._fenced: set[str] = set()
        self._on_flush = on_flush
        self._on_error = on_error
        # Single node: one direct connection. Cluster: one per master, found from each key's slot.
        self._direct = DirectConnection.of_client(client) if single_node(client) else None
        self._nodes = None if self._direct is not None else ClusterNodes(client)  # type: ignore[arg-type]
        self._xadd = resp.XaddPacker()
        self._recent = RecentWrites()
        self._rewrite = False  # a write failed: Redis may have lost what it had acknowledged
        self._stopping = False
        self._died: Exception | None = None

    # --- producers (never block) ----------------------------------------------------------
    def append(self, key: str, entry: Entry, maxlen: int = keyspace.AUDIO_STREAM_MAXLEN) -> None:
        if key in self._fenced:
            return
        queue = self._pending.get(key)
        if queue is None:
            queue = self._pending[key] = _StreamQueue(maxlen=maxlen)
        items = queue.items
        self._appended += 1
        if entry.kind is Kind.AUDIO:
            queue.audio_bytes += len(entry.payload)
            last = items[-1] if items else None
            if last is not None and last.kind is Kind.AUDIO:
                if not isinstance(last.payload, bytearray):
                    last.payload = bytearray(last.payload)
                last.payload += entry.payload
            else:
                items.append(_Pending(Kind.AUDIO, entry.payload, entry.t_us))
            if queue.audio_bytes > self._max_audio:
                self._shed_audio(queue, self._max_audio)
        else:
            items.append(_Pending(entry.kind, entry.payload, entry.t_us))
            if entry.kind is Kind.JOURNAL and len(items) > MAX_PENDING_JOURNAL_ITEMS:
                del items[: len(items) // 2]  # a journal queue holds journal records only
        self._appended_generation = self._taken + 1
        self._wakeup.set()

    def drop_pending_audio(self, key: str) -> int:
        """Forget audio of `key` not yet written (barge-in: it must never be played)."""
        queue = self._pending.get(key)
        if not queue:
            return 0
        dropped = sum(len(p.payload) for p in queue.items if p.kind is Kind.AUDIO)
        queue.items = [p for p in queue.items if p.kind is not Kind.AUDIO]
        queue.audio_bytes = 0
        return dropped

    def fence(self, key: str) -> None:
        """Never write to `key` again (its call now belongs to another instance)."""
        self._fenced.add(key)
        self._pending.pop(key, None)

    def unfence(self, key: str) -> None:
        self._fenced.discard(key)

    def forget(self, key: str) -> None:
        """The stream's call is over: stop tracking its TTL bookkeeping."""
        self._expiring.discard(key)
        self._xadd.forget(key)

    async def flushed(self) -> None:
        """Return once everything appended before this call has been written to Redis.

        Raises `WriterDied` if the writer's loop has died (or dies meanwhile) of a bug: what
        it had not written will never be written.
        """
        target = self._appended_generation
        if target <= self._generation:
            return
        if self._died is not None:
            raise WriterDied("the Redis writer has died") from self._died
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        await future

    async def drain(self, timeout_s: float = 5.0) -> bool:
        """Shutdown: wait (bounded) until everything appended so far is in Redis."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.flushed()
        except TimeoutError:
            log.warning("pending Redis writes not flushed within %ss", timeout_s)
            return False
        except WriterDied:
            return False  # its owner's supervisor has already said why
        return True

    # --- the single writer ------------------------------------------------------------------
    def stop(self) -> None:
        """End `run` at its next turn, even if the task's cancellation is lost (Python 3.11:
        a cancel that lands as a Redis reply arrives can be swallowed)."""
        self._stopping = True
        self._wakeup.set()

    async def run(self) -> None:
        try:
            await self._run()
        except Exception as exc:
            # Waiters would otherwise wait for a generation that never comes.
            self._died = exc
            for _target, future in self._waiters:
                if not future.done():
                    future.set_exception(WriterDied("the Redis writer has died"))
            self._waiters = []
            raise

    async def _run(self) -> None:
        backoff = WRITE_RETRY.backoff()
        while not self._stopping:
            await self._wakeup.wait()
            if self._stopping:
                return
            window = self._window_now()
            if window:
                await asyncio.sleep(window)
            else:
                # Let every callback that is already runnable append first: one pipeline per tick.
                await asyncio.sleep(0)
            if self._gate is not None:
                await self._gate()
            batch, self._pending = self._pending, {}
            self._wakeup.clear()
            if self._fenced:
                for key in self._fenced.intersection(batch):
                    del batch[key]  # fenced while this batch waited at the gate
            self._taken += 1
            target = self._taken
            started = time.perf_counter()
            try:
                if self._rewrite:
                    await self._write_again()
                count = await self._write(batch)
            except RedisError as exc:
                if self._on_error:
                    self._on_error(exc)
                unwritten = exc.unwritten if isinstance(exc, _PartlyWritten) else batch
                log.warning("redis write failed, will retry: %s", exc, extra={"streams": len(unwritten)})
                self._requeue(unwritten)
                # Redis may come back without the streams (and their TTLs) it had.
                self._rewrite = True
                self._expiring.clear()
                await backoff.wait(exc)
                continue
            backoff.reset()
            self._generation = max(self._generation, target)
            if self._on_flush and count:
                self._on_flush(count, time.perf_counter() - started)
            self._release_waiters()

    def _window_now(self, now: float | None = None) -> float:
        """How long this write waits for more entries: the window while that gathers enough, else 0."""
        if not self._window:
            return 0.0
        now = time.monotonic() if now is None else now
        if self._rate.count(self._appended, now):
            self._appended = 0
        return self._window if self._rate.per_s * self._window >= WINDOW_MIN_GAIN else 0.0

    async def _write(self, batch: dict[str, _StreamQueue]) -> int:
        if not batch:
            return 0
        if self._direct is not None:
            count, _refused = await self._write_direct(self._direct, batch)
            return count
        return await self._write_cluster(batch)

    async def _write_cluster(self, batch: dict[str, _StreamQueue]) -> int:
        """One hand-packed pipeline per master, all at once.

        What a master refuses (MOVED or ASK while a slot moves) goes again through redis-py's
        cluster pipeline, which follows redirects; what still fails, or whatever was in flight
        to a master that failed, is put back (`_PartlyWritten`).
        """
        assert self._nodes is not None
        by_node: dict[str, tuple[DirectConnection, dict[str, _StreamQueue]]] = {}
        for key, queue in batch.items():
            name, connection = await self._nodes.connection_for(key)
            by_node.setdefault(name, (connection, {}))[1][key] = queue
        results = await asyncio.gather(*(self._write_direct(connection, part, errors_as_replies=True)
                                         for connection, part in by_node.values()), return_exceptions=True)
        count = 0
        refused: dict[str, _StreamQueue] = {}
        unwritten: dict[str, _StreamQueue] = {}
        failure: BaseException | None = None
        for (_connection, part), result in zip(by_node.values(), results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, RedisError):
                    raise result
                unwritten.update(part)
                failure = result
            else:
                count += result[0]
                refused.update(result[1])
        if refused:
            # Only a moving slot refuses: learn the new map for the next batches.
            async with best_effort("learn the cluster's slots again", logger=log):
                await self._nodes.refresh()
            try:
                count += await self._write_pipeline(refused)
            except RedisError as exc:
                unwritten.update(refused)
                failure = exc
        if unwritten:
            raise _PartlyWritten(unwritten, failure)
        return count

    async def _write_pipeline(self, batch: dict[str, _StreamQueue]) -> int:
        pipe = self._redis.pipeline(transaction=False)
        count = 0
        new_keys = []
        for key, queue in batch.items():
            for item in queue.items:
                pipe.xadd(
                    key,
                    {b"k": item.kind.value, b"p": bytes(item.payload), b"t": b"%d" % item.t_us},
                    maxlen=queue.maxlen,
                    approximate=True,
                )
                count += 1
            if key not in self._expiring and queue.items:
                # XADD creates streams without a TTL; bound every key's life even if the
                # call's owner dies before it can set the retention.
                pipe.expire(key, self._key_ttl_s)
                new_keys.append(key)
        if count:
            await pipe.execute()
        self._expiring.update(new_keys)
        return count

    async def _write_direct(self, connection: DirectConnection, batch: dict[str, _StreamQueue], *,
                            errors_as_replies: bool = False) -> tuple[int, dict[str, _StreamQueue]]:
        """Entries written, and (with `errors_as_replies`) each stream's entries the node refused, in order."""
        parts: list[bytes] = []
        pack = self._xadd.pack
        count = 0
        new_keys = []
        for key, queue in batch.items():
            for item in queue.items:
                if not isinstance(item.payload, bytes):
                    item.payload = bytes(item.payload)  # as it was written, should it be written again
                pack(key, queue.maxlen, item.kind.value, item.payload, item.t_us, parts)
                count += 1
            if key not in self._expiring and queue.items:
                parts.append(resp.command(b"EXPIRE", key.encode(), b"%d" % self._key_ttl_s))
                new_keys.append(key)
        if not count:
            return 0, {}
        replies = await connection.execute(parts, count + len(new_keys), WRITE_TIMEOUT_S,
                                           errors_as_replies=errors_as_replies)
        self._recent.add(time.monotonic(), batch, replies, frozenset(new_keys))
        refused: dict[str, _StreamQueue] = {}
        if errors_as_replies:
            answers = iter(replies)
            for key, queue in batch.items():
                failed = [item for item in queue.items if isinstance(next(answers), RedisError)]
                if key in new_keys:
                    next(answers)  # EXPIRE's: where XADD went through, it did too
                if failed:
                    audio = sum(len(item.payload) for item in failed if item.kind is Kind.AUDIO)
                    refused[key] = _StreamQueue(failed, queue.maxlen, audio)
                    if key in new_keys:
                        new_keys.remove(key)  # the redirected write sets the TTL where the stream is now
        self._expiring.update(new_keys)
        return count - sum(len(queue.items) for queue in refused.values()), refused

    async def _write_again(self) -> None:
        """After a failure: what Redis acknowledged in the last moments, under the ids it gave."""
        by_connection: dict[int, tuple[DirectConnection, list[bytes], list[int]]] = {}
        for again in self._recent.entries(time.monotonic()):
            if again.key in self._fenced:
                continue
            if self._direct is not None:
                connection = self._direct
            else:
                assert self._nodes is not None
                connection = (await self._nodes.connection_for(again.key))[1]
            _, parts, count = by_connection.setdefault(id(connection), (connection, [], [0]))
            self._xadd.pack_again(again.key, again.maxlen, again.entry_id, again.kind, again.payload, again.t_us,
                                  parts)
            count[0] += 1
        restored = 0
        for connection, parts, count in by_connection.values():
            replies = await connection.execute(parts, count[0], WRITE_TIMEOUT_S, errors_as_replies=True)
            restored += sum(1 for reply in replies if not isinstance(reply, RedisError))
        self._rewrite = False
        if restored:
            log.warning("redis had lost %d entries it had acknowledged: written again in place", restored)

    async def close(self) -> None:
        if self._direct is not None:
            await self._direct.close()
        if self._nodes is not None:
            await self._nodes.close()

    def _requeue(self, batch: dict[str, _StreamQueue]) -> None:
        # Older entries go back in front of anything appended while the write was failing.
        for key, queue in batch.items():
            if key in self._fenced:
                continue  # the call moved to another instance while the write was failing
            newer = self._pending.get(key)
            if newer is not None:
                queue.items.extend(newer.items)
                queue.audio_bytes += newer.audio_bytes
            self._pending[key] = queue
            if queue.audio_bytes > self._max_audio:
                self._shed_audio(queue, self._max_audio)
        self._wakeup.set()

    @staticmethod
    def _shed_audio(queue: _StreamQueue, limit: int) -> None:
        while queue.audio_bytes > limit:
            index = next((i for i, p in enumerate(queue.items) if p.kind is Kind.AUDIO), None)
            if index is None:
                queue.audio_bytes = 0
                return
            queue.audio_bytes -= len(queue.items.pop(index).payload)

    def _release_waiters(self) -> None:
        if not self._waiters:
            return
        still = []
        for target, future in self._waiters:
            if target <= self._generation:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((target, future))
        self._waiters = still
