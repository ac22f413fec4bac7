"""Opening a Deepgram Voice Agent connection: handshake, Welcome, Settings, SettingsApplied.

Transport failures become `DeepgramUnavailable` with a `code` (HTTP status or Deepgram
error code) and whether trying again can help, so callers never see a WebSocket library's
errors. The socket comes back as an `agent_socket.AgentSocket`, on picows or websockets.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from picows import WSError, WSHandshakeError, ws_connect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from switchboard import deepgram

from .agent_socket import AgentSocket, PicowsAgentSocket, WebsocketsAgentSocket

WELCOME_WAIT_S = 1.0


class DeepgramUnavailable(Exception):
    def __init__(self, code: str, description: str, retryable: bool) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.retryable = retryable


MAX_MESSAGE_BYTES = 4 * 1024 * 1024


async def open_agent(
    url: str, api_key: str, settings_message: dict[str, Any], timeout_s: float, *, library: str = "picows",
    max_queued_bytes: int = 1024 * 1024, stall_timeout_s: float = 10.0, stream_sid: str = "",
) -> tuple[AgentSocket, str, float]:
    """Connect and apply settings. Returns (socket, request_id, seconds it took)."""
    started = time.perf_counter()
    ws: PicowsAgentSocket | WebsocketsAgentSocket
    try:
        async with asyncio.timeout(timeout_s):
            if library == "picows":
                ws = await _connect_picows(url, api_key, timeout_s, max_queued_bytes, stall_timeout_s)
            else:
                raw = await connect(
                    url,
                    additional_headers={"Authorization": f"Token {api_key}"},
                    max_size=MAX_MESSAGE_BYTES,
                    compression=None,
                    ping_interval=20,
                    ping_timeout=20,
                    open_timeout=timeout_s,
                )
                ws = WebsocketsAgentSocket(raw, max_bytes=max_queued_bytes, stall_timeout_s=stall_timeout_s,
                                           stream_sid=stream_sid)
            try:
                # The docs say to wait for Welcome; Deepgram's own Twilio sample sends Settings at
                # once. Wait briefly, then send anyway, so either kind of server works.
                try:
                    async with asyncio.timeout(WELCOME_WAIT_S):
                        request_id = await _until(ws, "Welcome")
                except TimeoutError:
                    request_id = ""
                ws.send(deepgram.settings(settings_message))
                await _until(ws, "SettingsApplied")
            except BaseException:
                await ws.close()
                raise
    except InvalidStatus as exc:
        raise _refused(exc.response.status_code) from None
    except WSHandshakeError as exc:
        status = exc.response.status if exc.response is not None else None
        if status is None:
            raise DeepgramUnavailable("connect_failed", str(exc), True) from None
        raise _refused(int(status)) from None
    except (InvalidHandshake, WSError, OSError) as exc:
        raise DeepgramUnavailable("connect_failed", repr(exc), True) from None
    except TimeoutError:
        raise DeepgramUnavailable("timeout", f"no SettingsApplied within {timeout_s}s", True) from None
    except ConnectionClosed as exc:
        raise DeepgramUnavailable("closed", f"closed during setup ({exc})", True) from None
    return ws, request_id, time.perf_counter() - started


def _refused(status: int) -> DeepgramUnavailable:
    return DeepgramUnavailable(f"http_{status}", "handshake refused", status == 429 or status >= 500)


async def _connect_picows(url: str, api_key: str, timeout_s: float, max_queued_bytes: int,
                          stall_timeout_s: float) -> PicowsAgentSocket:
    _transport, listener = await ws_connect(
        lambda: PicowsAgentSocket(max_bytes=max_queued_bytes, stall_timeout_s=stall_timeout_s), url,
        extra_headers={"Authorization": f"Token {api_key}"}, websocket_handshake_timeout=timeout_s,
        max_frame_size=MAX_MESSAGE_BYTES, enable_auto_ping=True, auto_ping_idle_timeout=20,
        auto_ping_reply_timeout=20, logger_name="deepgram",
        # Agent audio comes in chunks of a few KB; picows's 16 KiB default is per call (it grows when needed).
        read_buffer_init_size=4096,
    )
    assert isinstance(listener, PicowsAgentSocket)  # what the factory above makes
    return listener


async def _until(ws: PicowsAgentSocket | WebsocketsAgentSocket, wanted: str) -> str:
    while True:
        frame = await ws.recv()
        if isinstance(frame, bytes):
            continue
        msg = deepgram.parse_server(frame)
        if msg["type"] == wanted:
            return str(msg.get("request_id", ""))
        if msg["type"] == "Error":
            code = str(msg.get("code", "ERROR"))
            raise DeepgramUnavailable(
                code, str(msg.get("description", "")), code in deepgram.RECONNECTABLE_ERRORS
            )
        # Anything else before SettingsApplied (e.g. Warning) is informational.

