"""The simulator's 20 ms clock: each call has its own phase, as independent real calls do."""

from __future__ import annotations

import asyncio
import random

from switchboard_callsim.call import Pacer


class Stub:
    """Stands in for a call: records when the pacer asked it for a frame."""

    def __init__(self, frames: int) -> None:
        self.left = frames
        self.times: list[float] = []
        self.ticking_done = asyncio.Event()
        self.log_ids: dict[str, str] = {}

    def on_tick(self, now_us: int) -> bool:
        self.times.append(asyncio.get_running_loop().time())
        self.left -= 1
        return self.left > 0

    def fail(self, reason: str) -> None:  # pragma: no cover - the stub never fails
        raise AssertionError(reason)


async def _phases(phase: str, calls: int = 40) -> list[float]:
    stubs = [Stub(frames=5) for _ in range(calls)]
    async with Pacer(phase, rng=random.Random(7)) as pacer:  # type: ignore[arg-type]
        for stub in stubs:
            pacer.add(stub)  # type: ignore[arg-type]
        await asyncio.wait_for(asyncio.gather(*(s.ticking_done.wait() for s in stubs)), 5)
    t0 = min(t for s in stubs for t in s.times)
    # Each call's offset within the period, from its first frame (ms).
    return [((s.times[0] - t0) * 1000) % 20 for s in stubs]


async def test_random_phases_spread_the_calls_over_the_period_and_each_keeps_its_own():
    offsets = await _phases("random")
    assert len({round(o) for o in offsets}) >= 10  # 40 calls over 20 one-millisecond slots
    assert max(offsets) > 10


async def test_aligned_calls_all_send_in_the_same_slot():
    offsets = await _phases("aligned")
    assert max(offsets) < 3


async def test_each_call_keeps_a_20_ms_period_in_its_slot():
    stub = Stub(frames=6)
    async with Pacer("random") as pacer:
        pacer.add(stub)  # type: ignore[arg-type]
        await asyncio.wait_for(stub.ticking_done.wait(), 5)
    gaps = [(b - a) * 1000 for a, b in zip(stub.times, stub.times[1:])]
    assert all(15 < gap < 30 for gap in gaps), gaps
