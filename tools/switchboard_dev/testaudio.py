"""Synthetic, self-describing mu-law audio shared by the emulator and the call simulator.

Real speech cannot be checked byte for byte, so the tools exchange 20 ms frames that
carry who made them, their position and when they were sent. Whoever receives them can
verify order and content without a side channel and measure transit time from the
sender's own clock (both tools run on one machine, so wall clocks agree).

Frame layout (160 bytes = 20 ms of 8 kHz mu-law):
    magic(2) | stream_no uint16 | seq uint32 | sent_at_us uint64 | body(144)
`stream_no` is the agent's reply number (agent frames) or the caller's utterance number
(caller frames); `seq` counts frames within it. The body is a loud deterministic tone
chosen by (stream_no, seq), so energy-based voice activity detection hears it as speech.
Silence is plain 0xFF bytes (mu-law +0), never framed.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

FRAME_BYTES = 160
FRAME_MS = 20
SILENCE = b"\xff" * FRAME_BYTES
AGENT_MAGIC = b"SB"
CALLER_MAGIC = b"SC"
_HEADER = struct.Struct(">2sHIQ")
HEADER_BYTES = _HEADER.size
BODY_BYTES = FRAME_BYTES - HEADER_BYTES


def lin2ulaw(sample: int) -> int:
    """G.711 mu-law encoding of one 16-bit linear sample (same result as audioop.lin2ulaw)."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    # audioop works on 14-bit samples; negating after the shift matches it bit for bit.
    magnitude = min(abs(sample >> 2) << 2, clip) + bias
    exponent = 7
    for exp in range(7, -1, -1):
        if magnitude & (0x4000 >> (7 - exp)):
            exponent = exp
            break
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _tone_table() -> bytes:
    # Two incommensurate tones so that neighbouring frames differ; amplitude ~ -6 dBFS.
    return bytes(
        lin2ulaw(int(9000 * math.sin(2 * math.pi * 440 * n / 8000) + 7000 * math.sin(2 * math.pi * 1130 * n / 8000)))
        for n in range(4000)
    )


_TONE = _tone_table()
# Loud = mu-law magnitude above roughly 1/16 of full scale; silence (0xFF/0x7F) is 0.
_LOUD = bytes(1 if ((~b) & 0x7F) >= 0x40 else 0 for b in range(256))


def _body(stream_no: int, seq: int) -> bytes:
    offset = (stream_no * 7919 + seq * BODY_BYTES) % (len(_TONE) - BODY_BYTES)
    return _TONE[offset : offset + BODY_BYTES]


def agent_frame(reply_no: int, seq: int, sent_at_us: int) -> bytes:
    return _HEADER.pack(AGENT_MAGIC, reply_no & 0xFFFF, seq, sent_at_us) + _body(reply_no, seq)


def caller_frame(utterance_no: int, seq: int, sent_at_us: int) -> bytes:
    return _HEADER.pack(CALLER_MAGIC, utterance_no & 0xFFFF, seq, sent_at_us) + _body(utterance_no, seq)


@dataclass(frozen=True, slots=True)
class FrameInfo:
    magic: bytes
    stream_no: int
    seq: int
    sent_at_us: int


def parse_frame(frame: bytes) -> FrameInfo | None:
    """Header of a synthetic frame whose body checks out, else None (silence, real audio, corruption)."""
    if len(frame) != FRAME_BYTES or frame[:2] not in (AGENT_MAGIC, CALLER_MAGIC):
        return None
    magic, stream_no, seq, sent_at_us = _HEADER.unpack_from(frame)
    if frame[HEADER_BYTES:] != _body(stream_no, seq):
        return None
    return FrameInfo(magic, stream_no, seq, sent_at_us)


def loud_fraction(chunk: bytes) -> float:
    """Share of samples louder than background noise: a cheap energy detector (C-speed)."""
    if not chunk:
        return 0.0
    return chunk.translate(_LOUD).count(1) / len(chunk)
