"""Test doubles for the Twilio REST emulator's tests: a webhook receiver and a fake media-stream server.

`Receiver` is the customer's web app: it answers TwiML per path and records every request
Twilio (the emulator) made, with its form and headers, so tests check order, fields and
signatures (with the official twilio RequestValidator). `StreamServer` is a WebSocket
server a `<Stream url>` points at; each test scripts what it does with a connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qsl

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator
from websockets.asyncio.server import ServerConnection, serve

from switchboard_dev.testaudio import CALLER_MAGIC, agent_frame, parse_frame


@dataclass
class Hit:
    path: str
    method: str
    url: str
    form: dict[str, str]
    headers: dict[str, str]
    at: float

    def signed_ok(self, token: str) -> bool:
        return RequestValidator(token).validate(self.url, self.form if self.method == "POST" else {},
                                                self.headers.get("x-twilio-signature", ""))


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


class Receiver:
    """`async with Receiver({"/twiml": "<Response>…</Response>"}) as app:` then `app.url("/twiml")`."""

    def __init__(self, answers: dict[str, str | Callable[[Hit], str]] | None = None) -> None:
        self.answers: dict[str, str | Callable[[Hit], str]] = dict(answers or {})
        self.hits: list[Hit] = []
        self.status_for: dict[str, int] = {}
        self._changed = asyncio.Event()
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        if request.method == "GET":
            form = dict(request.query_params)
        hit = Hit(request.url.path, request.method, str(request.url), form, dict(request.headers), time.time())
        self.hits.append(hit)
        self._changed.set()
        self._changed = asyncio.Event()
        answer = self.answers.get(request.url.path, "<Response/>")
        text = answer(hit) if callable(answer) else answer
        return Response(text, status_code=self.status_for.get(request.url.path, 200), media_type="application/xml")

    def at(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    async def wait(self, predicate: Callable[[], Any], timeout: float = 10) -> Any:
        async with asyncio.timeout(timeout):
            while not (value := predicate()):
                changed = self._changed
                await changed.wait()
            return value

    async def __aenter__(self) -> Self:
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = _QuietServer(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        await self._task


@dataclass
class StreamConnection:
    ws: ServerConnection
    path: str
    headers: dict[str, str]
    messages: list[dict] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def start(self) -> dict:
        return next(m for m in self.messages if m.get("event") == "start")

    async def next(self, predicate: Callable[[dict], bool], timeout: float = 10) -> dict:
        return self.messages[await self.find(predicate, timeout)]

    async def find(self, predicate: Callable[[dict], bool], timeout: float = 10, since: int = 0) -> int:
        """Index of the first message from `since` on that matches (waits for it)."""
        seen = since
        async with asyncio.timeout(timeout):
            while True:
                for index in range(seen, len(self.messages)):
                    if predicate(self.messages[index]):
                        return index
                seen = max(seen, len(self.messages))
                if self.closed.is_set():
                    raise ConnectionError("the stream closed first")
                self.arrived.clear()
                await self.arrived.wait()

    async def send(self, event: str, **fields: Any) -> None:
        await self.ws.send(orjson.dumps({"event": event, "streamSid": self.start["streamSid"], **fields}).decode())


class StreamServer:
    """A `<Stream url>` target; `script(conn)` runs per connection while its messages are recorded."""

    def __init__(self, script: Callable[[StreamConnection], Awaitable[None]]) -> None:
        self.script = script
        self.connections: list[StreamConnection] = []
        self.port = 0
        self.connected = asyncio.Event()

    def url(self, path: str = "/twilio") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        conn = StreamConnection(ws, ws.request.path, {k.lower(): v for k, v in ws.request.headers.raw_items()})
        self.connections.append(conn)
        self.connected.set()

        async def read() -> None:
            try:
                async for frame in ws:
                    conn.messages.append(orjson.loads(frame))
                    conn.arrived.set()
            finally:
                conn.closed.set()
                conn.arrived.set()

        reader = asyncio.create_task(read())
        try:
            await self.script(conn)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 10)

    async def __aenter__(self) -> Self:
        self._server = await serve(self._handler, "127.0.0.1", 0, compression=None)
        self.port = self._server.sockets[0].getsockname()[1]  # type: ignore[index]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()


# --- what a media-stream test does with a connection -------------------------------------------


def stream_twiml(url: str, after: str = "<Hangup/>", **params: str) -> str:
    parameters = "".join(f'<Parameter name="{k}" value="{v}"/>' for k, v in params.items())
    return f'<Response><Connect><Stream url="{url}">{parameters}</Stream></Connect>{after}</Response>'


def caller_info(message: dict):
    if message.get("event") != "media":
        return None
    info = parse_frame(base64.b64decode(message["media"]["payload"]))
    return info if info is not None and info.magic == CALLER_MAGIC else None


async def reply(conn: StreamConnection, number: int, frames: int, mark: str | None = None) -> None:
    now = time.time_ns() // 1000
    audio = b"".join(agent_frame(number, seq, now) for seq in range(frames))
    await conn.send("media", media={"payload": base64.b64encode(audio).decode()})
    if mark:
        await conn.send("mark", mark={"name": mark})


async def after_utterance(conn: StreamConnection, utterance: int) -> None:
    """Until the caller has spoken utterance `utterance` and fallen silent after it."""
    spoke = await conn.find(lambda m: (i := caller_info(m)) is not None and i.stream_no == utterance)
    await conn.find(lambda m: m.get("event") == "media" and caller_info(m) is None, since=spoke)


def received_audio(conn: StreamConnection) -> bytes:
    return b"".join(base64.b64decode(m["media"]["payload"]) for m in conn.messages if m.get("event") == "media")
