"""One simulated Twilio call over a real WebSocket: the I/O shell around the pure parts.

Two tasks per call: the sender paces 20 ms media on an absolute schedule (no drift; it
catches up after a stall, as a bunched network would) and echoes marks whose audio has
played; the receiver validates what the edge sends, feeds the playback model, the audio
checker and the conversation. No per-frame logging: everything ends up in `CallResult`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from switchboard import signature
from switchboard.testaudio import FRAME_BYTES, FRAME_MS, SILENCE, caller_frame

from .audiocheck import AgentAudioChecker
from .emucheck import caller_audio_verdict
from .playback import US_PER_BYTE, Playback
from .script import SILENT, CallScript, Conversation
from .twiliomsg import SILENCE_B64, CallIdentity, OutboundStream, ProtocolWarning, parse_server

log = logging.getLogger(__name__)
FRAME_US = FRAME_BYTES * US_PER_BYTE


@dataclass(frozen=True, slots=True)
class SimConfig:
    url: str = "ws://127.0.0.1:8080/twilio"
    public_url: str | None = None  # the URL Twilio would sign; defaults to `url`
    auth_token: str | None = None
    calls: int = 1
    concurrency: int | None = None  # default: all at once
    ramp_ms: int = 0
    script: CallScript = field(default_factory=CallScript)
    params: Mapping[str, str] = field(default_factory=dict)
    emulator_url: str | None = None
    synthetic: bool = True  # agent audio is testaudio frames (emulator), so check it byte for byte
    connect_timeout_s: float = 10.0
    close_timeout_s: float = 5.0
    identities: tuple[CallIdentity, ...] = ()  # fixed sids/parameters per call (tests)


@dataclass(slots=True)
class CallResult:
    call_sid: str
    stream_sid: str
    failure: str | None = None
    turns_completed: int = 0
    turn_latencies_us: list[int] = field(default_factory=list)
    barge_in_latencies_us: list[int] = field(default_factory=list)
    barge_in_missed: int = 0
    transit_us: list[int] = field(default_factory=list)
    byte_exact_out: bool | None = None
    out_reasons: list[str] = field(default_factory=list)
    byte_exact_in: bool | None = None
    in_reasons: list[str] = field(default_factory=list)
    sent_audio_bytes: int = 0
    sent_audio_sha256: str = ""
    received_audio_bytes: int = 0
    agent_frames: int = 0
    warnings: Counter[int] = field(default_factory=Counter)
    warning_reasons: list[str] = field(default_factory=list)
    marks_echoed: int = 0
    clears: int = 0
    max_send_lag_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failure is None


def _now_us() -> int:
    return time.time_ns() // 1000


class _Call:
    def __init__(self, config: SimConfig, ident: CallIdentity) -> None:
        self.config = config
        self.out = OutboundStream(ident)
        self.result = CallResult(ident.call_sid, ident.stream_sid)
        self.playback = Playback()
        self.checker = AgentAudioChecker()
        self.conv: Conversation | None = None
        self.sha = hashlib.sha256()
        self.ws: ClientConnection | None = None
        self.hung_up = False
        self.server_closed = False
        self._reply_no: int | None = None

    def fail(self, reason: str) -> None:
        if self.result.failure is None:
            self.result.failure = reason

    async def run(self) -> None:
        cfg = self.config
        headers = {}
        if cfg.auth_token:
            headers["X-Twilio-Signature"] = signature.compute(cfg.auth_token, cfg.public_url or cfg.url)
        try:
            self.ws = await connect(
                cfg.url,
                additional_headers=headers,
                open_timeout=cfg.connect_timeout_s,
                close_timeout=cfg.close_timeout_s,
                compression=None,
                ping_interval=None,
                user_agent_header="TwilioProxy/1.1",
            )
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            self.fail(f"connect failed: {type(exc).__name__}")
            return
        try:
            await self.ws.send(self.out.connected())
            await self.ws.send(self.out.start())
            self.conv = Conversation(cfg.script, self.playback, _now_us(), cfg.synthetic)
            receiver = asyncio.create_task(self._receive())
            try:
                await self._send()
            finally:
                if not self.hung_up:
                    await self.ws.close()
                try:
                    await asyncio.wait_for(receiver, cfg.close_timeout_s + 1)
                except TimeoutError:
                    self.fail("receiver did not stop")
        except ConnectionClosed:
            self.fail("closed by the server before the script finished")
        finally:
            await self.ws.close()

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        ws, out, conv, pb, res = self.ws, self.out, self.conv, self.playback, self.result
        assert ws is not None and conv is not None
        dtmf = sorted(self.config.script.dtmf)
        t0 = loop.time()
        tick = 0
        sha_update = self.sha.update
        while res.failure is None:
            now = _now_us()
            for name in pb.due_marks(now):
                await self._echo_mark(name)
            utterance = conv.tick(now)
            if utterance is None:
                break
            if utterance == SILENT:
                raw, b64 = SILENCE, SILENCE_B64
            else:
                raw = caller_frame(utterance, conv.seq, now)
                b64 = base64.b64encode(raw)
            sha_update(raw)
            await ws.send(out.media(b64, tick * FRAME_MS), text=True)
            res.sent_audio_bytes += FRAME_BYTES
            while dtmf and dtmf[0][0] <= tick * FRAME_MS:
                await ws.send(out.dtmf(dtmf.pop(0)[1]))
            tick += 1
            delay = t0 + tick * FRAME_MS / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay * 1000 > res.max_send_lag_ms:
                res.max_send_lag_ms = -delay * 1000
        conv.finish()
        if conv.failure:
            self.fail(conv.failure)
        if not self.server_closed:  # the caller hangs up, even after a failed turn
            self.hung_up = True
            await ws.send(out.stop())
            await ws.close()

    async def _echo_mark(self, name: str) -> None:
        assert self.ws is not None
        await self.ws.send(self.out.mark(name))
        self.result.marks_echoed += 1

    async def _receive(self) -> None:
        ws, pb, conv, checker, res = self.ws, self.playback, self.conv, self.checker, self.result
        assert ws is not None and conv is not None
        sid = res.stream_sid
        transit = res.transit_us
        try:
            async for frame in ws:
                now = _now_us()
                try:
                    kind, value = parse_server(frame, sid)
                except ProtocolWarning as warning:
                    res.warnings[warning.code] += 1
                    if len(res.warning_reasons) < 5:
                        res.warning_reasons.append(warning.reason)
                    continue
                if kind == "media":
                    assert isinstance(value, bytes)
                    play_us = pb.push_audio(len(value), now)
                    conv.on_audio(now, play_us)
                    if self.config.synthetic:
                        for i, info in enumerate(checker.feed(value)):
                            transit.append(now - info.sent_at_us)
                            if info.stream_no != self._reply_no:
                                self._reply_no = info.stream_no
                                conv.on_new_reply(now, play_us + i * FRAME_US)
                    else:
                        res.received_audio_bytes += len(value)
                elif kind == "mark":
                    assert isinstance(value, str)
                    pb.push_mark(value, now)
                    for name in pb.due_marks(now):
                        await self._echo_mark(name)
                else:
                    res.clears += 1
                    checker.clear()
                    conv.on_clear(now)
                    for name in pb.clear(now):
                        await self._echo_mark(name)
        except ConnectionClosed:
            pass
        self.server_closed = True
        if not self.hung_up:
            self.fail("closed by the server before the script finished")

    def finish(self) -> CallResult:
        res = self.result
        res.sent_audio_sha256 = self.sha.hexdigest()
        if self.conv is not None:
            res.turn_latencies_us = self.conv.turn_latencies_us
            res.barge_in_latencies_us = self.conv.barge_in_latencies_us
            res.barge_in_missed = self.conv.barge_in_missed
            res.turns_completed = len(self.conv.turn_latencies_us)
        if self.config.synthetic and self.ws is not None:
            res.byte_exact_out = self.checker.finish()
            res.out_reasons = self.checker.reasons
            res.received_audio_bytes = self.checker.bytes
            res.agent_frames = self.checker.frames
        if res.warnings:
            self.fail("protocol warnings " + ",".join(str(code) for code in sorted(res.warnings)))
        return res


async def run_call(
    config: SimConfig, ident: CallIdentity | None = None, http: httpx.AsyncClient | None = None
) -> CallResult:
    """Place one call as Twilio would; never raises (failures are in the result)."""
    call = _Call(config, ident or CallIdentity.random(dict(config.params)))
    try:
        await call.run()
    except ConnectionClosed:
        call.fail("closed by the server before the script finished")
    except Exception as exc:  # task boundary: one broken call must not stop the load run
        log.exception("call crashed", extra={"call_sid": call.result.call_sid, "stream_sid": call.result.stream_sid})
        call.fail(f"simulator error: {type(exc).__name__}")
    result = call.finish()
    if config.emulator_url and call.ws is not None:
        if http is None:
            async with httpx.AsyncClient(timeout=5.0) as client:
                verdict = await caller_audio_verdict(
                    client, config.emulator_url, result.call_sid, result.sent_audio_bytes, result.sent_audio_sha256
                )
        else:
            verdict = await caller_audio_verdict(
                http, config.emulator_url, result.call_sid, result.sent_audio_bytes, result.sent_audio_sha256
            )
        result.byte_exact_in, result.in_reasons = verdict
    return result
