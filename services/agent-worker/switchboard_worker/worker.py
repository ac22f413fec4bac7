"""The agent-worker instance: runs the sessions of the calls it claims, keeps their leases, drains.

Calls come through `claiming.Claims` (new ones from the dispatch stream, takeovers of calls
whose owner went quiet). While a call lives here, every heartbeat refreshes its dispatch
entry's idle time (XCLAIM to itself) and its fencing lease, and publishes the worker's health
and capacity for admission control. If a worker dies, both lapse and another worker takes the
call over, reopening Deepgram with the conversation so far.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from typing import Any

import httpx

from switchboard import capacity
from switchboard import keys as keyspace
from switchboard.besteffort import Outage, best_effort
from switchboard.config import keys_for, redis_client, redis_reachable
from switchboard.httpserver import HealthServer
from switchboard.loadmeter import LoadMeter
from switchboard.streams import StreamReader, StreamWriter
from switchboard.supervise import Supervisor

from . import metrics
from .bookkeeping import Bookkeeping
from .claiming import Claims
from .port import WorkerPort
from .session import CallSession, EntryHandler
from .settings import WorkerSettings

log = logging.getLogger(__name__)
DRAIN_SESSION_WAIT_S = 3.0

# Renew the lease only if it is still ours: a worker that was paused past its lease must
# not extend another worker's. A missing key (Redis restarted and lost it, or it lapsed
# with nobody taking over) is taken back; only another worker's token means "lost".
_RENEW = """
local owner = redis.call('get', KEYS[1])
if owner == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if not owner then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""

