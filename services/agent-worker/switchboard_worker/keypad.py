"""Keypad input on the worker: `collect_digits` calls waiting for the conversation core's answer,
and masked keys kept out of Redis.

The core (`switchboard.conversation.dtmf`) decides when an entry is complete; a function call
waits here for its `DigitsCollected`. With `dtmf.mask` on, a key must not stay in Redis in
clear: the journal gets a masked copy of the caller's dtmf entry, and the edge's own entry is
deleted from the call's `:in` stream once this worker has read it (the edge cannot know the
profile's settings, so it always writes the key as Twilio sent it).
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as redis

from switchboard.besteffort import best_effort
from switchboard.entries import Kind

from . import metrics

log = logging.getLogger(__name__)

MASKED_KEY = "•".encode()
MAX_WAIT_S = 150.0  # a request the core never answers (it always does, within its own 120 s cap)


class DigitRequests:
    """`collect_digits` function calls waiting for an entry, by function call id."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[str]] = {}

    async def wait(self, call_id: str) -> str:
        """The function's result (JSON text), once the core answers `call_id`."""
        future = self._waiting.setdefault(call_id, asyncio.get_running_loop().create_future())
        try:
            async with asyncio.timeout(MAX_WAIT_S):
                return await future
        except TimeoutError:
            return '{"error": "no keys arrived"}'
        finally:
            self._waiting.pop(call_id, None)

    def answer(self, call_id: str, content: str) -> None:
        future = self._waiting.get(call_id)
        if future is None:
            # Answered before anyone waits (keys typed ahead complete the entry at once).
            future = self._waiting[call_id] = asyncio.get_running_loop().create_future()
        if not future.done():
            future.set_result(content)


def journal_fields(fields: dict[bytes, bytes], masking: bool) -> dict[bytes, bytes]:
    """A caller entry as the journal may keep it: a dtmf key masked when the profile masks keys."""
    if masking and fields.get(b"k") == Kind.DTMF.value and fields.get(b"p") not in (b"#", b"*"):
        return {**fields, b"p": MASKED_KEY}
    return fields


class KeyScrubber:
    """Deletes masked keys from the call's `:in` stream after they were read (best effort, counted)."""

    def __init__(self, client: redis.Redis, extra: dict[str, str]) -> None:
        self._redis = client
        self._extra = extra
        self._tasks: set[asyncio.Task[None]] = set()

    def forget(self, key: str, entry_ids: list[bytes]) -> None:
        if entry_ids:
            task = asyncio.create_task(self._delete(key, entry_ids))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _delete(self, key: str, entry_ids: list[bytes]) -> None:
        async with best_effort("delete masked keys from the caller stream", errors=metrics.REDIS_ERRORS,
                               logger=log, extra=self._extra):
            await self._redis.xdel(key, *entry_ids)
