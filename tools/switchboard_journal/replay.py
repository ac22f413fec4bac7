"""Replay a journal offline through the protocol core and the worker's conversation state machine.

Every recorded Deepgram text frame goes through `switchboard.deepgram.parse_server`, every
caller entry through `switchboard.entries.decode`, and both are fed in recorded order into a
fresh `Conversation` on a virtual clock (the recorded timestamps), with `tick()` every 0.5 s
of virtual time, as the worker's session feeds it live; so are the Deepgram session opening
and closing (`deepgram_connected` / `deepgram_closed` events) and the edge's stop. What the
replay decides (events, hang-ups, reconnects, the context a new Deepgram session gets and
the caller's words it is asked again) is set beside what the session recorded: the same
call, reconnects and re-asks included, reproduced offline without Redis, sockets or waiting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from switchboard import deepgram
from switchboard.agent_settings import AgentSettings
from switchboard.conversation import (
    Action,
    Conversation,
    ConversationConfig,
    Emit,
    GiveUp,
    Hangup,
    Reconnect,
    parse_mark,
)
from switchboard.entries import Entry, Kind
from switchboard.journal import JournalRecord, Source

TICK_S = 0.5  # the worker ticks every session twice a second
# Events the Conversation decides; the rest of :events (connects, function calls, the end of
# the call, ...) come from other parts of the worker and are not replayed.
CONVERSATION_EVENTS = frozenset({
    "transcript", "user_started_speaking", "barge_in", "agent_started_speaking", "agent_audio_done",
    "reply_heard", "turn_latency", "dtmf", "dead_air", "hangup_requested", "agent_reconnect", "reask",
})
# Recorded parts of a call that had no session events of its own here: its context cannot be checked.
CARRIED_FROM_ELSEWHERE = "resumed_from_stream"
# Values that depend on when the worker's clock happened to run, not on what happened.
TOLERANCE = {"silent_s": TICK_S + 0.1, "caller_to_deepgram": 50.0, "switchboard_ms": 50.0}
DEFAULT_MAX_RECONNECTS = 3  # the worker's default, for journals that do not say
GAP_S = 1.0  # a longer pause in a continuous audio stream is shown in the timeline


@dataclass(frozen=True, slots=True)
class Line:
    t: float  # seconds since the start of the journal
    who: str
    what: str


@dataclass(frozen=True, slots=True)
class Mismatch:
    type: str
    index: int  # the n-th event of that type
    recorded: dict[str, Any] | None
    replayed: dict[str, Any] | None
    fields: tuple[str, ...]  # which fields differ (empty when one side is missing)


@dataclass
class ReplayResult:
    timeline: list[Line] = field(default_factory=list)
    replayed: list[dict[str, Any]] = field(default_factory=list)
    recorded: list[dict[str, Any]] = field(default_factory=list)
    compared: int = 0
    matched: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.compared > 0 and not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "duration_s": round(self.duration_s, 3), "notes": self.notes,
            "comparison": {"compared": self.compared, "matched": self.matched,
                           "mismatches": [vars_of(m) for m in self.mismatches]},
            "timeline": [vars_of(line) for line in self.timeline],
            "replayed_events": self.replayed, "recorded_events": self.recorded,
        }


def vars_of(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def replay(records: list[JournalRecord], settings: AgentSettings | None = None) -> ReplayResult:
    return _Replay(records, settings).run()


class _Replay:
    def __init__(self, records: list[JournalRecord], settings: AgentSettings | None) -> None:
        self.records = records
        self.override = settings
        self.result = ReplayResult()
        self.t0 = records[0].t_us / 1e6 if records else 0.0
        self.conv: Conversation | None = None
        self.next_tick = 0.0
        self.settings_sent = 0
        self.history: list[dict[str, Any]] = []  # the session events so far: what a new Deepgram session is told
        self.context_checkable = True
        self.last_caller_audio: float | None = None
        self.last_agent_audio: float | None = None
        self.agent_speaking = False

    def run(self) -> ReplayResult:
        if not self.records:
            self.result.notes.append("the journal is empty")
            return self.result
        if self.records[0].source is not Source.START:
            self.result.notes.append("the journal has no start record (its oldest entries were trimmed by "
                                     "journal.max_entries): replayed from the middle with default settings")
        for index, record in enumerate(self.records):
            now = record.t_us / 1e6
            self._tick_until(now)
            try:
                self._feed(index, record, now)
            except ValueError as exc:  # JournalError, EntryError, a JSON record that is not JSON
                self.result.notes.append(f"record {index} ({record.source.label}) skipped: {exc}")
        self.result.duration_s = self.records[-1].t_us / 1e6 - self.t0
        self._compare()
        return self.result

    # --- feeding -----------------------------------------------------------------------------
    def _feed(self, index: int, record: JournalRecord, now: float) -> None:
        source = record.source
        if source is Source.START:
            info = record.json()
            self._start(index, info if isinstance(info, dict) else {}, now)
            return
        if self.conv is None:
            self._start(index, {}, now)
        if source is Source.CALLER:
            self._caller(record.entry, record.t_us, now)
        elif source is Source.AGENT_AUDIO:
            self._agent_audio(len(record.data), now)
        elif source is Source.FROM_DEEPGRAM:
            try:
                msg = deepgram.parse_server(record.data)
            except deepgram.DeepgramProtocolError as exc:
                self._line(now, "deepgram", f"unparseable frame ({exc})")
                return
            self._from_deepgram(msg, now)
        elif source is Source.TO_DEEPGRAM:
            self._to_deepgram(record.json(), now)
        elif source is Source.TO_TWILIO:
            self._to_twilio(record.entry, now)
        elif source is Source.EVENT:
            event = record.json()
            if isinstance(event, dict):
                self._session_event(event, now)

    def _start(self, index: int, info: dict[str, Any], now: float) -> None:
        settings = self.override or _settings(info.get("settings"), self.result.notes)
        session_id = info.get("session_id") or self._session_id_from_marks(index)
        self.conv = Conversation(ConversationConfig.from_settings(settings, _max_reconnects(info)), now, session_id)
        self.settings_sent = 0
        self.next_tick = now + TICK_S
        if info:
            self._line(now, "worker", f"session {session_id or '?'} takes the call {info.get('call_sid', '')}")

    def _session_id_from_marks(self, index: int) -> str | None:
        # The Conversation names its marks after its session: echoes match only the same id.
        for record in self.records[index:]:
            if record.source is Source.START and record is not self.records[index]:
                break
            if record.source in (Source.TO_TWILIO, Source.CALLER) and record.data[:1] == Kind.MARK.value:
                parsed = parse_mark(record.entry.payload.decode(errors="replace"))
                if parsed is not None:
                    return parsed[0]
        return None

    def _tick_until(self, now: float) -> None:
        while self.conv is not None and self.next_tick <= now:
            self._apply(self.conv.tick(self.next_tick), self.next_tick)  # the core knows when to watch
            self.next_tick += TICK_S

    def _caller(self, entry: Entry, t_us: int, now: float) -> None:
        assert self.conv is not None
        if entry.kind is Kind.AUDIO:
            at = (entry.t_us or t_us) / 1e6
            if self.last_caller_audio is not None and at - self.last_caller_audio > GAP_S:
                self._line(at, "caller", f"no caller audio for {at - self.last_caller_audio:.1f} s")
            self.last_caller_audio = at + len(entry.payload) / 8000
            if entry.t_us:
                self.conv.on_caller_transit(t_us - entry.t_us)
            return
        if entry.kind is Kind.STOP:
            self.conv.on_caller_stop()
            self._line(now, "twilio", f"stream stopped ({entry.payload.decode(errors='replace') or 'no reason'})")
            return
        if entry.kind is Kind.DTMF:
            self._line(now, "caller", f"pressed {entry.payload.decode(errors='replace')}")
        elif entry.kind is Kind.CLEARED:
            self._line(now, "twilio", "cleared the agent's queued audio")
        self._apply(self.conv.on_caller_entry(entry, now), now)

    def _agent_audio(self, nbytes: int, now: float) -> None:
        assert self.conv is not None
        if self.agent_speaking and self.last_agent_audio is not None and now - self.last_agent_audio > GAP_S:
            self._line(now, "deepgram", f"agent audio stalled for {now - self.last_agent_audio:.1f} s mid-reply")
        self.last_agent_audio = now
        self._apply(self.conv.on_agent_audio(nbytes, now), now)

    def _from_deepgram(self, msg: dict[str, Any], now: float) -> None:
        assert self.conv is not None
        kind = msg["type"]
        if kind == "UserStartedSpeaking":
            self._line(now, "caller", "starts speaking")
        elif kind == "ConversationText":
            who = "caller" if msg.get("role") == "user" else "agent"
            self._line(now, who, f"“{msg.get('content', '')}”")
        elif kind == "AgentStartedSpeaking":
            self.agent_speaking, self.last_agent_audio = True, now
            latency = msg.get("total_latency")
            suffix = f" (turn latency {latency * 1000:.0f} ms)" if isinstance(latency, (int, float)) else ""
            self._line(now, "agent", f"starts speaking{suffix}")
        elif kind == "AgentAudioDone":
            self.agent_speaking = False
        elif kind == "FunctionCallRequest":
            names = ", ".join(str(f.get("name")) for f in msg.get("functions", []) if isinstance(f, dict))
            self._line(now, "agent", f"calls {names or 'a function'}")
        elif kind in ("Error", "Warning"):
            self._line(now, "deepgram", f"{kind.lower()} {msg.get('code')}: {msg.get('description', '')}")
        elif kind == "SettingsApplied":
            self._line(now, "deepgram", "session ready")
        self._apply(self.conv.on_agent_message(msg, now), now)

    def _to_deepgram(self, msg: Any, now: float) -> None:
        assert self.conv is not None
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "Settings":
            self.settings_sent += 1
            context = (msg.get("agent") or {}).get("context")
            if context is not None:
                # A session opened with the conversation so far (a reconnect or a takeover): the
                # replay builds that context from the same events and asks again what was unanswered.
                recorded = context.get("messages") or [] if isinstance(context, dict) else []
                self._check_context(self.conv.context(self.history), recorded, now)
                self._line(now, "worker", f"opens a Deepgram session with {len(recorded)} messages of context")
        elif kind == "UpdatePrompt" and isinstance(self.conv.config.think, dict):
            think = {**self.conv.config.think, "prompt": str(msg.get("prompt", ""))}
            self.conv.config = dataclasses.replace(self.conv.config, think=think)
        elif kind == "InjectAgentMessage":
            self._line(now, "worker", f"makes the agent say “{msg.get('message', '')}”")
        elif kind == "UpdateThink":
            self._line(now, "worker", "tells the agent what the caller heard (UpdateThink)")

    def _to_twilio(self, entry: Entry, now: float) -> None:
        if entry.kind is Kind.HANGUP:
            reason = entry.payload.decode(errors="replace")
            self._line(now, "worker", f"asks the edge to hang up ({reason})")
            assert self.conv is not None
            # A hang-up the replay did not decide itself (a command, end_call): it happened all the same.
            self._apply(self.conv.request_hangup(reason), now)

    def _session_event(self, event: dict[str, Any], now: float) -> None:
        assert self.conv is not None
        kind = event.get("type")
        if kind in CONVERSATION_EVENTS:
            self.result.recorded.append({"t": round(now - self.t0, 3), **event})
        if kind in ("transcript", "function_call"):
            self.history.append(event)
        elif kind == CARRIED_FROM_ELSEWHERE:
            self.context_checkable = False  # its transcript came from another stream's journal
        elif kind == "deepgram_connected":
            self._apply(self.conv.on_agent_connected(now), now)
        elif kind == "deepgram_closed":
            self._apply(self.conv.on_agent_closed(now, expected=bool(event.get("expected"))), now)

    def _check_context(self, replayed: list[dict[str, Any]], recorded: list[Any], now: float) -> None:
        if not self.context_checkable:
            self.result.notes.append("a Deepgram context carried over from another stream was not checked")
            return
        self.result.recorded.append({"t": round(now - self.t0, 3), "type": "agent_context", "messages": recorded})
        self.result.replayed.append({"t": round(now - self.t0, 3), "type": "agent_context", "messages": replayed})

    # --- what the replay decided ------------------------------------------------------------------
    def _apply(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, Emit):
                self.result.replayed.append({"t": round(now - self.t0, 3), "type": action.type, **action.data})
                self._describe(action, now)
            elif isinstance(action, Hangup):
                self._line(now, "replay", f"hang up: {action.reason}")
            elif isinstance(action, GiveUp):
                self._line(now, "replay", f"give up on Deepgram: {action.outcome}")
            elif isinstance(action, Reconnect):
                self._line(now, "replay", f"reconnect Deepgram: {action.reason}")

    def _describe(self, action: Emit, now: float) -> None:
        data = action.data
        if action.type == "barge_in":
            self._line(now, "replay", f"BARGE-IN: the caller interrupts reply {data.get('reply')}")
        elif action.type == "reply_heard" and data.get("interrupted"):
            self._line(now, "replay", f"reply {data.get('reply')}: heard {data.get('heard_ms')} of "
                                      f"{data.get('audio_ms')} ms, “{data.get('heard_text', '')}”; not heard: "
                                      f"“{data.get('unheard_text', '')}”")
        elif action.type == "dead_air":
            self._line(now, "replay", f"DEAD AIR ({data.get('kind')}): silent {data.get('silent_s')} s → "
                                      f"{data.get('action')}")

    def _line(self, now: float, who: str, what: str) -> None:
        self.result.timeline.append(Line(round(now - self.t0, 3), who, what))

    # --- comparison --------------------------------------------------------------------------------
    def _compare(self) -> None:
        result = self.result
        by_type: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        for event in result.recorded:
            by_type.setdefault(event["type"], ([], []))[0].append(event)
        for event in result.replayed:
            by_type.setdefault(event["type"], ([], []))[1].append(event)
        for kind, (recorded, replayed) in sorted(by_type.items()):
            for index in range(max(len(recorded), len(replayed))):
                rec = recorded[index] if index < len(recorded) else None
                rep = replayed[index] if index < len(replayed) else None
                result.compared += 1
                differing = _differing(rec, rep) if rec is not None and rep is not None else ()
                if rec is None or rep is None or differing:
                    result.mismatches.append(Mismatch(kind, index, rec, rep, differing))
                else:
                    result.matched += 1
        if not result.recorded:
            result.notes.append("the journal holds no session events to compare with")


def _differing(recorded: dict[str, Any], replayed: dict[str, Any]) -> tuple[str, ...]:
    names = (set(recorded) | set(replayed)) - {"t", "ts", "type"}
    return tuple(sorted(n for n in names if not _same(n, recorded.get(n), replayed.get(n))))


def _same(name: str, a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_same(k, a[k], b[k]) for k in a)
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(a - b) <= TOLERANCE.get(name, 1e-6)
    return a == b


def _max_reconnects(info: dict[str, Any]) -> int:
    value = info.get("max_reconnects")
    return value if isinstance(value, int) and not isinstance(value, bool) else DEFAULT_MAX_RECONNECTS


def _settings(raw: Any, notes: list[str]) -> AgentSettings:
    if raw is None:
        return AgentSettings()
    try:
        return AgentSettings.model_validate(raw)
    except ValidationError as exc:
        notes.append(f"recorded settings unreadable ({exc.error_count()} errors): default settings used")
        return AgentSettings()


def load_settings(path: str) -> AgentSettings:
    """--settings: a settings document (as the control API returns it) or bare settings."""
    with open(path, "rb") as file:
        doc = orjson.loads(file.read())
    return AgentSettings.model_validate(doc.get("settings", doc) if isinstance(doc, dict) else doc)
