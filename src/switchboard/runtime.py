"""Process-level runtime shared by every service: the event loop, and how a service stops.

`Shutdown` is what a service's main waits on. The first SIGTERM or SIGINT (or a background
loop's crash, see `supervise.py`) starts the graceful drain; a second signal exits at once,
as uvicorn and most servers do: an operator who presses Ctrl-C twice, or an orchestrator that
repeats its SIGTERM, wants the process gone now, not after a drain stuck behind a dead peer.

    stop = Shutdown("edge")
    async with EdgeServer(settings) as server:
        reason = await stop.wait(server.tasks.failed)  # signal, or a crashed loop
    # leaving the block drains; a second signal meanwhile ends the process with 128 + signum
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import NoReturn

__all__ = ["Shutdown", "force_exit", "install_event_loop"]

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_event_loop() -> None:
    """Use uvloop when available: it roughly halves per-message loop overhead.

    SWITCHBOARD_NO_UVLOOP=1 keeps the stdlib loop (for profiling or comparison).
    """
    if os.environ.get("SWITCHBOARD_NO_UVLOOP"):
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def force_exit(service: str, signum: int) -> NoReturn:
    """Leave now, without draining: exit status 128 + signum, as if the signal had killed us.

    `os._exit`, not `sys.exit`: SystemExit would unwind through the very drain that is stuck
    (and asyncio.run would then wait for every task to finish cancelling).
    """
    log.critical("%s: second %s while shutting down: exiting now, without draining",
                 service, signal.Signals(signum).name)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


class Shutdown:
    """A service's stop request: first signal (or `request`) → drain; second signal → `force_exit`."""

    def __init__(self, service: str, *, install: bool = True) -> None:
        self.service = service
        self.reason: str | None = None
        self._requested = asyncio.Event()
        self._signals = 0
        if install:
            loop = asyncio.get_running_loop()
            for signum in STOP_SIGNALS:
                loop.add_signal_handler(signum, self.on_signal, signum)

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            force_exit(self.service, signum)
        self.request(f"{signal.Signals(signum).name} received")

    def request(self, reason: str) -> None:
        """Ask for the graceful drain (idempotent: the first reason is kept)."""
        if self.reason is None:
            self.reason = reason
        self._requested.set()

    async def wait(self, *also: asyncio.Event) -> str:
        """Until a stop is requested or one of `also` is set (a supervisor's `failed`); the reason."""
        waiters = [asyncio.ensure_future(event.wait()) for event in (self._requested, *also)]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self.request("a background task failed")  # keeps a signal's reason if one came first
        assert self.reason is not None
        return self.reason
