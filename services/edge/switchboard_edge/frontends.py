"""The edge's WebSocket listener, on either library (EDGE_WS_LIBRARY): the same routing, the same calls.

`route(path, headers)` decides every HTTP request before any upgrade (health, unknown paths,
draining, Twilio's signature) and answers with a status and body, or None to upgrade. Each
upgraded socket becomes one `EdgeCall`, fed frame by frame; the listener closes every socket
with 1001 on shutdown (Twilio then continues the TwiML) and waits for their calls to finish.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from picows import (
    WSListener,
    WSMsgType,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .call import EdgeCall
from .settings import EdgeSettings
from .sockets import PicowsSocket, TwilioSocket, WebsocketsSocket

log = logging.getLogger(__name__)

Route = Callable[[str, Mapping[str, str]], tuple[int, bytes] | None]
NewCall = Callable[[TwilioSocket], EdgeCall]


class Listener(Protocol):
    @property
    def port(self) -> int: ...

    async def close(self, timeout_s: float) -> None:
        """Stop accepting, close every stream with 1001, wait (bounded) for their calls to finish."""


async def listen(settings: EdgeSettings, route: Route, new_call: NewCall) -> Listener:
    if settings.edge_ws_library == "picows":
        return await PicowsListener.start(settings, route, new_call)
    return await WebsocketsListener.start(settings, route, new_call)


def _bound_send_buffer(sock: socket.socket | None, size: int) -> None:
    # Bound what the kernel holds for a Twilio socket that stops reading, so that our stall
    # checks, not an invisible multi-megabyte kernel buffer, decide when it is stalled.
    if sock is not None and size:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


# --- websockets -------------------------------------------------------------------------------------
class WebsocketsListener:
    def __init__(self, server: Server) -> None:
        self._server = server

    @classmethod
    async def start(cls, settings: EdgeSettings, route: Route, new_call: NewCall) -> WebsocketsListener:
        def process_request(connection: ServerConnection, request: Request) -> Response | None:
            answer = route(request.path.split("?")[0], request.headers)
            if answer is None:
                return None
            status, body = answer
            return connection.respond(status, body.decode())

        async def handler(ws: ServerConnection) -> None:
            _bound_send_buffer(ws.transport.get_extra_info("socket"), settings.edge_socket_sndbuf)
            calls: list[EdgeCall] = []
            sock = WebsocketsSocket(ws, max_bytes=settings.edge_outbox_max_bytes,
                                    stall_timeout_s=settings.edge_stall_timeout_s,
                                    on_stalled=lambda why: calls[0].socket_stalled(why))
            call = new_call(sock)
            calls.append(call)
            try:
                async for frame in ws:
                    if isinstance(frame, str):
                        call.on_text(frame)
                    else:
                        call.on_binary()
                    if call.starting is not None:
                        # Read nothing more until the start is decided: the frames wait in the
                        # socket, and a peer that floods meets TCP's flow control, not our memory.
                        await asyncio.gather(call.starting, return_exceptions=True)
                    if call.stopped_by_twilio:
                        break
            except ConnectionClosed:
                pass
            finally:
                await call.finish()

        server = await serve(
            handler, settings.edge_host, settings.edge_port, process_request=process_request,
            max_size=settings.edge_max_frame_bytes,
            compression=None,  # Twilio doesn't negotiate it; base64 audio would not compress anyway
            ping_interval=20, ping_timeout=20,
        )
        return cls(server)

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]  # type: ignore[no-any-return]

    async def close(self, timeout_s: float) -> None:
        self._server.close(close_connections=True)
        try:
            async with asyncio.timeout(timeout_s):
                await self._server.wait_closed()
        except TimeoutError:
            log.warning("some Twilio sockets did not close in time")


# --- picows -------------------------------------------------------------------------------------------
class PicowsListener:
    def __init__(self, server: asyncio.Server, streams: set[_Stream]) -> None:
        self._server = server
        self._streams = streams

    @classmethod
    async def start(cls, settings: EdgeSettings, route: Route, new_call: NewCall) -> PicowsListener:
        streams: set[_Stream] = set()

        def factory(request: WSUpgradeRequest) -> Any:
            path = request.path.decode("latin-1").split("?")[0]
            answer = route(path, request.headers)
            if answer is None:
                return _Stream(settings, new_call, streams)
            status, body = answer
            response = (WSUpgradeResponse.create_ok_response(body) if status == 200
                        else WSUpgradeResponse.create_error_response(status, body))
            return WSUpgradeResponseWithListener(response, None)

        server = await ws_create_server(
            factory, settings.edge_host, settings.edge_port,
            max_frame_size=settings.edge_max_frame_bytes,  # larger: closed with 1009
            enable_auto_ping=True, auto_ping_idle_timeout=20, auto_ping_reply_timeout=20,
            websocket_handshake_timeout=5, logger_name="edge",
            # A Twilio message is a few hundred bytes; picows's 16 KiB default is per call (it grows when needed).
            read_buffer_init_size=2048,
        )
        return cls(server, streams)

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]  # type: ignore[no-any-return]

    async def close(self, timeout_s: float) -> None:
        self._server.close()
        for stream in list(self._streams):
            stream.going_away()
        try:
            async with asyncio.timeout(timeout_s):
                while self._streams:
                    await asyncio.gather(*(s.done.wait() for s in list(self._streams)))
        except TimeoutError:
            log.warning("some Twilio sockets did not close in time")
            for stream in list(self._streams):
                stream.abort()  # a peer that never answers the close
            await asyncio.gather(*(s.done.wait() for s in list(self._streams)))


class _Stream(WSListener):
    """One picows connection: frames go to its call as they come."""

    def __init__(self, settings: EdgeSettings, new_call: NewCall, streams: set[_Stream]) -> None:
        super().__init__()
        self._settings = settings
        self._new_call = new_call
        self._streams = streams
        self._types = WSMsgType
        self._fragments: bytearray | None = None
        self._socket: PicowsSocket | None = None
        self._call: EdgeCall | None = None
        self.done = asyncio.Event()

    def on_ws_connected(self, transport: Any) -> None:
        underlying = transport.underlying_transport
        _bound_send_buffer(underlying.get_extra_info("socket"), self._settings.edge_socket_sndbuf)
        self._socket = PicowsSocket(transport, str(underlying.get_extra_info("peername")),
                                    max_bytes=self._settings.edge_outbox_max_bytes,
                                    stall_timeout_s=self._settings.edge_stall_timeout_s)
        self._call = self._new_call(self._socket)
        self._streams.add(self)

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        call, types = self._call, self._types
        if call is None:
            return
        kind = frame.msg_type
        if kind is types.TEXT:
            if frame.fin:
                call.on_text(frame.get_payload_as_bytes())
            else:  # the first of a fragmented message: Twilio never does this, a client may
                self._fragments = bytearray(frame.get_payload_as_memoryview())
        elif kind is types.CONTINUATION and self._fragments is not None:
            self._fragments += frame.get_payload_as_memoryview()
            if len(self._fragments) > self._settings.edge_max_frame_bytes:
                self._fragments = None
                call.on_binary()  # counted as an invalid message; the message is dropped
            elif frame.fin:
                call.on_text(bytes(self._fragments))
                self._fragments = None
        elif kind is types.BINARY:
            call.on_binary()
        elif kind is types.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        # PING is answered by picows itself; PONG needs nothing.

    def on_ws_disconnected(self, transport: Any) -> None:
        if self._call is not None:
            asyncio.get_running_loop().create_task(self._finish())
        else:
            self.done.set()

    def pause_writing(self) -> None:
        if self._socket is not None:
            self._socket.pause_writing()

    def resume_writing(self) -> None:
        if self._socket is not None:
            self._socket.resume_writing()

    def going_away(self) -> None:
        if self._socket is not None:
            self._socket.going_away()

    def abort(self) -> None:
        if self._socket is not None:
            self._socket.abort()
        else:
            self.done.set()

    async def _finish(self) -> None:
        try:
            assert self._call is not None
            await self._call.finish()
        finally:
            self._streams.discard(self)
            self.done.set()
