"""Twilio Media Streams messages (pure codec, no I/O).

Inbound text frames become typed events; anything malformed raises `TwilioProtocolError`
with a short machine-readable `reason` (used as a metric label) and a human description.
Outbound messages are built as text, never as binary frames (Twilio warns 31950 on binary).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Reason = Literal[
    "malformed_json", "not_an_object", "unknown_event", "missing_field", "invalid_field", "invalid_base64",
    "wrong_stream_sid",
]

# Twilio: a <Parameter>'s name and value together stay under 500 characters; a stream has a few.
MAX_CUSTOM_PARAMETERS = 64
MAX_PARAMETER_CHARS = 1000
DTMF_DIGITS = frozenset("0123456789*#ABCD")


class TwilioProtocolError(ValueError):
    def __init__(self, reason: Reason, description: str) -> None:
        super().__init__(description)
        self.reason: Reason = reason


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    encoding: str
    sample_rate: int
    channels: int
    custom_parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Media:
    stream_sid: str
    payload: bytes
    track: str
    chunk: str
    timestamp: str


@dataclass(frozen=True, slots=True)
class Mark:
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    stream_sid: str
    digit: str


@dataclass(frozen=True, slots=True)
class Stop:
    stream_sid: str
    call_sid: str


TwilioEvent = Connected | Start | Media | Mark | Dtmf | Stop


def _require(obj: dict[str, Any], key: str, where: str) -> object:
    try:
        return obj[key]
    except KeyError:
        raise TwilioProtocolError("missing_field", f"{where} message without '{key}'") from None
    except TypeError:
        raise TwilioProtocolError("missing_field", f"{where} field is not an object") from None


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = _require(obj, key, where)
    if not isinstance(value, str):
        raise TwilioProtocolError("missing_field", f"{where}.{key} is not a string")
    return value


def decode_payload(payload: object) -> bytes:
    if not isinstance(payload, str):
        raise TwilioProtocolError("invalid_base64", "media.payload is not a string")
    try:
        return binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise TwilioProtocolError("invalid_base64", f"media.payload is not valid base64: {exc}") from None


def parse(frame: str | bytes) -> TwilioEvent:
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise TwilioProtocolError("malformed_json", f"frame is not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise TwilioProtocolError("not_an_object", "frame is not a JSON object")
    event = msg.get("event")
    # media first: it is 99% of traffic.
    if event == "media":
        media = _require(msg, "media", "media")
        if not isinstance(media, dict):
            raise TwilioProtocolError("missing_field", "media.media is not an object")
        return Media(
            _str(msg, "streamSid", "media"),
            decode_payload(_require(media, "payload", "media")),
            str(media.get("track", "inbound")),
            str(media.get("chunk", "")),
            str(media.get("timestamp", "")),
        )
    if event == "start":
        return _start(_require(msg, "start", "start"))
    if event == "mark":
        return Mark(_str(msg, "streamSid", "mark"), _str(_require(msg, "mark", "mark"), "name", "mark"))  # type: ignore[arg-type]
    if event == "dtmf":
        digit = _str(_require(msg, "dtmf", "dtmf"), "digit", "dtmf")  # type: ignore[arg-type]
        if digit not in DTMF_DIGITS:
            raise TwilioProtocolError("invalid_field", f"dtmf.digit {digit[:8]!r} is not a keypad key")
        return Dtmf(_str(msg, "streamSid", "dtmf"), digit)
    if event == "stop":
        stop = msg.get("stop")
        call_sid = str(stop.get("callSid", "")) if isinstance(stop, dict) else ""
        return Stop(_str(msg, "streamSid", "stop"), call_sid)
    if event == "connected":
        return Connected(str(msg.get("protocol", "")), str(msg.get("version", "")))
    raise TwilioProtocolError("unknown_event", f"unknown event {str(event)[:40]!r}")


def _start(start: object) -> Start:
    # Every field is checked for its type: a peer's `"tracks": 5` or `"sampleRate": "²"` is a
    # protocol error like any other, never an exception from deep inside the edge.
    if not isinstance(start, dict):
        raise TwilioProtocolError("missing_field", "start.start is not an object")
    fmt = start.get("mediaFormat")
    params = start.get("customParameters")
    fmt, params = ({} if fmt is None else fmt), ({} if params is None else params)
    if not isinstance(fmt, dict) or not isinstance(params, dict):
        raise TwilioProtocolError("invalid_field", "start.mediaFormat/customParameters must be objects")
    tracks = start.get("tracks", ["inbound"])
    if not isinstance(tracks, list) or not all(isinstance(track, str) for track in tracks):
        raise TwilioProtocolError("invalid_field", "start.tracks must be a list of strings")
    account_sid = start.get("accountSid", "")
    encoding = fmt.get("encoding", "audio/x-mulaw")
    if not isinstance(account_sid, str) or not isinstance(encoding, str):
        raise TwilioProtocolError("invalid_field", "start.accountSid/mediaFormat.encoding must be strings")
    return Start(
        stream_sid=_str(start, "streamSid", "start"),
        call_sid=_str(start, "callSid", "start"),
        account_sid=account_sid,
        tracks=tuple(tracks),
        encoding=encoding,
        sample_rate=_count(fmt, "sampleRate", 8000),
        channels=_count(fmt, "channels", 1),
        custom_parameters=_parameters(params),
    )


def _count(fmt: dict[str, Any], key: str, default: int) -> int:
    """A small positive integer; Twilio sends a JSON number, a string of ASCII digits is tolerated."""
    value = fmt.get(key, default)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9:
        return value
    raise TwilioProtocolError("invalid_field", f"start.mediaFormat.{key} is not a positive integer")


def _parameters(params: dict[str, Any]) -> dict[str, str]:
    if len(params) > MAX_CUSTOM_PARAMETERS:
        raise TwilioProtocolError("invalid_field", f"more than {MAX_CUSTOM_PARAMETERS} customParameters")
    out: dict[str, str] = {}
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TwilioProtocolError("invalid_field", f"customParameters.{name[:40]} is not a string")
        text = value if isinstance(value, str) else str(value)
        if len(name) + len(text) > MAX_PARAMETER_CHARS:
            raise TwilioProtocolError("invalid_field", f"customParameters.{name[:40]} is too long")
        out[name] = text
    return out


# --- outbound ----------------------------------------------------------------------------------
# Hand-assembled: streamSids are [A-Za-z0-9] and base64 needs no JSON escaping, so the hot
# path skips a generic serialiser. Other text goes through orjson.


def media_message(stream_sid: str, audio: bytes) -> str:
    return (
        '{"event":"media","streamSid":"'
        + stream_sid
        + '","media":{"payload":"'
        + base64.b64encode(audio).decode("ascii")
        + '"}}'
    )


def clear_message(stream_sid: str) -> str:
    return '{"event":"clear","streamSid":"' + stream_sid + '"}'


def mark_message(stream_sid: str, name: str) -> str:
    return orjson.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}).decode()


MEDIA_FORMAT_SUPPORTED = ("audio/x-mulaw", 8000, 1)
