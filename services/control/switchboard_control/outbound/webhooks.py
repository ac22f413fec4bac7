"""Status webhooks: every status change of an outbound call, forwarded to the URL its request named.

JSON, signed like the workers' function webhooks (`X-Switchboard-Signature`, FUNCTION_SECRET),
sent through `switchboard.egress` (public https only, the address checked is the address
connected to, one deadline, a byte cap on the answer), retried on 5xx/429/transport failures.
Sending never holds up Twilio's callback: changes queue here (bounded; a full queue drops and
counts) and one sender task delivers them in order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from switchboard import egress, webhook_signature
from switchboard.egress_policy import EgressPolicy

from . import metrics

log = logging.getLogger(__name__)

QUEUE_LIMIT = 10_000
ATTEMPTS = 3
ATTEMPT_TIMEOUT_S = 5.0
MAX_ANSWER_BYTES = 4096  # the answer is not used: read little of it


@dataclass(frozen=True, slots=True)
class Delivery:
    url: str
    payload: dict[str, Any]


class StatusWebhooks:
    def __init__(self, http: httpx.AsyncClient, policy: EgressPolicy, secret: SecretStr | None) -> None:
        self._http = http
        self._policy = policy
        self._secret = secret
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(QUEUE_LIMIT)
        self._rng = random.Random()

    def send(self, url: str | None, payload: dict[str, Any]) -> None:
        if not url:
            return
        try:
            self._queue.put_nowait(Delivery(url, payload))
        except asyncio.QueueFull:
            metrics.WEBHOOKS.labels("dropped").inc()
            log.warning("status webhook queue full: dropped", extra={"call_sid": payload.get("call_sid", "")})

    async def run(self) -> None:
        """Deliver until cancelled."""
        while True:
            delivery = await self._queue.get()
            try:
                await self._deliver(delivery)
            except Exception:  # task boundary: one bad delivery must not stop the others
                log.exception("status webhook failed", extra={"call_sid": delivery.payload.get("call_sid", "")})

    async def _deliver(self, delivery: Delivery) -> None:
        body = orjson.dumps(delivery.payload)
        headers = {"Content-Type": "application/json", "User-Agent": "Switchboard/1"}
        if self._secret is not None:
            headers[webhook_signature.HEADER] = webhook_signature.sign(
                self._secret.get_secret_value(), str(int(time.time())), body)
        ids = {"call_sid": delivery.payload.get("call_sid", ""), "status": delivery.payload.get("status", "")}
        try:
            reply = await egress.post_with_retries(
                self._http, delivery.url, content=body, headers=headers, attempts=ATTEMPTS,
                attempt_timeout_s=ATTEMPT_TIMEOUT_S, budget_s=ATTEMPTS * ATTEMPT_TIMEOUT_S,
                max_bytes=MAX_ANSWER_BYTES, policy=self._policy, rng=self._rng,
            )
        except egress.Refused as refused:
            metrics.WEBHOOKS.labels("refused").inc()
            log.warning("status webhook refused: %s", refused.reason, extra={**ids, "reason": refused.reason})
            return
        result = "ok" if reply.status < 300 else "http_error"
        metrics.WEBHOOKS.labels(result).inc()
        if result != "ok":
            log.warning("status webhook answered HTTP %d", reply.status, extra=ids)
