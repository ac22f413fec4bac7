"""The call.ended delivery loop: every control replica runs one; Redis decides who sends what.

Each pass claims the entries that are due (their `due` moves a lease ahead, so another replica
takes one only if this one died with it), and for each:

1. already sent (`sent:<callSid>`), or no such entry: forgotten;
2. is the call over? Its current stream still live (a new stream after an edge loss or a
   transfer nobody answered) or a transfer still open: later. An end Twilio did not announce
   (the socket just went away) waits CALL_ENDED_SETTLE_S for a new stream of the same call;
3. the payload is built once and kept, so every retry sends the same bytes under the same
   `webhook-id`;
4. POSTed through `switchboard.egress` (public https only unless allowed, one deadline, a byte
   cap on the answer) with Standard Webhooks headers: 2xx → sent; anything else → retried with
   the shared backoff, and after CALL_ENDED_MAX_ATTEMPTS a dead letter (REST, metrics).

A receiver may still see a delivery twice (a replica that dies between the 2xx and marking it
sent): `webhook-id` is the same, as Standard Webhooks expects receivers to deduplicate on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import httpx
import orjson

from switchboard import egress, standard_webhooks
from switchboard.besteffort import Outage, best_effort
from switchboard.call_ended import OutboxKeys
from switchboard.messages import CallField, RecordState
from switchboard.retry import Retry
from switchboard.transfers import OPEN, SWEEP_GRACE_S, Transfer, TransferKeys

from ..deps import State
from . import metrics, payload
from .store import OutboxStore

log = logging.getLogger(__name__)

POLL_S = 0.5
LEASE_S = 60.0
BATCH = 20
ANNOUNCE_EVERY_S = 60.0
MAX_ANSWER_BYTES = 64 * 1024
TRANSFER_WAIT_S = 3.0  # how often a call held by an open transfer is looked at again
USER_AGENT = "Switchboard-Webhooks/1.0"


class Delivery:
    def __init__(self, state: State, http: httpx.AsyncClient, *, link_key: bytes | None,
                 rng: random.Random | None = None) -> None:
        settings = state.settings
        self._state = state
        self._settings = settings
        self._http = http
        self._link_key = link_key
        self._rng = rng or random.Random()
        self.store = OutboxStore(state.redis, OutboxKeys(state.keys.prefix))
        self._tkeys = TransferKeys(state.keys.prefix)
        self._backoff = Retry(base_s=settings.call_ended_backoff_s,
                              cap_s=max(settings.call_ended_backoff_cap_s, settings.call_ended_backoff_s))
        self._outage = Outage()

    @property
    def enabled(self) -> bool:
        return self._settings.call_ended_webhook_url is not None

    async def run(self) -> None:
        """Until cancelled. Redis failures pause the loop (logged once per outage), never end it."""
        announced = 0.0
        while True:
            busy = False
            async with best_effort("deliver call.ended", outage=self._outage, logger=log):
                now = time.time()
                if now - announced >= ANNOUNCE_EVERY_S:
                    await self.store.announce()
                    announced = now
                claimed = await self.store.claim(now, LEASE_S, BATCH)
                for call_sid in claimed:
                    await self.deliver(call_sid)
                busy = len(claimed) == BATCH
                due, dead = await self.store.counts()
                metrics.OUTBOX.set(due)
                metrics.DEAD_LETTERS.set(dead)
            if not busy:
                await asyncio.sleep(POLL_S)

    async def deliver(self, call_sid: str) -> None:
        """One claimed entry: decide, and send or put back."""
        try:
            await self._deliver(call_sid)
        except asyncio.CancelledError:
            # Shutting down mid-attempt: due at once for whichever replica is up next.
            async with best_effort("hand a call.ended back", logger=log):
                await self.store.later(call_sid, time.time())
            raise

    async def _deliver(self, call_sid: str) -> None:
        store = self.store
        item = await store.item(call_sid)
        if item is None or await store.already_sent(call_sid):
            await store.drop(call_sid)
            metrics.DELIVERIES.labels("duplicate" if item is not None else "dropped").inc()
            return
        wait_until = await self._not_before(call_sid, item)
        if wait_until is not None:
            await store.later(call_sid, wait_until)
            metrics.DELIVERIES.labels("deferred").inc()
            return
        body = await store.payload(call_sid)
        if body is None:
            doc = await payload.build(self._state, call_sid, item, link_key=self._link_key,
                                      public_url=self._settings.control_public_url,
                                      link_ttl_s=self._settings.recording_link_ttl_s,
                                      transcript=self._settings.call_ended_include_transcript)
            body = orjson.dumps(doc)
            await store.keep_payload(call_sid, body)
        error = await self._post(call_sid, body)
        if error is None:
            await store.delivered(call_sid)
            metrics.DELIVERIES.labels("delivered").inc()
            metrics.DELAY.observe(max(0.0, time.time() - float(item.get("ended_at") or time.time())))
            log.info("call.ended delivered", extra={"call_sid": call_sid})
            return
        attempts = await store.failed(call_sid)
        if attempts >= self._settings.call_ended_max_attempts:
            await store.dead(call_sid, item=item, attempts=attempts, error=error, payload=body,
                             keep=self._settings.call_ended_max_dead_letters)
            metrics.DELIVERIES.labels("dead").inc()
            log.error("call.ended gave up after %d attempts: %s", attempts, error, extra={"call_sid": call_sid})
            return
        pause = self._backoff.pause_s(attempts - 1, self._rng.random())
        await store.later(call_sid, time.time() + pause)
        metrics.DELIVERIES.labels("failed").inc()
        log.warning("call.ended attempt %d failed (%s); next in %.1f s", attempts, error, pause,
                    extra={"call_sid": call_sid})

    async def _not_before(self, call_sid: str, item: dict[str, Any]) -> float | None:
        """None: the call is over, deliver now. Else when to look again."""
        redis, keys, now = self._state.redis, self._state.keys, time.time()
        current = await redis.get(keys.call_by_callsid(call_sid))
        stream_sid = payload._text(current) if current else item["stream_sid"]
        raw = await redis.hgetall(keys.call(stream_sid))
        fields = {payload._text(k): payload._text(v) for k, v in raw.items()}
        if fields and fields.get(CallField.STATE) != RecordState.ENDED:
            return now + max(1.0, self._settings.call_ended_settle_s)  # it goes on as a new stream
        item["stream_sid"] = stream_sid
        ended_at = float(item.get("ended_at") or now)
        record = await redis.hgetall(self._tkeys.record(call_sid))
        transfer = Transfer.from_fields(record) if record else None
        if transfer is not None and transfer.state in OPEN:
            patience = transfer.ring_timeout_s + SWEEP_GRACE_S + 60
            if now < max(ended_at, transfer.created_at) + patience:
                return now + TRANSFER_WAIT_S
        clean = (fields.get(CallField.END_REASON) or item.get("reason")) == "twilio_stop" \
            or bool(fields.get(CallField.HANGUP_REQUESTED))
        if not clean and now < ended_at + self._settings.call_ended_settle_s:
            return ended_at + self._settings.call_ended_settle_s
        return None

    async def _post(self, call_sid: str, body: bytes) -> str | None:
        """None on a 2xx, else what went wrong."""
        settings = self._settings
        key = settings.call_ended_key
        assert settings.call_ended_webhook_url is not None and key is not None
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   **standard_webhooks.headers(key, f"msg_{call_sid}", body)}
        try:
            reply = await egress.post(self._http, str(settings.call_ended_webhook_url), content=body, headers=headers,
                                      deadline_s=settings.call_ended_timeout_s, max_bytes=MAX_ANSWER_BYTES,
                                      policy=settings.webhook_egress)
        except egress.Refused as refused:
            metrics.REFUSED.labels(refused.reason).inc()
            return f"{refused.reason}: {refused.detail}"
        if reply.status < 300:
            return None
        metrics.REFUSED.labels("http_5xx" if reply.status >= 500 else "http_4xx").inc()
        return f"HTTP {reply.status}"
