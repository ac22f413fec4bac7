"""A call's two audio tracks as one stereo WAV file, from its journal (pure, no I/O).

Left is the caller, right the agent, 8 kHz 16-bit PCM decoded from G.711 mu-law with our
own table (the stdlib's audioop is gone in Python 3.13).

Placement on the timeline:
- caller audio at the time it entered Switchboard (the edge's timestamp of each entry);
- agent audio at the time the worker received it from Deepgram. Deepgram sends a reply
  faster than real time and Twilio plays it at real time, so each chunk starts when the
  previous one has finished if that is later; a `clear` sent to Twilio (barge-in) cuts
  whatever had not played by then. Playback at Twilio lags this by the trip through the
  edge and Twilio (tens of ms).
Arrival jitter shorter than JITTER_S is not turned into silence: a chunk that arrives that
little after the previous one ended follows it directly, so a track's bytes stay contiguous
where the sender sent them contiguously. A longer gap is silence.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass, field

from .entries import Kind
from .journal import JournalRecord, Source

RATE = 8000
JITTER_S = 0.06
MAX_SECONDS = 6 * 3600  # a timestamp further out is a broken clock, not a six-hour call
_JITTER = int(JITTER_S * RATE)


def _ulaw_to_linear(byte: int) -> int:
    """ITU-T G.711 mu-law expansion (the same values as audioop.ulaw2lin)."""
    u = ~byte & 0xFF
    magnitude = ((((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)) - 0x84
    return -magnitude if u & 0x80 else magnitude


ULAW_TO_PCM16: tuple[int, ...] = tuple(_ulaw_to_linear(b) for b in range(256))
# Little-endian low and high bytes of each sample, so a whole buffer decodes with two
# bytes.translate calls at C speed instead of a Python loop per sample.
_LOW = bytes(sample & 0xFF for sample in ULAW_TO_PCM16)
_HIGH = bytes((sample >> 8) & 0xFF for sample in ULAW_TO_PCM16)
SILENCE = 0xFF  # mu-law zero


def ulaw_to_pcm16(data: bytes) -> bytes:
    """Mu-law bytes → 16-bit little-endian PCM."""
    out = bytearray(2 * len(data))
    out[0::2] = data.translate(_LOW)
    out[1::2] = data.translate(_HIGH)
    return bytes(out)


class NoAudio(ValueError):
    """The journal holds no audio (recording ran with `journal.audio` off)."""


class BadTimeline(ValueError):
    """The journal's timestamps cannot be laid out (a clock jumped hours)."""


@dataclass
class Track:
    """One direction's mu-law samples on the call's timeline."""

    samples: bytearray = field(default_factory=bytearray)
    cursor: int = 0  # where the last chunk ended
    chunks: int = 0

    def place(self, at: int, chunk: bytes) -> int:
        """Put `chunk` at sample `at` (or right after the previous chunk, see module doc); returns where."""
        if at - self.cursor <= _JITTER:
            at = self.cursor
        end = at + len(chunk)
        if len(self.samples) < end:
            self.samples.extend(b"\xff" * (end - len(self.samples)))
        self.samples[at:end] = chunk
        self.cursor = end
        self.chunks += 1
        return at

    def cut(self, at: int) -> None:
        """Nothing placed after `at` plays (Twilio dropped its buffer at a clear)."""
        if self.cursor > at:
            del self.samples[max(at, 0):]
            self.cursor = max(at, 0)


@dataclass
class Recording:
    caller: Track
    agent: Track
    start_us: int

    @property
    def frames(self) -> int:
        return max(len(self.caller.samples), len(self.agent.samples))

    @property
    def duration_s(self) -> float:
        return self.frames / RATE

    def wav(self) -> bytes:
        n = self.frames
        left = bytes(self.caller.samples) + bytes([SILENCE]) * (n - len(self.caller.samples))
        right = bytes(self.agent.samples) + bytes([SILENCE]) * (n - len(self.agent.samples))
        interleaved = bytearray(4 * n)
        interleaved[0::4] = left.translate(_LOW)
        interleaved[1::4] = left.translate(_HIGH)
        interleaved[2::4] = right.translate(_LOW)
        interleaved[3::4] = right.translate(_HIGH)
        buf = io.BytesIO()
        with wave.open(buf, "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes(bytes(interleaved))
        return buf.getvalue()


def _offset(t_us: int, start_us: int) -> int:
    offset = max(0, round((t_us - start_us) * RATE / 1_000_000))
    if offset > MAX_SECONDS * RATE:
        raise BadTimeline(f"a timestamp lies {offset / RATE:.0f} s after the start of the journal: clock jump?")
    return offset


def render(records: list[JournalRecord]) -> Recording:
    """Both tracks of a journal; raises NoAudio when it holds none."""
    caller_audio = [(r, r.entry) for r in records if r.source is Source.CALLER and r.data[:1] == Kind.AUDIO.value]
    has_agent = any(r.source is Source.AGENT_AUDIO for r in records)
    if not caller_audio and not has_agent:
        raise NoAudio("the journal holds no audio: the call was recorded with journal.audio off")
    # Time zero: the first thing recorded (the caller's timestamps come from the edge, which
    # stamped them before the worker saw them).
    start = min(
        [r.t_us for r in records if r.t_us > 0] + [e.t_us for _r, e in caller_audio if e.t_us > 0],
        default=0,
    )
    recording = Recording(Track(), Track(), start)
    for record in records:
        if record.source is Source.CALLER:
            entry = record.entry
            if entry.kind is Kind.AUDIO:
                recording.caller.place(_offset(entry.t_us or record.t_us, start), entry.payload)
        elif record.source is Source.AGENT_AUDIO:
            recording.agent.place(_offset(record.t_us, start), record.data)
        elif record.source is Source.TO_TWILIO and record.data[:1] == Kind.CLEAR.value:
            recording.agent.cut(_offset(record.t_us, start))
    return recording
