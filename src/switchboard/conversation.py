"""The state of one conversation, as the worker sees it (pure: no I/O, no clock of its own).

It follows Deepgram's events, the agent audio, and what the edge reports back from Twilio
(mark echoes, clears, timings), and decides what happens next as a list of actions. The
worker's session carries the actions out; `switchboard-journal replay` feeds a recorded call
through the same object, so a call's behaviour can be reproduced offline.

What the caller heard: every reply is cut into segments by Twilio marks named
`sb:<session>:<reply>:<offset>` (offset = agent audio bytes of the reply before the mark;
the last one ends in `:end`). Twilio echoes a mark when the audio before it has played,
or at once when a `clear` flushes it. The edge reports each clear together with the marks
still outstanding at that moment (`Kind.CLEARED`), so the echoes that follow are known to be
unplayed ones. The part heard = the last echoed offset plus the time it played on since
then (8 bytes per ms of mu-law), never past the first flushed mark.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import entries
from .agent_settings import AgentSettings
from .entries import Entry, Kind

BYTES_PER_MS = 8  # 8 kHz mu-law: one byte per sample
SEGMENT_BYTES = 400 * BYTES_PER_MS  # a mark every 400 ms of agent audio
SPOKEN_CHARS_PER_S = 15.0  # for a reply whose audio was cut off at the source
MARK_PREFIX = "sb:"
MAX_OPEN_REPLIES = 8
# A reply whose end mark never came back (a client that does not echo marks, a lost echo) is
# taken as played this long after its audio should have finished.
UNCONFIRMED_GRACE_S = 10.0


# --- actions ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Emit:
    """Append an event to the call's :events stream."""

    type: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToAgent:
    """Send this JSON text message to Deepgram."""

    message: str


