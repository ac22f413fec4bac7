"""The caller's side of one call: the entries of its `:in` stream, handed to Deepgram and the core.

The worker's shared reader calls `on_entries` with each batch read from the call's `:in`
stream. Caller audio goes to Deepgram (or is withheld while answering-machine detection must
keep the line from the agent); the edge's stop goes to the session; every other entry (marks,
keys) goes to the conversation core, whose decisions the session carries out. The intake also
keeps the stream position a takeover resumes from, deletes masked keys once read (keypad.py),
and notices a stream gone quiet: Twilio sends media every 20 ms, silence included.

`on_entries` runs for every batch of every call, often one 20 ms frame: per frame it does no
more than a dict lookup, a metric and an append.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from switchboard import entries
from switchboard.conversation import Action, Conversation
from switchboard.entries import Kind, now_us
from switchboard.redis_types import Entries

from . import keypad, metrics
from .agent_link import AgentLink
from .port import WorkerPort
from .timeline import CallTimeline

log = logging.getLogger(__name__)


class CallerIntake:
    def __init__(self, port: WorkerPort, key: str, conv: Conversation, agent: AgentLink, timeline: CallTimeline,
                 *, apply: Callable[[list[Action]], None], on_stop: Callable[[str], None],
                 extra: dict[str, str]) -> None:
        self.key = key
        self.position: bytes | str = "0-0"  # the last entry read: where a takeover resumes
        self._reader = port.reader
        self._timeout_s = port.settings.caller_timeout_s
        self._conv = conv
        self._agent = agent
        self._timeline = timeline
        self._apply = apply
        self._on_stop = on_stop
        self._extra = extra
        self._scrubber = keypad.KeyScrubber(port.redis, extra)
        self._following = False
        self._last_entry_at = time.monotonic()

    def follow(self) -> None:
        """Start reading the stream from `position`."""
        # The silence watchdog counts from here: before the caller's stream is read, quiet is normal.
        self._last_entry_at = time.monotonic()
        self._following = True
        self._reader.add(self.key, self.position)

    def stop_following(self) -> None:
        self._reader.remove(self.key)

    async def drain(self) -> None:
        """Wait for the deletions of masked keys still in flight."""
        await self._scrubber.drain()

    def lost_for(self, now: float) -> float | None:
        """How long the stream has been silent, if so long that its edge is gone; else None."""
        silent_for = now - self._last_entry_at
        # Twilio sends media every 20 ms, silence included: a stream this quiet while Redis
        # is fine means its edge is gone.
        if self._following and silent_for > self._timeout_s and self._reader.healthy_for(silent_for):
            return silent_for
        return None

    def on_entries(self, batch: Entries) -> None:
        mono = self._last_entry_at = time.monotonic()
        audio: list[bytes] = []
        now = now_us()
        worst = 0
        recording = self._timeline.journal.enabled
        masking = self._conv.masks_dtmf
        masked: list[bytes] = []  # keys the profile masks: gone from :in once read (keypad.py)
        for entry_id, fields in batch:
            if recording:
                self._timeline.caller_entry(keypad.journal_fields(fields, masking))
            kind = fields.get(b"k")
            if kind == Kind.AUDIO.value:
                transit_us = now - int(fields.get(b"t", now))
                audio.append(fields[b"p"])
                metrics.CALLER_TRANSIT.observe(max(0, transit_us) / 1e6)
                if transit_us > worst:
                    worst = transit_us
                continue
            self._send_audio(audio)
            if kind == Kind.STOP.value:
                self._on_stop(fields.get(b"p", b"").decode(errors="replace"))
                continue
            try:
                entry = entries.decode(fields)
            except entries.EntryError as exc:
                log.warning("bad caller entry: %s", exc, extra=self._extra)
                continue
            if masking and entry.kind is Kind.DTMF:
                masked.append(entry_id)
            self._apply(self._conv.on_caller_entry(entry, mono))
        self._scrubber.forget(self.key, masked)
        self._send_audio(audio)
        if worst:
            self._conv.on_caller_transit(worst)
        self.position = batch[-1][0]

    def _send_audio(self, parts: list[bytes]) -> None:
        if parts:
            if self._conv.holding_caller_audio:  # answering-machine detection: the agent must not hear the line
                self._conv.withheld_caller_audio(sum(map(len, parts)))
            else:
                self._agent.send_audio(parts[0] if len(parts) == 1 else b"".join(parts))
            parts.clear()
