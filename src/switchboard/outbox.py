"""A bounded send queue for one WebSocket peer, drained by one sender task.

Producers never await a peer: a slow or stalled socket fills its own outbox, not the
instance's shared reader. A peer that stops accepting data is cut once its queue exceeds
`max_bytes` (counting what the transport holds unsent), or when its owner's periodic
`stalled()` check finds a send waiting longer than `stall_timeout_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from websockets.exceptions import ConnectionClosed

Message = str | bytes


class PeerStalled(Exception):
    pass


class Outbox:
    def __init__(
        self,
        send: Callable[[Message], object],
        *,
        max_bytes: int = 512 * 1024,
        stall_timeout_s: float = 10.0,
        transport_buffered: Callable[[], int] | None = None,
    ) -> None:
        self._send = send
        self._transport_buffered = transport_buffered
        self._queue: deque[Message] = deque()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._stall_timeout_s = stall_timeout_s
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._sending_since: float | None = None
        self.overflowed = False

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def put(self, message: Message) -> None:
        if self._closed:
            return
        self._queue.append(message)
        self._bytes += len(message)
        self._idle.clear()
        self._ready.set()
        if self._bytes > self._max_bytes:
            self.overflowed = True
            self._ready.set()

    def stalled(self, now: float) -> bool:
        """A send has been waiting for the peer longer than the stall timeout (`now`: monotonic)."""
        started = self._sending_since
        return started is not None and now - started > self._stall_timeout_s

    def clear(self, keep: Callable[[Message], bool] | None = None) -> int:
        """Drop what is not yet handed to the socket (except messages `keep` accepts)."""
        kept = [m for m in self._queue if keep(m)] if keep is not None else []
        dropped = len(self._queue) - len(kept)
        self._queue.clear()
        self._queue.extend(kept)
        self._bytes = sum(len(m) for m in kept)
        self.overflowed = False
        return dropped

    def close(self) -> None:
        """Accept nothing more; the sender finishes what is queued, then returns."""
        self._closed = True
        self._ready.set()

    async def drained(self) -> None:
        await self._idle.wait()

    async def run(self) -> None:
        """Send queued messages in order. Raises PeerStalled or ConnectionClosed."""
        while True:
            if not self._queue:
                self._idle.set()
                if self._closed:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            if self.overflowed:
                raise PeerStalled(f"peer is not reading: {self._bytes} bytes queued")
            message = self._queue.popleft()
            self._bytes -= len(message)
            # No per-message timeout (it cost ~5 % of the edge's CPU): the owner's periodic
            # `stalled()` check cuts a socket whose send has hung.
            self._sending_since = time.monotonic()
            try:
                await self._send(message)  # type: ignore[misc]
            except ConnectionClosed:
                self._closed = True
                self._queue.clear()
                self._idle.set()
                raise
            finally:
                self._sending_since = None
            # Bytes the socket accepted but the peer has not read count against the cap too:
            # a peer with a tiny receive window would otherwise hide behind the kernel buffers.
            if self._transport_buffered is not None and self._transport_buffered() > self._max_bytes:
                raise PeerStalled(f"peer is not reading: {self._transport_buffered()} bytes unsent in the transport")
