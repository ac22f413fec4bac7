"""Caller-audio check against the Deepgram emulator: did it receive exactly what we sent?

The emulator's session listing and its field names are someone else's API; they live here
only, so one edit follows any rename.
"""

from __future__ import annotations

import asyncio

import httpx

SESSIONS_PATH = "/_emulator/sessions"
TAG_QUERY = "callsid:{call_sid}"
# Paths into one session dict (tools/switchboard_emulator/records.py SessionRecord.to_json).
FIELD_BYTES = ("audio", "bytes")
FIELD_SHA256 = ("audio", "sha256")
FIELD_CLOSED = ("closed",)


def _get(session: dict, path: tuple[str, ...]) -> object:
    value: object = session
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


async def fetch_sessions(http: httpx.AsyncClient, emulator_url: str, call_sid: str) -> list[dict]:
    resp = await http.get(emulator_url.rstrip("/") + SESSIONS_PATH, params={"tag": TAG_QUERY.format(call_sid=call_sid)})
    resp.raise_for_status()
    body = resp.json()
    if isinstance(body, dict):  # tolerate {"sessions": [...]}
        body = body.get("sessions", [])
    return [s for s in body if isinstance(s, dict)]


async def caller_audio_verdict(
    http: httpx.AsyncClient,
    emulator_url: str,
    call_sid: str,
    sent_bytes: int,
    sent_sha256: str,
    settle_s: float = 3.0,
) -> tuple[bool | None, list[str]]:
    """True/False when one session carried the call; None when it spanned several (failover).

    The bridge may still be flushing the tail when the call ends, so poll until the session
    is closed or `settle_s` passes; there is no event to await across processes.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle_s
    while True:
        try:
            sessions = await fetch_sessions(http, emulator_url, call_sid)
        except (httpx.HTTPError, ValueError) as exc:
            return False, [f"emulator query failed: {type(exc).__name__}"]
        if len(sessions) > 1:
            return None, [f"call spans {len(sessions)} Deepgram sessions"]
        got_bytes = _get(sessions[0], FIELD_BYTES) if sessions else None
        settled = bool(sessions) and _get(sessions[0], FIELD_CLOSED) is True
        if settled or loop.time() >= deadline:
            break
        await asyncio.sleep(0.1)
    if not sessions:
        return False, ["no Deepgram session for this call"]
    got_sha = _get(sessions[0], FIELD_SHA256)
    if got_bytes != sent_bytes:
        return False, [f"emulator received {got_bytes} bytes, call sent {sent_bytes}"]
    if got_sha != sent_sha256:
        return False, ["sha256 differs from what the call sent"]
    return True, []
