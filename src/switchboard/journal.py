"""A call's journal: what the worker saw and did, recorded for replay and listening (pure, no I/O).

Opt-in per profile (`AgentSettings.journal`). The worker hands each message it receives or
sends to a `Recorder`, which returns the entry to append to `keys.journal(stream_sid)` (or
None when that message is not recorded). An entry's payload is one source byte followed by
the message itself, binary-safe, so audio stays raw bytes in Redis:

    i  caller entry from :in       kind(1) | entry t_us (8, big-endian) | payload
    o  entry written to :out       kind(1) | entry t_us (8, big-endian) | payload   (no audio)
    A  agent audio from Deepgram   raw mu-law bytes
    D  text frame from Deepgram    JSON as received
    U  text message to Deepgram    JSON with every secret replaced by "***"
    E  session event (:events)     JSON as appended
    S  start of the journal        JSON {call_sid, stream_sid, settings (secrets masked)}

The entry's own `t` is when the worker handled the message (µs since the epoch); replay
runs its virtual clock on it. A journal leaves Redis as JSON lines (`to_jsonl`), where
audio is base64, and comes back with `from_jsonl`, so it can be replayed without Redis.

Secrets never reach the journal: in every message to and from Deepgram, every session event
and the settings in the start record, a field whose name is secret-like (api_key, accessToken,
client-secret, ...), every value under `headers`, and the credentials and secret-like query
parameters of every URL are masked (switchboard.redaction). An export masks again, for
journals recorded before a kind of secret was recognised.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import orjson

from .entries import Entry, EntryError, Kind, now_us
from .entries import decode as decode_entry
from .keys import RESUME_PARAMETER
from .redaction import redact, redact_text

if TYPE_CHECKING:
    from .agent_settings import AgentSettings, Journal

FORMAT = "switchboard-journal/1"
_T = struct.Struct(">q")


class Source(bytes, Enum):
    """Where a recorded message came from; one byte in Redis, a name in JSON lines."""

    START = b"S"
    CALLER = b"i"
    TO_TWILIO = b"o"
    AGENT_AUDIO = b"A"
    FROM_DEEPGRAM = b"D"
    TO_DEEPGRAM = b"U"
    EVENT = b"E"

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    Source.START: "start",
    Source.CALLER: "caller",
    Source.TO_TWILIO: "to_twilio",
    Source.AGENT_AUDIO: "agent_audio",
    Source.FROM_DEEPGRAM: "from_deepgram",
    Source.TO_DEEPGRAM: "to_deepgram",
    Source.EVENT: "event",
}
_BY_TAG = {source.value[0]: source for source in Source}
_BY_LABEL = {label: source for source, label in _LABELS.items()}
_ENTRY_SOURCES = (Source.CALLER, Source.TO_TWILIO)
_TEXT_SOURCES = (Source.START, Source.FROM_DEEPGRAM, Source.TO_DEEPGRAM, Source.EVENT)


class JournalError(ValueError):
    """A journal entry or JSON line that cannot be decoded."""


@dataclass(frozen=True, slots=True)
class JournalRecord:
    source: Source
    t_us: int  # when the worker handled it
    data: bytes  # the payload after the source byte

    def fields(self) -> dict[bytes, bytes]:
        """The stream entry of a caller or to-Twilio record, as the field map it had in Redis."""
        if self.source not in _ENTRY_SOURCES or len(self.data) < 1 + _T.size:
            raise JournalError(f"a {self.source.label} record holds no stream entry")
        return {b"k": self.data[:1], b"p": self.data[1 + _T.size :], b"t": b"%d" % _T.unpack_from(self.data, 1)[0]}

    @property
    def entry(self) -> Entry:
        """The stream entry of a caller or to-Twilio record (its own `t` is when it entered Switchboard)."""
        try:
            return decode_entry(self.fields())
        except EntryError as exc:
            raise JournalError(str(exc)) from None

    @property
    def text(self) -> str:
        return self.data.decode()

    def json(self) -> Any:
        return orjson.loads(self.data)

    def to_entry(self) -> Entry:
        """The journal stream entry this record was decoded from."""
        return Entry(Kind.JOURNAL, self.source.value + self.data, self.t_us)


def _pack_entry(kind: Kind, t_us: int, payload: bytes) -> bytes:
    return kind.value + _T.pack(t_us) + payload


# --- recording ---------------------------------------------------------------------------------


class Recorder:
    """Turns what one call's session sees and sends into journal entries, as configured."""

    def __init__(self, config: Journal, clock: Callable[[], int] = now_us) -> None:
        self.config = config
        self.enabled = config.enabled
        self.audio = config.enabled and config.audio
        self._clock = clock

    @property
    def maxlen(self) -> int:
        """The journal stream's cap (MAXLEN ~): the oldest entries go first."""
        return self.config.max_entries

    def _entry(self, source: Source, data: bytes, t_us: int) -> Entry:
        return Entry(Kind.JOURNAL, source.value + data, t_us)

    def start(
        self, call_sid: str, stream_sid: str, settings: AgentSettings, t_us: int, session_id: str | None = None,
        max_reconnects: int | None = None,
    ) -> Entry | None:
        """The first record of a session: the call, the settings it runs with, the Conversation's
        session id (its mark names) and the worker's reconnect budget, which a replay needs to
        behave the same."""
        if not self.enabled:
            return None
        doc: dict[str, Any] = {"call_sid": call_sid, "stream_sid": stream_sid,
                               "settings": redact(settings.model_dump(mode="json", exclude_none=True))}
        if session_id is not None:
            doc["session_id"] = session_id
        if max_reconnects is not None:
            doc["max_reconnects"] = max_reconnects
        return self._entry(Source.START, orjson.dumps(doc), t_us)

    def caller_entry(self, fields: dict[bytes, bytes]) -> Entry | None:
        """An entry of the call's :in stream as the worker got it; audio only with `audio` on."""
        if not self.enabled:
            return None
        kind_raw = fields.get(b"k", b"")
        if kind_raw == Kind.AUDIO.value and not self.audio:
            return None
        try:
            kind = Kind(kind_raw)
            t_us = int(fields.get(b"t", b"0"))
        except ValueError:
            return None  # the worker ignores what it cannot decode; so does the journal
        return self._entry(Source.CALLER, _pack_entry(kind, t_us, fields.get(b"p", b"")), self._clock())

    def agent_audio(self, frame: bytes, t_us: int) -> Entry | None:
        """A binary frame from Deepgram."""
        if not self.audio:
            return None
        return self._entry(Source.AGENT_AUDIO, frame, t_us)

    def from_deepgram(self, text: str, t_us: int) -> Entry | None:
        """A text frame from Deepgram, as received unless it holds a secret (an error message may
        quote our endpoint's URL back)."""
        if not self.enabled:
            return None
        return self._entry(Source.FROM_DEEPGRAM, redact_json(text.encode()), t_us)

    def to_deepgram(self, message: str | bytes | dict[str, Any], t_us: int) -> Entry | None:
        """A JSON message the worker sends to Deepgram (text, or the dict it was built from), secrets masked."""
        if not self.enabled:
            return None
        try:
            msg = message if isinstance(message, dict) else orjson.loads(message)
        except orjson.JSONDecodeError:
            if isinstance(message, bytes):
                return None  # caller audio: already recorded as caller entries
            # Cannot be redacted field by field, so it is not kept at all.
            msg = {"type": "Unparseable", "length": len(message)}
        return self._entry(Source.TO_DEEPGRAM, orjson.dumps(redact(msg)), t_us)

    def to_twilio(self, entry: Entry) -> Entry | None:
        """A control entry the worker writes to :out (clear, mark, hangup); agent audio is `agent_audio`."""
        if not self.enabled or entry.kind is Kind.AUDIO:
            return None
        return self._entry(Source.TO_TWILIO, _pack_entry(entry.kind, entry.t_us, entry.payload), entry.t_us)

    def session_event(self, payload_json: bytes, t_us: int) -> Entry | None:
        """An event the session appended to :events, so a replay can be compared with it (secrets
        masked: a function's answer or an error may carry a URL with credentials)."""
        if not self.enabled:
            return None
        return self._entry(Source.EVENT, redact_json(payload_json), t_us)


