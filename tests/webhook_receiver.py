"""A webhook receiver for tests: a real HTTP/1.1 server on loopback that records every request and
answers with the statuses a test queues (then 200), optionally after a delay."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class WebhookReceiver:
    host: str = "127.0.0.1"
    statuses: deque[int] = field(default_factory=deque)  # answered in order, then 200
    delay_s: float = 0.0
    answer: dict[str, bytes] = field(default_factory=dict)  # path → JSON body of a 200
    received: list[Received] = field(default_factory=list)
    port: int = 0

    async def __aenter__(self) -> WebhookReceiver:
        self._changed = asyncio.Condition()
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    def url(self, path: str = "/hook") -> str:
        return f"http://{self.host}:{self.port}{path}"

    async def wait(self, predicate: Callable[[list[Received]], bool], timeout: float = 20) -> list[Received]:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self.received))
        return self.received

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *lines = head.decode("latin-1").split("\r\n")
            _method, path, _ = line.split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines if h)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            status = self.statuses.popleft() if self.statuses else 200
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            loop = asyncio.get_running_loop()
            async with self._changed:
                self.received.append(Received(path, headers, body, loop.time(), status))
                self._changed.notify_all()
            payload = self.answer.get(path.split("?")[0], b"{}") if status < 300 else b'{"error": "nope"}'
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                         "Connection: close\r\n\r\n".encode() + payload)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
