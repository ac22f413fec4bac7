"""Answering-machine detection: what Twilio would decide about a callee, and when (pure).

Twilio listens after the answer. A person says a short "hello?" and stops: `human` once the
speech-end threshold of silence has passed. A greeting longer than the speech threshold is
a machine: with `MachineDetection=Enable` that is `machine_start` right then; with
`DetectMessageEnd` Twilio waits for the end of the greeting: `machine_end_beep` when the
beep has sounded, `machine_end_silence` after the greeting and the speech-end silence
(no beep). A fax tone is `fax`. Nothing decided within MachineDetectionTimeout is `unknown`.
MachineDetectionDuration is the time from answer to decision, in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from .callees import Callee
from .validate import AmdRequest

HUMAN_HELLO_MS = 700  # "Hello?"
BEEP_DETECT_MS = 100  # Twilio hears the beep a little after it ends
FAX_DETECT_MS = 1000


@dataclass(frozen=True, slots=True)
class Verdict:
    answered_by: str
    after_ms: int


def verdict(callee: Callee, amd: AmdRequest) -> Verdict | None:
    """None when the callee never answers (there is nothing to detect)."""
    if not callee.answers:
        return None
    machine = callee.machine
    if callee.answered_by is not None:
        answered_by, after_ms = callee.answered_by, callee.amd_ms if callee.amd_ms is not None else 2000
    elif callee.kind == "fax":
        answered_by, after_ms = "fax", FAX_DETECT_MS
    elif callee.kind == "person":
        answered_by, after_ms = "human", callee.script.lead_ms // 4 + HUMAN_HELLO_MS + amd.speech_end_threshold_ms
    elif amd.mode == "Enable":
        answered_by = "machine_start"
        after_ms = machine.lead_ms + min(machine.greeting_ms, amd.speech_threshold_ms)
    elif machine.beep_ms > 0:
        answered_by, after_ms = "machine_end_beep", machine.beep_end_ms + BEEP_DETECT_MS
    else:
        answered_by = "machine_end_silence"
        after_ms = machine.lead_ms + machine.greeting_ms + amd.speech_end_threshold_ms
    if callee.amd_ms is not None:
        after_ms = callee.amd_ms
    if after_ms > amd.timeout_s * 1000:
        return Verdict("unknown", amd.timeout_s * 1000)
    return Verdict(answered_by, after_ms)
