"""One emulated Voice Agent conversation: the I/O shell around the pure protocol, VAD and checks.

The connection handler task reads client frames. At most one *job* (greeting, reply to a user turn,
injected agent line) runs at a time in its own task; barge-in cancels it, so cancellation is the
only way agent audio stops and nothing of an interrupted reply can be sent after
`UserStartedSpeaking`. An idle session owns no task besides its handler.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from switchboard_dev.testaudio import FRAME_BYTES

from . import protocol as p
from .config import EmulatorConfig
from .faults import Faults
from .playout import play_reply
from .records import Registry, ReplyRecord, SessionRecord
from .settings_check import check_listen, check_settings, check_speak, check_think, client_side_functions, think_prompt
from .vad import ENDED, STARTED, Framer, VoiceActivity, detector_for

log = logging.getLogger("switchboard_emulator.session")

# Client mistakes close with 1008 (policy); server-side trouble and timeouts with 1011, as
# Deepgram's STT socket does (the agent socket's close codes are undocumented).
CLOSE_CLIENT_ERROR: Final = 1008
CLOSE_SERVER_ERROR: Final = 1011


@dataclass(frozen=True, slots=True)
class Job:
    kind: Literal["greeting", "turn", "agent"]
    text: str  # greeting / injected agent line / user's text
    turn: int = 0
    injected: bool = False
    heard_at: float = 0.0  # loop time the turn's input was complete, for latency figures


class Session:
    def __init__(
        self, ws: ServerConnection, config: EmulatorConfig, faults: Faults, registry: Registry, path: str
    ) -> None:
        self.ws = ws
        self.config = config
        self.faults = faults
        self.registry = registry
        self.record = SessionRecord(p.new_request_id(), path)
        self._loop = asyncio.get_running_loop()
        self._applied = False
        self._closing = False
        self._close_reason: str | None = None
        self._prompt = ""
        self._functions: dict[str, bool] = {}
        self._history = True
        self._framer: Framer | None = None
        self._stats_framer: Framer | None = None
        self._vad: VoiceActivity | None = None
        self._turns = 0
        self._next_reply = 1  # reply 0 is reserved for the greeting
        self._jobs: deque[Job] = deque()
        self._current: asyncio.Task[None] | None = None
        self._speaking: ReplyRecord | None = None
        self._pending_calls: dict[str, asyncio.Future[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_activity = self._loop.time()
        self._idle_handle: asyncio.TimerHandle | None = None
        self._log_extra: dict[str, Any] = {"request_id": self.record.request_id}

    # --- lifecycle

    async def run(self) -> None:
        self.registry.open(self.record)
        self._arm_idle()
        try:
            await self.faults.wait_running()
            await self._send("Welcome", p.welcome(self.record.request_id))
            while not self._closing:
                if self.faults.stalled:
                    await self.faults.wait_running()
                message = await self.ws.recv()
                if isinstance(message, str):
                    await self._on_text(message)
                else:
                    await self._on_audio(message)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("session failed", extra=self._log_extra)
            self._close_reason = "emulator fault"
            await self.ws.close(CLOSE_SERVER_ERROR, "emulator fault")
        finally:
            await self._cleanup()

    async def _cleanup(self) -> None:
        self._closing = True
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        try:
            # The tasks were cancelled on purpose; gathering collects their CancelledErrors, while a
            # cancellation of this handler itself still propagates out of gather.
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for future in self._pending_calls.values():
                future.cancel()
            code = self.ws.close_code
            reason = self._close_reason or (f"closed: {code} {self.ws.close_reason or ''}".strip())
            self.record.close(reason, code)
            self.registry.finish(self.record)
            log.info("session ended: %s", reason, extra=self._log_extra)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send(self, kind: str, payload: bytes) -> None:
        self.record.add_event(kind)
        if self.faults.stalled:
            await self.faults.wait_running()
        await self.ws.send(payload, text=True)

    async def _fatal(self, code: str, description: str, close_code: int = CLOSE_CLIENT_ERROR) -> None:
        """Send Error and close, as the real service does; nothing else is sent afterwards."""
        if self._closing:
            return
        self._closing = True
        self._close_reason = f"{code}: {description}"
        self._stop_agent()
        log.info("closing with error %s: %s", code, description, extra=self._log_extra)
        try:
            await self._send("Error", p.error(code, description))
            await self.ws.close(close_code, code)
        except ConnectionClosed:
            pass

    # --- idle timeout: one timer per idle period, not one per received message

    def _arm_idle(self) -> None:
        self._idle_handle = self._loop.call_at(self._last_activity + self.config.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        if self._closing:
            return
        now = self._loop.time()
        if self.faults.stalled:
            # A stalled emulator is not reading, so the client's silence is not the client's fault.
            self._last_activity = now
        if now - self._last_activity >= self.config.idle_timeout:
            description = f"no audio or KeepAlive for {self.config.idle_timeout:g} s"
            self._spawn(self._fatal("CLIENT_MESSAGE_TIMEOUT", description, CLOSE_SERVER_ERROR))
            return
        self._arm_idle()

    # --- client input

    async def _on_text(self, text: str) -> None:
        msg = p.parse_client_message(text)
        if msg is None:
            await self._fatal("UNPARSABLE_CLIENT_MESSAGE", "not a JSON object with a known client message type")
            return
        kind = msg["type"]
        if kind == "Settings":
            if self._applied:
                await self._fatal("SETTINGS_ALREADY_APPLIED", "Settings may be sent only once per connection")
            else:
                await self._apply_settings(msg)
            return
        if not self._applied:
            await self._fatal("NON_SETTINGS_MESSAGE_BEFORE_SETTINGS", f"{kind} received before Settings")
            return
        if kind == "KeepAlive":
            self._last_activity = self._loop.time()
            self.record.keepalives += 1
            return
        self.record.add_control(msg)
        problem = p.control_problem(msg)
        if problem:
            await self._fatal("UNPARSABLE_CLIENT_MESSAGE", problem)
            return
        await self._on_control(kind, msg)

    async def _on_control(self, kind: str, msg: dict[str, Any]) -> None:
        if kind == "UpdatePrompt":
            self._prompt = msg["prompt"]
        elif kind == "UpdateThink":
            if problem := check_think(msg["think"]):
                await self._fatal("INVALID_SETTINGS", problem)
                return
            self._prompt = think_prompt(msg["think"])
            self._functions = client_side_functions(msg["think"])
        elif kind == "UpdateSpeak":
            if problem := check_speak(msg["speak"]):
                await self._fatal("INVALID_SETTINGS", problem)
                return
        elif kind == "UpdateListen":
            if problem := check_listen(msg["listen"]):
                await self._fatal("INVALID_SETTINGS", problem)
                return
        elif kind == "InjectUserMessage":
            await self._user_turn(msg["content"], injected=True)
            return
        elif kind == "InjectAgentMessage":
            await self._inject_agent(msg)
            return
        elif kind == "FunctionCallResponse":
            await self._function_response(msg)
            return
        elif kind == "ForceEndTurn":
            # Only Flux (listen v2) takes it; the emulator's VAD plays the part of Nova.
            unsupported = p.warning("FORCE_END_TURN_UNSUPPORTED", "ForceEndTurn needs a Flux listen model")
            await self._send("Warning", unsupported)
            return
        await self._send(*p.ACKS[kind])

    async def _apply_settings(self, msg: dict[str, Any]) -> None:
        self.record.set_settings(msg)
        call_sids = [t.removeprefix("callsid:") for t in self.record.tags if t.startswith("callsid:")]
        if call_sids:
            self._log_extra["call_sid"] = call_sids[0]
        self._last_activity = self._loop.time()
        if problem := check_settings(msg):
            await self._fatal("INVALID_SETTINGS", problem)
            return
        agent = msg["agent"]
        think = agent.get("think")
        if think is not None:
            self._prompt = think_prompt(think)
            self._functions = client_side_functions(think)
        self._history = (msg.get("flags") or {}).get("history", True) is not False
        self._continue_numbering((agent.get("context") or {}).get("messages") or [])
        audio_in = msg["audio"].get("input") or {"encoding": "linear16", "sample_rate": 24000}
        frame_bytes, loudness = detector_for(audio_in["encoding"], audio_in["sample_rate"])
        self._framer = Framer(frame_bytes)
        # Caller frame stats need 160-byte alignment; with 8 kHz mu-law the VAD frames already are.
        self._stats_framer = None if frame_bytes == FRAME_BYTES else Framer(FRAME_BYTES)
        self._vad = VoiceActivity(loudness, self.config.vad_start_frames, self.config.eou_ms)
        self._applied = True
        await self._send("SettingsApplied", p.SETTINGS_APPLIED)
        log.info("settings applied", extra=self._log_extra)
        if self.faults.drop_after_ms:
            self._spawn(self._drop_later(self.faults.drop_after_ms / 1000))
        if self.faults.error_after_ms:
            self._spawn(self._error_later(self.faults.error_after_ms / 1000, self.faults.error_code))
        greeting = agent.get("greeting")
        if greeting:
            self._enqueue(Job("greeting", greeting, heard_at=self._loop.time()))

    def _continue_numbering(self, history: list[Any]) -> None:
        # A resumed conversation (agent.context) goes on where it was: reply and turn numbers
        # keep rising across reconnects, so a caller's view of the agent audio stays ordered.
        items = [m for m in history if isinstance(m, dict)]
        self._next_reply += sum(1 for m in items if m.get("role") == "assistant")
        self._turns += sum(1 for m in items if m.get("role") == "user")

    async def _on_audio(self, data: bytes) -> None:
        if not self._applied:
            await self._fatal("NON_SETTINGS_MESSAGE_BEFORE_SETTINGS", "binary audio received before Settings")
            return
        assert self._framer is not None and self._vad is not None
        self._last_activity = self._loop.time()
        self.record.add_audio(data)
        now_us = time.time_ns() // 1000
        stats = self.record.caller_frames
        frames = self._framer.push(data)
        if self._stats_framer is not None:
            for frame in self._stats_framer.push(data):
                stats.feed(frame, now_us)
        vad = self._vad
        for frame in frames:
            if self._stats_framer is None:
                stats.feed(frame, now_us)
            event = vad.step(frame)
            if event == STARTED:
                await self._barge_in()
            elif event == ENDED:
                await self._user_turn(p.user_text(self._turns + 1, vad.utterance_ms), injected=False)

    async def _barge_in(self) -> None:
        self._stop_agent()
        await self._send("UserStartedSpeaking", p.USER_STARTED_SPEAKING)

    async def _user_turn(self, text: str, *, injected: bool) -> None:
        self._turns += 1
        self._stop_agent()
        await self._send("ConversationText", p.conversation_text("user", text))
        self._enqueue(Job("turn", text, turn=self._turns, injected=injected, heard_at=self._loop.time()))

    async def _inject_agent(self, msg: dict[str, Any]) -> None:
        text = str(msg.get("message", msg.get("content", "")))
        behavior = msg.get("behavior", "default")
        job = Job("agent", text, heard_at=self._loop.time())
        if behavior == "interrupt":
            self._stop_agent()
        elif behavior == "default":
            busy = "user" if self._vad is not None and self._vad.speaking else "agent" if self._agent_busy else None
            if busy:
                await self._send("InjectionRefused", p.injection_refused(f"refused: the {busy} is speaking"))
                return
        self._enqueue(job)

    async def _function_response(self, msg: dict[str, Any]) -> None:
        future = self._pending_calls.pop(msg["id"], None)
        if future is None:
            await self._send("Warning", p.warning("FUNCTION_CALL_FAILED", f"no pending function call {msg['id']!r}"))
        elif not future.done():
            future.set_result(msg["content"])

    # --- the agent: one job at a time

    @property
    def _agent_busy(self) -> bool:
        return self._current is not None or bool(self._jobs)

    def _enqueue(self, job: Job) -> None:
        self._jobs.append(job)
        self._start_next()

    def _start_next(self) -> None:
        if self._closing or self._current is not None or not self._jobs:
            return
        task = self._spawn(self._run_job(self._jobs.popleft()))
        self._current = task
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        if task is self._current:
            self._current = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("agent job failed", exc_info=exc, extra=self._log_extra)
            self._spawn(self._fatal("INTERNAL_SERVER_ERROR", "emulator fault", CLOSE_SERVER_ERROR))
            return
        self._start_next()

    def _stop_agent(self) -> None:
        """Drop queued jobs and cancel the running one: its next await raises, so it sends nothing more."""
        self._jobs.clear()
        if self._speaking is not None:
            self._speaking.interrupted = True
            self._speaking = None
        if self._current is not None and self._current is not asyncio.current_task():
            self._current.cancel()
            self._current = None

    async def _run_job(self, job: Job) -> None:
        try:
            if job.kind == "turn":
                await self._reply_to_turn(job)
            else:
                await self._speak(job.text, job.heard_at, job.heard_at, greeting=job.kind == "greeting")
                if self._history:
                    await self._send("History", p.history_text("assistant", job.text))
        except ConnectionClosed:
            pass

    async def _reply_to_turn(self, job: Job) -> None:
        await self._send("AgentThinking", p.agent_thinking(p.thinking_text(job.turn)))
        if self.config.think_ms:
            await asyncio.sleep(self.config.think_ms / 1000)
        call = p.planned_call(self._prompt, job.turn, job.text if job.injected else None)
        history_call: bytes | None = None
        result: str | None = None
        if call is not None:
            client_side = self._functions.get(call.name)
            if client_side is None:
                await self._fatal("NON_EXISTENT_FUNCTION_CALLED", f"function {call.name!r} is not declared")
                return
            call_id = p.new_call_id()
            request = p.function_call_request(call_id, call.name, call.arguments, client_side)
            await self._send("FunctionCallRequest", request)
            if client_side:
                future: asyncio.Future[str] = self._loop.create_future()
                self._pending_calls[call_id] = future
                result = await future
            else:
                # A server-side function: Deepgram calls the endpoint itself and reports the result.
                result = orjson.dumps({"emulated": True, "name": call.name}).decode()
                await self._send("FunctionCallResponse", p.function_call_response(call_id, call.name, result))
            history_call = p.history_function_call(call_id, call.name, call.arguments, result, client_side)
        text = p.assistant_text(self._next_reply, job.turn, result)
        await self._speak(text, job.heard_at, self._loop.time())
        if self._history:
            await self._send("History", p.history_text("user", job.text))
            if history_call is not None:
                await self._send("History", history_call)
            await self._send("History", p.history_text("assistant", text))

    async def _speak(self, text: str, heard_at: float, text_at: float, *, greeting: bool = False) -> None:
        reply = ReplyRecord(0 if greeting else self._next_reply, text)
        if not greeting:
            self._next_reply += 1
        self.record.replies.append(reply)
        await self._send("ConversationText", p.conversation_text("assistant", text))
        now = self._loop.time()
        total, ttt = now - heard_at, text_at - heard_at
        latencies = (round(total, 4), round(total - ttt, 4), round(ttt, 4))
        await self._send("AgentStartedSpeaking", p.agent_started_speaking(*latencies))
        self._speaking = reply
        await play_reply(self.ws, reply, self.config, self.faults)
        self._speaking = None
        await self._send("AgentAudioDone", p.AGENT_AUDIO_DONE)
        if not greeting:
            await self._send("LatencyReport", p.latency_report(*latencies))

    # --- injected faults

    async def _drop_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._closing:
            return
        self._closing = True
        self._close_reason = "fault: dropped"
        self._stop_agent()
        log.info("fault: dropping session", extra=self._log_extra)
        await self.ws.close(CLOSE_SERVER_ERROR, "emulated drop")

    async def _error_later(self, delay: float, code: str) -> None:
        await asyncio.sleep(delay)
        await self._fatal(code, "emulated server error", CLOSE_SERVER_ERROR)
