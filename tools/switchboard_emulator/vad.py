"""Energy-based voice activity detection on caller audio, in audio time (pure, no clock).

Utterance boundaries are counted in 20 ms frames of received audio rather than wall time, so a
client that sends faster than real time (a test) gets exactly the same turns as a paced one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from switchboard_dev.testaudio import FRAME_MS, loud_fraction

SPEECH_THRESHOLD: Final = 0.2
NOTHING: Final = 0
STARTED: Final = 1
ENDED: Final = 2

# Little-endian linear16: the high byte alone tells |sample| >= 2048 (about -24 dBFS), the same
# "clearly louder than noise" line loud_fraction draws for mu-law, and it keeps the test C-speed.
_LOUD_HIGH_BYTE = bytes(1 if (b if b < 128 else 255 - b) >= 8 else 0 for b in range(256))
# A-law inverts every other bit; after undoing that, the top magnitude bits read like mu-law's.
_LOUD_ALAW = bytes(1 if ((b ^ 0x55) & 0x7F) >= 0x40 else 0 for b in range(256))


def _linear16_loudness(frame: bytes) -> float:
    high = frame[1::2]
    return high.translate(_LOUD_HIGH_BYTE).count(1) / len(high) if high else 0.0


def _alaw_loudness(frame: bytes) -> float:
    return frame.translate(_LOUD_ALAW).count(1) / len(frame) if frame else 0.0


def _silent(frame: bytes) -> float:
    return 0.0


def detector_for(encoding: str, sample_rate: int) -> tuple[int, Callable[[bytes], float]]:
    """(bytes per 20 ms frame, loudness function) for an input format.

    Compressed encodings cannot be judged by bytes: they are framed for accounting but never heard
    as speech, like a caller who stays silent.
    """
    samples = sample_rate * FRAME_MS // 1000
    if encoding == "mulaw":
        return samples, loud_fraction
    if encoding == "alaw":
        return samples, _alaw_loudness
    if encoding == "linear16":
        return samples * 2, _linear16_loudness
    if encoding == "linear32":
        return samples * 4, _silent
    return samples, _silent


class Framer:
    """Cuts a byte stream arriving in arbitrary chunks into fixed-size frames."""

    __slots__ = ("_rest", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._rest = b""

    def push(self, data: bytes) -> list[bytes]:
        size = self.size
        if not self._rest and len(data) == size:
            return [data]  # Twilio's 20 ms media frames: the common case costs no copy
        buf = self._rest + data if self._rest else data
        end = len(buf) - len(buf) % size
        self._rest = buf[end:]
        return [buf[i : i + size] for i in range(0, end, size)]


class VoiceActivity:
    """Speech starts after `start_frames` consecutive loud frames and ends after `eou_frames` quiet ones."""

    __slots__ = ("_loud_run", "_quiet_run", "_speech_frames", "eou_frames", "loudness", "speaking", "start_frames")

    def __init__(self, loudness: Callable[[bytes], float], start_frames: int, eou_ms: int) -> None:
        self.loudness = loudness
        self.start_frames = start_frames
        self.eou_frames = max(1, -(-eou_ms // FRAME_MS))
        self.speaking = False
        self._loud_run = 0
        self._quiet_run = 0
        self._speech_frames = 0  # from the first loud frame to the last one, pauses included

    @property
    def utterance_ms(self) -> int:
        return self._speech_frames * FRAME_MS

    def step(self, frame: bytes) -> int:
        loud = self.loudness(frame) >= SPEECH_THRESHOLD
        if not self.speaking:
            self._loud_run = self._loud_run + 1 if loud else 0
            if self._loud_run >= self.start_frames:
                self.speaking = True
                self._speech_frames = self._loud_run
                self._quiet_run = 0
                return STARTED
            return NOTHING
        if loud:
            self._speech_frames += self._quiet_run + 1
            self._quiet_run = 0
            return NOTHING
        self._quiet_run += 1
        if self._quiet_run >= self.eou_frames:
            self.speaking = False
            self._loud_run = 0
            return ENDED
        return NOTHING
