"""How many live-event (SSE) streams one replica serves: per client token and in total.

Each stream holds a connection from the blocking Redis pool for as long as it is open, so
without a cap a client (or a leaked token) could open streams until the pool is exhausted and
command acknowledgements queue behind them. A stream takes a slot before its response starts
and gives it back when the response ends for any reason: the call ended, the client went away,
the server stops.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from . import metrics


@dataclass(slots=True)
class SseSlots:
    per_token: int
    total: int
    _by_token: dict[str, int] = field(default_factory=dict)
    _open: int = 0

    def take(self, token: str) -> Slot | None:
        """A slot for one more stream of this client, or None when it or the replica is at its cap."""
        held = self._by_token.get(token, 0)
        if held >= self.per_token or self._open >= self.total:
            return None
        self._by_token[token] = held + 1
        self._open += 1
        metrics.SSE_CLIENTS.set(self._open)
        return Slot(self, token)

    def _give_back(self, token: str) -> None:
        held = self._by_token.get(token, 0) - 1
        if held > 0:
            self._by_token[token] = held
        else:
            self._by_token.pop(token, None)
        self._open -= 1
        metrics.SSE_CLIENTS.set(self._open)

    @property
    def open(self) -> int:
        return self._open


@dataclass(slots=True)
class Slot:
    slots: SseSlots
    token: str
    released: bool = False

    def release(self) -> None:
        if not self.released:  # idempotent: the response may end and be torn down both
            self.released = True
            self.slots._give_back(self.token)


def client_key(authorization: str | None) -> str:
    """Whom a stream counts against: a digest of the bearer credential (so that `Bearer` and
    `bearer` count as one, and the token itself is not kept per stream), or one shared key."""
    _scheme, _, credential = (authorization or "").strip().partition(" ")
    if not credential.strip():
        return "anonymous"
    return hashlib.sha256(credential.strip().encode()).hexdigest()[:16]


class SlotStreamingResponse(StreamingResponse):
    """A StreamingResponse that holds a slot until it has finished, however it finishes."""

    def __init__(self, content: AsyncIterator[bytes], slot: Slot, **kwargs: object) -> None:
        super().__init__(content, **kwargs)  # type: ignore[arg-type]
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()
