"""The edge instance: the Twilio WebSocket server, its shared Redis writer and reader, its life.

Startup → serve → shutdown reads top to bottom here. Each stream is an `EdgeCall` (call.py)
given a `CallPort` (port.py): the writer, the registry of live calls (calls.py), the gate a
start passes (gate.py) — never this server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Self

from switchboard import signature
from switchboard.config import keys_for, redis_client, redis_reachable
from switchboard.httpserver import HealthServer
from switchboard.loadmeter import LoadMeter
from switchboard.streams import StreamReader, StreamWriter
from switchboard.supervise import Supervisor

from . import frontends, metrics
from .admission import EdgeAdmission
from .call import EdgeCall
from .calls import LiveCalls
from .gate import StartGate
from .port import CallPort
from .records import MAX_CALL_TTL_S
from .settings import EdgeSettings
from .sockets import TwilioSocket
from .stream_core import AgentBatch

log = logging.getLogger(__name__)

STREAM_PATHS = ("/twilio", "/twilio/")


class EdgeServer:
    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.keys = keys_for(settings)
        self.redis = redis_client(settings)
        self._redis_block = redis_client(settings, blocking=True)
        self.writer = StreamWriter(
            self.redis,
            batch_window_s=settings.edge_batch_window_ms / 1000,
            key_ttl_s=MAX_CALL_TTL_S,
            max_pending_audio_bytes=int(settings.edge_outage_buffer_s * 8000),
            on_flush=_on_flush,
            on_error=lambda exc: metrics.REDIS_ERRORS.inc(),
        )
        self.reader = StreamReader(
            self._redis_block,
            self.redis,
            self.keys.wake(settings.edge_id),
            self._on_agent_entries,
            on_error=lambda exc: metrics.REDIS_ERRORS.inc(),
            pace_s=settings.edge_batch_window_ms / 1000,
        )
        self.load = LoadMeter(settings.edge_load_threshold, on_change=_load_changed)
        self.admission = EdgeAdmission(self.redis, self.keys, load=self.load, edge_id=settings.edge_id)
        self.calls = LiveCalls(self.reader, self.writer)
        self.tasks = Supervisor("edge")
        self._port = CallPort(settings, self.keys, self.writer, self.calls,
                              StartGate(self.redis, self.keys, settings, self.admission))
        self._listener: frontends.Listener | None = None
        self._health = HealthServer(settings.metrics_host, settings.metrics_port, self._readiness)
        self._draining = False

    @property
    def port(self) -> int:
        assert self._listener is not None
        return self._listener.port

    @property
    def metrics_port(self) -> int:
        return self._health.port

    async def __aenter__(self) -> Self:
        self.tasks.spawn(self.writer.run(), name="writer")
        self.tasks.spawn(self.reader.run(), name="reader")
        self.tasks.spawn(self.calls.watch_stalls(), name="stall-watch")
        self.tasks.spawn(self.admission.run(), name="admission")
        self.tasks.spawn(self.load.run(), name="load")
        metrics.LOAD.set_function(lambda: self.load.load)
        metrics.TASKS.set_function(lambda: len(asyncio.all_tasks()))  # read at scrape time, on this loop
        await self._health.start()
        self._listener = await frontends.listen(self.settings, self._route, self._new_call)
        log.info(
            "edge listening",
            extra={"port": self.port, "metrics_port": self.metrics_port, "edge_id": self.settings.edge_id},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        """Close every stream with 1001 (Twilio continues the TwiML), flush Redis, stop."""
        self._draining = True
        self.tasks.closing()
        if self._listener is not None:
            await self._listener.close(timeout_s)
        await self.writer.drain()
        # The loops also end on these flags: on Python 3.11 a cancellation that arrives while a
        # Redis command is being sent can be lost inside redis-py.
        self.admission.close()
        self.load.stop()
        self.writer.stop()
        self.reader.stop()
        await self.tasks.aclose()
        await self._health.close()
        await self.writer.close()
        await self.reader.close()
        await self.redis.aclose()
        await self._redis_block.aclose()

    # --- handshake -----------------------------------------------------------------------------
    def _route(self, path: str, headers: Mapping[str, str]) -> tuple[int, bytes] | None:
        """Every HTTP request before its upgrade: an answer, or None to accept the stream."""
        if path in ("/healthz", "/readyz"):
            if self._draining:
                return HTTPStatus.SERVICE_UNAVAILABLE, b"draining\n"
            if path == "/readyz" and not self.tasks.ok:
                return HTTPStatus.SERVICE_UNAVAILABLE, ("failed: " + ", ".join(self.tasks.failures) + "\n").encode()
            return HTTPStatus.OK, b"ok\n"
        if path not in STREAM_PATHS:
            metrics.REJECTED.labels("path").inc()
            return HTTPStatus.NOT_FOUND, b"Not Found\n"
        if self._draining:
            metrics.REJECTED.labels("draining").inc()
            return HTTPStatus.SERVICE_UNAVAILABLE, b"draining\n"
        token = self.settings.twilio_auth_token
        if token is None:
            return None
        url = self._public_url(headers, path)
        if not signature.stream_signature_valid(token.get_secret_value(), url, headers.get("X-Twilio-Signature")):
            metrics.REJECTED.labels("signature").inc()
            log.warning("rejected stream: bad X-Twilio-Signature", extra={"url": url})
            return HTTPStatus.FORBIDDEN, b"Forbidden\n"
        return None

    def _public_url(self, headers: Mapping[str, str], path: str) -> str:
        if self.settings.edge_public_url:
            return self.settings.edge_public_url
        if self.settings.trust_proxy_headers:
            return signature.public_url_from_proxy_headers(headers, path, default_scheme="wss")
        return f"wss://{headers.get('Host', '')}{path}"

    def _new_call(self, socket: TwilioSocket) -> EdgeCall:
        return EdgeCall(self._port, socket)

    def _on_agent_entries(self, key: str, batch: AgentBatch) -> None:
        self.calls.deliver(key, batch)

    async def _readiness(self) -> tuple[bool, dict[str, Any]]:
        redis_ok = await redis_reachable(self.redis)
        return (redis_ok and not self._draining and self.tasks.ok), {
            "redis": redis_ok,
            "draining": self._draining,
            "live_calls": len(self.calls),
            **self.tasks.readiness_detail(),
        }


def _load_changed(overloaded: bool) -> None:
    metrics.OVERLOADED.set(int(overloaded))
    log.warning("edge load %s its threshold: %s new streams", "crossed" if overloaded else "back under",
                "holding" if overloaded else "admitting")


def _on_flush(count: int, seconds: float) -> None:
    metrics.REDIS_BATCH.observe(count)
    metrics.REDIS_WRITE.observe(seconds)
