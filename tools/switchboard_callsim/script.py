"""The caller's side of a conversation, 20 ms at a time (pure state machine, times in µs).

Lead-in silence → utterance 1 → wait for the agent's reply to arrive and finish playing
(or start barging in) → gap → utterance 2 … → after the last reply, hold → hang up.
The I/O layer asks `tick(now)` what to send next and reports what it hears.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from switchboard_dev.testaudio import FRAME_MS

from .playback import Playback


@dataclass(frozen=True, slots=True)
class CallScript:
    turns: int = 1
    utterance_ms: int = 1200
    lead_ms: int = 1500
    gap_ms: int = 300
    reply_timeout_ms: int = 8000
    # A reply counts as finished once playback has been idle, with no audio arriving, this long.
    reply_quiet_ms: int = 200
    barge_in: bool = False
    barge_in_after_ms: int = 400
    hold_ms: int = 0
    dtmf: tuple[tuple[int, str], ...] = ()  # (ms after start, digit)

    @property
    def utterance_frames(self) -> int:
        return max(1, self.utterance_ms // FRAME_MS)


class Phase(enum.Enum):
    LEAD = "lead"
    SPEAK = "speak"
    WAIT = "wait"
    GAP = "gap"
    HOLD = "hold"
    DONE = "done"
    FAILED = "failed"


SILENT = 0  # tick() result: send silence (utterance numbers start at 1)


class Conversation:
    def __init__(self, script: CallScript, playback: Playback, start_us: int, synthetic: bool = True) -> None:
        self.script = script
        self.playback = playback
        self.synthetic = synthetic
        self.phase = Phase.LEAD
        self.utterance = 0
        self.seq = 0  # seq of the speech frame tick() asked for, within its utterance
        self._next_seq = 0
        self.failure: str | None = None
        self._until = start_us + script.lead_ms * 1000
        self._utt_start_us = 0
        self._utt_end_us = 0
        self._reply_recv_us: int | None = None
        self._reply_play_us = 0
        self._last_audio_us = 0
        self._barge_from_us: int | None = None
        self._held_at_us: int | None = None
        self.turn_latencies_us: list[int] = []
        self.barge_in_latencies_us: list[int] = []
        self.barge_in_missed = 0

    # --- what to send -----------------------------------------------------------------------
    def tick(self, now_us: int) -> int | None:
        """Utterance number to send a speech frame of (seq in `self.seq`), SILENT, or None to hang up."""
        # Sequential, not elif: one tick may pass through several phases (e.g. gap_ms=0).
        if self.phase is Phase.WAIT:
            self._wait(now_us)
        if self.phase in (Phase.LEAD, Phase.GAP) and now_us >= self._until:
            self._begin_utterance(now_us)
        if self.phase is Phase.HOLD and now_us >= self._until:
            self.phase = Phase.DONE
        if self.phase is Phase.SPEAK:
            return self._speak(now_us)
        return None if self.phase in (Phase.DONE, Phase.FAILED) else SILENT

    def _begin_utterance(self, now_us: int) -> None:
        self._close_barge_in()
        self.utterance += 1
        self._next_seq = 0
        self.phase = Phase.SPEAK
        self._utt_start_us = now_us
        self._reply_recv_us = None

    def _speak(self, now_us: int) -> int:
        if self._barge_from_us is None and self.playback.playing(now_us):
            self._barge_from_us = now_us
        utterance = self.utterance
        self.seq = self._next_seq
        self._next_seq += 1
        if self._next_seq >= self.script.utterance_frames:
            self.phase = Phase.WAIT
            self._utt_end_us = now_us
            self._until = now_us + self.script.reply_timeout_ms * 1000
            if self._reply_recv_us is not None:  # the agent answered before we finished
                self.turn_latencies_us.append(self._reply_recv_us - now_us)
        return utterance

    def _wait(self, now_us: int) -> None:
        s = self.script
        if self._reply_recv_us is None:
            if now_us >= self._until:
                self._close_barge_in()
                self.phase = Phase.FAILED
                self.failure = f"no reply to turn {self.utterance} within {s.reply_timeout_ms} ms"
            return
        last_turn = self.utterance >= s.turns
        if s.barge_in and not last_turn and now_us >= self._reply_play_us + s.barge_in_after_ms * 1000:
            self._begin_utterance(now_us)
            return
        finished = now_us >= max(self.playback.play_end_us, self._last_audio_us) + s.reply_quiet_ms * 1000
        if finished or now_us >= self._until:
            self.phase = Phase.HOLD if last_turn else Phase.GAP
            self._until = now_us + (s.hold_ms if last_turn else s.gap_ms) * 1000

    def _close_barge_in(self) -> None:
        if self._barge_from_us is not None:
            self.barge_in_missed += 1
            self._barge_from_us = None

    # --- what we hear -----------------------------------------------------------------------
    def on_audio(self, recv_us: int, play_us: int) -> None:
        """Any agent audio; for real (non-synthetic) audio it also marks the start of a reply."""
        self._last_audio_us = recv_us
        if not self.synthetic and self.phase is Phase.WAIT and self._reply_recv_us is None:
            self._reply_started(recv_us, play_us)

    def on_new_reply(self, recv_us: int, play_us: int) -> None:
        """First frame of an agent reply with a number not heard before."""
        if self.phase in (Phase.SPEAK, Phase.WAIT) and self._reply_recv_us is None:
            self._reply_started(recv_us, play_us)

    def _reply_started(self, recv_us: int, play_us: int) -> None:
        self._reply_recv_us = recv_us
        self._reply_play_us = play_us
        if self.phase is Phase.WAIT:
            self.turn_latencies_us.append(recv_us - self._utt_end_us)

    def on_clear(self, now_us: int) -> None:
        if self._barge_from_us is not None:
            self.barge_in_latencies_us.append(now_us - self._barge_from_us)
            self._barge_from_us = None

    def finish(self) -> None:
        self._close_barge_in()

    # --- on hold (the Twilio REST emulator) ------------------------------------------------------
    def hold(self, now_us: int) -> None:
        """The stream closed but the caller stays on the line (a transfer, a conference, a <Say>)."""
        self._close_barge_in()
        self._held_at_us = now_us

    def resume(self, now_us: int) -> None:
        """A new stream of the same call: a person on hold waits, so every deadline moves by the hold."""
        held_at = self._held_at_us
        if held_at is None:
            return
        shift = max(0, now_us - held_at)
        self._until += shift
        self._utt_start_us += shift
        self._utt_end_us += shift
        self._reply_play_us += shift
        self._last_audio_us += shift
        self._held_at_us = None

    @property
    def over(self) -> bool:
        return self.phase in (Phase.DONE, Phase.FAILED)
