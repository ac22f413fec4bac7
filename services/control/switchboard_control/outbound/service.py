"""Outbound calls and campaigns as one part of the control API: built in the app's lifespan,
reached by routes through `outbound_of(request)`.

It owns an HTTP client for Twilio's API and the status webhooks, the dialer, the callbacks'
lifecycle, and three background loops (the campaign dialer, the webhook sender, the lookup of
calls whose final status never came), supervised: a loop that dies is logged and counted
(`switchboard_task_failures_total`).
"""

from __future__ import annotations

import logging

import httpx
from fastapi import Request

from switchboard.supervise import Supervisor
from switchboard.twilio_rest import CallsApi

from ..deps import State
from . import metrics
from .campaign_runner import CampaignRunner
from .campaign_store import CampaignStore
from .dialer import Dialer
from .lifecycle import Lifecycle
from .reconciler import Reconciler
from .store import OutboundStore
from .webhooks import StatusWebhooks

log = logging.getLogger(__name__)


class Outbound:
    def __init__(self, state: State) -> None:
        settings = state.settings
        self.state = state
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=100), follow_redirects=False)
        credentials = settings.twilio_credentials()
        self.api = CallsApi(
            self.http, settings.twilio_api_base_url, credentials,
            observe=lambda op, result: metrics.TWILIO_REQUESTS.labels(op, result).inc(),
        ) if credentials is not None else None
        self.store = OutboundStore(state.redis, state.keys, settings.call_retention_s)
        self.dialer = Dialer(state, self.store, self.api)
        self.webhooks = StatusWebhooks(self.http, settings.webhook_egress, settings.function_secret)
        self.lifecycle = Lifecycle(state, self.store, self.dialer, self.webhooks)
        self.campaigns = CampaignStore(state.redis, self.store.okeys)
        self.reconciler = Reconciler(self.lifecycle, self.api, settings.outbound_check_s,
                                     settings.outbound_ring_timeout_s)
        self.runner = CampaignRunner(self.campaigns, self.dialer, self.lifecycle, self.api, self.reconciler,
                                     settings.outbound_check_s)
        self.lifecycle.on_ended = self.runner.finish
        self.tasks = Supervisor("control")

    async def start(self) -> None:
        self.tasks.spawn(self.webhooks.run(), name="status_webhooks")
        if self.state.settings.outbound_enabled:
            self.tasks.spawn(self.runner.run(), name="campaigns")
            self.tasks.spawn(self.reconciler.run(), name="outbound_lookups")
        if self.state.settings.outbound_enabled and self.state.settings.function_secret is None:
            log.warning("FUNCTION_SECRET is not set: outbound status webhooks go out unsigned")

    async def stop(self) -> None:
        self.tasks.closing()
        self.reconciler.stop()
        await self.runner.stop()  # dials in progress finish: a half-made create is worse than a late stop
        await self.tasks.aclose()
        await self.http.aclose()


def outbound_of(request: Request) -> Outbound:
    service: Outbound = request.app.state.outbound
    return service
