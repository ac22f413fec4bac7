"""What the emulator saw and did, for introspection: REST requests, callbacks, and a change signal.

Every REST request (method, path, form, which credential, the answer) and every request the
emulator made (status callbacks, TwiML fetches, AMD verdicts…) with the answer it got is
kept in bounded logs. `Changes` wakes whoever waits for something to happen (tests in this
process, or a long-polling admin request), so nobody polls with sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any


class Changes:
    """A broadcast "something changed": `await changes.wait_for(predicate, timeout)`."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.version = 0

    def notify(self) -> None:
        self.version += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """The predicate's first truthy value; TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                value = predicate()
                if value:
                    return value
                await self._event.wait()


class Log:
    """A bounded list of dict entries with increasing ids (`?since=id` pages through it)."""

    def __init__(self, changes: Changes, max_entries: int) -> None:
        self._changes = changes
        self._entries: deque[dict[str, Any]] = deque(maxlen=max_entries)
        self._ids = itertools.count(1)

    def add(self, **fields: Any) -> dict[str, Any]:
        entry = {"id": next(self._ids), "at": time.time(), **fields}
        self._entries.append(entry)
        self._changes.notify()
        return entry

    def entries(self, since: int = 0, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self._entries if e["id"] > since and all(e.get(k) == v for k, v in match.items())]

    def clear(self) -> None:
        self._entries.clear()


class Timeline:
    """One call's story: statuses, TwiML fetched, verbs run, streams, what its party heard."""

    def __init__(self, changes: Changes, started: float) -> None:
        self._changes = changes
        self.started = started
        self.events: list[dict[str, Any]] = []

    def add(self, event: str, **fields: Any) -> None:
        now = time.time()
        self.events.append({"at": now, "ms": round((now - self.started) * 1000), "event": event, **fields})
        self._changes.notify()

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]

    def find(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]