class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.keys = keys_for(settings)
        self.random = random.Random()
        self.redis = redis_client(settings)
        self._redis_block = redis_client(settings, blocking=True)
        self._redis_claim = redis_client(settings, blocking=True)
        self.writer = StreamWriter(
            self.redis,
            batch_window_s=settings.worker_batch_window_ms / 1000,
            on_error=lambda exc: metrics.REDIS_ERRORS.inc(),
            on_flush=lambda count, seconds: metrics.REDIS_WRITE.observe(seconds),
            gate=self._confirm_leases,
            # While Redis is away, a whole reply sent ahead of playback waits here in order.
            max_pending_audio_bytes=int(settings.worker_outage_buffer_s * 8000),
        )
        self.reader = StreamReader(
            self._redis_block, self.redis, self.keys.wake(settings.worker_id), self._on_entries,
            on_error=lambda exc: metrics.REDIS_ERRORS.inc(), pace_s=settings.worker_batch_window_ms / 1000,
        )
        self.http = httpx.AsyncClient(follow_redirects=False)
        self.bookkeeping = Bookkeeping(self.redis)
        self.port = WorkerPort(settings=settings, keys=self.keys, redis=self.redis, http=self.http,
                               writer=self.writer, reader=self.reader, bookkeeping=self.bookkeeping,
                               random=self.random)
        self.sessions: dict[str, CallSession] = {}
        self._handlers: dict[str, EntryHandler] = {}  # by stream key, for the shared reader
        self._session_tasks: dict[str, asyncio.Task[None]] = {}
        self._capacity_changed = asyncio.Event()  # a claim or release to publish now
        self._draining = False
        self._stopping = False  # drain is cancelling the background tasks
        self._leases_confirmed_at = time.monotonic()
        self._heartbeat_lock = asyncio.Lock()
        self._health = HealthServer(settings.metrics_host, settings.metrics_port, self._readiness)
        self.tasks = Supervisor("worker")  # main stops the worker when one of its loops dies
        # Past its load threshold a worker takes no new call; admission control counts it as full.
        self.load = LoadMeter(settings.worker_load_threshold, on_change=self._load_changed)
        metrics.LOAD.set_function(lambda: self.load.load)
        self.claims = Claims(settings, self.keys, self.redis, self._redis_claim, self.random, self.load,
                             free_slots=lambda: self.free_slots, start=self._start_session)
        self._claiming: list[asyncio.Task[Any]] = []
        self._heartbeat_outage, self._capacity_outage = Outage(), Outage()
        metrics.CAPACITY.set(settings.worker_capacity)

    @property
    def metrics_port(self) -> int:
        return self._health.port

    @property
    def free_slots(self) -> int:
        return self.settings.worker_capacity - len(self.sessions)

    async def __aenter__(self) -> Worker:
        await self.claims.ensure_group()
        await self._publish_capacity()  # so that healthy implies counted as capacity by admission control
        metrics.TASKS.set_function(lambda: len(asyncio.all_tasks()))  # read at scrape time, on this loop
        await self._health.start()
        for name, loop in (("writer", self.writer.run()), ("reader", self.reader.run()),
                           ("heartbeat", self._heartbeat_loop()), ("capacity", self._capacity_loop()),
                           ("ticker", self._tick_loop()), ("load", self.load.run())):
            self.tasks.spawn(loop, name=name)
        self._claiming = [self.tasks.spawn(self.claims.new_calls(), name="claim"),
                          self.tasks.spawn(self.claims.takeovers(), name="takeover")]
        log.info("worker ready", extra={"worker_id": self.settings.worker_id, "capacity": self.settings.worker_capacity,
                                         "metrics_port": self.metrics_port})
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.drain()

    # --- the calls' sessions ------------------------------------------------------------------
    async def _start_session(self, entry_id: bytes, fields: dict[bytes, bytes], *, takeover: bool) -> None:
        stream_sid = fields.get(b"stream_sid", b"").decode()
        call_sid = fields.get(b"call_sid", b"").decode()
        if not stream_sid or stream_sid in self.sessions:
            return
        token = secrets.token_hex(8)
        lease_key = self.keys.lease(stream_sid)
        async with best_effort("take the lease", errors=metrics.REDIS_ERRORS,
                               extra={"stream_sid": stream_sid}) as attempt:
            acquired = await self.redis.set(lease_key, token, px=self.settings.lease_ms, nx=True)
            if not acquired and takeover:
                return  # the owner is alive but late with its refresh: give the entry back
            if not acquired:
                await self.redis.set(lease_key, token, px=self.settings.lease_ms)
        if attempt.failed:
            return
        for key in self.keys.per_call(stream_sid):
            self.writer.unfence(key)  # the call is ours (again)
        session = CallSession(self.port, stream_sid, call_sid, entry_id, takeover)
        session.lease_token = token
        self.sessions[stream_sid] = session
        self._handlers.update(session.entry_handlers())
        metrics.LIVE_CALLS.set(len(self.sessions))
        metrics.CLAIMS.labels("takeover" if takeover else "new").inc()
        self._capacity_changed.set()
        task = asyncio.create_task(self._run_session(session), name=f"call-{stream_sid}")
        self._session_tasks[stream_sid] = task

    async def _run_session(self, session: CallSession) -> None:
        try:
            await session.run()
        except Exception:  # task boundary: one call's bug must not take the worker down
            log.exception("call session crashed", extra=session.extra)
        finally:
            self.sessions.pop(session.stream_sid, None)
            self._session_tasks.pop(session.stream_sid, None)
            for key in session.entry_handlers():
                self._handlers.pop(key, None)
            metrics.LIVE_CALLS.set(len(self.sessions))
            self.claims.slot_freed()
            self._capacity_changed.set()

    # --- shared reader dispatch ------------------------------------------------------------------
    def _on_entries(self, key: str, batch: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        handler = self._handlers.get(key)
        if handler is not None:
            handler(batch)

    # --- heartbeat ---------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        period = self.settings.lease_ms / 3000
        while not self._stopping:
            async with best_effort("heartbeat", errors=metrics.REDIS_ERRORS, outage=self._heartbeat_outage):
                await self._heartbeat()
            await asyncio.sleep(period)

    async def _confirm_leases(self) -> None:
        """Writer gate (fencing): nothing is written for calls this worker may have lost.

        A process that was paused (SIGSTOP, a long GC, a VM freeze) past its lease must not
        speak on a call another worker has taken over: before writing, if the leases were
        not confirmed recently, confirm them now; lost calls are released and their pending
        entries dropped.
        """
        if time.monotonic() - self._leases_confirmed_at < self.settings.lease_ms / 2000:
            return
        async with best_effort("confirm leases before writing", errors=metrics.REDIS_ERRORS,
                               outage=self._heartbeat_outage):
            await self._heartbeat()

    async def _heartbeat(self) -> None:
        async with self._heartbeat_lock:
            await self._heartbeat_locked()

    async def _heartbeat_locked(self) -> None:
        started = time.monotonic()
        sessions = list(self.sessions.values())
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.worker(self.settings.worker_id), mapping={
            "capacity": self.settings.worker_capacity, "live": len(sessions), "draining": int(self._draining),
            "ts": repr(time.time()),
        })
        pipe.expire(self.keys.worker(self.settings.worker_id), max(3, self.settings.lease_ms * 3 // 1000))
        pipe.eval(*self._capacity_command(len(sessions)))
        if sessions:
            pipe.xclaim(self.keys.dispatch(), keyspace.DISPATCH_GROUP, self.settings.worker_id, 0,
                        [s.dispatch_id for s in sessions], justid=True)
        first_renewal = len(pipe)
        for session in sessions:
            pipe.eval(_RENEW, 1, self.keys.lease(session.stream_sid), session.lease_token, self.settings.lease_ms)
            pipe.hset(session.call_key, "in_pos", session.in_position)
        results = await pipe.execute(raise_on_error=False)
        renewals = results[first_renewal::2]
        for session, renewed in zip(sessions, renewals):
            if renewed == 0 and session.stream_sid in self._session_tasks:
                metrics.LEASES_LOST.inc()
                log.warning("lease lost; stopping the call here", extra=session.extra)
                session.release("lease_lost")
                for key in self.keys.per_call(session.stream_sid):
                    self.writer.fence(key)
                self._session_tasks[session.stream_sid].cancel()
        self._leases_confirmed_at = started

    # --- capacity, for admission control (switchboard.capacity) ------------------------------------
    def _capacity_command(self, live: int) -> tuple[Any, ...]:
        # The published load lapses after one lease: a worker that stops heartbeating stops
        # counting as capacity exactly when its calls become eligible for takeover.
        overloaded = self.load.overloaded
        free = 0 if self._draining or overloaded else max(0, self.settings.worker_capacity - live)
        metrics.FREE_SLOTS.set(free)
        return capacity.publish_command(self.keys, self.settings.worker_id, self.settings.worker_capacity, live,
                                        self._draining, self.settings.lease_ms, self.load.load, overloaded)

    def _load_changed(self, overloaded: bool) -> None:
        metrics.OVERLOADED.set(int(overloaded))
        log.warning("load %.2f %s the threshold %.2f: %s new calls", self.load.load,
                    "crossed" if overloaded else "back under", self.settings.worker_load_threshold,
                    "claiming no" if overloaded else "claiming", extra={"worker_id": self.settings.worker_id})
        self._capacity_changed.set()  # admission control hears it now, not a heartbeat later

    async def _publish_capacity(self) -> None:
        await self.redis.eval(*self._capacity_command(len(self.sessions)))

    async def _capacity_loop(self) -> None:
        """Publish a claim or release at once, not a heartbeat later; a burst is one write."""
        while not self._stopping:
            await self._capacity_changed.wait()
            self._capacity_changed.clear()
            if self._stopping:
                return
            # A failure is made up for by the next heartbeat, which publishes it too.
            async with best_effort("publish capacity", errors=metrics.REDIS_ERRORS,
                                   outage=self._capacity_outage) as attempt:
                await self._publish_capacity()
            if attempt.failed:
                await asyncio.sleep(0.5)

    async def _tick_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                try:
                    session.tick(now)
                except Exception:  # one call's bug must not stop KeepAlives for every call
                    log.exception("tick failed", extra=session.extra)

    # --- drain --------------------------------------------------------------------------------------
    async def drain(self) -> None:
        """Stop claiming, hand live calls to other workers (within DRAIN_TIMEOUT_S), then close everything."""
        if not self._draining:
            self._draining = True
            metrics.DRAINS.inc()
        self.claims.stop()
        log.info("draining", extra={"worker_id": self.settings.worker_id, "live_calls": len(self.sessions)})
        self.tasks.closing()
        for task in self._claiming:
            task.cancel()
        try:
            async with asyncio.timeout(self.settings.drain_timeout_s):
                await self._hand_over_all()
        except TimeoutError:
            log.warning("drain took longer than DRAIN_TIMEOUT_S=%ss; closing anyway (the leases lapse and "
                        "other workers take the calls over)", self.settings.drain_timeout_s)
        # Loops also stop on this flag: on Python 3.11 a cancellation that arrives while a
        # Redis command is being sent can be lost (asyncio.wait_for inside redis-py returns
        # the result instead), and a loop that only relies on it would never end.
        self._stopping = True
        self._capacity_changed.set()
        self.load.stop()
        self.writer.stop()
        self.reader.stop()
        await self.tasks.aclose()
        await self.bookkeeping.drain()
        await self._leave_fleet(withdraw=True)
        await self._health.close()
        await self.http.aclose()
        await self.writer.close()
        await self.reader.close()
        for client in (self.redis, self._redis_block, self._redis_claim):
            await client.aclose()

    async def _hand_over_all(self) -> None:
        await self._leave_fleet(withdraw=False)  # admission control stops counting this worker's slots now
        sessions = list(self.sessions.values())
        for session in sessions:
            session.release("handover")
        for task in list(self._session_tasks.values()):
            task.cancel()
        if self._session_tasks:
            # Bounded: a session that missed its cancellation must not hold the drain (and so
            # every call's hand-over) until the orchestrator's SIGKILL.
            _done, stuck = await asyncio.wait(list(self._session_tasks.values()), timeout=DRAIN_SESSION_WAIT_S)
            if stuck:
                log.warning("%d sessions did not stop; handing their calls over anyway", len(stuck))
        await self.writer.drain()  # the last transcript lines and audio before anyone else takes over
        if sessions:
            await self._hand_over(sessions)

    async def _leave_fleet(self, *, withdraw: bool) -> None:
        # A failure costs little: the published capacity lapses after one lease.
        async with best_effort("update the fleet capacity on drain", errors=metrics.REDIS_ERRORS):
            if withdraw:
                await capacity.withdraw(self.redis, self.keys, self.settings.worker_id)
            else:
                await self._publish_capacity()

    async def _hand_over(self, sessions: list[CallSession]) -> None:
        # Age the dispatch entries past the lease and drop the leases, so that another
        # worker adopts each call on its next takeover scan instead of a lease later.
        async with best_effort("record the hand-over", errors=metrics.REDIS_ERRORS):
            pipe = self.redis.pipeline(transaction=False)
            for session in sessions:
                pipe.hset(session.call_key, "in_pos", session.in_position)
                pipe.delete(self.keys.lease(session.stream_sid))
            pipe.xclaim(self.keys.dispatch(), keyspace.DISPATCH_GROUP, self.settings.worker_id, 0,
                        [s.dispatch_id for s in sessions], idle=self.settings.lease_ms * 10, justid=True)
            await pipe.execute()

    async def _readiness(self) -> tuple[bool, dict[str, Any]]:
        redis_ok = await redis_reachable(self.redis)
        ready = redis_ok and not self._draining and self.tasks.ok
        return ready, {"redis": redis_ok, "draining": self._draining, "live_calls": len(self.sessions),
                       "capacity": self.settings.worker_capacity, **self.tasks.readiness_detail()}

