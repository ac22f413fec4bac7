"""Admission on the edge: whether a new stream may be announced to the workers now.

The control API's TwiML is the first gate: it reserves a slot for every call it admits.
This is the second, for calls that raced past it or never went through it (a TwiML Bin):

- a stream that replaces a dropped one (`sb_resume_of`) always passes: its old session
  holds a slot that frees within CALLER_TIMEOUT_S, and refusing it would cut a
  conversation in progress;
- a stream whose callSid holds a TwiML reservation passes (the reservation ends once the
  call is announced);
- any other stream passes while the fleet has a free slot and this edge is under its load
  threshold (switchboard.loadmeter), and otherwise waits, first come first served, until one
  frees or EDGE_ADMISSION_WAIT_S runs out.

The edge publishes its measured load with every refresh, so that the TwiML admission counts
the fleet as full when every edge is saturated.

The fleet view is read at each start (one pipelined round trip) and refreshed every
250 ms in the background for waiters and the gauges; never per frame. Starts this edge has
admitted count against the view until a read that began after their announcement shows them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from switchboard import capacity, twilio
from switchboard.besteffort import Outage, best_effort
from switchboard.keys import RESUME_PARAMETER, Keys
from switchboard.loadmeter import LoadMeter

from . import metrics

log = logging.getLogger(__name__)

REFRESH_S = 0.25
_FORGET_UNANNOUNCED_S = 30.0  # an admitted start that never reached its announcement


class EdgeAdmission:
    def __init__(self, redis: Any, keys: Keys, *, load: LoadMeter | None = None, edge_id: str = "",
                 publish_ttl_ms: int = 1500) -> None:
        self._redis = redis
        self._keys = keys
        self._load = load
        self._edge_id = edge_id
        self._publish_ttl_ms = publish_ttl_ms
        self._view = capacity.FleetView()
        # stream_sid → [admitted at, announced at or None], until a view includes the call
        self._in_flight: dict[str, list[float | None]] = {}
        self._waiters: deque[tuple[str, asyncio.Future[None]]] = deque()
        self._outage = Outage()
        self._closed = False

    @property
    def view(self) -> capacity.FleetView:
        return self._view

    async def run(self) -> None:
        """Refresh the view in the background: wakes waiters, feeds the gauges."""
        while not self._closed:
            started = time.monotonic()
            # Logged once per outage, not four times a second; the next tick tries again.
            async with best_effort("read the fleet capacity", errors=metrics.REDIS_ERRORS, outage=self._outage,
                                   logger=log) as attempt:
                view, _ = await capacity.read(self._redis, self._keys)
            if not attempt.failed:
                self._update(view, started)
            if self._load is not None:
                async with best_effort("publish the edge's load", errors=metrics.REDIS_ERRORS, outage=self._outage,
                                       logger=log):
                    await self._redis.eval(*capacity.publish_edge_command(
                        self._keys, self._edge_id, self._load.load, self._load.overloaded, self._publish_ttl_ms))
            await asyncio.sleep(REFRESH_S)

    async def admit_now(self, start: twilio.Start) -> str | None:
        """The outcome if this start may be announced at once (resumed|reserved|admitted), else None."""
        if start.custom_parameters.get(RESUME_PARAMETER):
            self._admitted(start.stream_sid)
            return "resumed"
        started = time.monotonic()
        view, reserved = await capacity.read(self._redis, self._keys, reservation_of=start.call_sid)
        self._update(view, started)  # earlier waiters are served first
        if reserved:
            self._admitted(start.stream_sid)
            return "reserved"
        if not self._waiters and self._free_here() > 0:
            self._admitted(start.stream_sid)
            return "admitted"
        return None

    async def wait(self, stream_sid: str, timeout_s: float) -> bool:
        """Queue behind earlier waiters until a refreshed view has a slot for this start."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (stream_sid, future)
        self._waiters.append(entry)
        metrics.ADMISSION_WAITING.inc()
        try:
            async with asyncio.timeout(timeout_s):
                await future
            return True
        except TimeoutError:
            return future.done() and not future.cancelled()  # granted just as the time ran out
        finally:
            metrics.ADMISSION_WAITING.dec()
            if not future.done():
                future.cancel()
            try:
                self._waiters.remove(entry)
            except ValueError:
                pass  # granted: _grant took it off the queue

    def close(self) -> None:
        # The loop ends on this flag too: on Python 3.11 a cancellation that arrives while a
        # Redis command is being sent can be lost inside redis-py (asyncio.wait_for).
        self._closed = True

    def announced(self, stream_sid: str) -> None:
        """The call's dispatch entry is written (or failed): the next read that starts from now covers it."""
        entry = self._in_flight.get(stream_sid)
        if entry is not None:
            entry[1] = time.monotonic()

    # --- bookkeeping ----------------------------------------------------------------------------
    def _admitted(self, stream_sid: str) -> None:
        self._in_flight[stream_sid] = [time.monotonic(), None]

    def _free_here(self) -> int:
        if self._load is not None and self._load.overloaded:
            return 0  # saturated here: a new stream would degrade every call on this edge
        return self._view.free - len(self._in_flight)

    def _update(self, view: capacity.FleetView, read_started: float) -> None:
        self._view = view
        stale = read_started - _FORGET_UNANNOUNCED_S
        for sid, (admitted_at, announced_at) in list(self._in_flight.items()):
            if (announced_at is not None and announced_at < read_started) or (admitted_at or 0) < stale:
                del self._in_flight[sid]
        metrics.FLEET_FREE.set(max(0, view.free))
        metrics.FLEET_CAPACITY.set(view.capacity)
        self._grant()

    def _grant(self) -> None:
        free = self._free_here()
        while free > 0 and self._waiters:
            stream_sid, future = self._waiters.popleft()
            if future.done():
                continue
            self._admitted(stream_sid)
            future.set_result(None)
            free -= 1
