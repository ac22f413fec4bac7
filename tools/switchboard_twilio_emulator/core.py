"""The emulator's state, whole: the exchange, its calls and conferences, wired to the programs they run.

The package is layered: pure data (lifecycle, resources, params, steps, twiml, conference,
validate, callees, …) at the bottom, the shared `exchange.Exchange` above it, then the call
engine — calls (a call and its `CallHost`), media (TwiML verbs), rooms (conference seats),
dialing (`<Dial>`) — each importing only the ones before it. `Core` is the top of that
engine: it tells a call which program a TwiML document runs and what `<Dial>` does, so
nothing below imports upward. The HTTP side (api, admin, server) stands on `Core`.
"""

from __future__ import annotations

import logging

import httpx

from switchboard_callsim.call import Pacer

from . import dialing, media, twiml
from .callees import Directory
from .calls import CallActor, CallHost, Program
from .config import EmulatorConfig
from .rooms import Rooms
from .steps import Step
from .validate import Source

log = logging.getLogger(__name__)


class Core(CallHost):
    def __init__(self, config: EmulatorConfig, directory: Directory, http: httpx.AsyncClient, pacer: Pacer) -> None:
        super().__init__(config, directory, http, pacer)
        self.rooms = Rooms(self)

    def document_program(self, source: Source | None) -> Program:
        return media.document_program(source)

    async def dial(self, call: CallActor, verb: twiml.Dial, base_url: str) -> Step:
        return await dialing.run_dial(call, verb, base_url, self.rooms)

    async def hang_up_all(self, timeout: float = 5.0) -> None:
        """End every live call as a REST hang-up would (reset, shutdown); streams get `stop`."""
        for call in self.live_calls():
            call.hang_up("emulator-reset")
        try:
            await self.changes.wait_for(lambda: not self.live_calls(), timeout)
        except TimeoutError:
            log.warning("%d calls did not end within %.0f s", len(self.live_calls()), timeout)

    async def close(self, drain_s: float = 5.0) -> None:
        """Hang up, let the last callbacks and reports go out (within `drain_s`), cancel the rest."""
        await self.hang_up_all()
        await self.drain(drain_s)

    def reset(self) -> None:
        super().reset()
        self.calls = {sid: c for sid, c in self.calls.items() if not c.finished}
        self.rooms.forget_ended()
        self.changes.notify()