# --- redaction -----------------------------------------------------------------------------------


def redact_json(data: bytes) -> bytes:
    """A JSON text with every secret masked (see switchboard.redaction.redact); the same bytes
    when there was nothing to mask, so clean messages are recorded exactly as they were."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data.decode(errors="replace")
        return data if (clean := redact_text(text)) == text else clean.encode()
    clean = redact(doc)
    return data if clean == doc else orjson.dumps(clean)


# --- reading -------------------------------------------------------------------------------------


def decode_record(fields: dict[bytes, bytes]) -> JournalRecord:
    try:
        entry = decode_entry(fields)
    except EntryError as exc:
        raise JournalError(str(exc)) from None
    if entry.kind is not Kind.JOURNAL or not entry.payload:
        raise JournalError(f"not a journal entry (kind {entry.kind.value!r})")
    source = _BY_TAG.get(entry.payload[0])
    if source is None:
        raise JournalError(f"unknown journal source {entry.payload[:1]!r}")
    return JournalRecord(source, entry.t_us, bytes(entry.payload[1:]))


def decode_journal(
    entries: Iterable[dict[bytes, bytes] | tuple[bytes, dict[bytes, bytes]]], *, strict: bool = True
) -> list[JournalRecord]:
    """Records from journal stream entries (XRANGE's (id, fields) pairs or bare field maps), in order.

    strict=False skips entries that do not decode (written by a newer version) instead of raising.
    """
    records = []
    for item in entries:
        fields = item[1] if isinstance(item, tuple) else item
        try:
            records.append(decode_record(fields))
        except JournalError:
            if strict:
                raise
    return records


# --- JSON lines ----------------------------------------------------------------------------------


def export_info(
    call: str, stream_sid: str, key: str, record: dict[str, str], entries: int, ttl_s: int
) -> dict[str, Any]:
    """What an export's header says about the journal: `call` is what the user asked for
    (callSid or streamSid), `record` the call record's fields (empty once it has expired)."""
    info: dict[str, Any] = {
        "stream_sid": stream_sid,
        "call_sid": record.get("call_sid") or (call if call != stream_sid else None),
        "key": key,
        "entries": entries,
        "ttl_s": ttl_s,
        "exported_at": round(time.time(), 3),
    }
    try:
        params = orjson.loads(record.get("params") or "{}")
    except orjson.JSONDecodeError:
        params = {}
    if isinstance(params, dict) and params.get(RESUME_PARAMETER):
        info["resumed_from"] = str(params[RESUME_PARAMETER])  # the stream this one continued: its own journal
    return info


def header_line(**info: Any) -> bytes:
    """The first line of an export: the format and what the journal belongs to."""
    return orjson.dumps({"format": FORMAT, **info}) + b"\n"


def record_to_json(record: JournalRecord) -> dict[str, Any]:
    line: dict[str, Any] = {"t_us": record.t_us, "source": record.source.label}
    if record.source in _ENTRY_SOURCES:
        entry = record.entry
        line["kind"] = entry.kind.value.decode()
        line["entry_t_us"] = entry.t_us
        if entry.kind is Kind.AUDIO:
            line["audio"] = base64.b64encode(entry.payload).decode()
        else:
            _put_bytes(line, "payload", entry.payload)
    elif record.source is Source.AGENT_AUDIO:
        line["audio"] = base64.b64encode(record.data).decode()
    else:
        # Masked again on the way out: a journal recorded by an older version may hold a secret
        # that version did not recognise (a no-op for one recorded now).
        _put_bytes(line, "text", redact_json(record.data))
    return line


def _put_bytes(line: dict[str, Any], name: str, data: bytes) -> None:
    try:
        line[name] = data.decode()
    except UnicodeDecodeError:
        line[f"{name}_b64"] = base64.b64encode(data).decode()


def _get_bytes(line: dict[str, Any], name: str) -> bytes:
    if f"{name}_b64" in line:
        return base64.b64decode(line[f"{name}_b64"], validate=True)
    value = line.get(name, "")
    if not isinstance(value, str):
        raise JournalError(f"{name} must be a string")
    return value.encode()


def record_from_json(line: dict[str, Any]) -> JournalRecord:
    try:
        source = _BY_LABEL[line["source"]]
        t_us = int(line["t_us"])
        if source in _ENTRY_SOURCES:
            kind = Kind(line["kind"].encode())
            if kind is Kind.AUDIO:
                payload = base64.b64decode(line["audio"], validate=True)
            else:
                payload = _get_bytes(line, "payload")
            data = _pack_entry(kind, int(line.get("entry_t_us", t_us)), payload)
        elif source is Source.AGENT_AUDIO:
            data = base64.b64decode(line["audio"], validate=True)
        else:
            data = _get_bytes(line, "text")
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise JournalError(f"bad journal line: {exc!r}") from None
    return JournalRecord(source, t_us, data)


def to_jsonl(records: Iterable[JournalRecord], **info: Any) -> Iterator[bytes]:
    """An export: a header line, then one line per record."""
    yield header_line(**info)
    for record in records:
        yield orjson.dumps(record_to_json(record)) + b"\n"


def from_jsonl(lines: Iterable[bytes | str]) -> tuple[dict[str, Any], list[JournalRecord]]:
    """(header, records) of an export; the header is {} if the file has none."""
    header: dict[str, Any] = {}
    records: list[JournalRecord] = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise JournalError(f"line {number}: not JSON ({exc})") from None
        if not isinstance(line, dict):
            raise JournalError(f"line {number}: not a JSON object")
        if "format" in line:
            if line["format"] != FORMAT:
                raise JournalError(f"line {number}: unknown format {line['format']!r} (expected {FORMAT})")
            header = line
            continue
        try:
            records.append(record_from_json(line))
        except JournalError as exc:
            raise JournalError(f"line {number}: {exc}") from None
    return header, records


def start_info(records: list[JournalRecord]) -> dict[str, Any] | None:
    """The start record's content, or None when the journal has none (trimmed by its cap)."""
    for record in records:
        if record.source is Source.START:
            info = record.json()
            return info if isinstance(info, dict) else None
    return None
