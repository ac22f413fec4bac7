"""What a checked start must pass to become a call: identity, admission, then its announcement."""

from __future__ import annotations

import logging
import time

import redis.asyncio as redis
from redis.exceptions import RedisError

from switchboard import twilio
from switchboard.keys import Keys

from . import metrics, records
from .admission import EdgeAdmission
from .identity import Verdict, admit_identity
from .settings import EdgeSettings

log = logging.getLogger(__name__)


class StartGate:
    def __init__(self, client: redis.Redis, keys: Keys, settings: EdgeSettings, admission: EdgeAdmission) -> None:
        self._redis = client
        self._keys = keys
        self._settings = settings
        self._admission = admission

    async def check_identity(self, start: twilio.Start) -> Verdict:
        return await admit_identity(self._redis, self._keys, start, self._settings.edge_id,
                                    require_token=self._settings.stream_token_required)

    async def admit(self, start: twilio.Start) -> bool:
        """Whether this stream may be announced; False: close it with 1013 (see admission.py).

        A stream with no free slot waits up to EDGE_ADMISSION_WAIT_S, listed as a waiting
        call meanwhile. A refused one is recorded as ended with outcome `no_capacity`, so
        that /twiml/continue answers it per admission policy instead of reconnecting it.
        """
        settings = self._settings
        if not settings.edge_admission:
            return True
        outcome = await self._admission.admit_now(start)
        if outcome is None and settings.edge_admission_wait_s > 0:
            await records.write_record(self._redis, self._keys, start, settings.edge_id)
            waited = time.monotonic()
            if await self._admission.wait(start.stream_sid, settings.edge_admission_wait_s):
                outcome = "waited"
                log.info("stream admitted after waiting for a free slot",
                         extra={"call_sid": start.call_sid, "stream_sid": start.stream_sid,
                                "waited_ms": round((time.monotonic() - waited) * 1000)})
        if outcome is not None:
            metrics.ADMISSIONS.labels(outcome).inc()
            return True
        metrics.ADMISSIONS.labels("refused").inc()
        metrics.REJECTED.labels("no_capacity").inc()
        view = self._admission.view
        log.warning("stream refused: no free slot in the fleet",
                    extra={"call_sid": start.call_sid, "stream_sid": start.stream_sid, "fleet_free": view.free,
                           "fleet_capacity": view.capacity, "unclaimed": view.unclaimed})
        await records.record_refusal(self._redis, self._keys, start, settings.edge_id, settings.call_retention_s)
        return False

    async def register(self, start: twilio.Start) -> None:
        """Write the call record, then announce the call to the workers."""
        try:
            await records.write_record(self._redis, self._keys, start, self._settings.edge_id)
            await records.announce(self._redis, self._keys, start, self._settings.edge_id)
        except RedisError:
            metrics.REDIS_ERRORS.inc()
            log.exception("could not register call", extra={"stream_sid": start.stream_sid, "call_sid": start.call_sid})
            raise
        finally:
            self._admission.announced(start.stream_sid)
