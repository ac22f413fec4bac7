"""Background loops with an owner: one that dies is logged, fails readiness and stops the service.

A service's long-lived loops (the Redis writer and reader, watchers, refreshers) are meant to
run until shutdown. Left alone, one that raises dies silently: asyncio mentions it only when
the task is garbage-collected, if ever, while `/readyz` stays green and the instance keeps
taking calls it can no longer serve. Spawned through a `Supervisor`, a loop that raises (or
returns before shutdown began) is logged once with its traceback, counted, named in the
readiness detail (`/readyz` turns false), and sets `failed`, which the service's main awaits
next to its signals to drain and exit non-zero, so that the orchestrator restarts it.

    tasks = Supervisor("edge")
    tasks.spawn(writer.run(), name="writer")
    ...
    ready = redis_ok and tasks.ok                    # readiness
    detail = {**detail, **tasks.readiness_detail()}  # {"failed_tasks": {"writer": "KeyError: 'k'"}}
    await shutdown.wait(tasks.failed)                # main: a crash stops the service like SIGTERM
    tasks.closing(); ...; await tasks.aclose()       # shutdown: loops may end from now on

Task names are metric labels: a fixed set per service, never a call id. Per-call tasks belong
to their call, not here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from prometheus_client import Counter

__all__ = ["TASK_FAILURES", "Supervisor"]

log = logging.getLogger(__name__)

TASK_FAILURES = Counter(
    "switchboard_task_failures_total",
    "Background loops that died of an exception or returned before shutdown (the service then stops)",
    ["service", "task"],
)
_MAX_DESCRIPTION = 200


class Supervisor:
    def __init__(self, service: str) -> None:
        self.service = service
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self.failures: dict[str, str] = {}  # task name → what killed it
        self.failed = asyncio.Event()  # set by the first failure
        self._closing = False

    @property
    def ok(self) -> bool:
        return not self.failures

    def readiness_detail(self) -> dict[str, Any]:
        return {"failed_tasks": dict(self.failures)} if self.failures else {}

    def spawn(self, coro: Coroutine[Any, Any, object], *, name: str) -> asyncio.Task[Any]:
        """Run `coro` as a task that must live until `closing()`."""
        current = self._tasks.get(name)
        if current is not None and not current.done():
            coro.close()
            raise ValueError(f"a task named {name!r} is already running in {self.service}")
        task = asyncio.create_task(coro, name=name)
        self._tasks[name] = task
        task.add_done_callback(self._ended)
        return task

    def closing(self) -> None:
        """Shutdown has begun: a loop that returns from now on is doing what it was asked."""
        self._closing = True

    async def aclose(self) -> None:
        """Cancel every task and wait for all of them (their errors are already reported)."""
        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        error = task.exception()  # retrieved here, so asyncio never reports it a second time
        if error is not None:
            self._fail(task.get_name(), f"{type(error).__name__}: {error}", error)
        elif not self._closing:
            self._fail(task.get_name(), "returned before shutdown", None)

    def _fail(self, name: str, description: str, error: BaseException | None) -> None:
        if name in self.failures:
            return
        self.failures[name] = description[:_MAX_DESCRIPTION]
        TASK_FAILURES.labels(self.service, name).inc()
        log.error("background task %s died (%s): %s stops", name, description[:_MAX_DESCRIPTION], self.service,
                  exc_info=error, extra={"task": name})
        self.failed.set()
