"""The campaign dialer: every control replica runs one; Redis decides who dials what.

Each round, for every active campaign: claim due destinations while the campaign is running and
under its concurrency cap (`CampaignStore.claim`, atomic), and dial each in a task of its own,
which takes the campaign's next pace slot right before it asks Twilio (`CampaignStore.pace`);
look at in-flight destinations whose time passed (a dialler that died mid-create, a status
callback lost while control was down: Twilio is asked); and mark the campaign completed
once nothing is pending or in flight. A destination's attempt ends when its call's final
status arrives (`finish`, from the callback on whichever replica gets it), which schedules a
retry or closes it.

On shutdown the loop stops claiming and lets the dials in progress finish (a create cut in
half would leave it unknown whether Twilio dials).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from redis.exceptions import RedisError

from switchboard import campaigns
from switchboard.campaigns import Destination
from switchboard.outbound import FINAL, OField
from switchboard.twilio_rest import CallsApi, TwilioApiError

from . import metrics
from .campaign_store import CampaignStore, Placement, decode_spec
from .dialer import Dialer, DialError, DialSpec
from .lifecycle import Lifecycle
from .models import CampaignSpec
from .reconciler import FIRST_CHECK_S, Reconciler

log = logging.getLogger(__name__)

LEASE_MS = 45_000  # a create takes at most ~25 s (retries, timeouts); past this its dialler is gone
ROUND_MAX_S = 0.25
NO_SLOT_RETRY_S = 1.0
SHUTDOWN_WAIT_S = 20.0


class CampaignRunner:
    def __init__(self, store: CampaignStore, dialer: Dialer, lifecycle: Lifecycle, api: CallsApi | None,
                 reconciler: Reconciler, check_s: float) -> None:
        self.store = store
        self.dialer = dialer
        self.lifecycle = lifecycle
        self.api = api
        self.reconciler = reconciler
        self.check_ms = int(check_s * 1000)
        self._dials: set[asyncio.Task[None]] = set()
        self._specs: dict[str, CampaignSpec] = {}
        self._wake = asyncio.Event()
        self.stopping = False

    def wake(self) -> None:
        """A campaign was created or resumed: look now rather than at the next round."""
        self._wake.set()

    async def run(self) -> None:
        while not self.stopping:
            try:
                wait_s = await self._round()
            except RedisError as exc:
                log.warning("campaign round failed: redis: %r", exc)
                wait_s = 1.0
            except Exception:  # task boundary: one bad campaign must not stop every campaign
                log.exception("campaign round failed")
                wait_s = 1.0
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait_s)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self.stopping = True
        self._wake.set()
        if self._dials:
            await asyncio.wait(self._dials, timeout=SHUTDOWN_WAIT_S)

    async def _round(self) -> float:
        wait_s = ROUND_MAX_S
        ids = await self.store.active()
        metrics.CAMPAIGNS_ACTIVE.set(len(ids))
        in_flight = 0
        for cid in ids:
            if self.stopping:
                break
            wait_s = min(wait_s, await self._campaign(cid))
            in_flight += len(await self.store.flight_indexes(cid))
        metrics.CAMPAIGN_IN_FLIGHT.set(in_flight)
        return max(0.01, wait_s)

    async def _campaign(self, cid: str) -> float:
        meta = await self.store.meta(cid)
        if meta is None:
            await self.store.retire(cid)
            return ROUND_MAX_S
        spec = self.spec(cid, meta)
        wait_ms = int(ROUND_MAX_S * 1000)
        state = meta.get("state")
        if state == "running":
            while not self.stopping:
                claim = await self.store.claim(cid, spec.concurrency, LEASE_MS)
                if claim.index is None:
                    wait_ms = min(wait_ms, claim.wait_ms)
                    break
                self._spawn(self._dial(cid, claim.index, spec))
        await self._look_after(cid, spec)
        await self._maybe_finished(cid, state)
        return wait_ms / 1000

    def spec(self, cid: str, meta: dict[str, str]) -> CampaignSpec:
        spec = self._specs.get(cid)
        if spec is None:
            spec = self._specs[cid] = CampaignSpec.model_validate(decode_spec(meta))
        return spec

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)

    # --- one attempt -------------------------------------------------------------------------------
    async def _dial(self, cid: str, index: int, spec: CampaignSpec) -> None:
        try:
            await self._attempt(cid, index, spec)
        except Exception:  # task boundary: the destination's lease lapses and it is looked at again
            log.exception("campaign dial failed", extra={"campaign": cid, "destination": index})

    async def _attempt(self, cid: str, index: int, spec: CampaignSpec) -> None:
        now = time.time()
        current = await self.store.destination(cid, index)
        if current is None:
            return
        dest = current[1]
        opens = self._opens(dest, spec, now)
        if opens > now:
            metrics.CAMPAIGN_DIALS.labels("outside_hours").inc()
            await self.store.update(cid, index, lambda d: (campaigns.requeue(d, opens), Placement(due_ms=_ms(opens)))
                                    if d.status == "pending" else None)
            return
        ref = uuid.uuid4().hex
        lease = Placement(flight_ms=_ms(now) + LEASE_MS)
        started = await self.store.update(
            cid, index, lambda d: (campaigns.dialing(d, ref, now), lease) if d.status == "pending" else None)
        if started is None:
            return  # canceled meanwhile
        call = DialSpec(to=dest.to, from_=spec.from_, profile=spec.profile, settings=spec.settings,
                        context=dest.context, machine_detection=spec.machine_detection,
                        ring_timeout_s=spec.ring_timeout_s, time_limit_s=spec.time_limit_s,
                        status_webhook=str(spec.status_webhook) if spec.status_webhook else None,
                        campaign=cid, index=index)
        interval = campaigns.dial_interval_ms(spec.cps)

        async def paced() -> None:
            await asyncio.sleep(await self.store.pace(cid, interval) / 1000)
            while (late_ms := await self.store.sending(cid, interval)) > 0:  # noqa: ASYNC110 - a deadline, not an event
                await asyncio.sleep(late_ms / 1000)  # the one before went out late: keep the interval

        try:
            placed = await self.dialer.place(call, ref=ref, origin="campaign", before_create=paced)
        except DialError as exc:
            await self._not_placed(cid, index, ref, spec, exc)
            return
        metrics.CAMPAIGN_DIALS.labels("placed").inc()
        ring_s = spec.ring_timeout_s or self.dialer.settings.outbound_ring_timeout_s
        # First look when a call that was never answered must have ended; then every check_s.
        check_at = _ms(time.time()) + (ring_s + FIRST_CHECK_S) * 1000 + self.check_ms
        await self.store.update(cid, index, lambda d: (
            campaigns.in_call(d, placed.call_sid), Placement(flight_ms=check_at))
            if d.status == "dialing" and d.current is not None and d.current.ref == ref else None)

    def _opens(self, dest: Destination, spec: CampaignSpec, now: float) -> float:
        hours = spec.calling_hours
        if hours is None:
            return now
        zone = campaigns.zone_for(dest.to, dest.timezone, hours.timezone)
        if zone is None:
            return now  # refused when the campaign was created; an old record: dial
        opens = hours.rule().next_open(datetime.fromtimestamp(now, UTC), ZoneInfo(zone))
        return opens.timestamp()

    async def _not_placed(self, cid: str, index: int, ref: str, spec: CampaignSpec, exc: DialError) -> None:
        now = time.time()
        mine = _holding(ref)
        if exc.reason in ("no_capacity", "twilio_rate_limited", "twilio_auth", "twilio_unreachable", "twilio_server"):
            # Nothing was dialled, and trying this number again will not change why: not an attempt.
            later = now + (exc.retry_after_s or NO_SLOT_RETRY_S if exc.reason != "twilio_server" else 30)
            metrics.CAMPAIGN_DIALS.labels("no_slot" if exc.reason == "no_capacity" else "rate_limited"
                                          if exc.reason == "twilio_rate_limited" else "error").inc()
            await self.store.update(cid, index, lambda d: (campaigns.requeue(d, later), Placement(due_ms=_ms(later)))
                                    if mine(d) else None)
            if exc.reason == "twilio_auth":
                await self.store.set_state(cid, "paused", reason=exc.message, allowed=("running",))
                log.error("campaign paused: %s", exc.message, extra={"campaign": cid})
            return
        metrics.CAMPAIGN_DIALS.labels("error").inc()
        await self._ended(cid, index, ref, "error", spec, error=exc.message)

    # --- the end of an attempt ----------------------------------------------------------------------
    async def finish(self, record: dict[str, str], outcome: str) -> None:
        """An outbound call of a campaign ended (Lifecycle.on_ended)."""
        cid, raw_index = record.get(OField.CAMPAIGN, ""), record.get(OField.INDEX, "")
        if not cid or not raw_index.isdigit():
            return
        meta = await self.store.meta(cid)
        if meta is None:
            return
        await self._ended(cid, int(raw_index), record.get(OField.REF, ""), outcome, self.spec(cid, meta),
                          answered_by=record.get(OField.ANSWERED_BY, ""))
        self.wake()  # a slot under the concurrency cap just freed

    async def _ended(self, cid: str, index: int, ref: str, outcome: str, spec: CampaignSpec, *,
                     answered_by: str = "", error: str = "") -> None:
        policy = spec.retry.policy()
        now = time.time()

        def change(dest: Destination) -> tuple[Destination, Placement] | None:
            if not _holding(ref)(dest):
                return None  # already moved on (a repeated callback, a reconciliation that came first)
            new, again = campaigns.attempt_ended(dest, outcome, now, policy, answered_by=answered_by, error=error)
            if again is None:
                return new, Placement(outcome=outcome, attempt=True)
            return new, Placement(due_ms=_ms(again), attempt=True)

        dest = await self.store.update(cid, index, change)
        if dest is not None:
            log.info("campaign destination %s: %s", dest.status, outcome,
                     extra={"campaign": cid, "destination": index, "outcome": outcome})

    # --- in flight for too long ---------------------------------------------------------------------
    async def _look_after(self, cid: str, spec: CampaignSpec) -> None:
        for index in await self.store.expired(cid, max(LEASE_MS, self.check_ms)):
            current = await self.store.destination(cid, index)
            attempt = current[1].current if current is not None else None
            if current is None or attempt is None:
                continue
            try:
                if current[1].status == "dialing":
                    await self._orphaned_dial(cid, index, current[1], spec)
                elif attempt.call_sid:
                    await self.reconciler.check(attempt.ref, attempt.call_sid)
            except TwilioApiError as exc:
                log.warning("could not look up a campaign call: %s", exc, extra={"campaign": cid, "destination": index})

    async def _orphaned_dial(self, cid: str, index: int, dest: Destination, spec: CampaignSpec) -> None:
        """A dialler died between claiming and recording Twilio's answer: did Twilio create the call?"""
        attempt = dest.current
        assert attempt is not None
        found = None
        if self.api is not None:
            caller = spec.from_ or self.dialer.settings.outbound_default_from
            for call in await self.api.list(To=dest.to):
                created = _rfc2822(call.get("date_created"))
                mine = not caller or call.get("from") == caller
                if created is not None and created >= attempt.started_at - 5 and mine:
                    found = call
                    break
        if found is None:
            log.warning("campaign dial interrupted before Twilio took it: dialling again",
                        extra={"campaign": cid, "destination": index})
            now = time.time()
            await self.store.update(cid, index, lambda d: (campaigns.requeue(d, now), Placement(due_ms=_ms(now)))
                                    if _holding(attempt.ref)(d) else None)
            return
        call_sid = str(found["sid"])
        log.warning("campaign dial interrupted after Twilio took it: adopting %s", call_sid,
                    extra={"campaign": cid, "destination": index, "call_sid": call_sid})
        await self.dialer.bind(attempt.ref, call_sid)
        await self.store.update(cid, index, lambda d: (
            campaigns.in_call(d, call_sid), Placement(flight_ms=_ms(time.time()) + self.check_ms))
            if d.status == "dialing" and _holding(attempt.ref)(d) else None)
        if str(found.get("status")) in FINAL:
            await self.reconciler.check(attempt.ref, call_sid)

    async def _maybe_finished(self, cid: str, state: str | None) -> None:
        pending, flight, *_ = await self.store.progress(cid)
        if flight:
            return
        if state == "running" and not pending:
            if await self.store.set_state(cid, "completed", allowed=("running",)) is not None:
                log.info("campaign completed", extra={"campaign": cid})
            await self.store.retire(cid)
            self._specs.pop(cid, None)
        elif state in ("canceled", "completed"):
            if state == "canceled" and pending:
                await self.cancel_pending(cid)  # a retry scheduled by a call that ended after the cancel
            await self.store.retire(cid)
            self._specs.pop(cid, None)

    async def cancel(self, cid: str) -> bool:
        """Stop the campaign: nothing more is dialled, ringing calls are canceled, answered ones go on."""
        if await self.store.set_state(cid, "canceled", allowed=("running", "paused")) is None:
            return False
        await self.cancel_pending(cid)
        for index in await self.store.flight_indexes(cid):
            current = await self.store.destination(cid, index)
            attempt = current[1].current if current is not None else None
            if attempt is not None and attempt.call_sid and self.api is not None:
                try:
                    await self.api.cancel(attempt.call_sid)  # no effect on an answered call
                except TwilioApiError as exc:
                    log.warning("could not cancel a campaign call: %s", exc, extra={"call_sid": attempt.call_sid})
        log.info("campaign canceled", extra={"campaign": cid})
        return True

    async def cancel_pending(self, cid: str) -> None:
        for index in await self.store.due_indexes(cid):
            await self.store.update(cid, index, lambda d: (campaigns.canceled(d), Placement(outcome="canceled"))
                                    if d.status == "pending" else None)


def _holding(ref: str) -> Callable[[Destination], bool]:
    def holds(dest: Destination) -> bool:
        current = dest.current
        return current is not None and current.ref == ref
    return holds


def _ms(unix_s: float) -> int:
    return int(unix_s * 1000)


def _rfc2822(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
