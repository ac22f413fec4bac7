"""Deepgram's side of one call: its sessions opened, read, and reopened when the core says so.

A call may go through several Deepgram sessions: the first, then one after each drop the
conversation core decides to reconnect (within the call's budget), each opened with the
conversation so far. Every frame a session sends is journaled; audio is appended to the call's
`:out` stream for the edge to play; every message goes to the core, whose decisions the call
session carries out (`apply`). What a message means beyond the core is done here: function
calls run (functions.py), turn latency is observed, and errors, warnings and the messages the
call's events note are recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from switchboard import deepgram, entries
from switchboard.agent_settings import AgentSettings
from switchboard.conversation import Action, Conversation, Reconnect
from switchboard.entries import now_us
from switchboard.messages import Event

from . import metrics, records
from .agent_link import AgentLink, DeepgramUnavailable
from .functions import FunctionRunner
from .lifecycle import CallState, Lifecycle
from .port import WorkerPort
from .timeline import CallTimeline

log = logging.getLogger(__name__)

# Deepgram messages noted in the call's events as they come (type → event name).
_NOTED = {
    "PromptUpdated": Event.PROMPT_UPDATED, "SpeakUpdated": Event.SPEAK_UPDATED, "ThinkUpdated": Event.THINK_UPDATED,
    "InjectionRefused": Event.INJECTION_REFUSED, "AgentThinking": Event.AGENT_THINKING,
    "FunctionCallCancelled": Event.FUNCTION_CALL_CANCELLED,
}


class AgentSessions:
    def __init__(self, port: WorkerPort, call_sid: str, stream_sid: str, life: Lifecycle, conv: Conversation,
                 agent: AgentLink, timeline: CallTimeline, functions: FunctionRunner, *,
                 settings: Callable[[], AgentSettings], apply: Callable[[list[Action]], None],
                 on_connected: Callable[[], None], extra: dict[str, str]) -> None:
        self._port = port
        self._call_sid = call_sid
        self._events_key = port.keys.events(stream_sid)
        self._out_key = port.keys.agent_output(stream_sid)
        self._life = life
        self._conv = conv
        self._agent = agent
        self._timeline = timeline
        self._functions = functions
        self._settings = settings  # the call's settings as they are now (commands change them)
        self._apply = apply
        self._on_connected = on_connected
        self._extra = extra

    async def open(self, *, resume: bool) -> bool:
        """Open a Deepgram session (with the conversation so far on a resume); False if none could be."""
        if resume:
            await self._port.writer.flushed()  # our own latest transcript lines first
        context = self._conv.context(await records.events(self._port, self._events_key)) if resume else None
        message = self._settings().to_settings_message(
            tags=["switchboard", f"callsid:{self._call_sid}"], context=context, resume=resume
        )
        self._timeline.to_deepgram(message)
        try:
            request_id, took = await self._agent.open(message, give_up=lambda: self._life.over)
        except DeepgramUnavailable as exc:
            if not resume:
                self._record_error(exc.code, str(exc))
            reason = f"deepgram_{exc.code}" if resume else "deepgram_unavailable"
            self._apply(self._conv.on_agent_unavailable(reason, f"deepgram_{exc.code}"))
            return False
        metrics.DG_CONNECT.observe(took)
        if self._life.over:
            self._agent.abort()  # released or stopped while connecting: the pump ends at once
        self._timeline.event(Event.DEEPGRAM_CONNECTED, request_id=request_id, resumed=resume,
                             connect_ms=round(took * 1000, 1))
        log.info("deepgram session open", extra={**self._extra, "request_id": request_id,
                                                 "connect_ms": round(took * 1000, 1)})
        if self._life.can(CallState.ACTIVE):
            self._life.to(CallState.ACTIVE)
        self._apply(self._conv.on_agent_connected(time.monotonic()))
        self._on_connected()
        return True

    async def pump(self) -> None:
        """Read Deepgram until the call ends; the conversation decides whether a drop is reopened."""
        while self._agent.attached:
            async for frame in self._agent.frames():
                if isinstance(frame, bytes):
                    self._on_audio(frame)
                else:
                    self._on_message(frame)
            await self._agent.detach()
            expected = self._life.state is not CallState.ACTIVE  # closing, released, or hanging up
            self._timeline.event(Event.DEEPGRAM_CLOSED, expected=expected)  # for the record, and for a replay
            actions = self._conv.on_agent_closed(time.monotonic(), expected=expected)
            self._apply(actions)
            if expected or not any(isinstance(action, Reconnect) for action in actions):
                return
            self._life.to(CallState.RECONNECTING)
            log.warning("deepgram dropped mid-call; reconnecting with context", extra=self._extra)
            if not await self.open(resume=True):
                return

    # --- what a session sends ----------------------------------------------------------------------
    def _on_audio(self, frame: bytes) -> None:
        metrics.AUDIO_BYTES_FROM_DG.inc(len(frame))
        t_us = now_us()
        self._port.writer.append(self._out_key, entries.audio(frame, t_us))
        self._timeline.agent_audio(frame, t_us)
        actions = self._conv.on_agent_audio(len(frame), time.monotonic())
        if actions:
            self._apply(actions)

    def _on_message(self, text: str) -> None:
        self._timeline.from_deepgram(text)
        try:
            msg = deepgram.parse_server(text)
        except deepgram.DeepgramProtocolError as exc:
            log.warning("%s", exc, extra=self._extra)
            return
        kind = msg["type"]
        self._apply(self._conv.on_agent_message(msg, time.monotonic()))
        if kind == "AgentStartedSpeaking":
            if isinstance(msg.get("total_latency"), (int, float)):
                metrics.TURN_LATENCY.observe(float(msg["total_latency"]))
        elif kind == "FunctionCallRequest":
            self._functions.handle_request(msg)
        elif kind == "Error":
            self._record_error(str(msg.get("code", "UNKNOWN")), str(msg.get("description", "")))
        elif kind == "Warning":
            self._timeline.event(Event.WARNING, code=msg.get("code"), description=msg.get("description"))
            log.info("deepgram warning %s", msg.get("code"), extra=self._extra)
        elif kind in _NOTED:
            self._timeline.event(_NOTED[kind], **{k: v for k, v in msg.items() if k != "type"})
        # Welcome, SettingsApplied, History, LatencyReport (in turn_latency) and types Deepgram
        # adds later need no action here.

    def _record_error(self, code: str, description: str) -> None:
        metrics.DG_ERRORS.labels(code).inc()
        self._timeline.event(Event.ERROR, source="deepgram", code=code, description=description)
        log.warning("deepgram error %s: %s", code, description, extra=self._extra)
