"""The edge instance: the Twilio WebSocket server plus its shared Redis writer and reader."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from http import HTTPStatus

from redis.exceptions import RedisError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from switchboard import capacity, signature, twilio
from switchboard import keys as keyspace
from switchboard.config import redis_client, redis_reachable
from switchboard.httpserver import HealthServer
from switchboard.keys import Keys
from switchboard.streams import StreamReader, StreamWriter

from . import metrics
from .admission import EdgeAdmission
from .call import EdgeCall, start_fields
from .identity import Verdict, admit_identity
from .settings import EdgeSettings

log = logging.getLogger(__name__)

STREAM_PATHS = ("/twilio", "/twilio/")
MAX_CALL_TTL_S = 6 * 3600


class EdgeServer:
    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.redis = redis_client(settings)
        self._redis_block = redis_client(settings, blocking=True)
        self.writer = StreamWriter(
            self.redis,
            batch_window_s=settings.edge_batch_window_ms / 1000,
            key_ttl_s=MAX_CALL_TTL_S,
            on_flush=self._on_flush,
            on_error=lambda exc: metrics.REDIS_ERRORS.inc(),
        )
        self.reader = StreamReader(
            self._redis_block,
            self.redis,
            self.keys.wake(settings.edge_id),
            self._on_agent_entries,
            on_error=lambda exc: metrics.REDIS_ERRORS.inc(),
        )
        self.admission = EdgeAdmission(self.redis, self.keys)
        self._calls: dict[str, EdgeCall] = {}
        self._ws_server: Server | None = None
        self._health = HealthServer(settings.metrics_host, settings.metrics_port, self._readiness)
        self._tasks: list[asyncio.Task[None]] = []
        self._draining = False

    @property
    def port(self) -> int:
        assert self._ws_server is not None
        return self._ws_server.sockets[0].getsockname()[1]  # type: ignore[index]

    @property
    def metrics_port(self) -> int:
        return self._health.port

    async def __aenter__(self) -> "EdgeServer":
        self._tasks = [
            asyncio.create_task(self.writer.run(), name="edge-writer"),
            asyncio.create_task(self.reader.run(), name="edge-reader"),
            asyncio.create_task(self._watch_stalls(), name="edge-stalls"),
            asyncio.create_task(self.admission.run(), name="edge-admission"),
        ]
        metrics.TASKS.set_function(lambda: len(asyncio.all_tasks()))  # read at scrape time, on this loop
        await self._health.start()
        self._ws_server = await serve(
            self._handle,
            self.settings.edge_host,
            self.settings.edge_port,
            process_request=self._process_request,
            max_size=self.settings.edge_max_frame_bytes,
            compression=None,  # Twilio doesn't negotiate it; base64 audio would not compress anyway
            ping_interval=20,
            ping_timeout=20,
        )
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
        if self._ws_server is not None:
            self._ws_server.close(close_connections=True)
            try:
                async with asyncio.timeout(timeout_s):
                    await self._ws_server.wait_closed()
            except TimeoutError:
                log.warning("some Twilio sockets did not close in time")
        await self.writer.drain()
        self.admission.close()
        self.writer.stop()
        self.reader.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._health.close()
        await self.writer.close()
        await self.reader.close()
        await self.redis.aclose()
        await self._redis_block.aclose()

    # --- handshake -----------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?")[0]
        if path in ("/healthz", "/readyz"):
            ok = not self._draining
            return connection.respond(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, "ok\n" if ok else "draining\n")
        if path not in STREAM_PATHS:
            metrics.REJECTED.labels("path").inc()
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if self._draining:
            metrics.REJECTED.labels("draining").inc()
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
        token = self.settings.twilio_auth_token
        if token is None:
            return None
        url = self._public_url(request, path)
        if not signature.stream_signature_valid(token.get_secret_value(), url, request.headers.get("X-Twilio-Signature")):
            metrics.REJECTED.labels("signature").inc()
            log.warning("rejected stream: bad X-Twilio-Signature", extra={"url": url, "peer": str(connection.remote_address)})
            return connection.respond(HTTPStatus.FORBIDDEN, "Forbidden\n")
        return None

    def _public_url(self, request: Request, path: str) -> str:
        if self.settings.edge_public_url:
            return self.settings.edge_public_url
        if self.settings.trust_proxy_headers:
            return signature.public_url_from_proxy_headers(request.headers, path, default_scheme="wss")
        return f"wss://{request.headers.get('Host', '')}{path}"

    async def _handle(self, ws: ServerConnection) -> None:
        if self.settings.edge_socket_sndbuf:
            # Bound what the kernel holds for a Twilio socket that stops reading, so that the
            # outbox, not an invisible multi-megabyte kernel buffer, decides when it is stalled.
            sock = ws.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.settings.edge_socket_sndbuf)
        await EdgeCall(self, ws).run()

    # --- calls ---------------------------------------------------------------------------------
    def attach(self, out_key: str, call: EdgeCall) -> None:
        self._calls[out_key] = call
        self.reader.add(out_key, "0-0")

    def detach(self, out_key: str) -> None:
        self._calls.pop(out_key, None)
        self.reader.remove(out_key)
        self.writer.forget(out_key)

    async def check_identity(self, start: twilio.Start) -> Verdict:
        return await admit_identity(self.redis, self.keys, start, self.settings.edge_id,
                                    require_token=self.settings.stream_token_required)

    async def admit(self, start: twilio.Start) -> bool:
        """Whether this stream may be announced; False: close it with 1013 (see admission.py).

        A stream with no free slot waits up to EDGE_ADMISSION_WAIT_S, listed as a waiting
        call meanwhile. A refused one is recorded as ended with outcome `no_capacity`, so
        that /twiml/continue answers it per admission policy instead of reconnecting it.
        """
        if not self.settings.edge_admission:
            return True
        outcome = await self.admission.admit_now(start)
        if outcome is None and self.settings.edge_admission_wait_s > 0:
            await self._write_record(start)
            waited = time.monotonic()
            if await self.admission.wait(start.stream_sid, self.settings.edge_admission_wait_s):
                outcome = "waited"
                log.info("stream admitted after waiting for a free slot",
                         extra={"call_sid": start.call_sid, "stream_sid": start.stream_sid,
                                "waited_ms": round((time.monotonic() - waited) * 1000)})
        if outcome is not None:
            metrics.ADMISSIONS.labels(outcome).inc()
            return True
        metrics.ADMISSIONS.labels("refused").inc()
        metrics.REJECTED.labels("no_capacity").inc()
        view = self.admission.view
        log.warning("stream refused: no free slot in the fleet",
                    extra={"call_sid": start.call_sid, "stream_sid": start.stream_sid, "fleet_free": view.free,
                           "fleet_capacity": view.capacity, "unclaimed": view.unclaimed})
        await self._record_refusal(start)
        return False

    async def _record_refusal(self, start: twilio.Start) -> None:
        sid, retention = start.stream_sid, self.settings.call_retention_s
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.call(sid), mapping={**start_fields(start, self.settings.edge_id), "state": b"ended",
                                                "outcome": b"no_capacity", "end_reason": b"no_capacity",
                                                "ended_at": repr(time.time()).encode()})
        pipe.expire(self.keys.call(sid), retention)
        pipe.set(self.keys.call_by_callsid(start.call_sid), sid, ex=retention)
        pipe.zrem(self.keys.live_calls(), sid)
        await pipe.execute()

    async def _write_record(self, start: twilio.Start) -> None:
        sid = start.stream_sid
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.call(sid), mapping=start_fields(start, self.settings.edge_id))
        pipe.expire(self.keys.call(sid), MAX_CALL_TTL_S)
        pipe.set(self.keys.call_by_callsid(start.call_sid), sid, ex=MAX_CALL_TTL_S)
        pipe.zadd(self.keys.live_calls(), {sid: time.time()})
        await pipe.execute()

    async def register_call(self, start: twilio.Start) -> None:
        """Write the call record, then announce the call to the workers."""
        sid = start.stream_sid
        try:
            await self._write_record(start)
            # Announce only once the record exists: on a Redis Cluster one pipeline runs on
            # several nodes in parallel, and a worker could claim the call before its record.
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(
                self.keys.dispatch(),
                {b"stream_sid": sid.encode(), b"call_sid": start.call_sid.encode(),
                 b"edge": self.settings.edge_id.encode()},
                maxlen=keyspace.DISPATCH_STREAM_MAXLEN,
                approximate=True,
            )
            # The slot /twiml reserved for this call (if any) ends only now that the dispatch
            # entry counts it: admission control sees the call twice for a moment, never not at all.
            capacity.drop_reservation(pipe, self.keys, start.call_sid)
            await pipe.execute()
        except RedisError:
            metrics.REDIS_ERRORS.inc()
            log.exception("could not register call", extra={"stream_sid": sid, "call_sid": start.call_sid})
            raise
        finally:
            self.admission.announced(sid)

    @staticmethod
    def _on_flush(count: int, seconds: float) -> None:
        metrics.REDIS_BATCH.observe(count)
        metrics.REDIS_WRITE.observe(seconds)

    def _on_agent_entries(self, key: str, batch: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        call = self._calls.get(key)
        if call is not None:
            call.deliver(batch)

    async def _watch_stalls(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for call in list(self._calls.values()):
                try:
                    call.check_stalled(now)
                except Exception:  # one call's bug must not stop the watch for every call
                    log.exception("stall check failed", extra={"stream_sid": call.stream_sid})

    async def _readiness(self) -> tuple[bool, dict]:
        redis_ok = await redis_reachable(self.redis)
        return (redis_ok and not self._draining), {
            "redis": redis_ok,
            "draining": self._draining,
            "live_calls": len(self._calls),
        }
