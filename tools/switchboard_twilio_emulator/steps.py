"""What a call's program (a TwiML document, a whisper and bridge, a conference seat) ends with (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from .lifecycle import CallStatus
from .validate import Source


@dataclass(frozen=True, slots=True)
class Goto:
    """Run this TwiML next (a <Redirect>, a Dial or Gather action)."""

    source: Source


@dataclass(frozen=True, slots=True)
class Finish:
    """The call ends, for this reason."""

    reason: str
    status: CallStatus = CallStatus.COMPLETED


Step = Goto | Finish | None  # None: on to the next verb
