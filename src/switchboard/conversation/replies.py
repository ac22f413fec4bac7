"""The agent's replies: marks, what the caller heard of each, and each turn's timing (pure).

Twilio echoes every mark once the audio before it has played, or at once when a `clear`
flushes it. The edge reports each clear together with the marks still outstanding at that
moment (`Kind.CLEARED`), so the echoes that follow are known to be unplayed ones. The part
heard = the last echoed offset plus the time it played on since then (8 bytes per ms of
mu-law), never past the first flushed mark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .. import entries
from ..messages import Event
from .actions import Action, Emit, Observe, ToAgent, ToCaller
from .config import ConversationConfig
from .marks import BYTES_PER_MS, SEGMENT_BYTES, mark_name, parse_mark

SPOKEN_CHARS_PER_S = 15.0  # for a reply whose audio was cut off at the source
MAX_OPEN_REPLIES = 8
# A reply whose end mark never came back (a client that does not echo marks, a lost echo) is
# taken as played this long after its audio should have finished.
UNCONFIRMED_GRACE_S = 10.0


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

    def played_out_at(self) -> float:
        """When the audio sent so far has finished playing (Deepgram sends faster than real time)."""
        start = self.heard_from if self.heard_from is not None else self.started_at
        return start + self.received / (BYTES_PER_MS * 1000)


class ReplyLedger:
    def __init__(self, config: ConversationConfig, session_id: str) -> None:
        self.config = config
        self.session_id = session_id
        self._reply_no = 0
        self._replies: dict[int, Reply] = {}  # sent or playing, not yet finished
        self.speaking: Reply | None = None  # between AgentStartedSpeaking and AgentAudioDone
        self._pending_text = ""
        self._flushed: set[str] = set()  # marks a clear flushed: their echoes are not "played"
        self._note_active = False
        self._finished: list[int] = []  # recently finished replies, for a late LatencyReport

    @property
    def playing(self) -> bool:
        """Some reply may still be playing to the caller."""
        return bool(self._replies)

    def latest(self) -> int:
        if self.speaking is not None:
            return self.speaking.number
        return max(self._replies, default=0)

    def assistant_text(self, content: str) -> None:
        self._pending_text = content  # ConversationText comes before the reply's audio

    def start(self, now: float, msg: dict[str, Any], caller_transit_us: int) -> list[Action]:
        actions: list[Action] = []
        if self.speaking is not None:
            actions.extend(self.audio_done())  # a missed AgentAudioDone: close the previous one
        self._reply_no += 1
        reply = Reply(self._reply_no, self._pending_text, now)
        self._pending_text = ""
        for stage, seconds in deepgram_stages(msg).items():
            reply.latency[stage] = round(seconds * 1000, 1)
            actions.append(Observe("turn_stage", stage, seconds))
        if caller_transit_us:
            reply.latency["caller_to_deepgram"] = round(caller_transit_us / 1000, 2)
            actions.append(Observe("turn_stage", "caller_to_deepgram", caller_transit_us / 1e6))
        self._replies[reply.number] = reply
        self.speaking = reply
        while len(self._replies) > MAX_OPEN_REPLIES:  # a client that never echoes marks
            self._replies.pop(next(iter(self._replies)))
        actions.append(ToCaller(entries.mark(mark_name(self.session_id, reply.number, 0))))
        data = {"reply": reply.number, **{k: v for k, v in msg.items() if k != "type"}}
        actions.append(Emit(Event.AGENT_STARTED_SPEAKING, data))
        return actions

    def audio(self, nbytes: int) -> list[Action]:
        """After the audio itself went to :out: a mark goes right behind it when due."""
        reply = self.speaking
        if reply is None:
            return []
        reply.received += nbytes
        if reply.received < reply.next_mark:
            return []
        reply.next_mark = reply.received + SEGMENT_BYTES
        return [ToCaller(entries.mark(mark_name(self.session_id, reply.number, reply.received)))]

    def audio_done(self) -> list[Action]:
        reply, self.speaking = self.speaking, None
        if reply is None:
            return [Emit(Event.AGENT_AUDIO_DONE, {})]
        reply.audio_done = True
        return [
            ToCaller(entries.mark(mark_name(self.session_id, reply.number, reply.received, end=True))),
            Emit(Event.AGENT_AUDIO_DONE, {"reply": reply.number}),
        ]

    def latency_report(self, msg: dict[str, Any]) -> list[Action]:
        """Deepgram's own per-turn timing; it comes after AgentAudioDone, maybe after the reply played."""
        target = self.latest() or (self._finished[-1] if self._finished else 0)
        reply = self._replies.get(target)
        known = reply.latency if reply is not None else {}
        stages = deepgram_stages(msg)
        # Stages AgentStartedSpeaking already gave are counted once; the report's values win in the record.
        actions: list[Action] = [Observe("turn_stage", k, v) for k, v in stages.items() if k not in known]
        in_ms = {k: round(v * 1000, 1) for k, v in stages.items()}
        if reply is not None and not reply.latency_emitted:
            reply.latency.update(in_ms)
        elif in_ms and target:
            actions.append(Emit(Event.TURN_LATENCY, {"reply": target, "stages": in_ms, "source": "LatencyReport"}))
        return actions

    # --- what Twilio reports back ---------------------------------------------------------------
    def mark_echoed(self, name: str, at: float, now: float) -> tuple[list[Action], bool]:
        """(actions, whether the echo shows audio playing), for an echo of a mark Twilio played at `at`."""
        parsed = parse_mark(name)
        if name in self._flushed:
            self._flushed.discard(name)
            return [], False
        if parsed is None or parsed[0] != self.session_id:
            return [], False
        _, number, offset, end = parsed
        reply = self._replies.get(number)
        if reply is None:
            return [], False
        reply.played = max(reply.played, offset)
        reply.playing_since = at
        if reply.heard_from is None:
            reply.heard_from = now
        if not end:
            return [], True
        return self._finish(reply, reply.played, interrupted=False), True

    def cleared(self, flushed: list[str], at: float) -> list[Action]:
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
        self.speaking = None
        return actions

    def edge_timing(self, payload: bytes) -> list[Action]:
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

    def expire_unconfirmed(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for reply in list(self._replies.values()):
            if reply.audio_done and now - reply.played_out_at() > UNCONFIRMED_GRACE_S:
                actions.extend(self._finish(reply, reply.received, interrupted=False, confirmed=False))
        return actions

    # --- a reply is over ----------------------------------------------------------------------------
    def _finish(self, reply: Reply, heard_bytes: int, *, interrupted: bool, confirmed: bool = True) -> list[Action]:
        self._replies.pop(reply.number, None)
        self._finished = [*self._finished[-3:], reply.number]
        total = reply.received if reply.audio_done else max(
            reply.received, int(len(reply.text) / SPOKEN_CHARS_PER_S * 1000 * BYTES_PER_MS)
        )
        fraction = 1.0 if not interrupted else (heard_bytes / total if total else 0.0)
        heard_text = reply.text if fraction >= 1.0 else heard_prefix(reply.text, fraction)
        actions: list[Action] = [
            Emit(Event.REPLY_HEARD, {
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
            actions.append(Emit(Event.TURN_LATENCY, {
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
