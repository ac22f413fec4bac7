"""The console's live feed: ONE reader per control process, fanned out to every browser tab.

Two loops, started with the first subscriber and owned by the hub (closed with the app):

- the table loop looks at the live calls every CONSOLE_TABLE_INTERVAL_S while any tab shows
  the table, and sends each tab only the rows that changed (a new tab gets the whole table);
- the event follower holds one blocking XREAD over the events streams of every call that some
  tab has open, plus a wake stream of its own that interrupts the wait when a tab opens a call.
  A tab that opens a call first gets that call's history (the entries the follower had already
  passed), then the live entries, in order, without gaps or repeats.

A tab that falls more than SUBSCRIBER_QUEUE messages behind is cut off with a `resync`
message (it reconnects and starts from a fresh snapshot): a slow browser must not make the
hub hold an unbounded backlog for it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import RedisError

from switchboard import keys as keyspace
from switchboard import redis_types

from ..callstate import decode_event
from ..deps import State
from . import outbound_rows, table

log = logging.getLogger(__name__)
SUBSCRIBER_QUEUE = 2000
HISTORY_PAGE = 1000
FOLLOW_BLOCK_MS = 5000
RETRY_PAUSE_S = 1.0
CLUSTER_POLL_S = 0.2


def sse(kind: str, data: Any, entry_id: str | None = None) -> bytes:
    head = b"id: %s\n" % entry_id.encode() if entry_id else b""
    return head + b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps(data))


@dataclass(eq=False)
class Subscriber:
    """One browser tab: what it watches and the messages queued for it."""

    table: bool
    stream_sid: str | None = None
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE))
    position: str = "0-0"  # last event entry delivered of the watched stream
    skipping: bool = False  # in a stream the call moved to: the conversation copied over from the old one
    cut_off: bool = False

    def send_end(self) -> None:
        if not self.cut_off and not self.queue.full():
            self.queue.put_nowait(None)

    def send(self, message: bytes) -> None:
        if self.cut_off:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.cut_off = True
            self.queue = asyncio.Queue(2)
            self.queue.put_nowait(sse("resync", {"reason": "too far behind"}))
            self.queue.put_nowait(None)


class Hub:
    def __init__(self, state: State, *, table_interval_s: float, max_rows: int) -> None:
        self._state = state
        self._interval = table_interval_s
        self._max_rows = max_rows
        self._subscribers: set[Subscriber] = set()
        self._rows: dict[str, table.Row] | None = None
        self._total = 0
        self._table_wanted = asyncio.Event()
        self._watchers: dict[str, set[Subscriber]] = {}  # stream sid → tabs that have it open
        self._positions: dict[str, str] = {}  # stream sid → how far the follower has read
        self._attaching: list[Subscriber] = []
        self._wake_key = state.keys.wake(f"console-{secrets.token_hex(6)}")
        self._wake_pos = "0-0"
        self._tasks: list[asyncio.Task[None]] = []

    # --- tabs ---------------------------------------------------------------------------------
    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def subscribe(self, *, table_wanted: bool, stream_sid: str | None) -> Subscriber:
        self._start()
        subscriber = Subscriber(table=table_wanted, stream_sid=stream_sid)
        self._subscribers.add(subscriber)
        if table_wanted:
            self._table_wanted.set()
            if self._rows is not None:
                subscriber.send(sse("snapshot", {"rows": list(self._rows.values()), "total": self._total}))
        if stream_sid is not None:
            self._attaching.append(subscriber)
            await self._wake()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        if subscriber.stream_sid is not None:
            watchers = self._watchers.get(subscriber.stream_sid)
            if watchers is not None:
                watchers.discard(subscriber)
                if not watchers:
                    del self._watchers[subscriber.stream_sid]
                    self._positions.pop(subscriber.stream_sid, None)
        if not any(s.table for s in self._subscribers):
            self._table_wanted.clear()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        for subscriber in self._subscribers:
            subscriber.send(sse("resync", {"reason": "server stopping"}))
            subscriber.send_end()

    def _start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._supervised("table", self._table_loop)),
                           asyncio.create_task(self._supervised("events", self._follow_loop))]

    async def _supervised(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        # A Redis outage must not end the feed for good: log, pause, go on (tabs keep waiting).
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("console %s feed: redis failed: %r", name, exc)
            except Exception:
                log.exception("console %s feed crashed; restarting it", name)
            await asyncio.sleep(RETRY_PAUSE_S)

    async def _wake(self) -> None:
        await self._state.redis.xadd(self._wake_key, {b"w": b"1"}, maxlen=keyspace.WAKE_STREAM_MAXLEN,
                                     approximate=True)

    # --- the table ----------------------------------------------------------------------------
    async def _table_loop(self) -> None:
        while True:
            await self._table_wanted.wait()
            rows, total = await self.read_rows()
            if self._rows is None:
                message = sse("snapshot", {"rows": list(rows.values()), "total": total})
                self._broadcast_table(message)
            else:
                changed, gone = table.diff(self._rows, rows)
                if changed or gone or total != self._total:
                    self._broadcast_table(sse("rows", {"upsert": changed, "remove": gone, "total": total}))
            self._rows, self._total = rows, total
            await asyncio.sleep(self._interval)

    def _broadcast_table(self, message: bytes) -> None:
        for subscriber in list(self._subscribers):
            if subscriber.table:
                subscriber.send(message)

    async def read_rows(self) -> tuple[dict[str, table.Row], int]:
        redis, keys = self._state.redis, self._state.keys
        total = await redis.zcard(keys.live_calls())
        sids = redis_types.members(await redis.zrange(keys.live_calls(), 0, self._max_rows - 1))
        pipe = redis.pipeline(transaction=False)
        for sid in sids:
            pipe.hgetall(keys.call(sid.decode()))
        rows: dict[str, table.Row] = {}
        for sid, raw in zip(sids, await pipe.execute() if sids else []):
            if raw:
                fields = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
                fields.setdefault("stream_sid", sid.decode())
                rows[sid.decode()] = table.row(fields)
        total += await outbound_rows.decorate(redis, keys.prefix, rows)
        return rows, total

    # --- one call's events --------------------------------------------------------------------
    async def _follow_loop(self) -> None:
        keys = self._state.keys
        while True:
            await self._attach_new()
            by_key = {keys.events(sid): sid for sid in self._watchers}
            streams = {key: self._positions[sid] for key, sid in by_key.items()}
            for key, items in await self._read(streams):
                key = key.decode()
                if key == self._wake_key:
                    self._wake_pos = items[-1][0].decode()
                    continue
                sid = by_key.get(key)
                if sid is None or sid not in self._watchers:
                    continue  # its last tab went away while the read was under way
                for entry_id, fields in items:
                    await self._deliver(sid, entry_id.decode(), fields)

    async def _read(self, streams: dict[str, str]) -> list[Any]:
        if not self._state.settings.redis_cluster:
            wanted = redis_types.writable({**streams, self._wake_key: self._wake_pos})
            response = await self._state.redis_block.xread(wanted, count=500, block=FOLLOW_BLOCK_MS)
            return list(response or [])
        # Redis Cluster: one XREAD may not span slots, so each open call is read on its own, without
        # blocking, a few times a second (the open calls of a few consoles, not the fleet's).
        found: list[Any] = []
        for key, position in streams.items():
            found.extend(await self._state.redis.xread({key: position}, count=500) or [])
        if not found:
            await asyncio.sleep(CLUSTER_POLL_S)
        return found

    async def _attach_new(self) -> None:
        """History for each newly opened call: up to where the follower is, or all of it."""
        while self._attaching:
            subscriber = self._attaching.pop(0)
            sid = subscriber.stream_sid
            if sid is None or subscriber not in self._subscribers:
                continue
            upto = self._positions.get(sid)
            start = "-"
            while True:
                page = redis_types.entries(await self._state.redis.xrange(
                    self._state.keys.events(sid), min=start, max=upto or "+", count=HISTORY_PAGE))
                for entry_id, fields in page:
                    self._to_watcher(subscriber, entry_id.decode(), fields)
                if len(page) < HISTORY_PAGE:
                    break
                start = "(" + page[-1][0].decode()
                await asyncio.sleep(0)
            if upto is None:
                self._positions[sid] = subscriber.position
            else:
                subscriber.position = upto
            self._watchers.setdefault(sid, set()).add(subscriber)
            subscriber.send(sse("history_done", {"stream_sid": sid}))

    def _to_watcher(self, subscriber: Subscriber, entry_id: str, fields: dict[bytes, bytes]) -> dict[str, Any] | None:
        subscriber.position = entry_id
        event = decode_event(fields)
        if event is None:
            return None
        if subscriber.skipping:
            subscriber.skipping = event["type"] != "resumed_from_stream"
            return None
        subscriber.send(sse("call", event, entry_id))
        return event

    async def _deliver(self, sid: str, entry_id: str, fields: dict[bytes, bytes]) -> None:
        self._positions[sid] = entry_id
        event = decode_event(fields)
        watchers = list(self._watchers.get(sid, ()))
        for subscriber in watchers:
            self._to_watcher(subscriber, entry_id, fields)
        if event and event["type"] == "call_ended" and event.get("reason") == "moved_to_new_stream":
            await self._follow_move(sid, watchers)

    async def _follow_move(self, old: str, watchers: list[Subscriber]) -> None:
        # The edge was lost and the call went on as a new stream: its tabs follow it there.
        record = redis_types.maybe_text(await self._state.redis.hget(self._state.keys.call(old), "call_sid"))
        found = await self._state.redis.get(self._state.keys.call_by_callsid(record)) if record else None
        new = redis_types.maybe_text(found)
        if new is None or new == old:
            return
        self._watchers.pop(old, None)
        self._positions.pop(old, None)
        for subscriber in watchers:
            subscriber.send(sse("call", {"type": "stream_moved", "from": old, "to": new}))
            subscriber.stream_sid, subscriber.position, subscriber.skipping = new, "0-0", True
            self._attaching.append(subscriber)
