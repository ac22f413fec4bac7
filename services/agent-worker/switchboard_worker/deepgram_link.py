"""Opening a Deepgram Voice Agent connection: handshake, Welcome, Settings, SettingsApplied.

Transport failures become `DeepgramUnavailable` with a `code` (HTTP status or Deepgram
error code) and whether trying again can help, so callers never see websockets' errors.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from switchboard import deepgram

WELCOME_WAIT_S = 1.0


class DeepgramUnavailable(Exception):
    def __init__(self, code: str, description: str, retryable: bool) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.retryable = retryable


async def open_agent(url: str, api_key: str, settings_message: dict[str, Any], timeout_s: float) -> tuple[ClientConnection, str, float]:
    """Connect and apply settings. Returns (socket, request_id, seconds it took)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            ws = await connect(
                url,
                additional_headers={"Authorization": f"Token {api_key}"},
                max_size=4 * 1024 * 1024,
                compression=None,
                ping_interval=20,
                ping_timeout=20,
                open_timeout=timeout_s,
            )
            try:
                # The docs say to wait for Welcome; Deepgram's own Twilio sample sends Settings at
                # once. Wait briefly, then send anyway, so either kind of server works.
                try:
                    async with asyncio.timeout(WELCOME_WAIT_S):
                        request_id = await _until(ws, "Welcome")
                except TimeoutError:
                    request_id = ""
                await ws.send(deepgram.settings(settings_message))
                await _until(ws, "SettingsApplied")
            except BaseException:
                await ws.close()
                raise
    except InvalidStatus as exc:
        status = exc.response.status_code
        retryable = status == 429 or status >= 500
        raise DeepgramUnavailable(f"http_{status}", "handshake refused", retryable) from None
    except (InvalidHandshake, OSError) as exc:
        raise DeepgramUnavailable("connect_failed", repr(exc), True) from None
    except TimeoutError:
        raise DeepgramUnavailable("timeout", f"no SettingsApplied within {timeout_s}s", True) from None
    except ConnectionClosed as exc:
        raise DeepgramUnavailable("closed", f"closed during setup ({exc})", True) from None
    return ws, request_id, time.perf_counter() - started


async def _until(ws: ClientConnection, wanted: str) -> str:
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


def dumps(msg: dict[str, Any]) -> str:
    return orjson.dumps(msg).decode()
