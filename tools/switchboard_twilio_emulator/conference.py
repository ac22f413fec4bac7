"""A Twilio conference and its participants, as a state machine (pure; times are epoch seconds).

A conference is `init` until it starts: at least two participants are connected and one
of them has startConferenceOnEnter. Until then everyone connected is holding (hears the
waitUrl music). It is `completed` when a participant with endConferenceOnExit leaves,
when the last one leaves, or over the API; everyone still in it is kicked out, and their
calls go on with the TwiML after their `<Dial>`. Each change returns the conference events
Twilio would report (participant-join, conference-start, …) and the calls to kick.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ConferenceStatus(enum.StrEnum):
    INIT = "init"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"


class ParticipantStatus(enum.StrEnum):
    QUEUED = "queued"
    CONNECTING = "connecting"
    RINGING = "ringing"
    CONNECTED = "connected"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(slots=True)
class Participant:
    call_sid: str
    date_created: float
    label: str | None = None
    start_on_enter: bool = True
    end_on_exit: bool = False
    muted: bool = False
    hold: bool = False
    coaching: bool = False
    call_sid_to_coach: str | None = None
    beep: str = "true"
    wait_url: str | None = None
    wait_method: str = "POST"
    status: ParticipantStatus = ParticipantStatus.QUEUED
    date_updated: float = 0.0
    queue_time_ms: int = 0
    joined_at: float | None = None
    left_at: float | None = None


@dataclass(frozen=True, slots=True)
class Event:
    name: str  # conference-start | conference-end | participant-join | participant-leave | participant-hold …
    call_sid: str | None = None


@dataclass(slots=True)
class Change:
    events: list[Event] = field(default_factory=list)
    kicked: list[str] = field(default_factory=list)  # calls the conference's end throws out


class ConferenceEnded(ValueError):
    pass


@dataclass(slots=True)
class Conference:
    sid: str
    account_sid: str
    friendly_name: str
    date_created: float
    date_updated: float = 0.0
    status: ConferenceStatus = ConferenceStatus.INIT
    participants: dict[str, Participant] = field(default_factory=dict)  # queued … connected
    history: list[Participant] = field(default_factory=list)  # everyone who left
    reason_ended: str | None = None
    call_sid_ending: str | None = None
    started_at: float | None = None

    @property
    def connected(self) -> list[Participant]:
        return [p for p in self.participants.values() if p.status is ParticipantStatus.CONNECTED]

    @property
    def started(self) -> bool:
        return self.status is ConferenceStatus.IN_PROGRESS

    def holding(self, call_sid: str) -> bool:
        """Does this participant hear hold music (or silence on hold) instead of the conference?"""
        p = self.participants.get(call_sid)
        return p is not None and p.status is ParticipantStatus.CONNECTED and (not self.started or p.hold)

    def _touch(self, now: float) -> None:
        self.date_updated = now

    def add(self, p: Participant, now: float) -> None:
        """A participant being dialled (Participants API): listed as queued until it answers."""
        if self.status is ConferenceStatus.COMPLETED:
            raise ConferenceEnded(self.sid)
        self.participants[p.call_sid] = p
        self._touch(now)

    def set_status(self, call_sid: str, status: ParticipantStatus, now: float) -> None:
        p = self.participants.get(call_sid)
        if p is not None:
            p.status = status
            p.date_updated = now

    def connect(self, p: Participant, now: float) -> Change:
        if self.status is ConferenceStatus.COMPLETED:
            raise ConferenceEnded(self.sid)
        existing = self.participants.get(p.call_sid)
        if existing is not None:  # dialled over the API: keep its creation time and queue time
            p.date_created, p.queue_time_ms = existing.date_created, existing.queue_time_ms
        p.status, p.joined_at, p.date_updated = ParticipantStatus.CONNECTED, now, now
        self.participants[p.call_sid] = p
        self._touch(now)
        change = Change([Event("participant-join", p.call_sid)])
        connected = self.connected
        if not self.started and len(connected) >= 2 and any(q.start_on_enter for q in connected):
            self.status, self.started_at = ConferenceStatus.IN_PROGRESS, now
            change.events.append(Event("conference-start"))
        return change

    def leave(self, call_sid: str, now: float, *, kicked: bool = False) -> Change:
        """A participant's call left (hung up, redirected, removed over the API, never answered)."""
        p = self.participants.pop(call_sid, None)
        change = Change()
        if p is None:
            return change
        was_connected = p.status is ParticipantStatus.CONNECTED
        p.status = ParticipantStatus.COMPLETE if was_connected else ParticipantStatus.FAILED
        p.left_at = p.date_updated = now
        self.history.append(p)
        self._touch(now)
        if not was_connected:
            return change
        change.events.append(Event("participant-leave", call_sid))
        how = "kicked" if kicked else "left"
        if p.end_on_exit and self.status is not ConferenceStatus.COMPLETED:
            end = self.end(now, f"participant-with-end-conference-on-exit-{how}", call_sid)
        elif not self.connected and self.status is not ConferenceStatus.COMPLETED:
            end = self.end(now, f"last-participant-{how}", call_sid)
        else:
            return change
        change.events += end.events
        change.kicked += end.kicked
        return change

    def end(self, now: float, reason: str, by: str | None = None) -> Change:
        if self.status is ConferenceStatus.COMPLETED:
            return Change()
        self.status = ConferenceStatus.COMPLETED
        self.reason_ended, self.call_sid_ending = reason, by
        self._touch(now)
        kicked = [p.call_sid for p in self.connected]
        return Change([Event("conference-end")], kicked)

    def update(self, call_sid: str, now: float, *, muted: bool | None = None, hold: bool | None = None,
               end_on_exit: bool | None = None, coaching: bool | None = None) -> Change:
        p = self.participants.get(call_sid)
        change = Change()
        if p is None:
            return change
        if muted is not None and muted != p.muted:
            p.muted = muted
            change.events.append(Event("participant-mute" if muted else "participant-unmute", call_sid))
        if hold is not None and hold != p.hold:
            p.hold = hold
            change.events.append(Event("participant-hold" if hold else "participant-unhold", call_sid))
        if end_on_exit is not None:
            p.end_on_exit = end_on_exit
        if coaching is not None:
            p.coaching = coaching
        p.date_updated = now
        self._touch(now)
        if end_on_exit is not None or coaching is not None:
            change.events.append(Event("participant-modify", call_sid))
        return change

    def find(self, key: str) -> Participant | None:
        """A participant by call SID or label (both work in Twilio's Participants URLs)."""
        p = self.participants.get(key)
        if p is not None:
            return p
        return next((q for q in self.participants.values() if q.label == key), None)


# StatusCallbackEvent values (subscribed as start, end, join, leave, mute, hold, modify …)
EVENT_SUBSCRIPTION = {
    "conference-start": "start",
    "conference-end": "end",
    "participant-join": "join",
    "participant-leave": "leave",
    "participant-mute": "mute",
    "participant-unmute": "mute",
    "participant-hold": "hold",
    "participant-unhold": "hold",
    "participant-modify": "modify",
    "announcement-end": "announcement",
}
