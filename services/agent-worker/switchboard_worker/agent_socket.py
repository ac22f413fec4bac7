"""The Deepgram WebSocket as a call's AgentLink sees it, whichever library carries it (WORKER_WS_LIBRARY).

What a call needs: send a message (in order; caller audio 50 times a second, so without a task
or an await per message where the library allows), read what Deepgram sends until it closes,
tell whether a send has hung, close after what is queued, abort.

- `PicowsAgentSocket` (the default): picows, a Cython WebSocket library; a send goes straight
  into the transport unless it paused writing; what Deepgram sends (ten audio messages a second
  and a few events) waits in a queue for the session's reader.
- `WebsocketsAgentSocket`: the `websockets` library, sends awaited in order through an Outbox.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

from picows import WSCloseCode, WSListener, WSMsgType
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from switchboard.outbox import Outbox, PeerStalled

Message = str | bytes


class AgentSocket(Protocol):
    def send(self, message: Message) -> None: ...

    def frames(self) -> AsyncIterator[Message]:
        """What Deepgram sends, until the connection closes."""

    async def drained(self, timeout_s: float) -> None:
        """Until what is queued has gone out (at most `timeout_s`)."""

    def stalled(self, now: float) -> bool: ...

    def abort(self) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class WebsocketsAgentSocket:
    def __init__(self, ws: ClientConnection, *, max_bytes: int, stall_timeout_s: float, stream_sid: str) -> None:
        self._ws = ws
        self._outbox = Outbox(ws.send, max_bytes=max_bytes, stall_timeout_s=stall_timeout_s)
        self._sender = asyncio.create_task(self._send_loop(), name=f"dg-send-{stream_sid}")

    def send(self, message: Message) -> None:
        self._outbox.put(message)

    async def frames(self) -> AsyncIterator[Message]:
        try:
            async for frame in self._ws:
                yield frame
        except ConnectionClosed:
            pass
        finally:
            await self._stop_sending()

    async def drained(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._outbox.drained()
        except TimeoutError:
            pass

    def stalled(self, now: float) -> bool:
        return self._outbox.stalled(now)

    def abort(self) -> None:
        self._ws.transport.abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code, reason)
        await self._stop_sending()

    async def recv(self) -> Message:
        """One message (the handshake's Welcome and SettingsApplied)."""
        return await self._ws.recv()

    async def _stop_sending(self) -> None:
        self._outbox.close()
        self._sender.cancel()
        await asyncio.gather(self._sender, return_exceptions=True)

    async def _send_loop(self) -> None:
        try:
            await self._outbox.run()
        except PeerStalled:
            await self._ws.close(1011, "stalled")
        except ConnectionClosed:
            pass


class PicowsAgentSocket(WSListener):
    """A picows listener that is also the call's socket: frames in through a queue, sends straight out."""

    def __init__(self, *, max_bytes: int, stall_timeout_s: float) -> None:
        super().__init__()
        self._max_bytes = max_bytes
        self._stall_timeout_s = stall_timeout_s
        self._transport: Any = None
        self._incoming: asyncio.Queue[Message | None] = asyncio.Queue()
        self._queue: deque[Message] = deque()
        self._queued_bytes = 0
        self._paused_since: float | None = None
        self._closed = False
        self._drained = asyncio.Event()
        self._drained.set()

    # --- picows callbacks ------------------------------------------------------------------------
    def on_ws_connected(self, transport: Any) -> None:
        self._transport = transport

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.BINARY:
            self._incoming.put_nowait(frame.get_payload_as_bytes())
        elif kind is WSMsgType.TEXT:
            self._incoming.put_nowait(frame.get_payload_as_utf8_text())
        elif kind is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        # Deepgram sends whole messages; PING is answered by picows itself.

    def on_ws_disconnected(self, transport: Any) -> None:
        self._closed = True
        self._incoming.put_nowait(None)
        self._drained.set()

    def pause_writing(self) -> None:
        self._paused_since = time.monotonic()
        self._drained.clear()

    def resume_writing(self) -> None:
        self._paused_since = None
        self._flush()

    # --- the call's side ---------------------------------------------------------------------------
    def send(self, message: Message) -> None:
        if self._closed:
            return
        if self._paused_since is None and not self._queue:
            self._write(message)
            return
        self._queue.append(message)
        self._queued_bytes += len(message)
        self._drained.clear()

    async def frames(self) -> AsyncIterator[Message]:
        while (frame := await self._incoming.get()) is not None:
            yield frame
        self._incoming.put_nowait(None)  # a later reader sees the end too

    async def recv(self) -> Message:
        frame = await self._incoming.get()
        if frame is None:
            self._incoming.put_nowait(None)
            raise ConnectionError("Deepgram closed the connection")
        return frame

    async def drained(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._drained.wait()
        except TimeoutError:
            pass

    def stalled(self, now: float) -> bool:
        if self._queued_bytes > self._max_bytes:
            return True
        return self._paused_since is not None and now - self._paused_since > self._stall_timeout_s

    def abort(self) -> None:
        self._closed = True
        self._queue.clear()
        if self._transport is not None:
            self._transport.disconnect(graceful=False)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._transport is None or self._transport.is_disconnected:
            return
        self._flush()
        self._closed = True
        self._transport.send_close(WSCloseCode(code), reason.encode()[:120])
        self._transport.disconnect(graceful=True)
        await self._transport.wait_disconnected()

    def _write(self, message: Message) -> None:
        if isinstance(message, bytes):
            self._transport.send(WSMsgType.BINARY, message)
        else:
            self._transport.send(WSMsgType.TEXT, message.encode())

    def _flush(self) -> None:
        while self._queue and self._paused_since is None:
            message = self._queue.popleft()
            self._queued_bytes -= len(message)
            self._write(message)
        if not self._queue and self._paused_since is None:
            self._drained.set()
