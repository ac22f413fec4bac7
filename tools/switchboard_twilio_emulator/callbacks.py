"""Requests to the customer's server sent one after the other, in the order they were queued.

Twilio sends a call's status, AMD and stream callbacks (and a conference's events) in order;
queueing one must not hold up the call that queues it, so each is a task that first waits
for the one before it.
"""

from __future__ import annotations

import asyncio

from .exchange import Exchange


class CallbackQueue:
    def __init__(self, exchange: Exchange, owner_sid: str, *, call_sid: str | None = None) -> None:
        self._exchange = exchange
        self._owner_sid = owner_sid
        self._call_sid = call_sid  # logged with each request
        self._tail: asyncio.Task[None] | None = None

    def queue(self, kind: str, url: str, method: str, params: dict[str, str]) -> None:
        previous = self._tail
        self._tail = self._exchange.spawn(self._send_after(previous, kind, url, method, params),
                                          f"{kind} callback {self._owner_sid}")

    async def _send_after(self, previous: asyncio.Task[None] | None, kind: str, url: str, method: str,
                          params: dict[str, str]) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        if self._exchange.faults.lose(kind, params):
            self._exchange.metrics.callbacks.labels(kind, "lost").inc()
            self._exchange.callbacks.add(kind=kind, call_sid=self._call_sid, method=method, url=url, params=params,
                                         signature=None, status=None, error="lost (injected fault)", ms=0.0)
            return
        answer = await self._exchange.webhooks.send(kind, url, method, params, call_sid=self._call_sid)
        self._exchange.metrics.callbacks.labels(kind, "ok" if answer.ok else "error").inc()

    async def sent(self) -> None:
        """Until the last one queued so far has been sent."""
        if self._tail is not None:
            await asyncio.wait({self._tail})