@dataclass(frozen=True, slots=True)
class ToCaller:
    """Write this entry (mark or clear) to the call's :out stream for the edge."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class Hangup:
    """End the call: at once, or once the agent's current reply has been sent."""

    reason: str
    after_reply: bool = False


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Drop the Deepgram session and open a new one with the conversation as context."""

    reason: str


@dataclass(frozen=True, slots=True)
class Observe:
    """One observation for a Prometheus metric."""

    # turn_stage (seconds, label = stage), dead_air (label = kind:action), reply (label = outcome), barge_in
    metric: str
    label: str
    value: float = 1.0


Action = Emit | ToAgent | ToCaller | Hangup | Reconnect | Observe


# --- mark names ------------------------------------------------------------------------------
def mark_name(session: str, reply: int, offset: int, end: bool = False) -> str:
    return f"{MARK_PREFIX}{session}:{reply}:{offset}{':end' if end else ''}"


def parse_mark(name: str) -> tuple[str, int, int, bool] | None:
    """(session, reply, offset, is_end) of one of our marks, or None for any other name."""
    if not name.startswith(MARK_PREFIX):
        return None
    parts = name[len(MARK_PREFIX):].split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "end"):
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2]), len(parts) == 4
    except ValueError:
        return None


def is_reply_start(name: str) -> bool:
    """The mark sent before a reply's first audio: the edge reports that audio's transit."""
    parsed = parse_mark(name)
    return parsed is not None and parsed[2] == 0 and not parsed[3]


# --- configuration ----------------------------------------------------------------------------
@dataclass(slots=True)
class ConversationConfig:
    tell_agent_heard: bool = False
    think: dict[str, Any] | None = None  # the Settings' agent.think block, for UpdateThink
    agent_stall_s: float = 4.0
    caller_idle_s: float = 15.0
    dead_air_action: str = "reengage"
    reengage_message: str = "Are you still there?"
    max_reengage: int = 2
    goodbye_message: str = "Goodbye!"

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> ConversationConfig:
        dead_air = settings.dead_air
        return cls(
            tell_agent_heard=settings.heard.tell_agent,
            think=settings.think_message(),
            agent_stall_s=dead_air.agent_stall_s,
            caller_idle_s=dead_air.caller_idle_s,
            dead_air_action=dead_air.action,
            reengage_message=dead_air.reengage_message,
            max_reengage=dead_air.max_reengage,
            goodbye_message=dead_air.goodbye_message,
        )


# --- state ------------------------------------------------------------------------------------
@dataclass(slots=True)
class Reply:
    number: int
    text: str
    started_at: float
    received: int = 0  # agent audio bytes so far
    audio_done: bool = False  # AgentAudioDone: Deepgram sent all of it
    next_mark: int = SEGMENT_BYTES
    played: int = 0  # bytes confirmed played by an echoed mark
    playing_since: float | None = None  # edge time (s) of the latest echo: playback was at `played` then
    heard_from: float | None = None  # our clock when the start mark came back: playback began
    latency: dict[str, float] = field(default_factory=dict)  # stage → ms
    latency_emitted: bool = False


class Conversation:
    def __init__(self, config: ConversationConfig, now: float, session_id: str | None = None) -> None:
        self.config = config
        self.session_id = session_id or os.urandom(3).hex()
        self._reply_no = 0
        self._replies: dict[int, Reply] = {}  # sent or playing, not yet finished
        self._speaking: Reply | None = None  # between AgentStartedSpeaking and AgentAudioDone
        self._pending_text = ""
        self._flushed: set[str] = set()  # marks a clear flushed: their echoes are not "played"
        self._utterance_transit_us = 0
        self._last_heard_at = now  # last time anything was audible or said, either way
        self._last_agent_audio_at = now
        self._reengaged = 0
        self._stall_reported = False
        self._note_active = False
        self._goodbye_pending = False
        self._caller_speaking = False
        self._finished: list[int] = []  # recently finished replies, for a late LatencyReport

    @property
    def playing(self) -> bool:
        """Some reply may still be playing to the caller."""
        return bool(self._replies)

    @property
    def agent_speaking(self) -> bool:
        return self._speaking is not None

    def set_think(self, think: dict[str, Any]) -> None:
        """The prompt changed mid-call: notes about what was heard go on top of the new one."""
        self.config.think = think

    # --- Deepgram → ---------------------------------------------------------------------------
    def on_agent_message(self, msg: dict[str, Any], now: float) -> list[Action]:
        kind = msg.get("type")
        actions: list[Action] = []
        if kind == "UserStartedSpeaking":
            self._caller_active(now)
            self._caller_speaking = True  # until the transcript of what they said arrives
            self._utterance_transit_us = 0
            # Always clear: a clear that finds nothing to flush costs nothing, and a missed
            # one would let the agent talk over the caller.
            actions.append(ToCaller(entries.clear()))
            if self.playing or self._speaking is not None:
                actions.append(Emit("barge_in", {"reply": self._latest_reply()}))
                actions.append(Observe("barge_in", ""))
            else:
                actions.append(Emit("user_started_speaking", {}))
            self._speaking = None
        elif kind == "ConversationText":
            role, content = str(msg.get("role", "")), str(msg.get("content", ""))
            actions.append(Emit("transcript", {"role": role, "content": content}))
            if role == "user":
                self._caller_active(now)
                self._caller_speaking = False
            elif role == "assistant":
                self._pending_text = content
                self._last_heard_at = now
        elif kind == "AgentStartedSpeaking":
            actions.extend(self._start_reply(now, msg))
        elif kind == "AgentAudioDone":
            actions.extend(self._audio_done(now))
        elif kind == "LatencyReport":
            actions.extend(self._latency_report(msg))
        elif kind in ("AgentThinking", "FunctionCallRequest"):
            self._last_heard_at = now  # the agent is busy answering
        elif kind == "InjectionRefused" and self._goodbye_pending:
            self._goodbye_pending = False
            actions.append(Hangup("dead_air_caller_idle"))  # no goodbye, but no endless dead air either
        return actions

    def _start_reply(self, now: float, msg: dict[str, Any]) -> list[Action]:
        actions: list[Action] = []
        if self._speaking is not None:
            actions.extend(self._audio_done(now))  # a missed AgentAudioDone: close the previous one
        self._reply_no += 1
        reply = Reply(self._reply_no, self._pending_text, now)
        self._pending_text = ""
        for stage, seconds in deepgram_stages(msg).items():
            reply.latency[stage] = round(seconds * 1000, 1)
            actions.append(Observe("turn_stage", stage, seconds))
        if self._utterance_transit_us:
            reply.latency["caller_to_deepgram"] = round(self._utterance_transit_us / 1000, 2)
            actions.append(Observe("turn_stage", "caller_to_deepgram", self._utterance_transit_us / 1e6))
            self._utterance_transit_us = 0
        self._replies[reply.number] = reply
        self._speaking = reply
        self._last_agent_audio_at = now
        self._stall_reported = False
        while len(self._replies) > MAX_OPEN_REPLIES:  # a client that never echoes marks
            self._replies.pop(next(iter(self._replies)))
        actions.append(ToCaller(entries.mark(mark_name(self.session_id, reply.number, 0))))
        data = {"reply": reply.number, **{k: v for k, v in msg.items() if k != "type"}}
        actions.append(Emit("agent_started_speaking", data))
        return actions

    def on_agent_audio(self, nbytes: int, now: float) -> list[Action]:
        """Call after the audio itself went to :out: a mark goes right behind it when due."""
        self._last_agent_audio_at = self._last_heard_at = now
        reply = self._speaking
        if reply is None:
            return []
        reply.received += nbytes
        if reply.received < reply.next_mark:
            return []
        reply.next_mark = reply.received + SEGMENT_BYTES
        return [ToCaller(entries.mark(mark_name(self.session_id, reply.number, reply.received)))]

    def _audio_done(self, now: float) -> list[Action]:
        reply, self._speaking = self._speaking, None
        if reply is None:
            return [Emit("agent_audio_done", {})]
        reply.audio_done = True
        return [
            ToCaller(entries.mark(mark_name(self.session_id, reply.number, reply.received, end=True))),
            Emit("agent_audio_done", {"reply": reply.number}),
        ]

    def _latency_report(self, msg: dict[str, Any]) -> list[Action]:
        """Deepgram's own per-turn timing; it comes after AgentAudioDone, maybe after the reply played."""
        target = self._latest_reply() or (self._finished[-1] if self._finished else 0)
        reply = self._replies.get(target)
        known = reply.latency if reply is not None else {}
        stages = deepgram_stages(msg)
        # Stages AgentStartedSpeaking already gave are counted once; the report's values win in the record.
        actions: list[Action] = [Observe("turn_stage", k, v) for k, v in stages.items() if k not in known]
        in_ms = {k: round(v * 1000, 1) for k, v in stages.items()}
        if reply is not None and not reply.latency_emitted:
            reply.latency.update(in_ms)
        elif in_ms and target:
            actions.append(Emit("turn_latency", {"reply": target, "stages": in_ms, "source": "LatencyReport"}))
        return actions

    def on_agent_reconnect(self, now: float) -> list[Action]:
        """The Deepgram session was replaced mid-reply: what was sent of the reply is all there is."""
        self._last_agent_audio_at = now
        return self._audio_done(now) if self._speaking is not None else []

    # --- Twilio (through the edge) → ------------------------------------------------------------
    def on_caller_transit(self, transit_us: int) -> None:
        """The worst edge → worker transit in a batch of caller audio."""
        if transit_us > self._utterance_transit_us:
            self._utterance_transit_us = transit_us

    def on_caller_entry(self, entry: Entry, now: float) -> list[Action]:
        if entry.kind is Kind.MARK:
            return self._mark_echoed(entry.payload.decode(errors="replace"), entry.t_us / 1e6, now)
        if entry.kind is Kind.CLEARED:
            try:
                flushed = [str(name) for name in orjson.loads(entry.payload or b"[]")]
            except (orjson.JSONDecodeError, TypeError):
                flushed = []
            return self._cleared(flushed, entry.t_us / 1e6, now)
        if entry.kind is Kind.TIMING:
            return self._edge_timing(entry.payload)
        if entry.kind is Kind.DTMF:
            self._caller_active(now)
            return [Emit("dtmf", {"digit": entry.payload.decode(errors="replace")})]
        return []

    def _mark_echoed(self, name: str, at: float, now: float) -> list[Action]:
        parsed = parse_mark(name)
        if name in self._flushed:
            self._flushed.discard(name)
            return []
        if parsed is None or parsed[0] != self.session_id:
            return []
        _, number, offset, end = parsed
        reply = self._replies.get(number)
        if reply is None:
            return []
        self._last_heard_at = now
        reply.played = max(reply.played, offset)
        reply.playing_since = at
        if reply.heard_from is None:
            reply.heard_from = now
        if not end:
            return []
        return self._finish(reply, reply.played, interrupted=False)

    def _cleared(self, flushed: list[str], at: float, now: float) -> list[Action]:
        self._flushed.update(flushed)
        if len(self._flushed) > 256:  # echoes that never came (a dropped socket)
            self._flushed = set(flushed)
        cut: dict[int, int] = {}  # reply → lowest flushed offset
        for name in flushed:
            parsed = parse_mark(name)
            if parsed is not None and parsed[0] == self.session_id:
                number, offset = parsed[1], parsed[2]
                cut[number] = min(offset, cut.get(number, offset))
        actions: list[Action] = []
        for number in sorted(self._replies):
            reply = self._replies[number]
            if reply.playing_since is None:
                heard = 0  # its first mark never came back: not a sound of it played
            else:
                heard = reply.played + int(max(0.0, at - reply.playing_since) * 1000 * BYTES_PER_MS)
                heard = min(heard, cut.get(number, reply.received), reply.received)
            actions.extend(self._finish(reply, heard, interrupted=True))
        self._speaking = None
        return actions

    def _edge_timing(self, payload: bytes) -> list[Action]:
        try:
            report = orjson.loads(payload)
            parsed = parse_mark(str(report["mark"]))
            transit_us = int(report["transit_us"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return []
        if parsed is None or parsed[0] != self.session_id:
            return []
        reply = self._replies.get(parsed[1])
        if reply is not None:
            reply.latency["worker_to_edge"] = round(transit_us / 1000, 2)
        return [Observe("turn_stage", "worker_to_edge", transit_us / 1e6)]

    def _finish(self, reply: Reply, heard_bytes: int, *, interrupted: bool, confirmed: bool = True) -> list[Action]:
        self._replies.pop(reply.number, None)
        self._finished = [*self._finished[-3:], reply.number]
        total = reply.received if reply.audio_done else max(
            reply.received, int(len(reply.text) / SPOKEN_CHARS_PER_S * 1000 * BYTES_PER_MS)
        )
        fraction = 1.0 if not interrupted else (heard_bytes / total if total else 0.0)
        heard_text = reply.text if fraction >= 1.0 else heard_prefix(reply.text, fraction)
        actions: list[Action] = [
            Emit("reply_heard", {
                "reply": reply.number,
                "text": reply.text,
                "heard_text": heard_text,
                "unheard_text": reply.text[len(heard_text):].strip(),
                "heard_ms": round(heard_bytes / BYTES_PER_MS),
                "audio_ms": round(reply.received / BYTES_PER_MS),
                "interrupted": interrupted and fraction < 1.0,
                "confirmed": confirmed,  # false: no mark came back, so "heard" is an assumption
            })
        ]
        if reply.latency and not reply.latency_emitted:
            reply.latency_emitted = True
            switchboard = sum(v for k, v in reply.latency.items() if k in ("caller_to_deepgram", "worker_to_edge"))
            actions.append(Emit("turn_latency", {
                "reply": reply.number, "stages": dict(reply.latency), "switchboard_ms": round(switchboard, 2),
            }))
        actions.append(Observe("reply", "interrupted" if interrupted and fraction < 1.0 else "complete"))
        actions.extend(self._tell_agent(reply, heard_text, fraction, interrupted))
        return actions

    def _tell_agent(self, reply: Reply, heard_text: str, fraction: float, interrupted: bool) -> list[Action]:
        if not self.config.tell_agent_heard or self.config.think is None:
            return []
        if interrupted and fraction < 1.0 and reply.text:
            note = (
                "\n\n[Switchboard] The caller interrupted your last reply. They heard only: "
                f"\"{heard_text}\". They did not hear: \"{reply.text[len(heard_text):].strip()}\". "
                "Do not assume they heard the rest."
            )
            self._note_active = True
        elif self._note_active:
            note, self._note_active = "", False  # a reply played in full: the note is stale
        else:
            return []
        think = {**self.config.think, "prompt": str(self.config.think.get("prompt", "")) + note}
        return [ToAgent(orjson.dumps({"type": "UpdateThink", "think": think}).decode())]

    # --- time ---------------------------------------------------------------------------------
    def tick(self, now: float) -> list[Action]:
        """Dead air: the agent stalled mid-reply, or nobody has said anything for a while."""
        config = self.config
        actions = self._expire_unconfirmed(now)
        if self._speaking is not None:
            # Deepgram sends speech faster than real time: the caller hears nothing only once
            # the audio already sent has played out (counted from when playback began).
            reply = self._speaking
            played_out = (reply.heard_from if reply.heard_from is not None else reply.started_at) + (
                reply.received / (BYTES_PER_MS * 1000))
            silent = now - max(self._last_agent_audio_at, played_out)
            if config.agent_stall_s and silent >= config.agent_stall_s and not self._stall_reported:
                self._stall_reported = True
                action = "reconnect" if config.dead_air_action == "reengage" else "end_call"
                out: list[Action] = [
                    Emit("dead_air", {"kind": "agent_stall", "silent_s": round(silent, 1), "action": action,
                                      "reply": self._speaking.number}),
                    Observe("dead_air", f"agent_stall:{action}"),
                ]
                self._last_heard_at = now
                out.append(Reconnect("agent_stall") if action == "reconnect" else Hangup("dead_air_agent_stall"))
                return actions + out
            return actions
        if self.playing or self._caller_speaking or not config.caller_idle_s:
            return actions
        idle = now - self._last_heard_at
        if idle < config.caller_idle_s:
            return actions
        self._last_heard_at = now  # the next check is a full period away
        if config.dead_air_action == "reengage" and self._reengaged < config.max_reengage:
            self._reengaged += 1
            action, text = "reengage", config.reengage_message
            last: list[Action] = []
        else:
            action, text = "end_call", config.goodbye_message
            last = [Hangup("dead_air_caller_idle", after_reply=True)]
            self._goodbye_pending = True
        message = orjson.dumps({"type": "InjectAgentMessage", "message": text}).decode()
        return [
            *actions,
            Emit("dead_air", {"kind": "caller_idle", "silent_s": round(idle, 1), "action": action,
                              "attempt": self._reengaged}),
            Observe("dead_air", f"caller_idle:{action}"),
            ToAgent(message),
            *last,
        ]

    def _expire_unconfirmed(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for reply in list(self._replies.values()):
            if not reply.audio_done:
                continue
            start = reply.heard_from if reply.heard_from is not None else reply.started_at
            if now - start > reply.received / (BYTES_PER_MS * 1000) + UNCONFIRMED_GRACE_S:
                actions.extend(self._finish(reply, reply.received, interrupted=False, confirmed=False))
        return actions

    # --- helpers ------------------------------------------------------------------------------
    def _caller_active(self, now: float) -> None:
        self._last_heard_at = now
        self._reengaged = 0

    def _latest_reply(self) -> int:
        if self._speaking is not None:
            return self._speaking.number
        return max(self._replies, default=0)


def deepgram_stages(msg: dict[str, Any]) -> dict[str, float]:
    """`*_latency` fields (seconds) of AgentStartedSpeaking / LatencyReport → stage name → seconds."""
    stages: dict[str, float] = {}
    for key, value in msg.items():
        if not key.endswith("_latency") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = key.removesuffix("_latency")
        if 0 <= value < 600 and len(name) <= 32 and name.replace("_", "").isalnum():
            stages["deepgram_" + name] = float(value)
    return stages


def heard_prefix(text: str, fraction: float) -> str:
    """The words of `text` within its first `fraction` (by characters, whole words only)."""
    if fraction <= 0 or not text:
        return ""
    cut = int(len(text) * min(fraction, 1.0))
    if cut >= len(text):
        return text
    if text[cut].isspace():
        return text[:cut].rstrip()
    space = text.rfind(" ", 0, cut)
    return text[:space].rstrip() if space > 0 else ""
