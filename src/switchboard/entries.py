"""Codec for the entries of a call's audio streams (pure, no I/O).

An entry is a flat field map, binary-safe and small: `k` kind, `p` payload (raw mu-law
bytes for audio, a name for marks, a digit for dtmf), `t` when the first byte entered
Switchboard (µs since the epoch, for transit measurement). Audio is never base64 in Redis.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

import orjson

# One byte per kind keeps entries small; values are part of the wire format between
# services of different versions, so never renumber them.


class Kind(bytes, Enum):
    AUDIO = b"a"
    DTMF = b"d"
    MARK = b"m"
    STOP = b"s"
    CLEAR = b"c"
    HANGUP = b"h"
    EVENT = b"e"  # :events stream: payload is a JSON object with a "type"
    COMMAND = b"x"  # :cmd stream: payload is a JSON object with "id" and "op"
    JOURNAL = b"j"  # :journal stream: payload is one recorded message (see switchboard.journal)
    CLEARED = b"C"  # :in stream: the edge sent Twilio a clear; payload = JSON list of the marks it flushed
    TIMING = b"T"  # :in stream: the edge's measurements of one reply (JSON), see switchboard.conversation


_KINDS = {kind.value: kind for kind in Kind}


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class Entry:
    kind: Kind
    payload: bytes = b""
    t_us: int = 0

    def fields(self) -> dict[bytes, bytes]:
        return {b"k": self.kind.value, b"p": self.payload, b"t": str(self.t_us).encode()}


class EntryError(ValueError):
    pass


def decode(fields: dict[bytes, bytes]) -> Entry:
    try:
        kind = _KINDS[fields[b"k"]]
    except KeyError as exc:
        raise EntryError(f"unknown or missing entry kind in {sorted(fields)}") from exc
    t_raw = fields.get(b"t", b"0")
    try:
        t_us = int(t_raw)
    except ValueError as exc:
        raise EntryError(f"bad timestamp {t_raw!r}") from exc
    return Entry(kind, fields.get(b"p", b""), t_us)


def audio(payload: bytes, t_us: int) -> Entry:
    return Entry(Kind.AUDIO, payload, t_us)


def stop(reason: str = "") -> Entry:
    return Entry(Kind.STOP, reason.encode(), now_us())


def clear() -> Entry:
    return Entry(Kind.CLEAR, b"", now_us())


def mark(name: str) -> Entry:
    return Entry(Kind.MARK, name.encode(), now_us())


def hangup(reason: str = "") -> Entry:
    return Entry(Kind.HANGUP, reason.encode(), now_us())


def event(payload_json: bytes) -> Entry:
    return Entry(Kind.EVENT, payload_json, now_us())


def command(payload_json: bytes) -> Entry:
    return Entry(Kind.COMMAND, payload_json, now_us())


def dtmf(digit: str) -> Entry:
    return Entry(Kind.DTMF, digit.encode(), now_us())


def cleared(flushed_marks: list[str]) -> Entry:
    """The edge sent Twilio a clear while these marks were still unechoed (their audio never played)."""
    return Entry(Kind.CLEARED, orjson.dumps(flushed_marks), now_us())


def timing(mark: str, transit_us: int) -> Entry:
    """The edge's measurement of one reply: worker → edge transit of the audio after `mark`."""
    return Entry(Kind.TIMING, orjson.dumps({"mark": mark, "transit_us": transit_us}), now_us())
