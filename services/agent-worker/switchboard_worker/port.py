"""What a call session may use of its worker, and what commands and functions may do with a call.

A session gets a `WorkerPort`, never the worker itself: the shared writer and reader, Redis,
the HTTP client, best-effort bookkeeping, the settings. Commands and functions see the call
through `CallHandle`. So the worker depends on its sessions and sessions on their parts, and
nothing points back up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import redis.asyncio as redis

from switchboard.agent_settings import AgentSettings
from switchboard.keys import Keys
from switchboard.streams import StreamReader, StreamWriter

from .bookkeeping import Bookkeeping
from .settings import WorkerSettings


@dataclass(frozen=True, slots=True)
class WorkerPort:
    settings: WorkerSettings
    keys: Keys
    redis: redis.Redis
    http: httpx.AsyncClient
    writer: StreamWriter  # the worker's one coalescing writer: per-call order is kept
    reader: StreamReader  # the worker's one follower of every call's streams
    bookkeeping: Bookkeeping
    random: random.Random


class CallHandle(Protocol):
    """The call a command or a function call serves."""

    call_sid: str
    stream_sid: str
    call_key: str
    extra: dict[str, str]
    settings: AgentSettings
    port: WorkerPort

    @property
    def agent_speaking(self) -> bool: ...

    def send_to_agent(self, message: str) -> bool: ...

    def event(self, kind: str, /, **data: Any) -> None: ...

    def request_hangup(self, reason: str, *, after_reply: bool = False) -> None: ...

    def amd_verdict(self, answered_by: str, detection_ms: int | None) -> tuple[bool, str]: ...

    def remember_override(self, field: str, value: Any) -> None: ...

    async def collect_digits(self, call_id: str, arguments: Any) -> str: ...

    def reveal_digits(self, value: Any) -> Any: ...

    def transfer(self, to: str | None, mode: str | None, *, by: str, announce: str | None = None,
                 summary: str | None = None, expect_reply: bool = False) -> tuple[bool, str]: ...
