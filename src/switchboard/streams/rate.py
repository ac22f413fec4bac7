"""How often entries come: the writer's batch window and the reader's pacing both wait only
while that wait would gather enough company, so both need the same smoothed rate."""

from __future__ import annotations

import time

SMOOTHING_S = 1.0  # time constant of the moving average


class SmoothedRate:
    def __init__(self) -> None:
        self.per_s = 0.0  # entries per second, smoothed
        self.at = time.monotonic()  # when it was last counted

    def count(self, entries: int, now: float) -> bool:
        """`entries` came since the last count; False (nothing counted) if no time has passed."""
        elapsed = now - self.at
        if elapsed <= 0:
            return False
        weight = min(1.0, elapsed / SMOOTHING_S)
        self.per_s += (entries / elapsed - self.per_s) * weight
        self.at = now
        return True
