"""A tiny asyncio HTTP server for /healthz, /readyz and /metrics of edge and worker.

Those processes serve no other HTTP, so a web framework would be weight without use.
Health is data: readiness is a callable that reports (ok, detail).

The port is often reachable by more than Prometheus (a pod network, a misconfigured bind),
so the server assumes any peer: the request head is parsed by a pure function with fixed
limits (a long request line is 414, too many or too long headers 431, anything that is not
HTTP/1.x 400), each connection has one deadline for everything (a slowloris peer or a
client that never reads its answer is cut), and only a few connections are served at once.
Every refusal is answered where HTTP allows it, counted, and the socket closed; none reaches
the log as a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

log = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]

MAX_REQUEST_LINE = 8 * 1024
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 64
CONNECTION_DEADLINE_S = 5.0
MAX_CONNECTIONS = 16
# After refusing a request, keep reading (and dropping) what the peer is still sending for a
# moment: closing with unread input resets the connection, and the peer would never see why.
LINGER_S, LINGER_BYTES = 1.0, 1024 * 1024

REJECTED = Counter(
    "switchboard_metrics_server_rejected_requests_total",
    "Requests to the /healthz, /readyz, /metrics server refused, by reason",
    ["reason"],
)

_REQUEST_LINE = re.compile(rb"^([A-Z]{1,16}) (/[\x21-\x7e]*|\*) HTTP/1\.[01]$")
# What the start of a request line can look like before its end has arrived.
_LINE_PREFIX = re.compile(rb"^(?:[A-Z]{0,16}|[A-Z]{1,16} [\x20-\x7e]*\r?)\Z")


@dataclass(frozen=True)
class Request:
    method: str
    path: str


@dataclass(frozen=True)
class Refusal:
    status: str
    reason: str  # the metric label
    message: str


def parse_head(buffer: bytes, *, complete: bool) -> Request | Refusal | None:
    """The request in `buffer`, a refusal, or None while more bytes may make it whole.

    `complete` says the peer closed its side: what is there is all there will be.
    """
    line_end = buffer.find(b"\n")
    if line_end < 0:
        if not _LINE_PREFIX.match(buffer):
            return Refusal("400 Bad Request", "malformed", "not an HTTP/1.x request line")  # junk: say so now
        if len(buffer) > MAX_REQUEST_LINE:
            return Refusal("414 URI Too Long", "line_too_long", "request line too long")
        return _INCOMPLETE if complete else None
    line = buffer[:line_end].removesuffix(b"\r")
    if len(line) > MAX_REQUEST_LINE:
        return Refusal("414 URI Too Long", "line_too_long", "request line too long")
    match = _REQUEST_LINE.match(line)
    if match is None:
        return Refusal("400 Bad Request", "malformed", "not an HTTP/1.x request line")
    fields = 0
    start = line_end + 1
    while (end := buffer.find(b"\n", start)) >= 0:
        field = buffer[start:end].removesuffix(b"\r")
        start = end + 1
        if not field:
            break  # the empty line: the head is complete
        fields += 1
        name, colon, _value = field.partition(b":")
        if not colon or not name or name != name.strip() or not name.isascii():
            return Refusal("400 Bad Request", "malformed", "malformed header line")
    if fields > MAX_HEADERS or (start if end >= 0 else len(buffer)) > MAX_HEAD_BYTES:
        return Refusal("431 Request Header Fields Too Large", "headers_too_large", "request headers too large")
    if end < 0:
        return _INCOMPLETE if complete else None
    method, target = match.group(1).decode(), match.group(2).decode()
    if method not in ("GET", "HEAD"):
        return Refusal("405 Method Not Allowed", "method", "only GET and HEAD")
    return Request(method, target.split("?", 1)[0])


_INCOMPLETE = Refusal("400 Bad Request", "malformed", "incomplete request")


class HealthServer:
    def __init__(
        self, host: str, port: int, readiness: Readiness, *,
        max_connections: int = MAX_CONNECTIONS, deadline_s: float = CONNECTION_DEADLINE_S,
    ) -> None:
        self._host, self._port = host, port
        self._readiness = readiness
        self._max_connections, self._deadline_s = max_connections, deadline_s
        self._active = 0
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= self._max_connections:
            # Answer without reading: the 503 fits the socket buffer, so this costs no waiting.
            REJECTED.labels("busy").inc()
            writer.write(_response("503 Service Unavailable", "text/plain", b"too many connections\n"))
            writer.transport.abort()
            return
        self._active += 1
        clean = False
        try:
            # drain() then waits until the kernel has every byte: nothing stays buffered in
            # this process for a peer that does not read.
            writer.transport.set_write_buffer_limits(high=0)
            clean = await self._converse(reader, writer)
        except (ConnectionError, OSError):
            pass
        except Exception:  # task boundary: a bug here must not take the process's health port down
            log.exception("health server request failed")
        finally:
            self._active -= 1
            if clean:
                writer.close()
            else:
                writer.transport.abort()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it, all within the connection's deadline; False if cut."""
        deadline = asyncio.get_running_loop().time() + self._deadline_s
        try:
            async with asyncio.timeout_at(deadline):
                buffer = b""
                while (head := parse_head(buffer, complete=reader.at_eof())) is None:
                    buffer += await reader.read(4096)
        except TimeoutError:
            REJECTED.labels("deadline").inc()
            writer.write(_response("408 Request Timeout", "text/plain", b"request timeout\n"))
            return False
        if not buffer:
            return True  # connected and left (a TCP probe): nothing to answer
        try:
            async with asyncio.timeout_at(deadline):
                if isinstance(head, Refusal):
                    REJECTED.labels(head.reason).inc()
                    allow = "Allow: GET, HEAD\r\n" if head.reason == "method" else ""
                    writer.write(_response(head.status, "text/plain", head.message.encode() + b"\n", allow))
                    await writer.drain()
                else:
                    status, ctype, body = await self._route(head.path)
                    writer.write(_response(status, ctype, body, omit_body=head.method == "HEAD"))
                    await writer.drain()
                    return True
        except TimeoutError:
            REJECTED.labels("deadline").inc()  # the peer did not take its answer in time
            return False
        await _linger(reader, writer)
        return True

    async def _route(self, path: str) -> tuple[str, str, bytes]:
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest()
        if path == "/healthz":
            return "200 OK", "application/json", b'{"status":"ok"}'
        if path == "/readyz":
            ok, detail = await self._readiness()
            return ("200 OK" if ok else "503 Service Unavailable"), "application/json", orjson.dumps(
                {"ready": ok, **detail}
            )
        return "404 Not Found", "text/plain", b"not found\n"


def _response(status: str, ctype: str, body: bytes, extra_headers: str = "", *, omit_body: bool = False) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"{extra_headers}Connection: close\r\n\r\n")
    return head.encode() + (b"" if omit_body else body)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if writer.can_write_eof():
        writer.write_eof()
    dropped = 0
    try:
        async with asyncio.timeout(LINGER_S):
            while dropped < LINGER_BYTES and (chunk := await reader.read(65536)):
                dropped += len(chunk)
    except TimeoutError:
        pass
