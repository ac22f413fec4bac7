"""What the conversation core decides: actions for the worker's session (or a replay) to carry out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..entries import Entry


@dataclass(frozen=True, slots=True)
class Emit:
    """Append an event to the call's :events stream."""

    type: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToAgent:
    """Send this JSON text message to Deepgram."""

    message: str


@dataclass(frozen=True, slots=True)
class ToCaller:
    """Write this entry (mark, clear or hangup) to the call's :out stream for the edge."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class Hangup:
    """The edge has been asked (by the ToCaller entry before this) to end the call now."""

    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The agent is gone for good: the call ends (after the Hangup before this) with this outcome."""

    outcome: str


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Drop the Deepgram session and open a new one with the conversation as context."""

    reason: str


@dataclass(frozen=True, slots=True)
class Record:
    """Write these fields to the call record (bookkeeping: best effort, must not delay audio)."""

    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class Count:
    """Add one to this field of the call record."""

    field: str


@dataclass(frozen=True, slots=True)
class Observe:
    """One observation for a Prometheus metric."""

    # turn_stage (seconds, label = stage), dead_air (label = kind:action), reply (label = outcome),
    # barge_in, reconnect (label = cause)
    metric: str
    label: str
    value: float = 1.0


@dataclass(frozen=True, slots=True)
class DigitsCollected:
    """A `collect_digits` function call is answered with `content` (JSON text; see dtmf.py)."""

    call_id: str
    content: str


@dataclass(frozen=True, slots=True)
class Played:
    """What the agent was saying has played (or `forced`: the wait ran out): `token` may go on (handoff.py)."""

    token: str
    forced: bool = False


Action = Emit | ToAgent | ToCaller | Hangup | GiveUp | Reconnect | Record | Count | Observe | DigitsCollected | Played
