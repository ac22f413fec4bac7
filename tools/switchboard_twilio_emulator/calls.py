"""One emulated call, from creation to its end: queue, dial, ring, answer (or not), AMD, the program.

The life reads top to bottom in `_life`: wait for the account's CPS slot (queued), dial
(initiated), ring, then busy / failed / no-answer / answered as the callee's script says,
or canceled by a REST update. An answered call runs its program: the TwiML (media.py), a
whisper and a bridge (dialing.py) or a conference seat (rooms.py). A REST redirect or
hang-up interrupts the program: a stream gets Twilio's `stop` and closes, any other verb
is cancelled and cleans up after itself. Status callbacks go out in order, one at a time,
without holding the call up; each call's story is its `timeline`.

A call runs in a `CallHost`: the shared exchange, the list of calls, and the two things
only the top of the package knows (core.Core): which program a TwiML document runs, and
what `<Dial>` does. So this module imports none of the modules that run programs.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx

from switchboard_callsim.call import Pacer
from switchboard_callsim.leg import CallerLeg

from . import amd as amd_rules
from . import party, twiml
from .callbacks import CallbackQueue
from .callees import Callee, Directory
from .callees import to_json as callee_json
from .config import EmulatorConfig
from .exchange import Exchange, new_sid
from .lifecycle import CallStatus, Event, Subscription, transition
from .params import status_callback_params
from .records import Timeline
from .resources import CallRecord, call_json
from .steps import Finish, Goto, Step
from .validate import AmdRequest, Source, StatusCallback

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Interrupt:
    source: Source | None = None  # None: hang up
    reason: str = ""


MAX_DOCUMENTS = 1000  # TwiML documents one call may run (a <Redirect> loop without end hangs up)
Program = Callable[["CallActor"], Coroutine[Any, Any, Step]]


class CallHost(Exchange, abc.ABC):
    """The exchange with its calls (the newest `max_calls` ended ones kept for introspection)."""

    def __init__(self, config: EmulatorConfig, directory: Directory, http: httpx.AsyncClient, pacer: Pacer) -> None:
        super().__init__(config, directory, http, pacer)
        self.calls: dict[str, CallActor] = {}

    def add_call(self, call: CallActor) -> None:
        self.calls[call.sid] = call
        ended = [sid for sid, c in self.calls.items() if c.finished]
        for sid in ended[: max(0, len(ended) - self.config.max_calls)]:
            del self.calls[sid]

    def live_calls(self) -> list[CallActor]:
        return [c for c in self.calls.values() if not c.finished]

    @abc.abstractmethod
    def document_program(self, source: Source | None) -> Program:
        """The program that gets a TwiML document (fetched, or inline) and runs its verbs."""

    @abc.abstractmethod
    async def dial(self, call: CallActor, verb: twiml.Dial, base_url: str) -> Step:
        """Run `<Dial>` for `call`: a child call, or a seat in a conference."""


class CallActor:
    def __init__(
        self,
        core: CallHost,
        *,
        to: str,
        from_: str,
        direction: str,
        callee: Callee,
        source: Source | None = None,
        status_callback: StatusCallback | None = None,
        ring_timeout_s: int = 60,
        amd: AmdRequest | None = None,
        parent: CallActor | None = None,
        on_answer: Program | None = None,
        queued: bool = True,
    ) -> None:
        now = time.time()
        self.core = core
        self.sid = new_sid("CA")
        self.rec = CallRecord(self.sid, core.account.sid, to, from_, direction, now,
                              parent_call_sid=parent.sid if parent else None, date_updated=now)
        if direction == "inbound":
            self.rec.status = CallStatus.RINGING
        self.callee = callee
        self.source = source
        self.status_callback = status_callback
        self._subscription = Subscription(status_callback.events) if status_callback else None
        self.ring_timeout_s = ring_timeout_s
        self.amd_request = amd
        self.amd: amd_rules.Verdict | None = None
        self.parent = parent
        self.on_answer = on_answer
        self.queued = queued
        self.timeline = Timeline(core.changes, now)
        self.heard: list[dict[str, Any]] = []  # what this call's party heard: <Say>, <Play>, whisper, hold music
        self.leg: CallerLeg | None = None
        self.report: dict[str, Any] | None = None  # the party's stream results, once the call is over
        self.report_complete = False
        self.children: list[CallActor] = []
        self.status_listeners: list[Callable[[CallActor, Event], None]] = []
        self.in_stream = False
        self.program: asyncio.Task[Step] | None = None
        self.pending: Interrupt | None = None
        self.end_reason: str | None = None
        self._stop_ringing = asyncio.Event()
        self._stop_reason = ""
        self._finished = asyncio.Event()
        self.callbacks = CallbackQueue(core, self.sid, call_sid=self.sid)
        self._timers: list[asyncio.Task[None]] = []
        self.extra = {"call_sid": self.sid}

    # --- identity -------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    async def wait_finished(self) -> None:
        await self._finished.wait()

    def start(self) -> CallActor:
        self.core.add_call(self)
        self.timeline.add("created", to=self.rec.to, direction=self.rec.direction, callee=self.callee.kind)
        self.core.spawn(self._run(), f"call {self.sid}")
        return self

    # --- the life -------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            finish = await self._life()
        except asyncio.CancelledError:
            self._end(CallStatus.COMPLETED, "emulator-shutdown")
            raise
        except Exception:  # task boundary: one broken call must not take the emulator down
            log.exception("call crashed", extra=self.extra)
            self._end(CallStatus.FAILED, "emulator-error")
            return
        self._end(finish.status, finish.reason)

    async def _life(self) -> Finish:
        core, callee = self.core, self.callee
        if self.rec.direction == "inbound":
            return await self._run_program(self.on_answer)
        if self.queued:
            delay = core.limiter.reserve(asyncio.get_running_loop().time())
            self.rec.queue_time_ms = round(delay * 1000)
            if delay > 0:
                self.timeline.add("cps-queue", wait_ms=self.rec.queue_time_ms)
                if await self._ringing_stopped(delay):
                    return Finish(self._stop_reason, CallStatus.CANCELED)
        self.rec.start_time = time.time()
        self._progress(Event.INITIATED)
        setup_s = core.config.setup_ms / 1000
        if callee.kind == "failed":
            if await self._ringing_stopped(setup_s):
                return Finish(self._stop_reason, CallStatus.CANCELED)
            return Finish("callee-failed", CallStatus.FAILED)
        if callee.kind == "busy":
            if await self._ringing_stopped(min(callee.ring_s, self.ring_timeout_s)):
                return Finish(self._stop_reason, CallStatus.CANCELED)
            return Finish("callee-busy", CallStatus.BUSY)
        if await self._ringing_stopped(setup_s):
            return Finish(self._stop_reason, CallStatus.CANCELED)
        self._progress(Event.RINGING)
        answers_in = callee.ring_s if callee.answers else math.inf
        if answers_in >= self.ring_timeout_s:
            if await self._ringing_stopped(self.ring_timeout_s):
                return Finish(self._stop_reason, CallStatus.CANCELED)
            return Finish("ring-timeout", CallStatus.NO_ANSWER)
        if await self._ringing_stopped(answers_in):
            return Finish(self._stop_reason, CallStatus.CANCELED)
        self.answer()
        if self.amd is not None and not self.amd_request.asynchronous:  # type: ignore[union-attr]
            # Synchronous AMD: Twilio fetches the TwiML only once it has decided (AnsweredBy in the request).
            await self._detection(self.amd)
        return await self._run_program(self.on_answer)

    async def _ringing_stopped(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stop_ringing.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def answer(self) -> None:
        self.rec.answered_at = time.time()
        self._progress(Event.ANSWERED)
        callee = self.callee
        if callee.hangup_after_s > 0:
            self.after(callee.hangup_after_s, lambda: self.hang_up("callee-hangup"))
        if callee.kind in ("voicemail", "fax"):
            # The machine hangs up at its longest message wherever the call is (stream or not).
            self.after(callee.machine.total_ms / 1000, lambda: self.hang_up("callee-hangup"))
        if self.amd_request is not None:
            self.amd = amd_rules.verdict(callee, self.amd_request)
            if self.amd is not None and self.amd_request.asynchronous:
                self._timers.append(self.core.spawn(self._detection(self.amd), f"amd {self.sid}"))

    async def _detection(self, verdict: amd_rules.Verdict) -> None:
        await asyncio.sleep(verdict.after_ms / 1000)
        if self.finished:
            self.timeline.add("amd-undecided", reason="the call ended first")
            return
        self.rec.answered_by = verdict.answered_by
        self.core.metrics.amd.labels(verdict.answered_by).inc()
        self.timeline.add("amd", answered_by=verdict.answered_by, after_ms=verdict.after_ms)
        request = self.amd_request
        if request is not None and request.asynchronous and request.callback:
            params = {"AccountSid": self.rec.account_sid, "CallSid": self.sid,
                      "AnsweredBy": verdict.answered_by, "MachineDetectionDuration": str(verdict.after_ms)}
            self.callbacks.queue("amd", request.callback, request.callback_method, params)

    async def _run_program(self, first: Program | None) -> Finish:
        program: Program = first or self.core.document_program(self.source)
        for _ in range(MAX_DOCUMENTS):
            pending, self.pending = self.pending, None
            if pending is not None:
                if pending.source is None:
                    return Finish(pending.reason)
                self.timeline.add("redirected", url=pending.source.url, inline=pending.source.twiml is not None)
                program = self.core.document_program(pending.source)
            self.program = asyncio.create_task(program(self), name=f"program {self.sid}")
            try:
                await asyncio.wait({self.program})
            finally:
                if not self.program.done():
                    self.program.cancel()  # the call itself is being cancelled (shutdown)
            if self.pending is not None:
                continue
            if self.program.cancelled():
                return Finish("interrupted")
            exc = self.program.exception()
            if exc is not None:
                log.error("TwiML program crashed", exc_info=exc, extra=self.extra)
                return Finish("emulator-error")
            step = self.program.result()
            if isinstance(step, Goto):
                program = self.core.document_program(step.source)
                continue
            return step if isinstance(step, Finish) else Finish("twiml-ended")
        self.timeline.add("error", reason=f"more than {MAX_DOCUMENTS} TwiML documents: hanging up")
        return Finish("too-many-documents")

    # --- status and callbacks -------------------------------------------------------------------
    def _progress(self, event: Event, final: CallStatus | None = None) -> None:
        rec = self.rec
        rec.status = transition(rec.status, event, final)
        rec.date_updated = time.time()
        self.timeline.add("status", status=str(rec.status), progress=str(event))
        for listener in list(self.status_listeners):
            listener(self, event)
        if self._subscription is None or self.status_callback is None:
            return
        sequence = self._subscription.take(event)
        if sequence is None:
            return
        params = status_callback_params(rec, event, sequence, self.callee.sip_code)
        self.callbacks.queue("status", self.status_callback.url, self.status_callback.method, params)

    # --- the party on the line --------------------------------------------------------------------
    def ensure_leg(self) -> CallerLeg:
        if self.leg is None:
            self.leg = party.leg_for(self.rec, self.callee, self.core.config, self.core.account.auth_token)
        return self.leg

    # --- timers -----------------------------------------------------------------------------------
    def after(self, seconds: float, action: Callable[[], None]) -> None:
        async def fire() -> None:
            await asyncio.sleep(seconds)
            action()

        self._timers.append(self.core.spawn(fire(), f"timer {self.sid}"))

    # --- REST operations --------------------------------------------------------------------------
    def set_status_callback(self, url: str, method: str | None) -> None:
        """A new StatusCallback over REST: same events (or Twilio's default, completed), numbering goes on."""
        old = self.status_callback
        events = old.events if old else frozenset({"completed"})
        self.status_callback = StatusCallback(url, method or (old.method if old else "POST"), events)
        if self._subscription is None:
            self._subscription = Subscription(events)

    def cancel(self, reason: str = "canceled-over-rest") -> bool:
        """Status=canceled: ends a queued or ringing call; an answered one is not affected."""
        if self.rec.status in (CallStatus.QUEUED, CallStatus.RINGING) and self.rec.direction != "inbound":
            self._stop_reason = reason
            self._stop_ringing.set()
            return True
        return False

    def hang_up(self, reason: str) -> None:
        """Status=completed (or the callee hangs up): ends the call whatever it is doing."""
        if self.finished:
            return
        if not self.cancel(reason):
            self.interrupt(Interrupt(None, reason))

    def redirect(self, source: Source) -> None:
        if self.rec.status is not CallStatus.IN_PROGRESS and self.rec.direction != "inbound":
            self.source = source  # not answered yet: the new TwiML runs when it is
            self.timeline.add("source-replaced", url=source.url, inline=source.twiml is not None)
            return
        self.interrupt(Interrupt(source, "redirected"))

    def interrupt(self, action: Interrupt) -> None:
        if self.finished:
            return
        if self.pending is not None and self.pending.source is None:
            return  # a hang-up is already on its way
        self.pending = action
        if self.in_stream and self.leg is not None:
            self.leg.stop()  # Twilio sends `stop` and closes the stream; the verb then returns
        elif self.program is not None and not self.program.done():
            self.program.cancel()

    # --- the end ----------------------------------------------------------------------------------
    def _end(self, status: CallStatus, reason: str) -> None:
        if self.finished:
            return
        rec = self.rec
        if rec.status is CallStatus.IN_PROGRESS:
            status = CallStatus.COMPLETED  # an answered call ends completed, whoever ends it
        elif status is CallStatus.COMPLETED:
            status = CallStatus.CANCELED  # hung up before it was answered
        rec.end_time = time.time()
        self.end_reason = reason
        self._progress(Event.COMPLETED, status)
        self.timeline.add("ended", status=str(status), reason=reason)
        for timer in self._timers:
            timer.cancel()
        if self.leg is not None:
            self.leg.stop()
        for child in self.children:
            child.hang_up("parent-ended")
        self.core.metrics.calls.labels(str(status), rec.direction).inc()
        log.info("call ended: %s (%s)", status, reason, extra=self.extra)
        self.report = party.report(self.leg)
        self._finished.set()
        self.core.changes.notify()
        self.core.spawn(self._complete_report(), f"report {self.sid}")

    async def _complete_report(self) -> None:
        try:
            await party.check_caller_audio(self.core.http, self.core.config, self.sid, self.report)
            await self.callbacks.sent()
        finally:
            self.report_complete = True
            self.core.changes.notify()

    # --- introspection ----------------------------------------------------------------------------
    def to_json(self, detail: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "sid": self.sid,
            "status": str(self.rec.status),
            "direction": self.rec.direction,
            "to": self.rec.to,
            "from": self.rec.from_,
            "parent_call_sid": self.rec.parent_call_sid,
            "callee": self.callee.kind,
            "answered_by": self.rec.answered_by,
            "end_reason": self.end_reason,
            "finished": self.finished,
            "report_complete": self.report_complete,
        }
        if detail:
            data.update(
                resource=call_json(self.rec),
                callee_script=callee_json(self.callee),
                amd=None if self.amd is None else {"answered_by": self.amd.answered_by, "after_ms": self.amd.after_ms},
                timeline=self.timeline.events,
                heard=self.heard,
                report=self.report,
                children=[c.sid for c in self.children],
            )
        return data
