"""The pure core of one Twilio stream on the edge: events in, actions out, no I/O, no clock.

The socket shell (`call.py`) feeds it Twilio events, the agent's entries and the time, and
carries out what it returns. It owns the decisions that are easy to get subtly wrong:

- the stream's lifecycle (`Phase`): a start within the start timeout, one start only, a
  close asked for once (later ones are no-ops) with the reason the call ends for;
- the budget of invalid messages per stream;
- marks sent to Twilio and not echoed yet: a clear flushes them unplayed, and Twilio echoes
  them right after it as if played, so the worker is told which ones those were;
- the transit of the first audio after a reply-start mark, reported to the worker;
- hang-up: the goodbye mark goes out after the audio before it, and the stream closes on its
  echo (played to the end) or when the grace time runs out, whichever comes first.

Times are passed in: `now_s` is the shell's monotonic clock (deadlines), `now_us` wall-clock
microseconds (the entries' `t` fields are stamped with it by the worker).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from switchboard import twilio
from switchboard.conversation import is_reply_start
from switchboard.entries import Kind

HANGUP_MARK = "sb-hangup"
MAX_OUTSTANDING_MARKS = 512  # a client that never echoes marks must not grow memory
LOUD_PROTOCOL_ERRORS = 5  # the first few per stream are enough to diagnose; a flood must not flood the logs

_SID = re.compile(r"^[A-Za-z0-9]{2,64}$")
_AUDIO, _CLEAR, _MARK, _HANGUP = Kind.AUDIO.value, Kind.CLEAR.value, Kind.MARK.value, Kind.HANGUP.value

AgentBatch = list[tuple[bytes, dict[bytes, bytes]]]


class Phase(enum.Enum):
    AWAITING_START = "awaiting_start"  # connected; closed if no start comes within the start timeout
    CHECKING = "checking"  # a start arrived; identity and admission are being decided
    LIVE = "live"  # announced to the workers; audio flows both ways
    CLOSING = "closing"  # a close was asked for; frames are still read (the close handshake) and dropped


_LEGAL: dict[Phase, frozenset[Phase]] = {
    Phase.AWAITING_START: frozenset({Phase.CHECKING, Phase.CLOSING}),
    Phase.CHECKING: frozenset({Phase.LIVE, Phase.CLOSING}),
    Phase.LIVE: frozenset({Phase.CLOSING}),
    Phase.CLOSING: frozenset(),
}


class IllegalTransition(RuntimeError):
    def __init__(self, current: Phase, target: Phase) -> None:
        super().__init__(f"a stream cannot go from {current.value} to {target.value}")
        self.current, self.target = current, target


# --- actions: what the shell carries out, in order ------------------------------------------------
@dataclass(frozen=True, slots=True)
class SendAudio:
    payload: bytes  # raw mu-law, one media message


@dataclass(frozen=True, slots=True)
class SendMark:
    name: str


@dataclass(frozen=True, slots=True)
class Clear:
    """Barge-in: drop queued audio (queued marks stay), send Twilio a clear, tell the worker
    which marks it flushed unplayed."""

    flushed_marks: tuple[str, ...]
    latency_us: int  # the worker receiving the caller's speech → now


@dataclass(frozen=True, slots=True)
class AudioTransit:
    transit_us: int  # one agent audio entry: worker → edge


@dataclass(frozen=True, slots=True)
class ReplyTransit:
    """For the worker: the transit of the first audio after a reply-start mark."""

    mark: str
    transit_us: int


@dataclass(frozen=True, slots=True)
class MarkPlayed:
    """For the worker: Twilio echoed this mark (played, or flushed by a clear)."""

    name: str


@dataclass(frozen=True, slots=True)
class Digit:
    digit: str


@dataclass(frozen=True, slots=True)
class HangupRequested:
    reason: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """An invalid Twilio message, counted by `reason`; logged while `loud`."""

    reason: str
    description: str
    loud: bool


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str  # a stream refused before it became a call


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


Action = (SendAudio | SendMark | Clear | AudioTransit | ReplyTransit | MarkPlayed | Digit | HangupRequested | Invalid
          | Refused | Close)
_NOTHING: tuple[Action, ...] = ()


class StreamCore:
    def __init__(self, *, now_s: float, start_timeout_s: float, hangup_grace_s: float,
                 max_protocol_errors: int) -> None:
        self.phase = Phase.AWAITING_START
        self.stream_sid = ""
        self.announced = False  # went live: the call exists for the workers
        self.end_reason = "twilio_closed"
        self.protocol_errors = 0
        self._start_timeout_s = start_timeout_s
        self._start_deadline = now_s + start_timeout_s
        self._hangup_grace_s = hangup_grace_s
        self._hangup_deadline: float | None = None
        self._max_protocol_errors = max_protocol_errors
        # Marks sent and not echoed yet, oldest first: the ones a clear flushes were never played.
        self.marks_out: dict[str, None] = {}
        self._reply_start = ""  # a reply-start mark whose following audio's transit is reported

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def closing(self) -> bool:
        return self.phase is Phase.CLOSING

    def _to(self, target: Phase) -> None:
        if target not in _LEGAL[self.phase]:
            raise IllegalTransition(self.phase, target)
        self.phase = target

    def next_deadline(self) -> float | None:
        """When `poll` has something to do next (on the `now_s` clock), if ever."""
        if self.phase is Phase.AWAITING_START:
            return self._start_deadline
        if self.phase is Phase.LIVE:
            return self._hangup_deadline
        return None

    def poll(self, now_s: float) -> list[Action]:
        if self.phase is Phase.AWAITING_START and now_s >= self._start_deadline:
            return [Refused("no_start"),
                    *self.invalid("no_start", f"no start within {self._start_timeout_s:g}s"),
                    *self.close(1008, "no start", "no_start")]
        if self.phase is Phase.LIVE and self._hangup_deadline is not None and now_s >= self._hangup_deadline:
            return self.close(1000, "call ended")  # the goodbye's echo never came: it played, or never will
        return []

    def close(self, code: int, reason: str, end_reason: str = "") -> list[Action]:
        """Close the stream (the first request wins; its end reason too)."""
        if self.phase is Phase.CLOSING:
            return []
        if end_reason:
            self.end_reason = end_reason
        self._to(Phase.CLOSING)
        return [Close(code, reason)]

    def invalid(self, reason: str, description: str) -> list[Action]:
        self.protocol_errors += 1
        actions: list[Action] = [Invalid(reason, description, self.protocol_errors <= LOUD_PROTOCOL_ERRORS)]
        if self.protocol_errors > self._max_protocol_errors:
            actions += self.close(1008, "too many invalid messages", "too_many_protocol_errors")
        return actions

    # --- Twilio → edge -----------------------------------------------------------------------
    def start_received(self, start: twilio.Start) -> list[Action]:
        """Check a start's shape; if the phase is then CHECKING, identity and admission are next."""
        if self.phase is not Phase.AWAITING_START:
            return self.invalid("duplicate_start", "second start message ignored")
        self._to(Phase.CHECKING)
        if not (_SID.match(start.stream_sid) and _SID.match(start.call_sid)):
            return [*self.invalid("invalid_sid", "streamSid/callSid must be alphanumeric"),
                    *self.close(1008, "invalid start")]
        if (start.encoding, start.sample_rate, start.channels) != twilio.MEDIA_FORMAT_SUPPORTED:
            return [*self.invalid("unsupported_media_format", f"{start.encoding}/{start.sample_rate}/{start.channels}"),
                    *self.close(1003, "unsupported media format")]
        return []

    def go_live(self, stream_sid: str) -> None:
        """Identity and admission passed: the stream is a call from now on."""
        self._to(Phase.LIVE)
        self.stream_sid = stream_sid
        self.announced = True

    def check_media(self, stream_sid: str) -> Sequence[Action]:
        """Nothing (the hot path) if a media frame belongs here, else what to do about it."""
        if self.phase is not Phase.LIVE:
            return self.invalid("media_before_start", "media before start")
        if stream_sid != self.stream_sid:
            return self.invalid("wrong_stream_sid", f"media for stream {stream_sid[:40]!r}")
        return _NOTHING

    def twilio_stopped(self) -> None:
        self.end_reason = "twilio_stop"

    def twilio_event(self, event: twilio.TwilioEvent) -> list[Action]:
        """Any event but media, start and stop."""
        if isinstance(event, twilio.Connected):
            return []
        if self.phase is not Phase.LIVE:
            return self.invalid("event_before_start", f"{type(event).__name__.lower()} before start")
        if event.stream_sid != self.stream_sid:
            return self.invalid("wrong_stream_sid", "event for another stream")
        if isinstance(event, twilio.Mark):
            if event.name == HANGUP_MARK:
                return self.close(1000, "call ended")  # Twilio has played everything sent before the goodbye
            self.marks_out.pop(event.name, None)
            return [MarkPlayed(event.name)]
        if isinstance(event, twilio.Dtmf):
            return [Digit(event.digit)]
        return []

    # --- agent → Twilio ----------------------------------------------------------------------
    def agent_entries(self, batch: AgentBatch, now_s: float, now_us: int) -> list[Action]:
        """Entries of this call's :out stream, in order."""
        actions: list[Action] = []
        audio: list[bytes] = []
        for _entry_id, fields in batch:
            kind = fields.get(b"k")
            if kind == _AUDIO:
                audio.append(fields[b"p"])
                transit_us = max(0, now_us - int(fields.get(b"t", now_us)))
                actions.append(AudioTransit(transit_us))
                if self._reply_start:
                    actions.append(ReplyTransit(self._reply_start, transit_us))  # the worker's share of the latency
                    self._reply_start = ""
                continue
            if kind == _CLEAR:
                audio.clear()  # barge-in overtakes everything still queued, this batch's audio included
                actions.append(Clear(tuple(self.marks_out), max(0, now_us - int(fields.get(b"t", now_us)))))
                self.marks_out.clear()
                self._reply_start = ""
                continue
            _flush_audio(audio, actions)
            if kind == _MARK:
                name = fields[b"p"].decode(errors="replace")
                actions.append(SendMark(name))
                self.marks_out[name] = None
                if len(self.marks_out) > MAX_OUTSTANDING_MARKS:
                    self.marks_out.pop(next(iter(self.marks_out)))
                if is_reply_start(name):
                    self._reply_start = name
            elif kind == _HANGUP:
                actions.append(HangupRequested(fields[b"p"].decode(errors="replace")))
                actions.append(SendMark(HANGUP_MARK))  # after the audio before it: its echo means all was played
                if self._hangup_deadline is None:
                    self._hangup_deadline = now_s + self._hangup_grace_s
        _flush_audio(audio, actions)
        return actions


def _flush_audio(parts: list[bytes], actions: list[Action]) -> None:
    if parts:
        actions.append(SendAudio(parts[0] if len(parts) == 1 else b"".join(parts)))
        parts.clear()
