"""The Twilio WebSocket as a call sees it, whichever library carries it (EDGE_WS_LIBRARY).

`EdgeCall` needs little of its socket: send a text message (in order, queued while the peer is
slow), drop what is still queued (a barge-in), tell whether a send has hung, close, abort.
Two implementations:

- `PicowsSocket` (the default): picows, a Cython WebSocket library; a send goes straight into
  the transport unless the transport asked to pause, so there is no task or await per message.
  Measured on this machine, an echo of Twilio-sized text frames costs about a third of the CPU
  of `websockets` (docs/benchmarks.md).
- `WebsocketsSocket`: the `websockets` library, a send awaited through a per-call `Outbox`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from picows import WSCloseCode, WSMsgType
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from switchboard.outbox import Outbox, PeerStalled


class TwilioSocket(Protocol):
    peer: str

    def send(self, message: str) -> None: ...

    def drop_queued(self, keep: Callable[[str | bytes], bool]) -> None:
        """Forget messages not yet handed to the network, except those `keep` accepts."""

    def stalled(self, now: float) -> bool:
        """The peer has not taken what was sent for longer than the stall timeout (`now`: monotonic)."""

    def close(self, code: int, reason: str) -> None:
        """Start the close handshake after what is queued."""

    def abort(self) -> None:
        """Drop the connection at once (a peer that does not read will not read a close frame either)."""

    async def flush_and_stop(self) -> None:
        """The call is over: send what is queued (bounded by the stall checks), then stop sending."""


class WebsocketsSocket:
    """`websockets`: each send awaited in order by one task draining the call's Outbox."""

    def __init__(self, ws: ServerConnection, *, max_bytes: int, stall_timeout_s: float,
                 on_stalled: Callable[[str], None]) -> None:
        self._ws = ws
        self.peer = str(ws.remote_address)
        self._outbox = Outbox(ws.send, max_bytes=max_bytes, stall_timeout_s=stall_timeout_s,
                              transport_buffered=ws.transport.get_write_buffer_size)
        self._on_stalled = on_stalled
        self._sender = asyncio.create_task(self._send_loop())
        self._closing: asyncio.Task[None] | None = None

    def send(self, message: str) -> None:
        self._outbox.put(message)

    def drop_queued(self, keep: Callable[[str | bytes], bool]) -> None:
        self._outbox.clear(keep=keep)

    def stalled(self, now: float) -> bool:
        return self._outbox.stalled(now)

    def close(self, code: int, reason: str) -> None:
        # Never awaited inside the read loop: websockets stops reading from a peer whose unread
        # frames fill its queue, and the peer's close frame would sit behind them.
        if self._closing is None:
            self._closing = asyncio.create_task(self._ws.close(code, reason))

    def abort(self) -> None:
        self._outbox.clear()
        self._ws.transport.abort()

    async def flush_and_stop(self) -> None:
        if self._closing is not None:
            await asyncio.gather(self._closing, return_exceptions=True)
        self._outbox.close()
        self._sender.cancel()
        await asyncio.gather(self._sender, return_exceptions=True)

    async def _send_loop(self) -> None:
        try:
            await self._outbox.run()
        except PeerStalled as exc:
            self._on_stalled(str(exc))
            self.abort()
        except ConnectionClosed:
            pass


class PicowsSocket:
    """picows: a send is written to the transport at once, unless the transport paused writing.

    While paused (the kernel and transport buffers are full: a slow peer), messages wait here, in
    order, and can still be dropped by a barge-in; past `max_bytes` queued, or paused longer than
    the stall timeout, the peer counts as stalled.
    """

    def __init__(self, transport: object, peer: str, *, max_bytes: int, stall_timeout_s: float) -> None:
        self._transport = transport
        self._text = WSMsgType.TEXT
        self.peer = peer
        self._max_bytes = max_bytes
        self._stall_timeout_s = stall_timeout_s
        self._queue: deque[str] = deque()
        self._queued_bytes = 0
        self._paused_since: float | None = None
        self._closed = False

    # --- what the call does --------------------------------------------------------------------
    def send(self, message: str) -> None:
        if self._closed:
            return
        if self._paused_since is None and not self._queue:
            self._transport.send(self._text, message.encode())  # type: ignore[attr-defined]
            return
        self._queue.append(message)
        self._queued_bytes += len(message)

    def drop_queued(self, keep: Callable[[str | bytes], bool]) -> None:
        kept = [m for m in self._queue if keep(m)]
        self._queue.clear()
        self._queue.extend(kept)
        self._queued_bytes = sum(len(m) for m in kept)

    def stalled(self, now: float) -> bool:
        if self._queued_bytes > self._max_bytes:
            return True
        return self._paused_since is not None and now - self._paused_since > self._stall_timeout_s

    def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._flush()
        self._closed = True
        self._transport.send_close(WSCloseCode(code), reason.encode()[:120])  # type: ignore[attr-defined]
        self._transport.disconnect(graceful=True)  # type: ignore[attr-defined]

    def going_away(self) -> None:
        """Shutdown: the close frame (1001) goes after what is queued; the peer's answer ends the
        connection (or `abort` does, if it never comes), as with websockets' closing handshake."""
        if self._closed:
            return
        self._flush()
        self._closed = True
        self._transport.send_close(WSCloseCode.GOING_AWAY, b"going away")  # type: ignore[attr-defined]

    def abort(self) -> None:
        self._closed = True
        self._queue.clear()
        self._queued_bytes = 0
        self._transport.disconnect(graceful=False)  # type: ignore[attr-defined]

    async def flush_and_stop(self) -> None:
        self._flush()
        self._closed = True

    # --- what the transport says -----------------------------------------------------------------
    def pause_writing(self) -> None:
        self._paused_since = time.monotonic()

    def resume_writing(self) -> None:
        self._paused_since = None
        self._flush()

    def _flush(self) -> None:
        while self._queue and self._paused_since is None:
            message = self._queue.popleft()
            self._queued_bytes -= len(message)
            self._transport.send(self._text, message.encode())  # type: ignore[attr-defined]
