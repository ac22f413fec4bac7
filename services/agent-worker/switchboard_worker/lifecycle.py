"""Where one call stands on this worker: an explicit state and its legal transitions (pure).

    PREPARING ─▶ CONNECTING ─▶ ACTIVE ⇄ RECONNECTING
        │             │           │          │
        │             └──────▶ HANGING_UP ◀──┘      (we asked the edge to end the call)
        ▼             ▼           ▼          ▼
                     CLOSING                        (the edge said the stream is over)
                        │
                        ▼
                      ENDED                         (the call's records say so)

RELEASED (the call lives on with another worker: drain, lost lease, Redis failure, a bug)
can follow any state but ENDED. A transition not drawn here is a bug and raises, naming both
states.
"""

from __future__ import annotations

from enum import Enum


class CallState(str, Enum):
    PREPARING = "preparing"  # reading the call record and settings; adopting a dropped stream
    CONNECTING = "connecting"  # opening the first Deepgram session
    ACTIVE = "active"  # audio flows both ways
    RECONNECTING = "reconnecting"  # the Deepgram session dropped; a new one opens with context
    HANGING_UP = "hanging_up"  # the edge was asked to end the call once what was sent has played
    CLOSING = "closing"  # the edge's stop arrived: deliver the caller's last words, close Deepgram
    ENDED = "ended"
    RELEASED = "released"


_ENDING = {CallState.CLOSING, CallState.RELEASED}
_LEGAL: dict[CallState, frozenset[CallState]] = {
    CallState.PREPARING: frozenset({CallState.CONNECTING, CallState.ENDED, *_ENDING}),
    CallState.CONNECTING: frozenset({CallState.ACTIVE, CallState.HANGING_UP, *_ENDING}),
    CallState.ACTIVE: frozenset({CallState.RECONNECTING, CallState.HANGING_UP, *_ENDING}),
    CallState.RECONNECTING: frozenset({CallState.ACTIVE, CallState.HANGING_UP, *_ENDING}),
    CallState.HANGING_UP: frozenset(_ENDING),
    CallState.CLOSING: frozenset({CallState.ENDED, CallState.RELEASED}),
    CallState.ENDED: frozenset(),
    CallState.RELEASED: frozenset(),
}


class IllegalTransition(RuntimeError):
    def __init__(self, old: CallState, new: CallState) -> None:
        super().__init__(f"a call cannot go from {old.value} to {new.value}")
        self.old, self.new = old, new


class Lifecycle:
    def __init__(self) -> None:
        self.state = CallState.PREPARING

    def to(self, new: CallState) -> None:
        if new not in _LEGAL[self.state]:
            raise IllegalTransition(self.state, new)
        self.state = new

    def can(self, new: CallState) -> bool:
        return new in _LEGAL[self.state]

    @property
    def agent_wanted(self) -> bool:
        """A Deepgram session should be (or become) open: the call is not ending."""
        return self.state in (CallState.CONNECTING, CallState.ACTIVE, CallState.RECONNECTING, CallState.HANGING_UP)

    @property
    def over(self) -> bool:
        """The call is closing, ended, or no longer this worker's."""
        return self.state in (CallState.CLOSING, CallState.ENDED, CallState.RELEASED)
