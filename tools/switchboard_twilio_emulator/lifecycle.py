"""A call's life as Twilio reports it (pure): statuses, their legal order, the status callbacks.

The Call resource's status runs queued → ringing → in-progress → completed, or ends early
as busy, no-answer, failed or canceled. Status callbacks report *events*: `initiated`
(dialing starts; the resource still says queued), `ringing`, `answered` (CallStatus
in-progress) and `completed` (CallStatus is the final status). Only the events listed in
StatusCallbackEvent are sent (default: completed), numbered by SequenceNumber from 0.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class CallStatus(enum.StrEnum):
    QUEUED = "queued"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    BUSY = "busy"
    FAILED = "failed"
    NO_ANSWER = "no-answer"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({CallStatus.COMPLETED, CallStatus.BUSY, CallStatus.FAILED, CallStatus.NO_ANSWER,
                   CallStatus.CANCELED})
UNANSWERED_ENDS = frozenset({CallStatus.BUSY, CallStatus.FAILED, CallStatus.NO_ANSWER, CallStatus.CANCELED})


class Event(enum.StrEnum):
    INITIATED = "initiated"
    RINGING = "ringing"
    ANSWERED = "answered"
    COMPLETED = "completed"


class IllegalTransition(ValueError):
    def __init__(self, current: CallStatus, event: Event, final: CallStatus | None) -> None:
        target = f" as {final}" if final else ""
        super().__init__(f"a call that is {current} cannot become {event}{target}")


# SIP response code Twilio reports (SipResponseCode) for each way a call ends.
SIP_CODES = {
    CallStatus.COMPLETED: 200,
    CallStatus.BUSY: 486,
    CallStatus.NO_ANSWER: 487,
    CallStatus.CANCELED: 487,
    CallStatus.FAILED: 404,
}


def transition(current: CallStatus, event: Event, final: CallStatus | None = None) -> CallStatus:
    """The resource status after `event`; raises IllegalTransition naming both states."""
    if current.final:
        raise IllegalTransition(current, event, final)
    match event:
        case Event.INITIATED if current is CallStatus.QUEUED:
            return CallStatus.QUEUED
        case Event.RINGING if current is CallStatus.QUEUED:
            return CallStatus.RINGING
        case Event.ANSWERED if current in (CallStatus.QUEUED, CallStatus.RINGING):
            return CallStatus.IN_PROGRESS
        case Event.COMPLETED if final is CallStatus.COMPLETED and current is CallStatus.IN_PROGRESS:
            return final
        case Event.COMPLETED if final in UNANSWERED_ENDS and current in (CallStatus.QUEUED, CallStatus.RINGING):
            return final
    raise IllegalTransition(current, event, final)


def callback_status(event: Event, status: CallStatus) -> str:
    """The CallStatus a status callback carries for `event` (the resource status after it)."""
    if event is Event.INITIATED:
        return "initiated"
    return str(status)


@dataclass(slots=True)
class Subscription:
    """Which events one StatusCallback URL gets, and the next SequenceNumber."""

    events: frozenset[str]
    sequence: int = 0
    sent: list[str] = field(default_factory=list)

    def take(self, event: Event) -> int | None:
        """The SequenceNumber for this event, or None when it is not subscribed."""
        if str(event) not in self.events:
            return None
        number = self.sequence
        self.sequence += 1
        self.sent.append(str(event))
        return number
