"""What Twilio sends to the edge, and how Twilio judges what the edge sends back (pure).

Outbound messages are byte templates: the hot path (`media`, every 20 ms per call) only
joins a few byte strings. Inbound messages are validated as strictly as Twilio's debugger
does: a binary frame is warning 31950; non-JSON, an unknown event, a missing or extra
field or a wrong streamSid is 31951. An invalid message is counted and dropped.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field

import orjson

from switchboard_dev.testaudio import SILENCE

SILENCE_B64 = base64.b64encode(SILENCE)
MALFORMED = 31950
INVALID = 31951


def new_sid(prefix: str) -> str:
    return prefix + os.urandom(16).hex()


@dataclass(frozen=True, slots=True)
class CallIdentity:
    account_sid: str
    call_sid: str
    stream_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)

    @classmethod
    def random(cls, custom_parameters: dict[str, str] | None = None) -> CallIdentity:
        return cls(new_sid("AC"), new_sid("CA"), new_sid("MZ"), dict(custom_parameters or {}))


class OutboundStream:
    """Messages of one stream, numbered as Twilio numbers them (all after `connected`)."""

    __slots__ = ("_chunk", "_media_tail", "_seq", "_sid_field", "ident")

    def __init__(self, ident: CallIdentity) -> None:
        self.ident = ident
        self._seq = 0
        self._chunk = 0
        self._media_tail = b'"},"streamSid":"' + ident.stream_sid.encode() + b'"}'
        self._sid_field = ',"streamSid":"' + ident.stream_sid + '"'

    def _next(self) -> str:
        self._seq += 1
        return str(self._seq)

    @staticmethod
    def connected() -> str:
        return '{"event":"connected","protocol":"Call","version":"1.0.0"}'

    def start(self) -> str:
        i = self.ident
        return orjson.dumps(
            {
                "event": "start",
                "sequenceNumber": self._next(),
                "start": {
                    "accountSid": i.account_sid,
                    "streamSid": i.stream_sid,
                    "callSid": i.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": i.custom_parameters,
                },
                "streamSid": i.stream_sid,
            }
        ).decode()

    def media(self, payload_b64: bytes, timestamp_ms: int) -> bytes:
        """JSON text as bytes: send it with `text=True` so it goes out as a text frame."""
        self._seq += 1
        self._chunk += 1
        return b"".join(
            (
                b'{"event":"media","sequenceNumber":"',
                str(self._seq).encode(),
                b'","media":{"track":"inbound","chunk":"',
                str(self._chunk).encode(),
                b'","timestamp":"',
                str(timestamp_ms).encode(),
                b'","payload":"',
                payload_b64,
                self._media_tail,
            )
        )

    def mark(self, name: str) -> str:
        return (
            '{"event":"mark","sequenceNumber":"' + self._next() + '"' + self._sid_field
            + ',"mark":' + orjson.dumps({"name": name}).decode() + "}"
        )

    def dtmf(self, digit: str) -> str:
        return (
            '{"event":"dtmf","sequenceNumber":"' + self._next() + '"' + self._sid_field
            + ',"dtmf":{"track":"inbound_track","digit":"' + digit + '"}}'
        )

    def stop(self) -> str:
        i = self.ident
        return (
            '{"event":"stop","sequenceNumber":"' + self._next() + '"' + self._sid_field
            + ',"stop":{"accountSid":"' + i.account_sid + '","callSid":"' + i.call_sid + '"}}'
        )


class ProtocolWarning(ValueError):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


_MEDIA_KEYS = frozenset({"event", "streamSid", "media"})
_MARK_KEYS = frozenset({"event", "streamSid", "mark"})
_CLEAR_KEYS = frozenset({"event", "streamSid"})


def _shape(msg: dict, keys: frozenset[str], stream_sid: str) -> None:
    if msg.keys() != keys:
        missing, extra = keys - msg.keys(), msg.keys() - keys
        raise ProtocolWarning(INVALID, f"{msg['event']}: missing {sorted(missing)} extra {sorted(extra)}")
    if msg["streamSid"] != stream_sid:
        raise ProtocolWarning(INVALID, f"{msg['event']}: wrong streamSid")


def parse_server(frame: str | bytes, stream_sid: str) -> tuple[str, bytes | str | None]:
    """('media', audio) | ('mark', name) | ('clear', None); raises ProtocolWarning."""
    if not isinstance(frame, str):
        raise ProtocolWarning(MALFORMED, "binary frame")
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ProtocolWarning(INVALID, "not JSON") from None
    if not isinstance(msg, dict):
        raise ProtocolWarning(INVALID, "not a JSON object")
    event = msg.get("event")
    if event == "media":
        _shape(msg, _MEDIA_KEYS, stream_sid)
        media = msg["media"]
        if not isinstance(media, dict) or media.keys() != {"payload"} or not isinstance(media["payload"], str):
            raise ProtocolWarning(INVALID, "media: media must be exactly {payload: string}")
        try:
            return "media", binascii.a2b_base64(media["payload"], strict_mode=True)
        except binascii.Error:
            raise ProtocolWarning(INVALID, "media: payload is not base64") from None
    if event == "mark":
        _shape(msg, _MARK_KEYS, stream_sid)
        mark = msg["mark"]
        if not isinstance(mark, dict) or mark.keys() != {"name"} or not isinstance(mark["name"], str):
            raise ProtocolWarning(INVALID, "mark: mark must be exactly {name: string}")
        return "mark", mark["name"]
    if event == "clear":
        _shape(msg, _CLEAR_KEYS, stream_sid)
        return "clear", None
    raise ProtocolWarning(INVALID, f"unknown event {str(event)[:40]!r}")
