"""One Twilio Media Stream on the edge: the shell around `stream_core.StreamCore`.

Caller side: the server hands each frame to `on_text` / `on_binary`; each `media` payload is
base64-decoded once and appended (raw bytes) to the call's `:in` stream through the instance's
coalescing writer. Agent side: the registry hands this call's `:out` entries to `deliver()`,
which turns them into Twilio messages on the call's own socket (`sockets.TwilioSocket`, whatever
WebSocket library carries it), so a slow Twilio socket only ever delays its own call. Every
decision (when to close, what a clear flushed, when a hang-up ends the stream) is the core's;
this module moves bytes, keeps the one timer the core asks for, and counts and logs what happens.

A `start` is checked and admitted asynchronously (identity, admission may wait for a slot):
frames that arrive meanwhile wait in order and are handled once it is decided.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable
from typing import assert_never

from redis.exceptions import RedisError

from switchboard import entries, twilio
from switchboard.entries import now_us
from switchboard.keys import RESUME_PARAMETER, STREAM_TOKEN_PARAMETER

from . import metrics
from .port import CallPort
from .sockets import TwilioSocket
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

# Frames that may wait while a start is decided (admission may wait up to a minute for a
# slot, and a stream sends 50 frames a second); past this the oldest go, counted as invalid.
MAX_WAITING_FRAMES = 3000


class EdgeCall:
    def __init__(self, port: CallPort, socket: TwilioSocket) -> None:
        self._port = port
        self._socket = socket
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
        self.starting: asyncio.Task[None] | None = None  # the start being checked and admitted
        self._waiting: list[str | bytes | None] = []  # frames that came meanwhile (None: binary)
        self.stopped_by_twilio = False
        self._timer: asyncio.TimerHandle | None = None
        self._armed: float | None = None
        self._stopped = False
        self._rearm()

    @property
    def _ids(self) -> dict[str, str]:
        return {"call_sid": self.call_sid, "stream_sid": self.stream_sid, "edge_id": self._edge_id}

    # --- Twilio → Redis ------------------------------------------------------------------------
    def on_text(self, frame: str | bytes) -> None:
        if self.starting is not None:
            self._wait(frame)
        else:
            self._handle(frame)

    def on_binary(self) -> None:
        if self.starting is not None:
            self._wait(None)
        else:
            self._handle(None)

    def _wait(self, frame: str | bytes | None) -> None:
        self._waiting.append(frame)
        if len(self._waiting) > MAX_WAITING_FRAMES:
            del self._waiting[0]
            self._apply(self._core.invalid("backlog", "frames arrive faster than the start is decided"))

    def _handle(self, frame: str | bytes | None) -> None:
        core = self._core
        if core.closing or self.stopped_by_twilio:
            return  # keep reading so that the close handshake can complete
        if frame is None:
            self._apply(core.invalid("binary_frame", "Twilio sends text frames only"))
            return
        try:
            event = twilio.parse(frame)
        except twilio.TwilioProtocolError as exc:
            self._apply(core.invalid(exc.reason, str(exc)))
            return
        if type(event) is twilio.Media:
            self._on_media(event)
        elif isinstance(event, twilio.Start):
            self.starting = asyncio.create_task(self._start(event), name="edge-start")
        elif isinstance(event, twilio.Stop):
            core.twilio_stopped()
            self.stopped_by_twilio = True
            self._socket.close(1000, "")
        else:
            self._apply(core.twilio_event(event))

    async def _start(self, event: twilio.Start) -> None:
        try:
            await self._on_start(event)
        except RedisError:
            # Nobody can serve a call we could not announce: close, and Twilio's <Redirect>
            # brings it back (to this or another edge) for another try.
            self._apply(self._core.close(1011, "try again", "redis_unavailable"))
        finally:
            self.starting = None
            waiting, self._waiting = self._waiting, []
            for index, frame in enumerate(waiting):
                if self.starting is not None:  # another start among them: the rest wait again
                    self._waiting = [*waiting[index:], *self._waiting]
                    break
                self._handle(frame)

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
        port.calls.attach(self._out_key, self)
        metrics.LIVE_CALLS.inc()  # before the await: _finish decrements even if registering fails
        await port.gate.register(start)
        log.info("stream started", extra={**self._ids, "params": sorted(start.custom_parameters)})

    async def finish(self) -> None:
        """The socket is closed (or Twilio said stop): tell the worker, once."""
        if self._stopped:
            return
        self._stopped = True
        self._disarm()
        if self.starting is not None:
            # Let it finish rather than cut it between its Redis writes: if it announced the call,
            # the stop below ends it at once.
            await asyncio.gather(self.starting, return_exceptions=True)
        if not self._core.announced:
            await self._socket.flush_and_stop()
            metrics.CALLS.labels("no_start").inc()
            return
        reason, writer = self._core.end_reason, self._port.writer
        self._port.calls.detach(self._out_key)
        writer.append(self._in_key, entries.stop(reason))
        await self._socket.flush_and_stop()
        if await writer.drain(timeout_s=2.0):
            writer.forget(self._in_key)  # else the next write re-registers the key
        metrics.LIVE_CALLS.dec()
        metrics.CALLS.labels(reason).inc()
        log.info("stream ended", extra={**self._ids, "reason": reason})

    # --- Redis → Twilio --------------------------------------------------------------------------
    def deliver(self, batch: AgentBatch) -> None:
        """Entries of this call's :out stream, in order. Runs inside the reader: must not block."""
        self._apply(self._core.agent_entries(batch, self._loop.time(), now_us()))

    def check_stalled(self, now: float) -> None:
        if self._socket.stalled(now):
            self.socket_stalled("a send hung, or too much is queued")

    def socket_stalled(self, why: str) -> None:
        metrics.STALLED.inc()
        log.warning("Twilio socket stalled (%s), closing", why, extra=self._ids)
        self._socket.abort()  # a peer that does not read will not read a close frame either

    # --- carrying out the core's actions -------------------------------------------------------------
    def _apply(self, actions: Iterable[Action], ids: dict[str, str] | None = None) -> None:
        for action in actions:
            match action:
                case SendAudio(payload):
                    metrics.AUDIO_BYTES_OUT.inc(len(payload))
                    self._socket.send(twilio.media_message(self.stream_sid, payload))
                case AudioTransit(transit_us):
                    metrics.AGENT_TRANSIT.observe(transit_us / 1e6)
                case SendMark(name):
                    self._socket.send(twilio.mark_message(self.stream_sid, name))
                case Clear(flushed_marks, latency_us):
                    # Queued marks survive (Twilio echoes them right after the clear, which is how
                    # the worker learns what was cut); queued audio does not.
                    self._socket.drop_queued(keep=_is_mark)
                    self._socket.send(twilio.clear_message(self.stream_sid))
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
                    self._socket.close(code, reason)
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
