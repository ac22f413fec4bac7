"""A webhook receiver for tests: a real HTTP/1.1 server on a loopback address that counts
every connection it accepts (so a test can prove a refused request never connected) and
answers by path, including the hostile answers a webhook can give:

  /ok        200 JSON                       /fail      500
  /busy      429                            /missing   404
  /slow      200, then the body at 1 byte/s /huge      200, 20 MB with no Content-Length
  /declared  200 with Content-Length: 20 MB /gzip      200, Content-Encoding: gzip
  /redirect  302 to /ok on the same server  /text      200 text/plain
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
from dataclasses import dataclass, field

OK_BODY = b'{"slots": ["10:00", "14:30"]}'
HUGE_BYTES = 20 * 1024 * 1024


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HookServer:
    host: str = "127.0.0.1"
    tls: ssl.SSLContext | None = None
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)

    async def start(self) -> HookServer:
        if self.tls is not None:
            self.tls.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._server.close()

    def url(self, path: str, host: str | None = None) -> str:
        scheme = "https" if self.tls else "http"
        where = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"{scheme}://{where}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *fields = head.decode("latin-1").split("\r\n")
            method, path, _ = line.split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields if f)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Seen(method, path, headers, body))
            await self._answer(path, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client went away mid-answer: what the cap and the deadline are for
        finally:
            writer.close()

    async def _answer(self, path: str, writer: asyncio.StreamWriter) -> None:
        async def send(status: str, body: bytes, *extra: str, ctype: str = "application/json") -> None:
            head = [f"HTTP/1.1 {status}", f"Content-Type: {ctype}", f"Content-Length: {len(body)}", *extra,
                    "Connection: close"]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            await writer.drain()

        match path:
            case "/ok":
                await send("200 OK", OK_BODY)
            case "/text":
                await send("200 OK", "plain words, é".encode("latin-1"), ctype="text/plain; charset=latin-1")
            case "/fail":
                await send("500 Internal Server Error", b'{"oops": true}')
            case "/busy":
                await send("429 Too Many Requests", b"{}")
            case "/missing":
                await send("404 Not Found", b"{}")
            case "/redirect":
                await send("302 Found", b"", f"Location: {self.url('/ok')}")
            case "/gzip":
                await send("200 OK", gzip.compress(OK_BODY), "Content-Encoding: gzip")
            case "/declared":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n{" % HUGE_BYTES)
                await writer.drain()
                await asyncio.sleep(30)
            case "/slow":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
                for _ in range(100):
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(1)
            case "/huge":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
                chunk = b'"' + b"x" * 65534 + b'"'
                for _ in range(HUGE_BYTES // len(chunk)):
                    writer.write(chunk)
                    await writer.drain()
            case _:
                await send("404 Not Found", b"{}")
