"""An answering machine (or a fax) on the called side of a stream, 20 ms at a time (pure, times in µs).

It has the same interface as `script.Conversation`, so `call._Call` drives it unchanged:
lead-in silence → the greeting (speech, utterance 1) → a short gap → the beep (utterance 2,
a loud tone; none for `beep_ms=0`) → silence while it records → after `record_ms` it hangs
up, as a mailbox does at its longest message.

What it heard is the point: agent audio that arrived before the beep had ended played over
the greeting (an agent that greets a machine); audio after it is the message it recorded.
Synthetic agent frames mark where each reply starts, so the replies in the message are counted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .playback import US_PER_BYTE, Playback
from .script import SILENT

GREETING = 1  # utterance numbers of the frames it sends
BEEP = 2


@dataclass(frozen=True, slots=True)
class MachineScript:
    lead_ms: int = 300  # from answer to the first word of the greeting
    greeting_ms: int = 3000
    gap_ms: int = 200  # greeting → beep
    beep_ms: int = 400  # 0: no beep (AMD says machine_end_silence)
    record_ms: int = 10_000  # longest message; then the machine hangs up

    @property
    def beep_end_ms(self) -> int:
        """From answer to the end of the beep: when the machine starts recording."""
        return self.lead_ms + self.greeting_ms + self.gap_ms + self.beep_ms

    @property
    def total_ms(self) -> int:
        return self.beep_end_ms + self.record_ms


class MachinePhase(enum.Enum):
    LEAD = "lead"
    GREETING = "greeting"
    GAP = "gap"
    BEEP = "beep"
    RECORD = "record"
    DONE = "done"


class Machine:
    """Drives the machine's side of the stream and counts what it heard when."""

    def __init__(self, script: MachineScript, playback: Playback, start_us: int) -> None:
        self.script = script
        self.playback = playback
        self.phase = MachinePhase.LEAD
        self.seq = 0
        self.failure: str | None = None
        self._start_us = start_us
        self._held_at_us: int | None = None
        self.heard_before_beep_bytes = 0  # agent audio over the greeting: nobody listens to that
        self.message_bytes = 0  # agent audio after the beep: the recorded message
        self.message_replies = 0  # synthetic agent replies that started after the beep
        self.first_message_audio_ms: int | None = None  # after the beep ended
        # The Conversation interface (call._Call reads these at the end of the call).
        self.turn_latencies_us: list[int] = []
        self.barge_in_latencies_us: list[int] = []
        self.barge_in_missed = 0

    def _at(self, ms: int) -> int:
        return self._start_us + ms * 1000

    # --- what to send -----------------------------------------------------------------------
    def tick(self, now_us: int) -> int | None:
        s = self.script
        elapsed_ms = (now_us - self._start_us) // 1000
        if elapsed_ms < s.lead_ms:
            self.phase = MachinePhase.LEAD
            return SILENT
        if elapsed_ms < s.lead_ms + s.greeting_ms:
            return self._speak(MachinePhase.GREETING, GREETING)
        if elapsed_ms < s.lead_ms + s.greeting_ms + s.gap_ms:
            self.phase = MachinePhase.GAP
            return SILENT
        if elapsed_ms < s.beep_end_ms:
            return self._speak(MachinePhase.BEEP, BEEP)
        if elapsed_ms < s.total_ms:
            self.phase = MachinePhase.RECORD
            return SILENT
        self.phase = MachinePhase.DONE
        return None

    def _speak(self, phase: MachinePhase, utterance: int) -> int:
        if self.phase is not phase:
            self.phase = phase
            self.seq = 0
        else:
            self.seq += 1
        return utterance

    # --- what it hears ----------------------------------------------------------------------
    def on_audio(self, recv_us: int, play_us: int) -> None:
        # call._Call has just queued this payload: it plays from play_us to playback.play_end_us.
        nbytes = (self.playback.play_end_us - play_us) // US_PER_BYTE
        beep_end_us = self._at(self.script.beep_end_ms)
        if play_us >= beep_end_us:
            self.message_bytes += nbytes
            if self.first_message_audio_ms is None:
                self.first_message_audio_ms = (play_us - beep_end_us) // 1000
        else:
            self.heard_before_beep_bytes += nbytes

    def on_new_reply(self, recv_us: int, play_us: int) -> None:
        if play_us >= self._at(self.script.beep_end_ms):
            self.message_replies += 1

    def on_clear(self, now_us: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def hold(self, now_us: int) -> None:
        self._held_at_us = now_us

    def resume(self, now_us: int) -> None:
        # A machine does not wait: its clock ran on while the stream was away.
        self._held_at_us = None

    @property
    def over(self) -> bool:
        return self.phase is MachinePhase.DONE

    def report(self) -> dict[str, object]:
        return {
            "phase": self.phase.value,
            "heard_before_beep_bytes": self.heard_before_beep_bytes,
            "message_bytes": self.message_bytes,
            "message_ms": self.message_bytes * US_PER_BYTE // 1000,
            "message_replies": self.message_replies,
            "first_message_audio_ms": self.first_message_audio_ms,
        }
