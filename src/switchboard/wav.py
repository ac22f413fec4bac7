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

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .entries import Entry, Kind
from .journal import JournalError, JournalRecord, Source

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
    """One direction's mu-law samples on the call's timeline.

    A track only ever grows at its end (`cursor`, which always equals its length) or is cut
    back (a clear): nothing is written before the cursor. The streaming export relies on it:
    samples before `base` have been handed out and are no longer held, and with `store` off
    the track only keeps its cursor (the planning pass). `touched` is the lowest position a
    write or cut reached since it was last reset.
    """

    samples: bytearray = field(default_factory=bytearray)  # positions from `base` on
    cursor: int = 0  # where the last chunk ended
    chunks: int = 0
    base: int = 0
    store: bool = True
    touched: int | None = None

    def _touch(self, at: int) -> None:
        if self.touched is None or at < self.touched:
            self.touched = at

    def place(self, at: int, chunk: bytes) -> int:
        """Put `chunk` at sample `at` (or right after the previous chunk, see module doc); returns where."""
        if at - self.cursor <= _JITTER:
            at = self.cursor
        end = at + len(chunk)
        self._touch(at)
        if self.store:
            start = at - self.base
            if start < 0:  # only if the journal changed between two passes: what was handed out stays
                chunk, start = chunk[-start:], 0
            stop = start + len(chunk)
            if len(self.samples) < stop:
                self.samples.extend(b"\xff" * (stop - len(self.samples)))
            self.samples[start:stop] = chunk
        self.cursor = end
        self.chunks += 1
        return at

    def cut(self, at: int) -> None:
        """Nothing placed after `at` plays (Twilio dropped its buffer at a clear)."""
        if self.cursor > at:
            at = max(at, 0)
            self._touch(at)
            if self.store:
                del self.samples[max(at - self.base, 0):]
            self.cursor = at

    def take(self, upto: int) -> bytes:
        """Hand out (and stop holding) the samples from `base` to `upto`, silence where none were placed."""
        count = upto - self.base
        if count <= 0:
            return b""
        out = bytes(self.samples[:count])
        del self.samples[:count]  # from the front of a bytearray: no copy of the rest
        self.base = upto
        return out + bytes([SILENCE]) * (count - len(out))


def wav_header(frames: int) -> bytes:
    """The 44-byte header of a stereo 8 kHz 16-bit PCM WAV holding `frames` frames (as `wave` writes it)."""
    data = 4 * frames
    return struct.pack("<4sL4s4sLHHLLHH4sL", b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, 2, RATE, 4 * RATE, 4, 16,
                       b"data", data)


def interleave(left: bytes, right: bytes) -> bytes:
    """Two equally long mu-law tracks → interleaved 16-bit little-endian PCM frames (left, right)."""
    out = bytearray(4 * len(left))
    out[0::4] = left.translate(_LOW)
    out[1::4] = left.translate(_HIGH)
    out[2::4] = right.translate(_LOW)
    out[3::4] = right.translate(_HIGH)
    return bytes(out)


@dataclass
class Recording:
    caller: Track
    agent: Track
    start_us: int

    @property
    def frames(self) -> int:
        return max(self.caller.cursor, self.agent.cursor)

    @property
    def duration_s(self) -> float:
        return self.frames / RATE

    def wav(self) -> bytes:
        n = self.frames
        return wav_header(n) + interleave(_padded(self.caller, n), _padded(self.agent, n))


def _padded(track: Track, frames: int) -> bytes:
    return bytes(track.samples) + bytes([SILENCE]) * (frames - len(track.samples))


def _offset(t_us: int, start_us: int) -> int:
    offset = max(0, round((t_us - start_us) * RATE / 1_000_000))
    if offset > MAX_SECONDS * RATE:
        raise BadTimeline(f"a timestamp lies {offset / RATE:.0f} s after the start of the journal: clock jump?")
    return offset


def _caller_audio(record: JournalRecord) -> Entry | None:
    if record.source is not Source.CALLER or record.data[:1] != Kind.AUDIO.value:
        return None
    try:
        return record.entry
    except JournalError:
        return None  # a damaged entry: skipped, like every other record that does not decode


def _lay(record: JournalRecord, caller: Track, agent: Track, start_us: int) -> None:
    """One record's effect on the two tracks: the single placement rule of every pass."""
    if (entry := _caller_audio(record)) is not None:
        caller.place(_offset(entry.t_us or record.t_us, start_us), entry.payload)
    elif record.source is Source.AGENT_AUDIO:
        agent.place(_offset(record.t_us, start_us), record.data)
    elif record.source is Source.TO_TWILIO and record.data[:1] == Kind.CLEAR.value:
        agent.cut(_offset(record.t_us, start_us))


