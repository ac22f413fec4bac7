"""What the control API does besides answering requests: call.ended deliveries and the transfer
sweeper, each a supervised loop, and the clients they (and the transfer routes) share: one HTTP
client for webhooks, Twilio's REST API for transfers.

Built in the app's lifespan (`start`), closed at shutdown (`aclose`: loops cancelled, an attempt
in flight handed back to the outbox). A loop that dies is logged and counted
(`switchboard_task_failures_total`) and named in `/readyz`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

import httpx
from fastapi import Depends, Request

from switchboard.besteffort import Outage, best_effort
from switchboard.supervise import Supervisor
from switchboard.twilio_rest import CallsApi

from .deps import State
from .outbox import links
from .outbox.delivery import Delivery
from .transfers import TransferDesk

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 1.0


class Background:
    def __init__(self, state: State) -> None:
        settings = state.settings
        self.state = state
        self.http = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        credentials = settings.twilio_credentials()
        self.calls = CallsApi(self.http, settings.twilio_api_base_url, credentials) if credentials else None
        self.desk = TransferDesk(state.redis, state.keys, self.calls, settings.control_public_url)
        self.link_key = links.link_key(settings.recording_link_secret, settings.control_api_token)
        self.delivery = Delivery(state, self.http, link_key=self.link_key)
        self.tasks = Supervisor("control")

    def start(self) -> None:
        self.tasks.spawn(self._sweep(), name="transfer_sweeper")
        if self.delivery.enabled:
            self.tasks.spawn(self.delivery.run(), name="call_ended")

    async def aclose(self) -> None:
        self.tasks.closing()
        await self.tasks.aclose()
        await self.http.aclose()

    async def _sweep(self) -> None:
        outage = Outage()
        while True:
            async with best_effort("sweep transfers", outage=outage, logger=log):
                await self.desk.sweep(time.time())
            await asyncio.sleep(SWEEP_EVERY_S)


def get_background(request: Request) -> Background:
    return request.app.state.background  # type: ignore[no-any-return]


BackgroundDep = Annotated[Background, Depends(get_background)]
