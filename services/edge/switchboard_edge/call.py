"""One Twilio Media Stream on the edge: Twilio frames in, Redis entries out, and back.

Caller side: each `media` payload is base64-decoded once and appended (raw bytes) to the
call's `:in` stream through the instance's coalescing writer. Agent side: the instance's
reader hands this call's `:out` entries to `deliver()`, which turns them into Twilio
messages on a per-call outbox, so a slow Twilio socket only ever delays its own call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from typing import TYPE_CHECKING

import orjson
from websockets.asyncio.server import ServerConnection
from redis.exceptions import RedisError
from websockets.exceptions import ConnectionClosed

from switchboard import entries, twilio
from switchboard.conversation import is_reply_start
from switchboard.entries import Kind, now_us
from switchboard.keys import RESUME_PARAMETER, STREAM_TOKEN_PARAMETER
from switchboard.outbox import Outbox, PeerStalled

from . import metrics

if TYPE_CHECKING:
    from .server import EdgeServer

log = logging.getLogger(__name__)

_SID = re.compile(r"^[A-Za-z0-9]{2,64}$")
HANGUP_MARK = "sb-hangup"
MAX_OUTSTANDING_MARKS = 512  # a client that never echoes marks must not grow memory


class EdgeCall:
    def __init__(self, server: "EdgeServer", ws: ServerConnection) -> None:
        self._server = server
        self._ws = ws
        self._settings = server.settings
        self.stream_sid = ""
        self.call_sid = ""
        self._in_key = ""
        self._out_key = ""
        self._outbox = Outbox(
            ws.send,
            max_bytes=self._settings.edge_outbox_max_bytes,
            stall_timeout_s=self._settings.edge_stall_timeout_s,
            transport_buffered=ws.transport.get_write_buffer_size,
        )
        self._sender: asyncio.Task[None] | None = None
        self._hangup_timer: asyncio.TimerHandle | None = None
        self._errors = 0
        self._stopped = False
        self._closing: asyncio.Task[None] | None = None
        self._start_seen = False
        self._end_reason = "twilio_closed"
        # A signed socket that never says which call it is would hold a connection forever.
        self._start_timer = asyncio.get_running_loop().call_later(self._settings.edge_start_timeout_s, self._no_start)
        # Marks sent to Twilio and not echoed yet: the ones a clear flushes were never played.
        self._marks_out: dict[str, None] = {}
        self._reply_start = ""  # a reply-start mark whose following audio's transit is reported

    @property
    def _ids(self) -> dict[str, str]:
        return {"call_sid": self.call_sid, "stream_sid": self.stream_sid, "edge_id": self._settings.edge_id}

    # --- Twilio → Redis ------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            async for frame in self._ws:
                if self._closing is not None:
                    continue  # keep reading so that the close handshake can complete
                if isinstance(frame, bytes):
                    self._protocol_error("binary_frame", "Twilio sends text frames only")
                    continue
                try:
                    event = twilio.parse(frame)
                except twilio.TwilioProtocolError as exc:
                    self._protocol_error(exc.reason, str(exc))
                    continue
                if type(event) is twilio.Media:
                    self._on_media(event)
                elif isinstance(event, twilio.Start):
                    try:
                        await self._on_start(event)
                    except RedisError:
                        # Nobody can serve a call we could not announce: close, and Twilio's
                        # <Redirect> brings it back (to this or another edge) for another try.
                        self._close(1011, "try again", "redis_unavailable")
                        continue
                elif isinstance(event, twilio.Stop):
                    self._end_reason = "twilio_stop"
                    break
                else:
                    self._on_other(event)
        except ConnectionClosed:
            pass
        finally:
            self._start_timer.cancel()
            await self._finish(self._end_reason)

    def _no_start(self) -> None:
        if self._in_key or self._start_seen:
            return
        metrics.REJECTED.labels("no_start").inc()
        self._protocol_error("no_start", f"no start within {self._settings.edge_start_timeout_s:g}s")
        self._close(1008, "no start", "no_start")

    def _on_media(self, media: twilio.Media) -> None:
        if not self._in_key:
            self._protocol_error("media_before_start", "media before start")
            return
        if media.stream_sid != self.stream_sid:
            self._protocol_error("wrong_stream_sid", f"media for stream {media.stream_sid[:40]!r}")
            return
        metrics.FRAMES_IN.inc()
        metrics.AUDIO_BYTES_IN.inc(len(media.payload))
        self._server.writer.append(self._in_key, entries.audio(media.payload, now_us()))

    async def _on_start(self, start: twilio.Start) -> None:
        if self._in_key or self._start_seen:
            self._protocol_error("duplicate_start", "second start message ignored")
            return
        self._start_seen = True
        self._start_timer.cancel()
        if not (_SID.match(start.stream_sid) and _SID.match(start.call_sid)):
            self._protocol_error("invalid_sid", "streamSid/callSid must be alphanumeric")
            self._close(1008, "invalid start")
            return
        if (start.encoding, start.sample_rate, start.channels) != twilio.MEDIA_FORMAT_SUPPORTED:
            self._protocol_error("unsupported_media_format", f"{start.encoding}/{start.sample_rate}/{start.channels}")
            self._close(1003, "unsupported media format")
            return
        verdict = await self._server.check_identity(start)
        if verdict.refused is not None:
            metrics.REJECTED.labels(verdict.refused).inc()
            self._protocol_error(verdict.refused, verdict.description, ids={"call_sid": start.call_sid[:64],
                                                                              "stream_sid": start.stream_sid[:64]})
            self._close(1008, "stream refused")
            return
        # What the record keeps of the peer's parameters: the used token is nobody's business, and
        # a resume claim stays only because check_identity verified its grant.
        params = {k: v for k, v in start.custom_parameters.items() if k != STREAM_TOKEN_PARAMETER}
        if verdict.resume_of:
            params[RESUME_PARAMETER] = verdict.resume_of
        start = dataclasses.replace(start, custom_parameters=params)
        if not await self._server.admit(start):  # no free slot: Twilio's <Redirect> answers per admission policy
            self._close(1013, "no capacity, try again later")
            return
        self.stream_sid, self.call_sid = start.stream_sid, start.call_sid
        keys = self._server.keys
        self._in_key, self._out_key = keys.caller_audio(self.stream_sid), keys.agent_output(self.stream_sid)
        self._sender = asyncio.create_task(self._send_loop(), name=f"edge-send-{self.stream_sid}")
        self._server.attach(self._out_key, self)
        metrics.LIVE_CALLS.inc()  # before the await: _finish decrements even if registering fails
        await self._server.register_call(start)
        log.info("stream started", extra={**self._ids, "params": sorted(start.custom_parameters)})

    def _on_other(self, event: twilio.TwilioEvent) -> None:
        if isinstance(event, twilio.Connected):
            return
        if not self._in_key:
            self._protocol_error("event_before_start", f"{type(event).__name__.lower()} before start")
            return
        if event.stream_sid != self.stream_sid:  # type: ignore[union-attr]
            self._protocol_error("wrong_stream_sid", "event for another stream")
            return
        if isinstance(event, twilio.Mark):
            if event.name == HANGUP_MARK:
                # Twilio has played everything we sent before the goodbye mark.
                self._close(1000, "call ended")
                return
            self._marks_out.pop(event.name, None)
            self._server.writer.append(self._in_key, entries.mark(event.name))
        elif isinstance(event, twilio.Dtmf):
            self._server.writer.append(self._in_key, entries.dtmf(event.digit))

    def _close(self, code: int, reason: str, end_reason: str = "") -> None:
        # Never await the close inside the read loop: websockets stops reading from a peer
        # whose unread frames fill its queue, and the peer's close frame would sit behind them.
        if self._closing is None:
            if end_reason:
                self._end_reason = end_reason
            self._closing = asyncio.create_task(self._ws.close(code, reason))

    def _protocol_error(self, reason: str, description: str, ids: dict[str, str] | None = None) -> None:
        self._errors += 1
        metrics.MALFORMED.labels(reason).inc()
        # First few per call are enough to diagnose; a flood must not flood the logs too.
        if self._errors <= 5:
            log.warning("invalid Twilio message: %s", description, extra={**self._ids, **(ids or {}), "reason": reason})
        if self._errors > self._settings.edge_max_protocol_errors:
            self._close(1008, "too many invalid messages", "too_many_protocol_errors")

    async def _finish(self, reason: str) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._hangup_timer:
            self._hangup_timer.cancel()
        if self._closing is not None:
            await asyncio.gather(self._closing, return_exceptions=True)
        if not self._in_key:
            metrics.CALLS.labels("no_start").inc()
            return
        self._server.detach(self._out_key)
        self._server.writer.append(self._in_key, entries.stop(reason))
        self._outbox.close()
        if await self._server.writer.drain(timeout_s=2.0):
            self._server.writer.forget(self._in_key)  # else the next write re-registers the key
        if self._sender:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        metrics.LIVE_CALLS.dec()
        metrics.CALLS.labels(reason).inc()
        log.info("stream ended", extra={**self._ids, "reason": reason})

    # --- Redis → Twilio --------------------------------------------------------------------------
    def deliver(self, batch: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Entries of this call's :out stream, in order. Runs inside the reader: must not block."""
        audio: list[bytes] = []
        now = now_us()
        for _entry_id, fields in batch:
            kind = fields.get(b"k")
            if kind == Kind.AUDIO.value:
                audio.append(fields[b"p"])
                transit_us = max(0, now - int(fields.get(b"t", now)))
                metrics.AGENT_TRANSIT.observe(transit_us / 1e6)
                if self._reply_start:
                    # The worker's share of this reply's latency on the way out.
                    self._server.writer.append(self._in_key, entries.timing(self._reply_start, transit_us))
                    self._reply_start = ""
                continue
            if kind == Kind.CLEAR.value:
                # Barge-in overtakes everything still queued here, including this batch's audio.
                audio.clear()
                # Queued marks survive (Twilio echoes them right after the clear, which is how
                # the worker learns what was cut); queued audio does not.
                self._outbox.clear(keep=_is_mark)
                self._outbox.put(twilio.clear_message(self.stream_sid))
                # Twilio echoes every mark still pending right after the clear, as if played:
                # tell the worker which ones those are, so it knows what the caller really heard.
                self._server.writer.append(self._in_key, entries.cleared(list(self._marks_out)))
                self._marks_out.clear()
                self._reply_start = ""
                metrics.CLEARS.inc()
                metrics.BARGE_IN.observe(max(0, now - int(fields.get(b"t", now))) / 1e6)
                continue
            self._send_audio(audio)
            if kind == Kind.MARK.value:
                name = fields[b"p"].decode(errors="replace")
                self._outbox.put(twilio.mark_message(self.stream_sid, name))
                self._marks_out[name] = None
                if len(self._marks_out) > MAX_OUTSTANDING_MARKS:
                    self._marks_out.pop(next(iter(self._marks_out)))
                if is_reply_start(name):
                    self._reply_start = name
            elif kind == Kind.HANGUP.value:
                self._begin_hangup(fields[b"p"].decode(errors="replace"))
        self._send_audio(audio)

    def _send_audio(self, parts: list[bytes]) -> None:
        if not parts:
            return
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        metrics.AUDIO_BYTES_OUT.inc(len(payload))
        self._outbox.put(twilio.media_message(self.stream_sid, payload))

    def check_stalled(self, now: float) -> None:
        if self._outbox.stalled(now):
            metrics.STALLED.inc()
            log.warning("Twilio socket stalled (a send hung), closing", extra=self._ids)
            self._outbox.clear()
            self._ws.transport.abort()

    def _begin_hangup(self, reason: str) -> None:
        # Close only after Twilio has played the goodbye: its echo of this mark says so.
        log.info("hangup requested", extra={**self._ids, "reason": reason})
        self._outbox.put(twilio.mark_message(self.stream_sid, HANGUP_MARK))
        if self._hangup_timer is None:
            loop = asyncio.get_running_loop()
            self._hangup_timer = loop.call_later(self._settings.edge_hangup_grace_s, self._close, 1000, "call ended")

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


def _is_mark(message: str | bytes) -> bool:
    return isinstance(message, str) and message.startswith('{"event":"mark"')


def start_fields(start: twilio.Start, edge_id: str) -> dict[str, bytes]:
    now = time.time()
    return {
        "call_sid": start.call_sid.encode(),
        "stream_sid": start.stream_sid.encode(),
        "account_sid": start.account_sid.encode(),
        "edge": edge_id.encode(),
        "profile": start.custom_parameters.get("profile", "").encode(),
        "params": orjson.dumps(start.custom_parameters),
        # Set only for a resume this edge verified against its one-time grant: the worker trusts
        # this field, never the parameters.
        "resume_of": start.custom_parameters.get(RESUME_PARAMETER, "").encode(),
        "state": b"waiting",
        "started_at": repr(now).encode(),
    }
