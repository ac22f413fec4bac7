"""One call held by this worker: the I/O shell around the call's conversation core.

Caller audio arrives through the worker's shared reader and goes to Deepgram through a
per-call outbox (`caller_intake.CallerIntake`). Deepgram's audio and events are read by this
session's own task (`run`, through `agent_sessions.AgentSessions`) and appended to the call's
`:out` / `:events` streams by the shared writer. What happens next is decided by
`switchboard.conversation.Conversation` (pure) and carried out here (`_apply`); where the call
stands is `lifecycle.CallState`.

A call ends on exactly one path: the edge writes `stop` to `:in` (Twilio hung up, or the
edge closed the socket after we asked it to hang up). Everything that wants to end the
call (Deepgram gone for good, `end_call`, a hang-up command) asks the edge to hang up
and then waits for that stop, so the caller always hears what was meant to play.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from redis.exceptions import RedisError

from switchboard import deepgram, redis_types, settings_store
from switchboard.agent_settings import AgentSettings
from switchboard.conversation import (
    Action,
    Conversation,
    ConversationConfig,
    Count,
    DigitsCollected,
    Emit,
    GiveUp,
    Hangup,
    Observe,
    Played,
    Reconnect,
    Record,
    ToAgent,
    ToCaller,
)
from switchboard.entries import Kind
from switchboard.messages import CallField, Event, Outcome, RecordState
from switchboard.redis_types import Entries

from . import commands, keypad, metrics, precall, records
from .adoption import adopt
from .agent_link import BUFFER_WHILE_CONNECTING_BYTES, AgentLink
from .agent_sessions import AgentSessions
from .caller_intake import CallerIntake
from .functions import FunctionRunner
from .lifecycle import CallState, Lifecycle
from .outbound import prepare as prepare_outbound
from .port import WorkerPort
from .timeline import CallTimeline
from .transfer import Transfers

log = logging.getLogger(__name__)

END_WAIT_S = 30.0  # after asking the edge to hang up, how long to wait for its stop
TAIL_WAIT_S = 2.0  # after the edge's stop, how long the caller's last words may take to reach Deepgram

EntryHandler = Callable[[Entries], None]  # takes a batch of new entries from the worker's shared reader


class CallSession:
    def __init__(self, port: WorkerPort, stream_sid: str, call_sid: str, dispatch_id: bytes, takeover: bool) -> None:
        self.port = port
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.dispatch_id = dispatch_id
        self.takeover = takeover
        keys = port.keys
        self.call_key = keys.call(stream_sid)
        self.in_key = keys.caller_audio(stream_sid)
        self.out_key = keys.agent_output(stream_sid)
        self.events_key = keys.events(stream_sid)
        self.cmd_key = keys.commands(stream_sid)
        self.journal_key = keys.journal(stream_sid)
        self.lease_token = ""
        self.settings = AgentSettings()
        self.life = Lifecycle()
        self.conv = Conversation(self._conversation_config(), time.monotonic(),
                                 wall_offset_s=time.time() - time.monotonic())
        self.extra = {"call_sid": call_sid, "stream_sid": stream_sid, "worker_id": port.settings.worker_id}
        self.stop_reason = ""
        self.released: str | None = None  # why the call lives on elsewhere, once it does
        self._outcome: str = Outcome.COMPLETED
        self._live_overrides: dict[str, Any] = {}
        self._timeline = CallTimeline(port, self.events_key, self.journal_key, self.settings)
        self._functions = FunctionRunner(self)
        self._digit_requests = keypad.DigitRequests()
        self._transfers = Transfers(self)
        self._agent = AgentLink(port, self.extra)
        self._deepgram = AgentSessions(port, call_sid, stream_sid, self.life, self.conv, self._agent, self._timeline,
                                       self._functions, settings=lambda: self.settings, apply=self._apply,
                                       on_connected=self._transfers.on_agent_connected, extra=self.extra)
        self._from_caller = CallerIntake(port, self.in_key, self.conv, self._agent, self._timeline,
                                         apply=self._apply, on_stop=self._on_stop, extra=self.extra)
        self._stopped = asyncio.Event()  # the edge said the call is over
        self._closer: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            meta = redis_types.fields(await self.port.redis.hgetall(self.call_key))
            if not meta or meta.get(b"state") == RecordState.ENDED.encode():
                self._outcome = Outcome.ALREADY_ENDED
                return
            await self._prepare(meta)
            self.life.to(CallState.CONNECTING)
            connected = await self._deepgram.open(resume=self.takeover)
            self._from_caller.follow()  # also to see the edge's stop when Deepgram is unavailable
            if connected:
                self.port.reader.add(self.cmd_key, meta.get(b"cmd_pos", b"0-0"))
                await self.port.redis.hset(self.call_key, mapping={CallField.STATE: RecordState.ACTIVE})
                await self._deepgram.pump()
            if self.conv.hangup_reason is not None and not self.life.over:
                await self._wait_for_stop()
        except RedisError as exc:
            # Let go without ending the call: its lease lapses and a takeover (here or on
            # another worker) resumes it once Redis answers again.
            metrics.REDIS_ERRORS.inc()
            log.error("redis failed mid-call; releasing the call for a takeover: %s", exc, extra=self.extra)
            self.release("redis_error")
        except Exception:  # task boundary: a bug here must not leave the caller on a dead line
            log.exception("call session failed; releasing the call for a takeover", extra=self.extra)
            self.release("crashed")
        finally:
            await self._finish()

    def release(self, reason: str) -> None:
        """The call continues with another worker (drain, lost lease): leave it untouched."""
        if not self.life.can(CallState.RELEASED):
            return
        self.life.to(CallState.RELEASED)
        self.released = reason
        # The caller also cancels this session's task, but on Python 3.11 a cancellation that
        # lands while redis-py sends a command can be lost; closing Deepgram ends the pump anyway.
        self._agent.abort()

    async def _prepare(self, meta: dict[bytes, bytes]) -> None:
        port = self.port
        profile = meta.get(b"profile", b"").decode() or None
        resolved = await settings_store.resolve(port.redis, port.keys, self.call_sid, profile)
        # The caller's context (precall.py): templates filled, the pre-call lookup's overrides applied.
        personal = await precall.personalize(self, meta, resolved.settings)
        # An outbound call: its context filled into the prompt and greeting, the greeting held for AMD.
        outbound = await prepare_outbound(port, self.call_sid, meta, personal)
        self.settings = outbound.settings
        self.conv.config = self._conversation_config()
        self._timeline.start(self.call_sid, self.stream_sid, self.settings, self.conv.session_id)
        if raw_overrides := meta.get(b"overrides"):
            self._adopt_overrides(raw_overrides)
        # The edge sets this only after consuming the resume grant /twiml/continue issued for this
        # call and that stream; the stream's own parameters are a peer's claim and decide nothing.
        resume_of = meta.get(b"resume_of", b"").decode()
        resumed = False
        if resume_of and resume_of != self.stream_sid:
            resumed = await self._resume(resume_of)
            if resumed:
                await self._transfers.returned(resume_of)  # back from a transfer nobody answered?
        if self.takeover and not resumed:
            # Resume from the last position the previous owner recorded (at most one heartbeat
            # old), or from the start of an utterance the old session heard but never
            # transcribed: what the caller said around the gap reaches the new session.
            utterance = meta.get(b"utt_pos", b"")
            unanswered = utterance and utterance != meta.get(b"utt_answered")
            self._from_caller.position = utterance if unanswered else meta.get(b"in_pos", b"0-0")
        await port.redis.hset(self.call_key, mapping={
            CallField.WORKER: port.settings.worker_id, CallField.STATE: RecordState.CONNECTING,
            CallField.SETTINGS_SOURCE: resolved.source, CallField.SETTINGS_VERSION: str(resolved.version),
        })
        if outbound.amd is not None:
            # A takeover with a verdict known: the previous session acted on it (no second greeting).
            self._apply(self.conv.start_amd(outbound.amd, time.monotonic(), verdict=outbound.verdict,
                                            detection_ms=outbound.detection_ms, decided=self.takeover))
        log.info("call claimed", extra={**self.extra, "takeover": self.takeover, "settings_source": resolved.source})

    async def _resume(self, old_stream_sid: str) -> bool:
        adopted = await adopt(self.port, self.call_sid, old_stream_sid, self.events_key, BUFFER_WHILE_CONNECTING_BYTES)
        if adopted is None:
            log.error("refusing to adopt a stream of another call", extra={**self.extra, "resume_of": old_stream_sid})
            return False
        for chunk in adopted.audio:
            self._agent.send_audio(chunk)  # held until the Deepgram session opens
        if adopted.overrides:
            self._adopt_overrides(adopted.overrides)
            self.port.bookkeeping.write(self.call_key, {CallField.OVERRIDES: adopted.overrides})
        self.takeover = True  # resume: context, no second greeting
        self._from_caller.position = "0-0"  # ...but this stream is new: all of its audio
        self.event(Event.RESUMED_FROM_STREAM, stream_sid=old_stream_sid)
        return True

    def _adopt_overrides(self, raw: bytes) -> None:
        self._live_overrides = orjson.loads(raw)
        if "prompt" in self._live_overrides:
            self.settings.think.prompt = self._live_overrides["prompt"]
        if "speak" in self._live_overrides:
            self.settings.speak = type(self.settings.speak).model_validate(self._live_overrides["speak"])
        self.conv.config = self._conversation_config()

    def _conversation_config(self) -> ConversationConfig:
        return ConversationConfig.from_settings(self.settings, self.port.settings.deepgram_max_reconnects)

    async def _wait_for_stop(self) -> None:
        try:
            async with asyncio.timeout(END_WAIT_S):
                await self._stopped.wait()
        except TimeoutError:
            log.warning("edge never confirmed the end of the call", extra=self.extra)

    async def _finish(self) -> None:
        port = self.port
        self._from_caller.stop_following()
        port.reader.remove(self.cmd_key)
        if self._closer is not None:
            await asyncio.gather(self._closer, return_exceptions=True)
        await self._functions.close()
        await self._from_caller.drain()
        await self._transfers.settle()
        await self._agent.close()
        outcome = self.released or self._transfers.outcome or self._outcome
        metrics.CALLS.labels(outcome).inc()
        if self.released:
            # The call lives on with another worker: leave its records alone.
            for key in port.keys.per_call(self.stream_sid):
                port.writer.forget(key)
            return
        if self.life.can(CallState.CLOSING):
            self.life.to(CallState.CLOSING)
        self.event(Event.CALL_ENDED, outcome=outcome, reason=self.stop_reason)
        try:
            await port.writer.drain()
            await records.end_call(port, stream_sid=self.stream_sid, call_sid=self.call_sid,
                                   dispatch_id=self.dispatch_id, outcome=outcome, stop_reason=self.stop_reason,
                                   journal=self.settings.journal)
        except RedisError as exc:
            metrics.REDIS_ERRORS.inc()
            log.error("could not record the end of the call: %s", exc, extra=self.extra)
        self.life.to(CallState.ENDED)
        log.info("call finished", extra={**self.extra, "outcome": outcome, "reason": self.stop_reason})

    # --- the call's streams, the edge's stop, the twice-a-second watch -------------------------------
    def entry_handlers(self) -> dict[str, EntryHandler]:
        """What the worker's shared reader calls with this call's new entries, by stream key."""
        # The caller's intake itself, not a method forwarding to it: it runs for every 20 ms frame.
        return {self.in_key: self._from_caller.on_entries, self.cmd_key: self.on_command_entries}

    def on_command_entries(self, batch: Entries) -> None:
        commands.on_command_entries(self, batch)

    def _on_stop(self, reason: str) -> None:
        if self.life.over:
            return
        self.life.to(CallState.CLOSING)
        self.stop_reason = reason
        self.conv.on_caller_stop()
        self._stopped.set()
        # Deliver the caller's last words before closing: the stop entry came after them.
        self._closer = asyncio.create_task(self._agent.close_after(TAIL_WAIT_S))

    def tick(self, now: float) -> None:
        """Called twice a second: notice a lost caller stream; dead air; KeepAlive while audio pauses."""
        if not self.life.over and (silent_for := self._from_caller.lost_for(now)) is not None:
            # Its edge is gone; Twilio reconnects the call as a new stream.
            log.warning("caller stream silent for %.1fs: its edge is gone", silent_for, extra=self.extra)
            self._on_stop("caller_stream_lost")
            return
        if not self._agent.attached:
            return
        self._apply(self.conv.tick(now))
        if self._agent.keep_alive(now):
            self._timeline.to_deepgram(deepgram.KEEPALIVE)

    # --- carrying out the conversation's decisions ---------------------------------------------------
    def _apply(self, actions: list[Action]) -> None:
        """Carry out what the conversation decided."""
        for action in actions:
            if isinstance(action, Emit):
                self.event(action.type, **action.data)
            elif isinstance(action, ToCaller):
                if action.entry.kind is Kind.CLEAR:
                    self.port.writer.drop_pending_audio(self.out_key)  # the clear overtakes it
                self.port.writer.append(self.out_key, action.entry)
                self._timeline.to_twilio(action.entry)
            elif isinstance(action, ToAgent):
                self.send_to_agent(action.message)
            elif isinstance(action, Observe):
                metrics.observe(action.metric, action.label, action.value)
                if action.metric == "dead_air":
                    log.warning("dead air: %s", action.label, extra=self.extra)
            elif isinstance(action, Record):
                self.port.bookkeeping.write(self.call_key, action.fields)
            elif isinstance(action, Count):
                self.port.bookkeeping.increment(self.call_key, action.field)
            elif isinstance(action, Hangup):
                if self.life.can(CallState.HANGING_UP):
                    self.life.to(CallState.HANGING_UP)
            elif isinstance(action, GiveUp):
                self._outcome = action.outcome
            elif isinstance(action, DigitsCollected):
                self._digit_requests.answer(action.call_id, action.content)
            elif isinstance(action, Played):
                self._transfers.played(action)  # the agent's sentence has played: the call may move
            elif isinstance(action, Reconnect) and self._agent.attached:
                log.warning("dropping the deepgram session: %s", action.reason, extra=self.extra)
                self._agent.abort()

    # --- what commands and functions may do (port.CallHandle) --------------------------------------
    @property
    def agent_speaking(self) -> bool:
        return self.conv.agent_speaking

    @property
    def in_position(self) -> bytes | str:
        return self._from_caller.position

    def send_to_agent(self, message: str) -> bool:
        if not self._agent.send(message):
            return False
        self._timeline.to_deepgram(message)
        return True

    def amd_verdict(self, answered_by: str, detection_ms: int | None) -> tuple[bool, str]:
        """Twilio's answering-machine verdict (the amd_verdict command): greet, or the voicemail behaviour."""
        actions = self.conv.on_amd_verdict(answered_by, detection_ms, time.monotonic())
        self._apply(actions)
        return (True, f"{answered_by}: acted on") if actions else (False, "no verdict awaited (decided already)")

    def request_hangup(self, reason: str, *, after_reply: bool = False) -> None:
        self._apply(self.conv.request_hangup(reason, after_reply=after_reply))

    async def collect_digits(self, call_id: str, arguments: Any) -> str:
        """The agent's `collect_digits`: the result once the caller keyed an entry (or gave up)."""
        self._apply(self.conv.collect_digits(call_id, arguments, time.monotonic()))  # may answer at once
        return await self._digit_requests.wait(call_id)

    def reveal_digits(self, value: Any) -> Any:
        return self.conv.reveal_digits(value)

    def transfer(self, to: str | None, mode: str | None, *, by: str, announce: str | None = None,
                 summary: str | None = None, expect_reply: bool = False) -> tuple[bool, str]:
        """Hand the call to a person once what the agent says has played (transfer.py)."""
        return self._transfers.request(to, mode, by=by, announce=announce, summary=summary,
                                       expect_reply=expect_reply)

    def when_played(self, token: str, *, expect_reply: bool, reply_wait_s: float) -> None:
        self._apply(self.conv.when_played(token, time.monotonic(), expect_reply=expect_reply,
                                          reply_wait_s=reply_wait_s))

    def remember_override(self, field: str, value: Any) -> None:
        self._live_overrides[field] = value
        self.conv.config = self._conversation_config()
        self.port.bookkeeping.write(self.call_key, {CallField.OVERRIDES: orjson.dumps(self._live_overrides)})

    def event(self, kind: str, /, **data: Any) -> None:
        self._timeline.event(kind, **data)
