"""The Deepgram side of one call: the socket, its outbox, caller audio held while it opens, KeepAlive.

One link lives as long as the call; Deepgram sessions come and go under it (a drop, a stall,
a reconnect). Caller audio sent while no session is attached waits in a bounded buffer and
goes first into the next one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from switchboard import deepgram
from switchboard.retry import Retry

from . import metrics
from .agent_socket import AgentSocket
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
        self._socket: AgentSocket | None = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._last_audio_at = time.monotonic()
        self._last_keepalive_at = 0.0

    @property
    def attached(self) -> bool:
        return self._socket is not None

    async def open(self, message: dict[str, Any], *, give_up: Any) -> tuple[str, float]:
        """Connect and send `Settings`, retrying what Deepgram says may be retried; raises DeepgramUnavailable.

        `give_up()` is asked before each retry: the call may have ended meanwhile.
        """
        config = self._port.settings
        attempts = config.deepgram_max_reconnects + 1
        backoff = CONNECT_PAUSES.backoff(unit=self._port.random.random)
        while True:
            try:
                socket, request_id, took = await open_agent(
                    config.deepgram_agent_url, config.deepgram_api_key.get_secret_value(), message,
                    config.deepgram_connect_timeout_s, library=config.worker_ws_library,
                    max_queued_bytes=config.worker_outbox_max_bytes, stall_timeout_s=config.worker_stall_timeout_s,
                    stream_sid=self._extra.get("stream_sid", ""),
                )
            except DeepgramUnavailable as exc:
                metrics.DG_ERRORS.labels(exc.code).inc()
                log.warning("deepgram connect failed (%s), attempt %d/%d", exc, backoff.failures + 1, attempts,
                            extra=self._extra)
                if not exc.retryable or backoff.failures + 1 >= attempts or give_up():
                    raise
                await backoff.wait(exc)
                continue
            self._attach(socket)
            return request_id, took

    def _attach(self, socket: AgentSocket) -> None:
        self._socket = socket
        self._last_audio_at = time.monotonic()
        if self._buffer:
            socket.send(b"".join(self._buffer))
            self._buffer.clear()
            self._buffered = 0

    async def frames(self) -> AsyncIterator[str | bytes]:
        """What the attached session sends, until it closes (then `detach()` it)."""
        if self._socket is None:
            return
        async for frame in self._socket.frames():
            yield frame

    async def detach(self) -> None:
        self._socket = None

    def abort(self) -> None:
        """Drop the session at once (a stall, a release): `frames()` ends."""
        if self._socket is not None:
            self._socket.abort()

    async def close(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.close()

    async def close_after(self, drain_s: float) -> None:
        """Close once what is queued has gone out (at most `drain_s`)."""
        socket = self._socket
        if socket is not None:
            await socket.drained(drain_s)
            await socket.close()

    # --- sending -------------------------------------------------------------------------------
    def send(self, message: str) -> bool:
        if self._socket is None:
            return False
        self._socket.send(message)
        return True

    def send_audio(self, chunk: bytes) -> None:
        if self._socket is not None:
            self._socket.send(chunk)
            metrics.AUDIO_BYTES_TO_DG.inc(len(chunk))
            self._last_audio_at = time.monotonic()
        elif self._buffered < BUFFER_WHILE_CONNECTING_BYTES:
            self._buffer.append(chunk)
            self._buffered += len(chunk)

    def keep_alive(self, now: float) -> bool:
        """Twice a second: drop a session whose sends hang; KeepAlive while the caller's audio pauses.

        True if a KeepAlive went out.
        """
        if self._socket is None:
            return False
        if self._socket.stalled(now):
            log.warning("deepgram socket stalled (a send hung); dropping it to reconnect", extra=self._extra)
            self.abort()
            return False
        settings = self._port.settings
        if now - self._last_audio_at < settings.keepalive_after_s:
            return False
        if self._last_keepalive_at > self._last_audio_at and now - self._last_keepalive_at < settings.keepalive_every_s:
            return False
        self._socket.send(deepgram.KEEPALIVE)
        self._last_keepalive_at = now
        metrics.KEEPALIVES.inc()
        return True
