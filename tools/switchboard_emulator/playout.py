"""Agent speech on the wire: synthetic 20 ms frames, paced in real time like a TTS stream played out."""

from __future__ import annotations

import asyncio
import time

from websockets.asyncio.server import ServerConnection

from switchboard_dev.testaudio import FRAME_MS, agent_frame

from .config import EmulatorConfig
from .faults import Faults
from .records import ReplyRecord


async def play_reply(ws: ServerConnection, reply: ReplyRecord, config: EmulatorConfig, faults: Faults) -> None:
    """Send `reply_ms` of reply audio, chunk k at start + k * chunk_ms / playout_speed: an absolute
    schedule, so no drift.

    Cancellation (barge-in, session end) is how playback stops: after it nothing more is sent.
    """
    loop = asyncio.get_running_loop()
    total = config.reply_ms // FRAME_MS
    per_chunk = config.chunk_ms // FRAME_MS
    chunk_s = config.chunk_ms / 1000 / config.playout_speed
    start = loop.time()
    sent = chunks = 0
    while sent < total:
        if faults.stalled or faults.muted:
            paused_at = loop.time()
            await faults.wait_running()
            await faults.wait_voiced()
            start += loop.time() - paused_at  # resume the schedule rather than burst to catch up
        count = min(per_chunk, total - sent)
        now_us = time.time_ns() // 1000
        if count == 1:
            data = agent_frame(reply.number, sent, now_us)
        else:
            data = b"".join([agent_frame(reply.number, sent + i, now_us) for i in range(count)])
        await ws.send(data)
        sent += count
        chunks += 1
        reply.frames_sent = sent
        if sent < total:
            delay = start + chunks * chunk_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
