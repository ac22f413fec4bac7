"""A call's record of what happened: its events stream, and its journal when the settings keep one.

Events (`:events`) are the call's transcript and timeline for the control API, SSE and the
next Deepgram session; the journal (`:journal`, opt-in) records the call's traffic for replay.
Both go through the worker's shared writer, so they never wait for Redis.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from switchboard import entries
from switchboard import keys as keyspace
from switchboard.agent_settings import AgentSettings
from switchboard.entries import Entry, now_us
from switchboard.journal import Recorder

from .port import WorkerPort


class CallTimeline:
    def __init__(self, port: WorkerPort, events_key: str, journal_key: str, settings: AgentSettings) -> None:
        self._port = port
        self._events_key = events_key
        self._journal_key = journal_key
        self.journal = Recorder(settings.journal)  # off until the call's settings say otherwise

    def start(self, call_sid: str, stream_sid: str, settings: AgentSettings, session_id: str) -> None:
        """The call's settings are known: keep a journal if they ask for one, starting with them."""
        self.journal = Recorder(settings.journal)
        self._keep(self.journal.start(call_sid, stream_sid, settings, now_us(), session_id,
                                      self._port.settings.deepgram_max_reconnects))

    def event(self, kind: str, /, **data: Any) -> None:
        data["type"] = kind
        data["ts"] = round(time.time(), 3)
        event = entries.event(orjson.dumps(data, default=str))
        self._port.writer.append(self._events_key, event, maxlen=keyspace.EVENTS_STREAM_MAXLEN)
        self._keep(self.journal.session_event(event.payload, event.t_us))

    # --- the journal ---------------------------------------------------------------------------
    def to_deepgram(self, message: str | dict[str, Any]) -> None:
        self._keep(self.journal.to_deepgram(message, now_us()))

    def from_deepgram(self, text: str) -> None:
        self._keep(self.journal.from_deepgram(text, now_us()))

    def to_twilio(self, entry: Entry) -> None:
        self._keep(self.journal.to_twilio(entry))

    def caller_entry(self, fields: dict[bytes, bytes]) -> None:
        self._keep(self.journal.caller_entry(fields))

    def agent_audio(self, frame: bytes, t_us: int) -> None:
        if self.journal.audio:
            self._keep(self.journal.agent_audio(frame, t_us))

    def _keep(self, entry: Entry | None) -> None:
        if entry is not None:
            self._port.writer.append(self._journal_key, entry, maxlen=self.journal.maxlen)
