"""One simulated Twilio call over a real WebSocket: the I/O shell around the pure parts.

All calls of a process share one `Pacer`: a 20 ms clock on an absolute schedule (no drift;
after a stall it catches up, as a bunched network would) that asks each call for its next
frame and writes it synchronously (`wsfast`). Each call has its own phase within the 20 ms
period, at random as real calls that start at random instants do (or all the same with
`phase="aligned"`, which makes every call's frame arrive in the same millisecond). Per call, one task receives: it
validates what the edge sends and feeds the playback model, the audio checker and the
conversation. No per-frame logging: everything ends up in `CallResult`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlencode, urljoin

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from switchboard import signature
from switchboard_dev.testaudio import FRAME_BYTES, FRAME_MS, SILENCE, caller_frame

from .audiocheck import AgentAudioChecker
from .emucheck import caller_audio_verdict
from .playback import US_PER_BYTE, Playback
from .script import SILENT, CallScript, Conversation
from .twiliomsg import SILENCE_B64, CallIdentity, OutboundStream, ProtocolWarning, new_sid, parse_server
from .twiml import Connect, Hangup, Pause, Redirect, Say, Twiml, TwimlError
from .twiml import parse as parse_twiml
from .wsfast import write_text

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
    # Start like Twilio's voice webhook: POST here and run the TwiML verbs in order: open the
    # <Stream> it names, and when the stream drops run what follows </Connect> (a <Redirect>
    # to a new stream of the same call); <Say>, <Pause>, <Redirect> and <Hangup/> as Twilio does.
    twiml_url: str | None = None
    # When in the 20 ms period each call sends its frame: "random" (a random phase per call, as
    # independent real calls) or "aligned" (every call at the same instant).
    phase: Literal["random", "aligned"] = "random"


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
    # Per clear: ms of the interrupted reply that had played when it came (the truth the
    # worker's "what the caller heard" estimate is checked against).
    heard_at_clear_ms: list[int] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)  # streamSid of every stream the call had
    redirects: int = 0
    says: list[str] = field(default_factory=list)  # <Say> texts Twilio spoke, in order
    paused_s: float = 0.0  # time spent in <Pause>
    twiml_hangup: bool = False  # the TwiML ended the call (<Hangup/> or no verbs left), not the caller

    @property
    def ok(self) -> bool:
        return self.failure is None


def _now_us() -> int:
    return time.time_ns() // 1000


MAX_WRITE_BUFFER = 1 << 20  # an edge that stops reading fails the call instead of eating memory


class Pacer:
    """The 20 ms clock of every call in this process (`async with Pacer() as pacer`).

    The period is cut into `PHASES` slots; a call sends in its own slot every period.
    """

    PHASES = 20  # 1 ms apart

    def __init__(self, phase: Literal["random", "aligned"] = "random", rng: random.Random | None = None) -> None:
        self._slots = self.PHASES if phase == "random" else 1
        self._groups: list[dict[_Call, None]] = [{} for _ in range(self._slots)]  # insertion-ordered sets
        self._slot_of: dict[_Call, int] = {}
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self.max_lag_ms = 0.0

    async def __aenter__(self) -> Pacer:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    def add(self, call: _Call) -> None:
        slot = self._rng.randrange(self._slots)
        self._slot_of[call] = slot
        self._groups[slot][call] = None

    def discard(self, call: _Call) -> None:
        slot = self._slot_of.pop(call, None)
        if slot is not None:
            self._groups[slot].pop(call, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        step_s = FRAME_MS / 1000 / self._slots
        step = 0
        while True:
            calls = self._groups[step % self._slots]
            now = _now_us()
            for call in list(calls):
                try:
                    more = call.on_tick(now)
                except Exception as exc:  # task boundary for this call, not for the others
                    log.exception("call tick crashed", extra=call.log_ids)
                    call.fail(f"simulator error: {type(exc).__name__}")
                    more = False
                if not more:
                    self.discard(call)
                    call.ticking_done.set()
            step += 1
            delay = t0 + step * step_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay * 1000 > self.max_lag_ms:
                self.max_lag_ms = -delay * 1000


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
        # Set from outside (the Twilio REST emulator) when Twilio ends the stream itself: the
        # call was redirected to new TwiML or hung up over REST. The next tick sends `stop`.
        self.stop_requested = False
        self.ticking_done = asyncio.Event()
        self._reply_no: int | None = None
        self._reply_bytes = 0  # of the current reply, pushed to playback
        self._ticks = 0
        self._dtmf = sorted(config.script.dtmf)
        self.log_ids = {"call_sid": ident.call_sid, "stream_sid": ident.stream_sid}

    def fail(self, reason: str) -> None:
        if self.result.failure is None:
            self.result.failure = reason

    async def run(self, pacer: Pacer, http: httpx.AsyncClient | None = None) -> None:
        cfg = self.config
        if cfg.twiml_url:
            await self._run_twiml(pacer, http, cfg.twiml_url)
        else:
            self.conv = Conversation(cfg.script, self.playback, _now_us(), cfg.synthetic)
            self.result.streams.append(self.out.ident.stream_sid)
            await self._stream(pacer, cfg.url)
        if self.result.twiml_hangup and self.result.failure is None:
            self.fail("the TwiML ended the call before the script finished")
        if not self.hung_up and self.result.failure is None:
            self.fail("closed by the server before the script finished")

    async def _run_twiml(self, pacer: Pacer, http: httpx.AsyncClient | None, url: str) -> None:
        """Run the verbs in order, as Twilio does, until the caller hangs up or the TwiML ends the call."""
        doc = await self._fetch_twiml(http, url)
        verbs = list(doc.verbs) if doc else []
        while verbs:
            verb = verbs.pop(0)
            if isinstance(verb, Connect):
                self._new_stream(verb.parameters)
                if self.conv is None:  # the caller starts talking when the first stream opens
                    self.conv = Conversation(self.config.script, self.playback, _now_us(), self.config.synthetic)
                self.result.streams.append(self.out.ident.stream_sid)
                await self._stream(pacer, verb.url)
                if self.hung_up or self.result.failure or not self.server_closed:
                    return
                # The server closed the stream before the caller hung up: the verbs after
                # </Connect> run (Switchboard's <Redirect> reconnects or hangs up).
            elif isinstance(verb, Say):
                self.result.says.append(verb.text)
            elif isinstance(verb, Pause):
                self.result.paused_s += verb.seconds
                await asyncio.sleep(verb.seconds)
            elif isinstance(verb, Redirect):
                self.result.redirects += 1
                url = urljoin(url, verb.url)
                doc = await self._fetch_twiml(http, url, verb.method)
                if doc is None:
                    return
                verbs = list(doc.verbs)
            elif isinstance(verb, Hangup):
                break
        self.result.twiml_hangup = True  # <Hangup/>, or no verbs left: Twilio ends the call

    def _new_stream(self, parameters: dict[str, str]) -> None:
        old = self.out.ident
        ident = CallIdentity(old.account_sid, old.call_sid, new_sid("MZ"), dict(parameters))
        self.out = OutboundStream(ident)
        self.result.stream_sid = ident.stream_sid
        self.log_ids["stream_sid"] = ident.stream_sid
        self.playback = Playback()  # Twilio's buffer belonged to the old stream
        if self.conv is not None:
            self.conv.playback = self.playback
        self.server_closed = False
        self.stop_requested = False
        self.ticking_done = asyncio.Event()
        self._ticks = 0

    async def _fetch_twiml(self, http: httpx.AsyncClient | None, url: str, method: str = "POST") -> Twiml | None:
        ident = self.out.ident
        form = {"AccountSid": ident.account_sid, "CallSid": ident.call_sid, "From": "+14155550100",
                "To": "+14155550199", "CallStatus": "in-progress", "Direction": "inbound"}
        if method == "GET":  # Twilio puts the parameters into the query (and signs the whole URL)
            url, form = f"{url}{'&' if '?' in url else '?'}{urlencode(form)}", {}
        headers = {}
        if self.config.auth_token:
            headers["X-Twilio-Signature"] = signature.compute(self.config.auth_token, url, form)
        client = http or httpx.AsyncClient(timeout=5.0)
        try:
            if method == "GET":
                response = await client.get(url, headers=headers)
            else:
                response = await client.post(url, data=form, headers=headers)
            response.raise_for_status()
            doc = parse_twiml(response.content)
        except (httpx.HTTPError, TwimlError) as exc:
            self.fail(f"TwiML request failed: {exc}")
            return None
        finally:
            if http is None:
                await client.aclose()
        return doc

    async def _stream(self, pacer: Pacer, url: str, signed_url: str | None = None) -> None:
        cfg = self.config
        headers = {}
        if cfg.auth_token:
            signed = signed_url or (url if cfg.twiml_url else (cfg.public_url or cfg.url))
            headers["X-Twilio-Signature"] = signature.compute(cfg.auth_token, signed)
        try:
            self.ws = await connect(
                url,
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
            receiver = asyncio.create_task(self._receive())
            pacer.add(self)
            try:
                await self.ticking_done.wait()
                if self.stop_requested and not self.server_closed:
                    self._write(self.out.stop().encode())  # Twilio ends the stream, not the caller
                elif not self.server_closed:
                    self._hang_up()
            finally:
                pacer.discard(self)
                await self.ws.close()
                try:
                    await asyncio.wait_for(receiver, cfg.close_timeout_s + 1)
                except TimeoutError:
                    self.fail("receiver did not stop")
        except ConnectionClosed:
            self.server_closed = True
        finally:
            await self.ws.close()

    def on_tick(self, now: int) -> bool:
        """Send the next 20 ms; False once this call stops ticking (script over or failed)."""
        conv, res = self.conv, self.result
        assert conv is not None
        if res.failure is not None or self.server_closed or self.stop_requested:
            return False
        for name in self.playback.due_marks(now):
            self._echo_mark(name)
        utterance = conv.tick(now)
        if utterance is None:
            return False
        if utterance == SILENT:
            raw, b64 = SILENCE, SILENCE_B64
        else:
            raw = caller_frame(utterance, conv.seq, now)
            b64 = base64.b64encode(raw)
        self.sha.update(raw)
        at_ms = self._ticks * FRAME_MS
        self._write(self.out.media(b64, at_ms))
        res.sent_audio_bytes += FRAME_BYTES
        while self._dtmf and self._dtmf[0][0] <= at_ms:
            self._write(self.out.dtmf(self._dtmf.pop(0)[1]).encode())
        self._ticks += 1
        return True

    def _write(self, data: bytes) -> None:
        assert self.ws is not None
        if write_text(self.ws, data) > MAX_WRITE_BUFFER:
            self.fail("edge stopped reading (write buffer over 1 MiB)")

    def _echo_mark(self, name: str) -> None:
        self._write(self.out.mark(name).encode())
        self.result.marks_echoed += 1

    def _hang_up(self) -> None:
        """The caller hangs up (also after a failed turn) unless the line is already dead."""
        conv = self.conv
        assert conv is not None
        conv.finish()
        if conv.failure:
            self.fail(conv.failure)
        if not self.server_closed:
            self.hung_up = True
            self._write(self.out.stop().encode())

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
                                self._reply_bytes = 0
                                conv.on_new_reply(now, play_us + i * FRAME_US)
                        self._reply_bytes += len(value)
                    else:
                        res.received_audio_bytes += len(value)
                elif kind == "mark":
                    assert isinstance(value, str)
                    pb.push_mark(value, now)
                    for name in pb.due_marks(now):
                        self._echo_mark(name)
                else:
                    res.clears += 1
                    unplayed_us = max(0, pb.play_end_us - now)
                    res.heard_at_clear_ms.append(max(0, self._reply_bytes * 125 - unplayed_us) // 1000)
                    self._reply_bytes = 0
                    checker.clear()
                    conv.on_clear(now)
                    for name in pb.clear(now):
                        self._echo_mark(name)
        except ConnectionClosed:
            pass
        self.server_closed = True

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
    config: SimConfig,
    ident: CallIdentity | None = None,
    http: httpx.AsyncClient | None = None,
    pacer: Pacer | None = None,
) -> CallResult:
    """Place one call as Twilio would; never raises (failures are in the result)."""
    if pacer is None:
        async with Pacer() as own_pacer:
            return await run_call(config, ident, http, own_pacer)
    call = _Call(config, ident or CallIdentity.random(dict(config.params)))
    try:
        await call.run(pacer, http)
    except ConnectionClosed:
        call.fail("closed by the server before the script finished")
    except Exception as exc:  # task boundary: one broken call must not stop the load run
        log.exception("call crashed", extra=call.log_ids)
        call.fail(f"simulator error: {type(exc).__name__}")
    result = call.finish()
    if config.emulator_url and call.ws is not None:
        client = http or httpx.AsyncClient(timeout=5.0)
        try:
            result.byte_exact_in, result.in_reasons = await caller_audio_verdict(
                client, config.emulator_url, result.call_sid, result.sent_audio_bytes, result.sent_audio_sha256
            )
        finally:
            if http is None:
                await client.aclose()
    return result
