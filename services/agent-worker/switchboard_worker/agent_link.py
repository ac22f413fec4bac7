"""The Deepgram side of one call: the socket, its outbox, caller audio held while it opens, KeepAlive.

One link lives as long as the call; Deepgram sessions come and go under it (a drop, a stall,
a reconnect). Caller audio sent while no session is attached waits in a bounded buffer and
goes first into the next one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from switchboard import deepgram
from switchboard.outbox import Outbox, PeerStalled
from switchboard.retry import Retry

from . import metrics
from .deepgram_link import DeepgramUnavailable as DeepgramUnavailable
from .deepgram_link import open_agent
from .port import WorkerPort

log = logging.getLogger(__name__)

BUFFER_WHILE_CONNECTING_BYTES = 8000 * 5
# Deepgram refusing a connection (429, 5xx) is retried with these pauses, within the call's budget.
CONNECT_PAUSES = Retry(base_s=0.2, cap_s=2.0)


class AgentLink:
    def __init__(self, port: WorkerPort, extra: dict[str, str]) -> None:
        self._port = port
        self._extra = extra
        self._ws: ClientConnection | None = None
        self._outbox: Outbox | None = None
        self._sender: asyncio.Task[None] | None = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._last_audio_at = time.monotonic()
        self._last_keepalive_at = 0.0

    @property
    def attached(self) -> bool:
        return self._outbox is not None

    async def open(self, message: dict[str, Any], *, give_up: Any) -> tuple[str, float]:
        """Connect and send `Settings`, retrying what Deepgram says may be retried; raises DeepgramUnavailable.

        `give_up()` is asked before each retry: the call may have ended meanwhile.
        """
        config = self._port.settings
        attempts = config.deepgram_max_reconnects + 1
        backoff = CONNECT_PAUSES.backoff(unit=self._port.random.random)
        while True:
            try:
                ws, request_id, took = await open_agent(
                    config.deepgram_agent_url, config.deepgram_api_key.get_secret_value(), message,
                    config.deepgram_connect_timeout_s,
                )
            except DeepgramUnavailable as exc:
                metrics.DG_ERRORS.labels(exc.code).inc()
                log.warning("deepgram connect failed (%s), attempt %d/%d", exc, backoff.failures + 1, attempts,
                            extra=self._extra)
                if not exc.retryable or backoff.failures + 1 >= attempts or give_up():
                    raise
                await backoff.wait(exc)
                continue
            self._attach(ws)
            return request_id, took

    def _attach(self, ws: ClientConnection) -> None:
        settings = self._port.settings
        self._ws = ws
        self._outbox = Outbox(ws.send, max_bytes=settings.worker_outbox_max_bytes,
                              stall_timeout_s=settings.worker_stall_timeout_s)
        self._sender = asyncio.create_task(self._send_loop(self._outbox, ws), name=f"dg-send-{self._extra['stream_sid']}")
        self._last_audio_at = time.monotonic()
        if self._buffer:
            self._outbox.put(b"".join(self._buffer))
            self._buffer.clear()
            self._buffered = 0

    async def _send_loop(self, outbox: Outbox, ws: ClientConnection) -> None:
        try:
            await outbox.run()
        except PeerStalled as exc:
            log.warning("deepgram socket stalled: %s", exc, extra=self._extra)
            await ws.close(1011, "stalled")
        except ConnectionClosed:
            pass

    async def frames(self) -> AsyncIterator[str | bytes]:
        """What the attached session sends, until it closes (then `detach()` it)."""
        ws = self._ws
        if ws is None:
            return
        try:
            async for frame in ws:
                yield frame
        except ConnectionClosed:
            pass

    async def detach(self) -> None:
        self._ws = None
        outbox, self._outbox = self._outbox, None
        if outbox is not None:
            outbox.close()
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    def abort(self) -> None:
        """Drop the session at once (a stall, a release): `frames()` ends."""
        if self._ws is not None:
            self._ws.transport.abort()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        await self.detach()

    async def close_after(self, drain_s: float) -> None:
        """Close once what is queued has gone out (at most `drain_s`)."""
        if self._outbox is not None:
            try:
                async with asyncio.timeout(drain_s):
                    await self._outbox.drained()
            except TimeoutError:
                pass
        if self._ws is not None:
            await self._ws.close()

    # --- sending -------------------------------------------------------------------------------
    def send(self, message: str) -> bool:
        if self._outbox is None:
            return False
        self._outbox.put(message)
        return True

    def send_audio(self, chunk: bytes) -> None:
        if self._outbox is not None:
            self._outbox.put(chunk)
            metrics.AUDIO_BYTES_TO_DG.inc(len(chunk))
            self._last_audio_at = time.monotonic()
        elif self._buffered < BUFFER_WHILE_CONNECTING_BYTES:
            self._buffer.append(chunk)
            self._buffered += len(chunk)

    def keep_alive(self, now: float) -> bool:
        """Twice a second: drop a session whose sends hang; KeepAlive while the caller's audio pauses.

        True if a KeepAlive went out.
        """
        if self._outbox is None:
            return False
        if self._outbox.stalled(now):
            log.warning("deepgram socket stalled (a send hung); dropping it to reconnect", extra=self._extra)
            self.abort()
            return False
        settings = self._port.settings
        if now - self._last_audio_at < settings.keepalive_after_s:
            return False
        if self._last_keepalive_at > self._last_audio_at and now - self._last_keepalive_at < settings.keepalive_every_s:
            return False
        self._outbox.put(deepgram.KEEPALIVE)
        self._last_keepalive_at = now
        metrics.KEEPALIVES.inc()
        return True
