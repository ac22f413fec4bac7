"""How loaded this process is, measured: event-loop lag and CPU over the last seconds.

Slots count calls, not work: a fleet whose every slot is free can still be saturated (a busy
box, a noisy neighbour, a slow Redis) and then every call in it degrades at once. So each
edge and worker measures its own load and publishes it beside its slots; past its threshold
it takes no new call (as LiveKit's worker `load_threshold` does), and admission control
counts it as full.

    load = max(CPU seconds per second (one core = 1.0), event-loop lag / LAG_AT_FULL_S)

smoothed over about a second. Lag is how late a timer fires: with the loop (or the machine)
saturated, every frame of every call waits that long too, so LAG_AT_FULL_S (10 ms) is already
more than a caller's latency budget allows.
`LoadEstimate` is pure (times passed in); `LoadMeter` samples it in the background.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

LAG_AT_FULL_S = 0.010
SAMPLE_EVERY_S = 0.1
SMOOTHING_S = 1.0  # time constant of the moving average
HYSTERESIS = 0.1  # overloaded at the threshold; back below it by this much


@dataclass(slots=True)
class LoadEstimate:
    threshold: float
    load: float = 0.0
    overloaded: bool = False
    _last_t: float | None = None
    _last_cpu: float = 0.0

    def update(self, now: float, cpu_s: float, lag_s: float) -> bool:
        """A sample at monotonic time `now` (process CPU time `cpu_s`, how late the timer fired).

        True when `overloaded` changed.
        """
        if self._last_t is None or now <= self._last_t:
            self._last_t, self._last_cpu = now, cpu_s
            return False
        elapsed = now - self._last_t
        cpu = max(0.0, cpu_s - self._last_cpu) / elapsed
        sample = max(cpu, max(0.0, lag_s) / LAG_AT_FULL_S)
        weight = min(1.0, elapsed / SMOOTHING_S)
        self.load += (sample - self.load) * weight
        self._last_t, self._last_cpu = now, cpu_s
        was = self.overloaded
        if self.load >= self.threshold:
            self.overloaded = True
        elif self.load < self.threshold - HYSTERESIS:
            self.overloaded = False
        return was != self.overloaded


class LoadMeter:
    """Samples this process's load while `run()` runs; `on_change` hears when it crosses the threshold."""

    def __init__(self, threshold: float, on_change: object | None = None) -> None:
        self.estimate = LoadEstimate(threshold)
        self._on_change = on_change
        self._stopping = False

    @property
    def load(self) -> float:
        return self.estimate.load

    @property
    def overloaded(self) -> bool:
        return self.estimate.overloaded

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.estimate.update(loop.time(), time.process_time(), 0.0)
        while not self._stopping:
            due = loop.time() + SAMPLE_EVERY_S
            await asyncio.sleep(SAMPLE_EVERY_S)
            now = loop.time()
            if self.estimate.update(now, time.process_time(), now - due) and callable(self._on_change):
                self._on_change(self.estimate.overloaded)
