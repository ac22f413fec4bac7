"""The calls live on this edge, by their agent-output stream: the reader's entries are routed
to their call, and one watch cuts the Twilio sockets whose sends hang."""

from __future__ import annotations

import asyncio
import logging
import time

from switchboard.streams import StreamReader

from .port import Attached, Writer
from .stream_core import AgentBatch

log = logging.getLogger(__name__)

STALL_CHECK_S = 0.5


class LiveCalls:
    def __init__(self, reader: StreamReader, writer: Writer) -> None:
        self._reader = reader
        self._writer = writer
        self._calls: dict[str, Attached] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def attach(self, out_key: str, call: Attached) -> None:
        self._calls[out_key] = call
        self._reader.add(out_key, "0-0")

    def detach(self, out_key: str) -> None:
        self._calls.pop(out_key, None)
        self._reader.remove(out_key)
        self._writer.forget(out_key)

    def deliver(self, out_key: str, batch: AgentBatch) -> None:
        """The reader's handler: runs inside the reader, so it must not block."""
        call = self._calls.get(out_key)
        if call is not None:
            call.deliver(batch)

    async def watch_stalls(self) -> None:
        while True:
            await asyncio.sleep(STALL_CHECK_S)
            now = time.monotonic()
            for call in list(self._calls.values()):
                try:
                    call.check_stalled(now)
                except Exception:  # one call's bug must not stop the watch for every call
                    log.exception("stall check failed", extra={"stream_sid": call.stream_sid})
