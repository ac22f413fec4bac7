"""Outbound calls whose final status never reached control, looked up at Twilio.

Twilio does not retry a status callback: one lost while control was restarting, or cut by a
proxy closing an idle connection, would leave the call `ringing` here for good, listed as live
and holding a worker slot until its reservation lapses. Every control replica runs this loop;
one per round (a short Redis lease) walks the pending outbound calls. A call is looked up once
its ring time, plus Twilio's queueing and dialling, has passed, and then every
`OUTBOUND_CHECK_S`, unless it is plainly alive (answered, its media stream live). What Twilio
reports is applied as if its callback had come (`Lifecycle.status`, which never moves a call
backwards: a callback arriving late changes nothing).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time

from redis.exceptions import RedisError

from switchboard.messages import CallField, RecordState
from switchboard.outbound import FINAL, OField, TwilioStatus
from switchboard.redis_types import number
from switchboard.twilio_rest import CallsApi, TwilioApiError

from . import metrics
from .lifecycle import Lifecycle
from .store import text

log = logging.getLogger(__name__)

FIRST_CHECK_S = 10  # besides the ring time: Twilio's queueing and dialling
MIN_RING_S = 5  # OUTBOUND_RING_TIMEOUT_S and a call's ring_timeout_s are at least this
PAGE = 500


class Reconciler:
    def __init__(self, lifecycle: Lifecycle, api: CallsApi | None, check_s: float, default_ring_s: float) -> None:
        self.lifecycle = lifecycle
        self.api = api
        self.check_s = check_s
        self.default_ring_s = default_ring_s
        self._replica = secrets.token_hex(8)
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.round(time.time())
            except RedisError as exc:
                log.warning("outbound lookup round failed: redis: %r", exc)
            try:
                await asyncio.wait_for(self._stop.wait(), self.check_s)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()

    async def round(self, now: float) -> int:
        """Look up the overdue calls if this replica holds this round's lease; how many were looked up."""
        store = self.lifecycle.store
        lease_ms = max(1, int(self.check_s * 1000 * 0.9))
        if self.api is None or not await store.redis.set(store.okeys.reconciler(), self._replica, nx=True, px=lease_ms):
            return 0
        # The pending set is scored by creation (ms): a call younger than the shortest ring time is not due.
        newest_due_ms = int((now - MIN_RING_S - FIRST_CHECK_S) * 1000)
        looked_up, offset = 0, 0
        while True:
            refs = [text(r) for r in await store.redis.zrangebyscore(
                store.okeys.pending(), "-inf", newest_due_ms, start=offset, num=PAGE)]
            if not refs:
                return looked_up
            offset += len(refs)
            pipe = store.redis.pipeline(transaction=False)
            for ref in refs:
                pipe.hmget(store.okeys.call(ref), [OField.STATUS, OField.CALL_SID, OField.CREATED_AT,
                                                   OField.RING_TIMEOUT_S])
            for ref, values in zip(refs, await pipe.execute(), strict=True):
                status, call_sid, created_at, ring_s = (text(v) if v is not None else "" for v in values)
                if not call_sid or status in FINAL:
                    continue  # not created at Twilio yet (the dialler, or the campaign runner, sees to it)
                if now < _seconds(created_at, 0.0) + _seconds(ring_s, self.default_ring_s) + FIRST_CHECK_S:
                    continue
                looked_up += 1
                try:
                    await self.check(ref, call_sid, status)
                except TwilioApiError as exc:
                    metrics.LOOKUPS.labels("error").inc()
                    log.warning("could not look up an outbound call at Twilio: %s", exc,
                                extra={"call_sid": call_sid, "ref": ref})

    async def check(self, ref: str, call_sid: str, status: str | None = None) -> None:
        """No final status reached us in time: ask Twilio, unless the call is plainly alive."""
        if self.api is None:
            return
        if status is None:
            status = (await self.lifecycle.store.get(ref) or {}).get(OField.STATUS, "")
        if status == TwilioStatus.IN_PROGRESS and await self._streaming(call_sid):
            metrics.LOOKUPS.labels("alive").inc()
            return
        call = await self.api.fetch(call_sid)
        reported = str(call.get("status", ""))
        if reported not in FINAL:
            metrics.LOOKUPS.labels("unchanged" if reported == status else "moved").inc()
            if reported != status:
                await self.lifecycle.status(ref, {"CallSid": call_sid, "CallStatus": reported})
            return
        metrics.LOOKUPS.labels("ended").inc()
        log.warning("outbound call ended while its status callback was lost: %s", reported,
                    extra={"call_sid": call_sid, "ref": ref, "status": reported})
        await self.lifecycle.status(ref, {"CallSid": call_sid, "CallStatus": reported,
                                          "CallDuration": str(call.get("duration") or "")})

    async def _streaming(self, call_sid: str) -> bool:
        store = self.lifecycle.store
        stream_sid = await store.stream_of(call_sid)
        if stream_sid is None:
            return False
        state = await store.redis.hget(store.keys.call(stream_sid), CallField.STATE)
        return state is not None and state != RecordState.ENDED.encode()


def _seconds(value: str, default: float) -> float:
    seconds = number(value)
    return seconds if seconds is not None and math.isfinite(seconds) else default
