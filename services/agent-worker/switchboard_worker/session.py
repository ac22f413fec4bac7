"""One call held by this worker: the Deepgram session and both audio directions.

Caller audio arrives through the worker's shared reader (`on_caller_entries`) and goes to
Deepgram through a per-call outbox. Deepgram's audio and events are read by this session's
own task (`run`) and appended to the call's `:out` / `:events` streams by the shared writer.

A call ends on exactly one path: the edge writes `stop` to `:in` (Twilio hung up, or the
edge closed the socket after we asked it to hang up). Everything that wants to end the
call (Deepgram gone for good, `end_call`, a hang-up command) asks the edge to hang up
and then waits for that stop, so the caller always hears what was meant to play.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from switchboard import deepgram, entries, settings_store
from switchboard import keys as keyspace
from switchboard.agent_settings import AgentSettings
from switchboard.conversation import (
    Action,
    Conversation,
    ConversationConfig,
    Emit,
    Hangup,
    Observe,
    Reconnect,
    ToAgent,
    ToCaller,
)
from switchboard.entries import Entry, Kind, now_us
from switchboard.journal import Recorder
from switchboard.outbox import Outbox, PeerStalled

from . import metrics
from .deepgram_link import DeepgramUnavailable, open_agent
from .functions import FunctionRunner

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger(__name__)

MAX_CONTEXT_ITEMS = 60
BUFFER_WHILE_CONNECTING_BYTES = 8000 * 5
END_WAIT_S = 30.0  # after asking the edge to hang up, how long to wait for its stop
STABLE_SESSION_S = 30.0  # a Deepgram session this old resets the reconnect budget
CARRIED_EVENTS = frozenset({"transcript", "function_call"})  # what a new stream adopts from the one it replaces


class CallSession:
    def __init__(self, worker: "Worker", stream_sid: str, call_sid: str, dispatch_id: bytes, takeover: bool) -> None:
        self.worker = worker
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.dispatch_id = dispatch_id
        self.takeover = takeover
        keys = worker.keys
        self.call_key = keys.call(stream_sid)
        self.in_key = keys.caller_audio(stream_sid)
        self.out_key = keys.agent_output(stream_sid)
        self.events_key = keys.events(stream_sid)
        self.cmd_key = keys.commands(stream_sid)
        self.journal_key = keys.journal(stream_sid)
        self.lease_token = ""
        self.settings = AgentSettings()
        self._live_overrides: dict[str, Any] = {}
        self._dg: ClientConnection | None = None
        self._outbox: Outbox | None = None
        self._sender: asyncio.Task[None] | None = None
        self._ready = False
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._stopped = asyncio.Event()  # the edge said the call is over
        self.stop_reason = ""
        self._hangup_requested = False
        self._closing_dg = False
        self._end_after_reply = ""  # hang-up reason once the current reply has been sent
        self._last_error: str | None = None
        # Replies, what the caller heard of them, turn timing, dead air: decided here, done by us.
        self.conv = Conversation(ConversationConfig(), time.monotonic())
        self._reask = False
        self._journal = Recorder(self.settings.journal)  # off until the call's settings say otherwise
        self._unanswered: str | None = None
        self._utterance_at = ""
        self._resumed_from = ""
        self._last_caller_entry = time.monotonic()
        self._following = False
        self._closer: asyncio.Task[None] | None = None
        self._in_pos: bytes | str = "0-0"
        self._last_audio_at = time.monotonic()
        self._last_keepalive_at = 0.0
        self._functions = FunctionRunner(self)
        # Set before this session's task is cancelled when the call lives on elsewhere.
        self.released: str | None = None
        self.extra = {"call_sid": call_sid, "stream_sid": stream_sid, "worker_id": worker.settings.worker_id}

    # --- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        outcome = "completed"
        try:
            meta = await self.worker.redis.hgetall(self.call_key)
            if not meta or meta.get(b"state") == b"ended":
                outcome = "already_ended"
                return
            await self._prepare(meta)
            try:
                await self._connect()
            except DeepgramUnavailable as exc:
                outcome = f"deepgram_{exc.code}"
                self._record_error(exc.code, str(exc))
                self._ask_edge_to_hang_up("deepgram_unavailable")
                self._follow_caller()  # to see the edge's stop
            else:
                self._follow_caller()
                self.worker.reader.add(self.cmd_key, meta.get(b"cmd_pos", b"0-0"))
                await self.worker.redis.hset(self.call_key, mapping={"state": "active"})
                if self.released:  # released while connecting: the call is another worker's now
                    self._dg.transport.abort()  # type: ignore[union-attr]
                outcome = await self._pump()
            if outcome != "completed" or self._hangup_requested:
                await self._wait_for_stop()
        except RedisError as exc:
            # Let go without ending the call: its lease lapses and a takeover (here or on
            # another worker) resumes it once Redis answers again.
            metrics.REDIS_ERRORS.inc()
            log.error("redis failed mid-call; releasing the call for a takeover: %s", exc, extra=self.extra)
            self.released = "redis_error"
        except Exception:  # task boundary: a bug here must not leave the caller on a dead line
            log.exception("call session failed; releasing the call for a takeover", extra=self.extra)
            self.released = "crashed"
        finally:
            await self._finish(self.released or outcome)

    def _follow_caller(self) -> None:
        # The silence watchdog counts from here: before the caller's stream is read, quiet is normal.
        self._last_caller_entry = time.monotonic()
        self._following = True
        self.worker.reader.add(self.in_key, self._in_pos)

    async def _prepare(self, meta: dict[bytes, bytes]) -> None:
        profile = meta.get(b"profile", b"").decode() or None
        resolved = await settings_store.resolve(self.worker.redis, self.worker.keys, self.call_sid, profile)
        self.settings = resolved.settings
        self.conv.config = ConversationConfig.from_settings(self.settings)
        self._journal = Recorder(self.settings.journal)
        self._record(self._journal.start(self.call_sid, self.stream_sid, self.settings, now_us(), self.conv.session_id))
        raw_overrides = meta.get(b"overrides")
        if raw_overrides:
            self._live_overrides = orjson.loads(raw_overrides)
            self._apply_overrides()
        # The edge sets this only after consuming the resume grant /twiml/continue issued for this
        # call and that stream; the stream's own parameters are a peer's claim and decide nothing.
        resume_of = meta.get(b"resume_of", b"").decode()
        if resume_of and resume_of != self.stream_sid:
            await self._adopt_conversation(resume_of)
        if self.takeover and not self._resumed_from:
            # Resume from the last position the previous owner recorded (at most one heartbeat
            # old), or from the start of an utterance the old session heard but never
            # transcribed: what the caller said around the gap reaches the new session.
            utterance = meta.get(b"utt_pos", b"")
            unanswered = utterance and utterance != meta.get(b"utt_answered")
            self._in_pos = utterance if unanswered else meta.get(b"in_pos", b"0-0")
        await self.worker.redis.hset(
            self.call_key,
            mapping={
                "worker": self.worker.settings.worker_id,
                "state": "connecting",
                "settings_source": resolved.source,
                "settings_version": str(resolved.version),
            },
        )
        log.info(
            "call claimed",
            extra={**self.extra, "takeover": self.takeover, "settings_source": resolved.source},
        )

    async def _adopt_conversation(self, old_stream_sid: str) -> None:
        """This stream replaces one that dropped (edge lost): carry the conversation over.

        The transcript moves to this stream's events (context for Deepgram and the call's
        history), live changes carry over, and the old stream's session, if a worker still
        holds it, is told to stop.
        """
        keys, redis = self.worker.keys, self.worker.redis
        old_call_sid, old_overrides, utterance_at, answered = await redis.hmget(
            keys.call(old_stream_sid), ["call_sid", "overrides", "utt_pos", "utt_answered"]
        )
        if old_call_sid is not None and old_call_sid.decode() != self.call_sid:
            # Defence in depth: a stream only ever continues its own call.
            log.error("refusing to adopt a stream of another call", extra={**self.extra, "resume_of": old_stream_sid})
            return
        old_events = await redis.xrange(keys.events(old_stream_sid), count=keyspace.EVENTS_STREAM_MAXLEN)
        if utterance_at and utterance_at != answered:
            # The caller was mid-utterance when the stream dropped: the new session hears it first.
            for _entry_id, fields in await redis.xrange(keys.caller_audio(old_stream_sid), min=utterance_at):
                if fields.get(b"k") == Kind.AUDIO.value and self._buffered < BUFFER_WHILE_CONNECTING_BYTES:
                    self._buffer.append(fields[b"p"])
                    self._buffered += len(fields[b"p"])
        pipe = redis.pipeline(transaction=False)
        for _entry_id, fields in old_events:
            event = orjson.loads(fields.get(b"p", b"{}"))
            if event.get("type") in CARRIED_EVENTS:
                pipe.xadd(self.events_key, fields, maxlen=keyspace.EVENTS_STREAM_MAXLEN, approximate=True)
        pipe.xadd(keys.caller_audio(old_stream_sid), entries.stop("moved_to_new_stream").fields(),
                  maxlen=keyspace.AUDIO_STREAM_MAXLEN, approximate=True)
        await pipe.execute()
        if old_overrides:
            self._live_overrides = orjson.loads(old_overrides)
            self._apply_overrides()
            self.worker.spawn_write(self.call_key, {"overrides": old_overrides})
        self.takeover = True  # resume: context, no second greeting
        self._in_pos = "0-0"  # ...but this stream is new: all of its audio
        self._resumed_from = old_stream_sid
        self._event("resumed_from_stream", stream_sid=old_stream_sid)

    def _apply_overrides(self) -> None:
        if "prompt" in self._live_overrides:
            self.settings.think.prompt = self._live_overrides["prompt"]
        if "speak" in self._live_overrides:
            self.settings.speak = type(self.settings.speak).model_validate(self._live_overrides["speak"])
        self.conv.config = ConversationConfig.from_settings(self.settings)

    async def _connect(self, resume: bool | None = None) -> None:
        resume = self.takeover if resume is None else resume
        context = await self._load_context() if resume else None
        message = self.settings.to_settings_message(
            tags=["switchboard", f"callsid:{self.call_sid}"], context=context, resume=resume
        )
        self._record(self._journal.to_deepgram(message, now_us()))
        attempts = self.worker.settings.deepgram_max_reconnects + 1
        delay = 0.2
        for attempt in range(1, attempts + 1):
            try:
                ws, request_id, took = await open_agent(
                    self.worker.settings.deepgram_agent_url,
                    self.worker.settings.deepgram_api_key.get_secret_value(),
                    message,
                    self.worker.settings.deepgram_connect_timeout_s,
                )
            except DeepgramUnavailable as exc:
                metrics.DG_ERRORS.labels(exc.code).inc()
                log.warning(
                    "deepgram connect failed (%s), attempt %d/%d", exc, attempt, attempts, extra=self.extra
                )
                if not exc.retryable or attempt == attempts or self._stopped.is_set():
                    raise
                await asyncio.sleep(delay * (0.5 + self.worker.random.random()))
                delay = min(delay * 2, 2.0)
                continue
            metrics.DG_CONNECT.observe(took)
            self._attach(ws)
            self._event("deepgram_connected", request_id=request_id, resumed=bool(resume), connect_ms=round(took * 1000, 1))
            log.info("deepgram session open", extra={**self.extra, "request_id": request_id, "connect_ms": round(took * 1000, 1)})
            return

    def _attach(self, ws: ClientConnection) -> None:
        self._dg = ws
        self._outbox = Outbox(
            ws.send,
            max_bytes=self.worker.settings.worker_outbox_max_bytes,
            stall_timeout_s=self.worker.settings.worker_stall_timeout_s,
        )
        self._sender = asyncio.create_task(self._send_loop(self._outbox, ws), name=f"dg-send-{self.stream_sid}")
        self._ready = True
        self._closing_dg = self._stopped.is_set()
        self._last_audio_at = time.monotonic()
        if self._unanswered:
            self.send_to_agent(deepgram.inject_user_message(self._unanswered))
            self._unanswered = None
        if self._buffer:
            self._outbox.put(b"".join(self._buffer))
            self._buffer.clear()
            self._buffered = 0

    async def _send_loop(self, outbox: Outbox, ws: ClientConnection) -> None:
        try:
            await outbox.run()
        except PeerStalled as exc:
            log.warning("deepgram socket stalled: %s", exc, extra=self.extra)
            await ws.close(1011, "stalled")
        except ConnectionClosed:
            pass

    async def _pump(self) -> str:
        """Read Deepgram until the call ends; reconnect with context when it drops."""
        reconnects = 0
        while True:
            ws = self._dg
            assert ws is not None
            connected_at = time.monotonic()
            try:
                async for frame in ws:
                    if isinstance(frame, bytes):
                        self._on_agent_audio(frame)
                    else:
                        self._on_agent_event(frame)
            except ConnectionClosed:
                pass
            await self._detach()
            self._apply(self.conv.on_agent_reconnect(time.monotonic()))
            if self._closing_dg or self._stopped.is_set():
                return "completed"
            code = self._last_error or "closed"
            if code not in deepgram.RECONNECTABLE_ERRORS and code != "closed":
                self._ask_edge_to_hang_up(f"deepgram_error_{code}")
                return f"deepgram_{code}"
            if time.monotonic() - connected_at > STABLE_SESSION_S:
                reconnects = 0  # the retry budget is for a flapping service, not for a long call
            reconnects += 1
            if reconnects > self.worker.settings.deepgram_max_reconnects:
                self._ask_edge_to_hang_up("deepgram_gone")
                return "deepgram_gone"
            metrics.DG_RECONNECTS.inc()
            log.warning("deepgram dropped mid-call (%s); reconnecting with context", code, extra=self.extra)
            self._last_error = None
            try:
                await self._connect(resume=True)
            except DeepgramUnavailable as exc:
                self._ask_edge_to_hang_up(f"deepgram_{exc.code}")
                return f"deepgram_{exc.code}"
            if self._stopped.is_set():
                return "completed"  # the caller hung up while we reconnected: _finish closes it

    async def _detach(self) -> None:
        self._ready = False
        if self._outbox is not None:
            self._outbox.close()
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        self._sender = None

    async def _wait_for_stop(self) -> None:
        try:
            async with asyncio.timeout(END_WAIT_S):
                await self._stopped.wait()
        except TimeoutError:
            log.warning("edge never confirmed the end of the call", extra=self.extra)

    async def _finish(self, outcome: str) -> None:
        self.worker.reader.remove(self.in_key)
        self.worker.reader.remove(self.cmd_key)
        if self._closer is not None:
            await asyncio.gather(self._closer, return_exceptions=True)
        await self._functions.close()
        if self._dg is not None:
            self._closing_dg = True
            await self._dg.close()
            await self._detach()
        metrics.CALLS.labels(outcome).inc()
        if self.released:
            # The call lives on with another worker: leave its records alone.
            for key in self.worker.keys.per_call(self.stream_sid):
                self.worker.writer.forget(key)
            return
        self._event("call_ended", outcome=outcome, reason=self.stop_reason)
        try:
            await self.worker.writer.drain()
            await self.worker.end_call_records(self, outcome)
        except RedisError as exc:
            metrics.REDIS_ERRORS.inc()
            log.error("could not record the end of the call: %s", exc, extra=self.extra)
        log.info("call finished", extra={**self.extra, "outcome": outcome, "reason": self.stop_reason})

    def release(self, reason: str) -> None:
        """The call continues with another worker (drain, lost lease): leave it untouched."""
        self.released = reason
        self._closing_dg = True
        # The caller also cancels this session's task, but on Python 3.11 a cancellation that
        # lands while redis-py sends a command can be lost; closing Deepgram ends the pump anyway.
        if self._dg is not None:
            self._dg.transport.abort()

    # --- caller → Deepgram ---------------------------------------------------------------------
    def on_caller_entries(self, batch: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        mono = self._last_caller_entry = time.monotonic()
        audio: list[bytes] = []
        now = now_us()
        worst = 0
        recording = self._journal.enabled
        for _entry_id, fields in batch:
            if recording:
                self._record(self._journal.caller_entry(fields))
            kind = fields.get(b"k")
            if kind == Kind.AUDIO.value:
                transit_us = now - int(fields.get(b"t", now))
                audio.append(fields[b"p"])
                metrics.CALLER_TRANSIT.observe(max(0, transit_us) / 1e6)
                if transit_us > worst:
                    worst = transit_us
                continue
            self._send_caller_audio(audio)
            if kind == Kind.STOP.value:
                self._on_stop(fields.get(b"p", b"").decode(errors="replace"))
                continue
            try:
                entry = entries.decode(fields)
            except entries.EntryError as exc:
                log.warning("bad caller entry: %s", exc, extra=self.extra)
                continue
            self._apply(self.conv.on_caller_entry(entry, mono))
        self._send_caller_audio(audio)
        if worst:
            self.conv.on_caller_transit(worst)
        self._in_pos = batch[-1][0]

    def _send_caller_audio(self, parts: list[bytes]) -> None:
        if not parts:
            return
        chunk = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        if self._ready and self._outbox is not None:
            self._outbox.put(chunk)
            metrics.AUDIO_BYTES_TO_DG.inc(len(chunk))
            self._last_audio_at = time.monotonic()
        elif self._buffered < BUFFER_WHILE_CONNECTING_BYTES:
            self._buffer.append(chunk)
            self._buffered += len(chunk)

    def _on_stop(self, reason: str) -> None:
        self.stop_reason = reason
        self._stopped.set()
        if self._closer is None:
            self._closer = asyncio.create_task(self._close_deepgram_after_tail())

    async def _close_deepgram_after_tail(self) -> None:
        # Deliver the caller's last words before closing: the stop entry came after them.
        self._closing_dg = True
        if self._outbox is not None:
            try:
                async with asyncio.timeout(2):
                    await self._outbox.drained()
            except TimeoutError:
                pass
        if self._dg is not None:
            await self._dg.close()

    def tick(self, now: float) -> None:
        """Called twice a second: notice a lost caller stream; KeepAlive while audio pauses."""
        silent_for = now - self._last_caller_entry
        if (
            self._following
            and silent_for > self.worker.settings.caller_timeout_s
            and self.worker.reader.healthy_for(silent_for)
            and not self._stopped.is_set()
        ):
            # Twilio sends media every 20 ms, silence included: a stream this quiet while Redis
            # is fine means its edge is gone. Twilio reconnects the call as a new stream.
            log.warning("caller stream silent for %.1fs: its edge is gone", silent_for, extra=self.extra)
            self._on_stop("caller_stream_lost")
            return
        if not self._ready or self._outbox is None:
            return
        if not self._stopped.is_set() and not self._hangup_requested:
            self._apply(self.conv.tick(now))
        if self._outbox.stalled(now) and self._dg is not None:
            log.warning("deepgram socket stalled (a send hung); dropping it to reconnect", extra=self.extra)
            self._dg.transport.abort()
            return
        settings = self.worker.settings
        since_audio = now - self._last_audio_at
        if since_audio < settings.keepalive_after_s:
            return
        if self._last_keepalive_at > self._last_audio_at and now - self._last_keepalive_at < settings.keepalive_every_s:
            return
        self._outbox.put(deepgram.KEEPALIVE)
        self._record(self._journal.to_deepgram(deepgram.KEEPALIVE, now_us()))
        self._last_keepalive_at = now
        metrics.KEEPALIVES.inc()

    # --- Deepgram → caller -----------------------------------------------------------------------
    def _on_agent_audio(self, frame: bytes) -> None:
        metrics.AUDIO_BYTES_FROM_DG.inc(len(frame))
        t_us = now_us()
        self.worker.writer.append(self.out_key, entries.audio(frame, t_us))
        if self._journal.audio:
            self._record(self._journal.agent_audio(frame, t_us))
        actions = self.conv.on_agent_audio(len(frame), time.monotonic())
        if actions:
            self._apply(actions)

    def _on_agent_event(self, text: str) -> None:
        self._record(self._journal.from_deepgram(text, now_us()))
        try:
            msg = deepgram.parse_server(text)
        except deepgram.DeepgramProtocolError as exc:
            log.warning("%s", exc, extra=self.extra)
            return
        kind = msg["type"]
        self._apply(self.conv.on_agent_message(msg, time.monotonic()))
        if kind == "UserStartedSpeaking":
            # Stream ids are Redis' clock in ms: remember where this utterance began (VAD needs
            # a few hundred ms to fire) so a takeover can replay it if it is never transcribed.
            self._utterance_at = f"{time.time_ns() // 1_000_000 - 700}-0"
            self.worker.spawn_write(self.call_key, {"utt_pos": self._utterance_at})
        elif kind == "ConversationText":
            if msg.get("role") == "user":
                self.worker.spawn_hincrby(self.call_key, "turns")
                # Mark that utterance answered with its own value: the two writes may land in
                # either order, and equal values mean "nothing to replay" either way.
                self.worker.spawn_write(self.call_key, {"utt_answered": self._utterance_at})
        elif kind == "AgentStartedSpeaking":
            if isinstance(msg.get("total_latency"), (int, float)):
                metrics.TURN_LATENCY.observe(float(msg["total_latency"]))
        elif kind == "AgentAudioDone":
            if self._end_after_reply:
                self._ask_edge_to_hang_up(self._end_after_reply)
        elif kind == "FunctionCallRequest":
            self._functions.handle_request(msg)
        elif kind == "Error":
            code = str(msg.get("code", "UNKNOWN"))
            self._last_error = code
            self._record_error(code, str(msg.get("description", "")))
        elif kind == "Warning":
            self._event("warning", code=msg.get("code"), description=msg.get("description"))
            log.info("deepgram warning %s", msg.get("code"), extra=self.extra)
        elif kind in ("PromptUpdated", "SpeakUpdated", "ThinkUpdated", "InjectionRefused", "AgentThinking",
                      "FunctionCallCancelled"):
            self._event(kind[0].lower() + "".join("_" + c.lower() if c.isupper() else c for c in kind[1:]),
                        **{k: v for k, v in msg.items() if k != "type"})
        # Welcome, SettingsApplied, History, LatencyReport (in turn_latency) and types Deepgram
        # adds later need no action here.

    def _apply(self, actions: list[Action]) -> None:
        """Carry out what the conversation decided."""
        for action in actions:
            if isinstance(action, Emit):
                self._event(action.type, **action.data)
            elif isinstance(action, ToCaller):
                if action.entry.kind is Kind.CLEAR:
                    self.worker.writer.drop_pending_audio(self.out_key)  # the clear overtakes it
                self.worker.writer.append(self.out_key, action.entry)
                self._record(self._journal.to_twilio(action.entry))
            elif isinstance(action, ToAgent):
                self.send_to_agent(action.message)
            elif isinstance(action, Observe):
                self._observe(action)
            elif isinstance(action, Hangup):
                if action.after_reply:
                    self.end_after_reply(action.reason)
                else:
                    self._ask_edge_to_hang_up(action.reason)
            elif isinstance(action, Reconnect):
                log.warning("dropping the deepgram session: %s", action.reason, extra=self.extra)
                # The reply it was giving was never heard: the new session answers the question again.
                self._reask = True
                if self._dg is not None:
                    self._dg.transport.abort()

    def _observe(self, action: Observe) -> None:
        if action.metric == "turn_stage":
            metrics.TURN_STAGE.labels(action.label).observe(action.value)
        elif action.metric == "barge_in":
            metrics.BARGE_INS.inc()
        elif action.metric == "dead_air":
            kind, _, taken = action.label.partition(":")
            metrics.DEAD_AIR.labels(kind, taken).inc()
            log.warning("dead air: %s, %s", kind, taken, extra=self.extra)
        elif action.metric == "reply":
            metrics.REPLIES.labels(action.label).inc()

    def _record_error(self, code: str, description: str) -> None:
        metrics.DG_ERRORS.labels(code).inc()
        self._event("error", source="deepgram", code=code, description=description)
        log.warning("deepgram error %s: %s", code, description, extra=self.extra)

    # --- helpers used by commands and functions -------------------------------------------------
    def send_to_agent(self, message: str) -> bool:
        if not self._ready or self._outbox is None:
            return False
        self._outbox.put(message)
        self._record(self._journal.to_deepgram(message, now_us()))
        return True

    def end_after_reply(self, reason: str = "end_call") -> None:
        self._end_after_reply = reason

    def _ask_edge_to_hang_up(self, reason: str) -> None:
        if self._hangup_requested:
            return
        self._hangup_requested = True
        hangup = entries.hangup(reason)
        self.worker.writer.append(self.out_key, hangup)
        self._record(self._journal.to_twilio(hangup))
        # Twilio will ask the control API what to do after the stream closes: hang up, not reconnect.
        self.worker.spawn_write(self.call_key, {"hangup_requested": reason})
        self._event("hangup_requested", reason=reason)

    def request_hangup(self, reason: str) -> None:
        self._ask_edge_to_hang_up(reason)

    @property
    def agent_speaking(self) -> bool:
        return self.conv.agent_speaking

    def remember_override(self, field: str, value: Any) -> None:
        self._live_overrides[field] = value
        self.conv.config = ConversationConfig.from_settings(self.settings)
        self.worker.spawn_write(self.call_key, {"overrides": orjson.dumps(self._live_overrides)})

    def _event(self, kind: str, /, **data: Any) -> None:
        data["type"] = kind
        data["ts"] = round(time.time(), 3)
        event = entries.event(orjson.dumps(data, default=str))
        self.worker.writer.append(self.events_key, event, maxlen=keyspace.EVENTS_STREAM_MAXLEN)
        self._record(self._journal.session_event(event.payload, event.t_us))

    def _record(self, entry: Entry | None) -> None:
        if entry is not None:
            self.worker.writer.append(self.journal_key, entry, maxlen=self._journal.maxlen)

    def event(self, kind: str, /, **data: Any) -> None:
        self._event(kind, **data)

    @property
    def in_position(self) -> bytes | str:
        return self._in_pos

    async def _load_context(self) -> list[dict[str, Any]]:
        await self.worker.writer.flushed()  # our own latest transcript lines first
        raw = await self.worker.redis.xrange(self.events_key, count=keyspace.EVENTS_STREAM_MAXLEN)
        history: list[dict[str, Any]] = []
        for _entry_id, fields in raw:
            try:
                event = orjson.loads(fields.get(b"p", b"{}"))
            except orjson.JSONDecodeError:
                continue
            if event.get("type") == "transcript" and event.get("content"):
                history.append(deepgram.history_text(event["role"], event["content"]))
            elif event.get("type") == "function_call" and event.get("id"):
                history.append(
                    deepgram.history_function_call(
                        event["id"], event["name"], event.get("arguments", "{}"), str(event.get("response", ""))
                    )
                )
        if self._reask:
            self._reask = False
            while history and history[-1].get("role") == "assistant":
                history.pop()  # said by Deepgram (ConversationText) but not heard by the caller
        if history and history[-1].get("role") == "user":
            # The caller's last words were heard but never answered (the old session died
            # while thinking): ask again on the new session instead of leaving the caller hanging.
            self._unanswered = history.pop()["content"]
        return history[-MAX_CONTEXT_ITEMS:]
