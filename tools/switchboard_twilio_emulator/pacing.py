"""The account's calls-per-second limit (pure; times in seconds from any monotonic clock).

Twilio queues API-created calls beyond the account's CPS and dials them as capacity
frees ("queue", the default and what Twilio does): `reserve` spaces dial starts 1/cps
apart. The emulator can instead refuse them with 429/20429 ("reject"), to test a client's
handling: `admit` allows at most `cps` creations in any one-second window and says when
the next one would fit (sent as Retry-After; Twilio does not document that header).
"""

from __future__ import annotations

import math
from collections import deque


class CpsLimiter:
    def __init__(self, cps: float) -> None:
        if cps <= 0:
            raise ValueError("cps must be positive")
        self.cps = cps
        self._next_dial = -math.inf
        # reject mode: at most `limit` creations in any `span` seconds (2 cps: 2 per second; 0.5: 1 per 2 s)
        self.limit = max(1, math.floor(cps))
        self.span = self.limit / cps
        self._window: deque[float] = deque()

    def reserve(self, now: float) -> float:
        """Seconds this call waits in the queue before it is dialled (and take its slot)."""
        slot = max(now, self._next_dial)
        self._next_dial = slot + 1 / self.cps
        return slot - now

    def admit(self, now: float) -> tuple[bool, int]:
        """(True, 0) and count it, or (False, whole seconds until one would fit)."""
        window = self._window
        while window and window[0] <= now - self.span:
            window.popleft()
        if len(window) < self.limit:
            window.append(now)
            return True, 0
        return False, max(1, math.ceil(window[0] + self.span - now))
