"""What one stream's shell (`call.py`) may use of its edge, and nothing more.

`EdgeCall` gets a `CallPort`, never the `EdgeServer`: the writer for its caller audio and
reports, the registry that routes agent entries to it, the gate a start must pass, its
settings and key names. The server builds the port from its parts; `call.py` imports only
this module and the pure core, so no import circle runs through the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from switchboard import twilio
from switchboard.entries import Entry
from switchboard.keys import Keys

from .identity import Verdict
from .settings import EdgeSettings
from .stream_core import AgentBatch


class Writer(Protocol):
    """The instance's coalescing Redis writer (`switchboard.streams.StreamWriter`)."""

    def append(self, key: str, entry: Entry) -> None: ...

    async def drain(self, timeout_s: float = ...) -> bool: ...

    def forget(self, key: str) -> None: ...


class Attached(Protocol):
    """What the registry needs of a live call."""

    stream_sid: str

    def deliver(self, batch: AgentBatch) -> None: ...

    def check_stalled(self, now: float) -> None: ...


class Registry(Protocol):
    def attach(self, out_key: str, call: Attached) -> None: ...

    def detach(self, out_key: str) -> None: ...


class Gate(Protocol):
    """Identity, admission and announcement of a start (`gate.StartGate`)."""

    async def check_identity(self, start: twilio.Start) -> Verdict: ...

    async def admit(self, start: twilio.Start) -> bool: ...

    async def register(self, start: twilio.Start) -> None: ...


@dataclass(frozen=True, slots=True)
class CallPort:
    settings: EdgeSettings
    keys: Keys
    writer: Writer
    calls: Registry
    gate: Gate
