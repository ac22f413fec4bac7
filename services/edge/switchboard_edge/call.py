"""One Twilio Media Stream on the edge: the socket shell around `stream_core.StreamCore`.

Caller side: each `media` payload is base64-decoded once and appended (raw bytes) to the
call's `:in` stream through the instance's coalescing writer. Agent side: the registry hands
this call's `:out` entries to `deliver()`, which turns them into Twilio messages on a
per-call outbox, so a slow Twilio socket only ever delays its own call. Every decision (when
to close, what a clear flushed, when a hang-up ends the stream) is the core's; this module
moves bytes, keeps the one timer the core asks for, and counts and logs what happens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable
from typing import assert_never

from redis.exceptions import RedisError
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from switchboard import entries, twilio
from switchboard.entries import now_us
from switchboard.keys import RESUME_PARAMETER, STREAM_TOKEN_PARAMETER
from switchboard.outbox import Outbox, PeerStalled

from . import metrics
from .port import CallPort
from .stream_core import (
    Action,
    AgentBatch,
    AudioTransit,
    Clear,
    Close,
    Digit,
    HangupRequested,
    Invalid,
    MarkPlayed,
    Phase,
    Refused,
    ReplyTransit,
    SendAudio,
    SendMark,
    StreamCore,
)

log = logging.getLogger(__name__)


class EdgeCall:
    def __init__(self, port: CallPort, ws: ServerConnection) -> None:
        self._port = port
        self._ws = ws
        settings = port.settings
        self._edge_id = settings.edge_id
        self._loop = asyncio.get_running_loop()
        # A signed socket that never says which call it is would hold a connection forever: the
        # core's first deadline closes it.
        self._core = StreamCore(now_s=self._loop.time(), start_timeout_s=settings.edge_start_timeout_s,
                                hangup_grace_s=settings.edge_hangup_grace_s,
                                max_protocol_errors=settings.edge_max_protocol_errors)
        self.stream_sid = ""
        self.call_sid = ""
        self._in_key = ""
        self._out_key = ""
        self._outbox = Outbox(
            ws.send,
            max_bytes=settings.edge_outbox_max_bytes,
            stall_timeout_s=settings.edge_stall_timeout_s,
            transport_buffered=ws.transport.get_write_buffer_size,
        )
        self._sender: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed: float | None = None
        self._stopped = False
        self._rearm()

    @property
    def _ids(self) -> dict[str, str]:
        return {"call_sid": self.call_sid, "stream_sid": self.stream_sid, "edge_id": self._edge_id}

    # --- Twilio → Redis ------------------------------------------------------------------------
    async def run(self) -> None:
        core = self._core
        try:
            async for frame in self._ws:
                if core.closing:
                    continue  # keep reading so that the close handshake can complete
                if isinstance(frame, bytes):
                    self._apply(core.invalid("binary_frame", "Twilio sends text frames only"))
                    continue
                try:
                    event = twilio.parse(frame)
                except twilio.TwilioProtocolError as exc:
                    self._apply(core.invalid(exc.reason, str(exc)))
                    continue
                if type(event) is twilio.Media:
                    self._on_media(event)
                elif isinstance(event, twilio.Start):
                    try:
                        await self._on_start(event)
                    except RedisError:
                        # Nobody can serve a call we could not announce: close, and Twilio's
                        # <Redirect> brings it back (to this or another edge) for another try.
                        self._apply(core.close(1011, "try again", "redis_unavailable"))
                elif isinstance(event, twilio.Stop):
                    core.twilio_stopped()
                    break
                else:
                    self._apply(core.twilio_event(event))
        except ConnectionClosed:
            pass
        finally:
            await self._finish()

    def _on_media(self, media: twilio.Media) -> None:
        problem = self._core.check_media(media.stream_sid)
        if problem:
            self._apply(problem)
            return
        metrics.FRAMES_IN.inc()
        metrics.AUDIO_BYTES_IN.inc(len(media.payload))
        self._port.writer.append(self._in_key, entries.audio(media.payload, now_us()))

    async def _on_start(self, start: twilio.Start) -> None:
        core, port = self._core, self._port
        self._apply(core.start_received(start))
        if core.phase is not Phase.CHECKING:
            return  # a duplicate, or refused for its shape
        verdict = await port.gate.check_identity(start)
        if verdict.refused is not None:
            claimed = {"call_sid": start.call_sid[:64], "stream_sid": start.stream_sid[:64]}
            self._apply([Refused(verdict.refused), *core.invalid(verdict.refused, verdict.description)], claimed)
            self._apply(core.close(1008, "stream refused"))
            return
        # What the record keeps of the peer's parameters: the used token is nobody's business, and
        # a resume claim stays only because check_identity verified its grant.
        params = {k: v for k, v in start.custom_parameters.items() if k != STREAM_TOKEN_PARAMETER}
        if verdict.resume_of:
            params[RESUME_PARAMETER] = verdict.resume_of
        start = dataclasses.replace(start, custom_parameters=params)
        if not await port.gate.admit(start):  # no free slot: Twilio's <Redirect> answers per admission policy
            self._apply(core.close(1013, "no capacity, try again later"))
            return
        core.go_live(start.stream_sid)
        self.stream_sid, self.call_sid = start.stream_sid, start.call_sid
        self._in_key, self._out_key = port.keys.caller_audio(self.stream_sid), port.keys.agent_output(self.stream_sid)
        self._sender = asyncio.create_task(self._send_loop(), name=f"edge-send-{self.stream_sid}")
        port.calls.attach(self._out_key, self)
        metrics.LIVE_CALLS.inc()  # before the await: _finish decrements even if registering fails
        await port.gate.register(start)
        log.info("stream started", extra={**self._ids, "params": sorted(start.custom_parameters)})

    async def _finish(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._disarm()
        if self._closing is not None:
            await asyncio.gather(self._closing, return_exceptions=True)
        if not self._core.announced:
            metrics.CALLS.labels("no_start").inc()
            return
        reason, writer = self._core.end_reason, self._port.writer
        self._port.calls.detach(self._out_key)
        writer.append(self._in_key, entries.stop(reason))
        self._outbox.close()
        if await writer.drain(timeout_s=2.0):
            writer.forget(self._in_key)  # else the next write re-registers the key
        if self._sender:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        metrics.LIVE_CALLS.dec()
        metrics.CALLS.labels(reason).inc()
        log.info("stream ended", extra={**self._ids, "reason": reason})

    # --- Redis → Twilio --------------------------------------------------------------------------
    def deliver(self, batch: AgentBatch) -> None:
        """Entries of this call's :out stream, in order. Runs inside the reader: must not block."""
        self._apply(self._core.agent_entries(batch, self._loop.time(), now_us()))

    def check_stalled(self, now: float) -> None:
        if self._outbox.stalled(now):
            metrics.STALLED.inc()
            log.warning("Twilio socket stalled (a send hung), closing", extra=self._ids)
            self._outbox.clear()
            self._ws.transport.abort()

    async def _send_loop(self) -> None:
        try:
            await self._outbox.run()
        except PeerStalled as exc:
            metrics.STALLED.inc()
            log.warning("Twilio socket stalled, closing: %s", exc, extra=self._ids)
            self._outbox.clear()
            self._ws.transport.abort()  # a peer that does not read will not read a close frame either
        except ConnectionClosed:
            pass

    # --- carrying out the core's actions -------------------------------------------------------------
    def _apply(self, actions: Iterable[Action], ids: dict[str, str] | None = None) -> None:
        for action in actions:
            match action:
                case SendAudio(payload):
                    metrics.AUDIO_BYTES_OUT.inc(len(payload))
                    self._outbox.put(twilio.media_message(self.stream_sid, payload))
                case AudioTransit(transit_us):
                    metrics.AGENT_TRANSIT.observe(transit_us / 1e6)
                case SendMark(name):
                    self._outbox.put(twilio.mark_message(self.stream_sid, name))
                case Clear(flushed_marks, latency_us):
                    # Queued marks survive (Twilio echoes them right after the clear, which is how
                    # the worker learns what was cut); queued audio does not.
                    self._outbox.clear(keep=_is_mark)
                    self._outbox.put(twilio.clear_message(self.stream_sid))
                    self._port.writer.append(self._in_key, entries.cleared(list(flushed_marks)))
                    metrics.CLEARS.inc()
                    metrics.BARGE_IN.observe(latency_us / 1e6)
                case ReplyTransit(mark, transit_us):
                    self._port.writer.append(self._in_key, entries.timing(mark, transit_us))
                case MarkPlayed(name):
                    self._port.writer.append(self._in_key, entries.mark(name))
                case Digit(digit):
                    self._port.writer.append(self._in_key, entries.dtmf(digit))
                case HangupRequested(reason):
                    log.info("hangup requested", extra={**self._ids, "reason": reason})
                case Invalid(reason, description, loud):
                    metrics.MALFORMED.labels(reason).inc()
                    if loud:
                        log.warning("invalid Twilio message: %s", description,
                                    extra={**self._ids, **(ids or {}), "reason": reason})
                case Refused(reason):
                    metrics.REJECTED.labels(reason).inc()
                case Close(code, reason):
                    # Never await the close inside the read loop: websockets stops reading from a peer
                    # whose unread frames fill its queue, and the peer's close frame would sit behind them.
                    self._closing = asyncio.create_task(self._ws.close(code, reason))
                case _:
                    assert_never(action)
        self._rearm()

    # --- the core's one timer (start timeout, hang-up grace) -----------------------------------------
    def _rearm(self) -> None:
        deadline = self._core.next_deadline()
        if deadline == self._armed:
            return
        self._disarm()
        if deadline is not None and not self._stopped:
            self._armed = deadline
            self._timer = self._loop.call_at(deadline, self._deadline_reached)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._armed = None, None

    def _deadline_reached(self) -> None:
        # The timer was set for exactly this deadline; a loop may fire it a clock tick early.
        due = max(self._loop.time(), self._armed or 0.0)
        self._timer, self._armed = None, None
        self._apply(self._core.poll(due))


def _is_mark(message: str | bytes) -> bool:
    return isinstance(message, str) and message.startswith('{"event":"mark"')