class Survey:
    """First pass: where the timeline starts (the first thing recorded; the caller's timestamps
    come from the edge, which stamped them before the worker saw them) and whether there is audio."""

    def __init__(self) -> None:
        self._start: int | None = None
        self.has_audio = False

    def _seen(self, t_us: int) -> None:
        if t_us > 0 and (self._start is None or t_us < self._start):
            self._start = t_us

    def feed(self, records: Iterable[JournalRecord]) -> None:
        for record in records:
            self._seen(record.t_us)
            if (entry := _caller_audio(record)) is not None:
                self.has_audio = True
                self._seen(entry.t_us)
            elif record.source is Source.AGENT_AUDIO:
                self.has_audio = True

    @property
    def start_us(self) -> int:
        if not self.has_audio:
            raise NoAudio("the journal holds no audio: the call was recorded with journal.audio off")
        return self._start or 0


def render(records: list[JournalRecord]) -> Recording:
    """Both tracks of a journal, held in memory; raises NoAudio when it holds none."""
    survey = Survey()
    survey.feed(records)
    recording = Recording(Track(), Track(), survey.start_us)
    for record in records:
        _lay(record, recording.caller, recording.agent, recording.start_us)
    return recording


# --- streaming: a WAV of any length in the memory of one page ------------------------------------
# A journal holds up to a million entries; the export reads it three times, a page at a time:
# the survey (start of the timeline), the plan (the file's length, which the header needs first,
# and after each page how far both tracks are final) and the mix, which hands out each final
# stretch as soon as the plan says no later record can change it.


@dataclass(frozen=True, slots=True)
class Plan:
    start_us: int
    frames: int
    final_after: tuple[int, ...]  # per page: frames that no later page writes or cuts


class Planner:
    """Second pass: lays the journal out keeping only the tracks' cursors."""

    def __init__(self, start_us: int) -> None:
        self.start_us = start_us
        self.caller = Track(store=False)
        self.agent = Track(store=False)
        self._lowest: list[int] = []  # per page: the lowest position it wrote or cut

    def feed(self, records: Iterable[JournalRecord]) -> None:
        """One page; raises BadTimeline like `render`."""
        for record in records:
            _lay(record, self.caller, self.agent, self.start_us)
        touched = [t for t in (self.caller.touched, self.agent.touched) if t is not None]
        self._lowest.append(min(touched, default=_NEVER))
        self.caller.touched = self.agent.touched = None

    def plan(self) -> Plan:
        frames = max(self.caller.cursor, self.agent.cursor)
        final_after, lowest_later = [], _NEVER
        for lowest in reversed(self._lowest):
            final_after.append(min(lowest_later, frames))
            lowest_later = min(lowest_later, lowest)
        return Plan(self.start_us, frames, tuple(reversed(final_after)))


_NEVER = 1 << 62


class Mixer:
    """Third pass: the WAV's bytes, page by page; exactly `plan.frames` frames in all, whatever the
    journal did between the passes (a page that no longer lays out cleanly changes only its own audio)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.caller = Track()
        self.agent = Track()
        self._page = 0
        self._handed = 0

    def header(self) -> bytes:
        return wav_header(self.plan.frames)

    def feed(self, records: Iterable[JournalRecord]) -> bytes:
        for record in records:
            try:
                _lay(record, self.caller, self.agent, self.plan.start_us)
            except BadTimeline:
                continue  # the plan saw none, so this record came after it: not in this file
        final = self.plan.final_after[self._page] if self._page < len(self.plan.final_after) else self._handed
        self._page += 1
        return self._hand_out(final)

    def finish(self) -> bytes:
        return self._hand_out(self.plan.frames)

    def _hand_out(self, upto: int) -> bytes:
        if upto <= self._handed:
            return b""
        self._handed = upto
        return interleave(self.caller.take(upto), self.agent.take(upto))


def stream(pages: Callable[[], Iterable[Iterable[JournalRecord]]]) -> Iterator[bytes]:
    """The WAV of a journal read three times through `pages()`: header first, then the frames.
    Raises NoAudio or BadTimeline before yielding anything."""
    survey = Survey()
    for page in pages():
        survey.feed(page)
    planner = Planner(survey.start_us)
    for page in pages():
        planner.feed(page)
    mixer = Mixer(planner.plan())
    yield mixer.header()
    for page in pages():
        if chunk := mixer.feed(page):
            yield chunk
    if tail := mixer.finish():
        yield tail
