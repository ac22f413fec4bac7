"""What every emulated call shares: the account, the callees, the CPS limiter, the webhook sender,
the simulator's 20 ms clock, the logs, the metrics, the faults, and the tasks.

`Exchange` knows nothing of calls or conferences: the call engine (calls.py) builds on it,
and `core.Core` completes it. It owns every task it spawns (calls, callbacks, timers) and
cancels them on `drain`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter

from switchboard_callsim.call import Pacer

from .callees import Directory
from .config import EmulatorConfig
from .pacing import CpsLimiter
from .records import Changes, Log
from .webhooks import Webhooks

log = logging.getLogger(__name__)


def new_sid(prefix: str) -> str:
    return prefix + os.urandom(16).hex()


class Metrics:
    """Per-emulator registry, so two emulators in one test process do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        p = "switchboard_twilio_emulator_"
        self.requests = Counter(p + "rest_requests_total", "REST requests by endpoint and HTTP status",
                                ["endpoint", "status"], registry=self.registry)
        self.refusals = Counter(p + "refusals_total", "REST requests refused, by Twilio error code", ["code"],
                                registry=self.registry)
        self.calls = Counter(p + "calls_total", "Calls ended, by final status and direction",
                             ["status", "direction"], registry=self.registry)
        self.callbacks = Counter(p + "callbacks_total", "Requests the emulator made, by kind and result",
                                 ["kind", "result"], registry=self.registry)
        self.amd = Counter(p + "amd_verdicts_total", "AMD verdicts, by AnsweredBy", ["answered_by"],
                           registry=self.registry)


@dataclass(slots=True)
class Fault:
    status: int
    remaining: int
    path_contains: str = ""
    retry_after_s: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "remaining": self.remaining, "path_contains": self.path_contains,
                "retry_after_s": self.retry_after_s}


@dataclass(slots=True)
class LostCallback:
    kind: str  # status, amd, …
    remaining: int
    call_status: str = ""  # only callbacks carrying this CallStatus ("" any)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "remaining": self.remaining, "call_status": self.call_status}


@dataclass(slots=True)
class Faults:
    """Injected failures: the next N matching REST requests get this status, Twilio-shaped; the next N
    matching callbacks are never sent (lost on the way, as when the receiver was restarting)."""

    rest: list[Fault] = field(default_factory=list)
    lost_callbacks: list[LostCallback] = field(default_factory=list)

    def lose(self, kind: str, params: Mapping[str, str]) -> bool:
        for fault in self.lost_callbacks:
            if fault.kind == kind and fault.call_status in ("", params.get("CallStatus")):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.lost_callbacks.remove(fault)
                return True
        return False

    def take(self, path: str) -> Fault | None:
        for fault in self.rest:
            if fault.remaining > 0 and fault.path_contains in path:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self.rest.remove(fault)
                return fault
        return None


class Exchange:
    def __init__(self, config: EmulatorConfig, directory: Directory, http: httpx.AsyncClient, pacer: Pacer) -> None:
        self.config = config
        self.account = config.account()
        self.caller_ids = config.caller_id_set()
        self.directory = directory
        self.http = http
        self.pacer = pacer
        self.changes = Changes()
        self.requests = Log(self.changes, config.max_log_entries)
        self.callbacks = Log(self.changes, config.max_log_entries)
        self.webhooks = Webhooks(http, self.account.auth_token, self.callbacks, config.webhook_timeout_s)
        self.limiter = CpsLimiter(config.cps)
        self.metrics = Metrics()
        self.faults = Faults()
        self.started = time.time()
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s crashed", task.get_name(), exc_info=task.exception())

    async def drain(self, drain_s: float) -> None:
        """Let the tasks finish (the last callbacks and reports) within `drain_s`, then cancel the rest."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=drain_s)
        for _ in range(3):  # a cancelled call may spawn one last callback: cancel that too
            if not self._tasks:
                break
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=drain_s)

    def reset(self) -> None:
        """Forget the logs, the callees' queued scripts and the faults; a fresh CPS limiter."""
        self.requests.clear()
        self.callbacks.clear()
        self.directory.reset()
        self.faults.rest.clear()
        self.faults.lost_callbacks.clear()
        self.limiter = CpsLimiter(self.config.cps)
