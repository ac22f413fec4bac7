"""Conferences at work: seats for calls, hold music, participants over REST, conference callbacks.

`conference.Conference` is the pure state; this module connects it to calls. A call takes
a seat through `<Dial><Conference>` or because the Participants API dialled it; while the
conference has not started it holds (the waitUrl TwiML is fetched once and what it says is
recorded as heard; Twilio's default music is not fetched). A seat ends when its call
leaves (hangs up, is redirected) or is kicked (removed over REST, or the conference
ended): a `<Dial>` call then runs its next verb, a Participants-API call hangs up.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from . import errors, twiml
from .callbacks import CallbackQueue
from .calls import CallActor, CallHost, Program
from .conference import EVENT_SUBSCRIPTION, Change, Conference, ConferenceStatus, Participant, ParticipantStatus
from .exchange import new_sid
from .lifecycle import CallStatus, Event
from .media import fetch, run_verbs
from .records import Timeline
from .resources import conference_json, participant_json, rfc2822
from .steps import Finish, Goto, Step
from .validate import CreateParticipant, StatusCallback, UpdateParticipant

WAIT_VERBS = (twiml.Say, twiml.Play, twiml.Pause, twiml.Redirect)  # all a waitUrl document may use
MAX_WAIT_REDIRECTS = 5


@dataclass(frozen=True, slots=True)
class SeatSpec:
    label: str | None = None
    start_on_enter: bool = True
    end_on_exit: bool = False
    muted: bool = False
    beep: str = "true"
    wait_url: str | None = None
    wait_method: str = "POST"
    coaching: bool = False
    coach: str | None = None
    hook: StatusCallback | None = None


@dataclass(slots=True)
class Seat:
    call: CallActor
    conference: Conference
    started: bool = False
    kicked: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    hold_task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        self.wake.set()


class Rooms:
    def __init__(self, core: CallHost) -> None:
        self.core = core
        self.conferences: dict[str, Conference] = {}
        self.timelines: dict[str, Timeline] = {}
        self._active: dict[str, str] = {}  # friendly name → sid of the conference not yet completed
        self._hooks: dict[str, tuple[StatusCallback, list[int]]] = {}  # the first participant's callback wins
        self._callbacks: dict[str, CallbackQueue] = {}  # by conference sid
        self._seats: dict[str, Seat] = {}

    # --- finding ----------------------------------------------------------------------------------
    def get_or_create(self, name: str) -> Conference:
        sid = self._active.get(name)
        if sid is not None and self.conferences[sid].status is not ConferenceStatus.COMPLETED:
            return self.conferences[sid]
        now = time.time()
        conf = Conference(new_sid("CF"), self.core.account.sid, name, now, now)
        self.conferences[conf.sid] = conf
        self.timelines[conf.sid] = Timeline(self.core.changes, now)
        self.timelines[conf.sid].add("created", friendly_name=name)
        self._active[name] = conf.sid
        return conf

    def find(self, key: str) -> Conference | None:
        """By SID (any status), else the active conference with that friendly name."""
        conf = self.conferences.get(key)
        if conf is not None:
            return conf
        sid = self._active.get(key)
        return self.conferences.get(sid) if sid else None

    def forget_ended(self) -> None:
        for sid in [s for s, c in self.conferences.items() if c.status is ConferenceStatus.COMPLETED]:
            del self.conferences[sid]
            self.timelines.pop(sid, None)
            self._hooks.pop(sid, None)

    # --- seats ------------------------------------------------------------------------------------
    async def seat_from_dial(self, call: CallActor, noun: twiml.DialConference, base_url: str) -> float:
        """A `<Dial><Conference>`: sit until the call leaves or is kicked; returns the seconds spent."""
        hook = noun.status
        spec = SeatSpec(
            noun.participant_label, noun.start_on_enter, noun.end_on_exit, noun.muted, noun.beep,
            urljoin(base_url, noun.wait_url) if noun.wait_url else noun.wait_url, noun.wait_method, bool(noun.coach),
            noun.coach,
            StatusCallback(urljoin(base_url, hook.url), hook.method, hook.events or frozenset({"start", "end"}))
            if hook.url else None,
        )
        return await self.seat(call, self.get_or_create(noun.name), spec)

    def participant_program(self, conf: Conference, spec: SeatSpec) -> Program:
        async def run(call: CallActor) -> Step:
            target = conf if conf.status is not ConferenceStatus.COMPLETED else self.get_or_create(conf.friendly_name)
            await self.seat(call, target, spec)
            return Finish("left-conference")  # a Participants-API call has no TwiML to go on with

        return run

    async def seat(self, call: CallActor, conf: Conference, spec: SeatSpec) -> float:
        """Sit in the conference until the call leaves or is kicked; returns the seconds spent."""
        if conf.status is ConferenceStatus.COMPLETED:
            conf = self.get_or_create(conf.friendly_name)
        if spec.hook is not None and conf.sid not in self._hooks:
            self._hooks[conf.sid] = (spec.hook, [0])
        now = time.time()
        participant = Participant(
            call.sid, now, spec.label, spec.start_on_enter, spec.end_on_exit, spec.muted, False, spec.coaching,
            spec.coach, spec.beep, spec.wait_url, spec.wait_method,
        )
        seat = Seat(call, conf)
        self._seats[call.sid] = seat
        change = conf.connect(participant, now)
        call.timeline.add("conference-join", conference_sid=conf.sid, friendly_name=conf.friendly_name,
                          holding=conf.holding(call.sid))
        self.timelines[conf.sid].add("join", call_sid=call.sid, label=spec.label)
        self._apply(conf, change)
        seat.started = conf.started
        if not seat.started:
            seat.hold_task = self.core.spawn(self._hold_music(seat, participant), f"hold {call.sid}")
        talking = False
        try:
            while not seat.kicked:
                if seat.started and not talking:
                    talking = True
                    self._stop_hold(seat)
                    call.timeline.add("conference-started", conference_sid=conf.sid,
                                      others=[p.call_sid for p in conf.connected if p.call_sid != call.sid])
                    if call.callee.kind == "person" and call.callee.talk_s > 0:
                        call.after(call.callee.talk_s, lambda: call.hang_up("callee-hangup"))
                seat.wake.clear()
                await seat.wake.wait()
            return time.time() - now
        finally:
            self._stop_hold(seat)
            self._seats.pop(call.sid, None)
            call.timeline.add("conference-kicked" if seat.kicked else "conference-leave", conference_sid=conf.sid)
            self.timelines[conf.sid].add("leave", call_sid=call.sid, kicked=seat.kicked)
            self._apply(conf, conf.leave(call.sid, time.time(), kicked=seat.kicked))

    def _stop_hold(self, seat: Seat) -> None:
        if seat.hold_task is not None:
            seat.hold_task.cancel()
            seat.hold_task = None

    async def _hold_music(self, seat: Seat, p: Participant, url: str | None = None, method: str | None = None) -> None:
        call = seat.call
        url = p.wait_url if url is None else url
        method = method or p.wait_method
        if url is None or (urlsplit(url).hostname or "").endswith("twimlets.com"):
            call.heard.append({"at": time.time(), "hold": "Twilio's default hold music", "source": "hold"})
            return
        if url == "":
            call.heard.append({"at": time.time(), "hold": "silence", "source": "hold"})
            return
        for _ in range(MAX_WAIT_REDIRECTS):
            verbs, code, detail = await fetch(call, "wait", url, method)
            if verbs is None:
                call.timeline.add("error", code=code, reason=detail, where="waitUrl")
                return
            allowed = tuple(v for v in verbs if isinstance(v, WAIT_VERBS))
            step = await run_verbs(call, allowed, url, source="hold")
            if not isinstance(step, Goto) or step.source.url is None:
                return  # played once; the emulator does not loop the hold music
            url, method = step.source.url, step.source.method

    # --- what changes do --------------------------------------------------------------------------
    def _apply(self, conf: Conference, change: Change) -> None:
        for event in change.events:
            if event.name == "conference-start":
                for seat in self._seats.values():
                    if seat.conference is conf:
                        seat.started = True
                        seat.poke()
            self.timelines[conf.sid].add(event.name, call_sid=event.call_sid)
            self._callback(conf, event.name, event.call_sid)
        for sid in change.kicked:
            kicked = self._seats.get(sid)
            if kicked is not None:
                kicked.kicked = True
                kicked.poke()
        self.core.changes.notify()

    def _participant(self, conf: Conference, call_sid: str | None) -> Participant | None:
        if call_sid is None:
            return None
        return conf.participants.get(call_sid) or next(
            (p for p in reversed(conf.history) if p.call_sid == call_sid), None)

    def _callback(self, conf: Conference, name: str, call_sid: str | None) -> None:
        registered = self._hooks.get(conf.sid)
        if registered is None:
            return
        hook, counter = registered
        if EVENT_SUBSCRIPTION.get(name) not in hook.events:
            return
        params: dict[str, str] = {
            "AccountSid": conf.account_sid, "ConferenceSid": conf.sid, "FriendlyName": conf.friendly_name,
            "StatusCallbackEvent": name, "SequenceNumber": str(counter[0]), "Timestamp": rfc2822(time.time()) or "",
        }
        counter[0] += 1
        p = self._participant(conf, call_sid)
        if p is not None:
            params.update(CallSid=p.call_sid, Muted=str(p.muted).lower(), Hold=str(p.hold).lower(),
                          Coaching=str(p.coaching).lower(), EndConferenceOnExit=str(p.end_on_exit).lower(),
                          StartConferenceOnEnter=str(p.start_on_enter).lower())
            if p.label:
                params["ParticipantLabel"] = p.label
        if name == "conference-end":
            params["ReasonConferenceEnded"] = conf.reason_ended or ""
            if conf.call_sid_ending:
                params["CallSidEndingConference"] = conf.call_sid_ending
        queue = self._callbacks.get(conf.sid)
        if queue is None:
            queue = self._callbacks[conf.sid] = CallbackQueue(self.core, conf.sid)
        queue.queue("conference", hook.url, hook.method, params)

    # --- the Participants and Conferences API ---------------------------------------------------
    def add_participant(self, key: str, req: CreateParticipant) -> tuple[Conference, Participant]:
        conf = self.find(key) if key.startswith("CF") else self.get_or_create(key)
        if conf is None or conf.status is ConferenceStatus.COMPLETED:
            raise errors.not_found(f"Conference {key}")
        spec = SeatSpec(req.label, req.start_conference_on_enter, req.end_conference_on_exit, req.muted, req.beep,
                        req.wait_url, req.wait_method, req.coaching, req.call_sid_to_coach,
                        req.conference_status_callback)
        if spec.hook is not None and conf.sid not in self._hooks:
            self._hooks[conf.sid] = (spec.hook, [0])
        call = CallActor(self.core, to=req.to, from_=req.from_, direction="outbound-api",
                         callee=self.core.directory.pick(req.to), status_callback=req.status_callback,
                         ring_timeout_s=req.timeout_s, amd=req.amd, on_answer=self.participant_program(conf, spec))
        now = time.time()
        participant = Participant(call.sid, now, req.label, req.start_conference_on_enter, req.end_conference_on_exit,
                                  req.muted, False, req.coaching, req.call_sid_to_coach, req.beep, req.wait_url,
                                  req.wait_method)
        conf.add(participant, now)
        self.timelines[conf.sid].add("participant-dialled", call_sid=call.sid, to=req.to, label=req.label)
        call.status_listeners.append(lambda c, e: self._track(conf, c, e))
        call.start()
        return conf, participant

    def _track(self, conf: Conference, call: CallActor, event: Event) -> None:
        """A dialled participant's progress shows in its status; one that never answers is gone."""
        now = time.time()
        if event is Event.INITIATED:
            conf.set_status(call.sid, ParticipantStatus.CONNECTING, now)
        elif event is Event.RINGING:
            conf.set_status(call.sid, ParticipantStatus.RINGING, now)
        elif event is Event.COMPLETED and call.rec.status is not CallStatus.COMPLETED:
            self.timelines[conf.sid].add("participant-unanswered", call_sid=call.sid, status=str(call.rec.status))
            self._apply(conf, conf.leave(call.sid, now))

    def remove(self, conf: Conference, p: Participant) -> None:
        seat = self._seats.get(p.call_sid)
        if seat is not None:
            self._apply(conf, Change(kicked=[p.call_sid]))
            return
        call = self.core.calls.get(p.call_sid)
        if call is not None:
            call.hang_up("removed-from-conference")  # still ringing: the dial is abandoned

    def end(self, conf: Conference) -> None:
        self._apply(conf, conf.end(time.time(), "conference-ended-via-api"))

    def update(self, conf: Conference, p: Participant, req: UpdateParticipant) -> None:
        change = conf.update(p.call_sid, time.time(), muted=req.muted, hold=req.hold,
                             end_on_exit=req.end_conference_on_exit, coaching=req.coaching)
        self._apply(conf, change)
        seat = self._seats.get(p.call_sid)
        if seat is not None and req.hold is not None:
            self._stop_hold(seat)
            if req.hold:
                seat.call.timeline.add("conference-hold", conference_sid=conf.sid)
                seat.hold_task = self.core.spawn(self._hold_music(seat, p, req.hold_url or None, "POST"),
                                                 f"hold {p.call_sid}")
        if req.announce_url and seat is not None:
            self.core.spawn(self._announce(conf, [seat], req.announce_url, req.announce_method),
                            f"announce {p.call_sid}")

    def announce(self, conf: Conference, url: str, method: str) -> None:
        seats = [s for s in self._seats.values() if s.conference is conf]
        self.core.spawn(self._announce(conf, seats, url, method), f"announce {conf.sid}")

    async def _announce(self, conf: Conference, seats: list[Seat], url: str, method: str) -> None:
        params = {"AccountSid": conf.account_sid, "ConferenceSid": conf.sid, "FriendlyName": conf.friendly_name}
        answer = await self.core.webhooks.send("announce", url, method, params)
        try:
            verbs = twiml.parse(answer.body) if answer.ok else ()
        except twiml.TwimlError:
            verbs = ()
        said = [v.text if isinstance(v, twiml.Say) else v.url for v in verbs if isinstance(v, (twiml.Say, twiml.Play))]
        self.timelines[conf.sid].add("announcement", url=url, status=answer.status, said=said)
        for seat in seats:
            for text in said:
                seat.call.heard.append({"at": time.time(), "announce": text, "source": "announce"})
        self._callback(conf, "announcement-end", None)

    # --- introspection ----------------------------------------------------------------------------
    def to_json(self, conf: Conference) -> dict[str, Any]:
        return {
            "resource": conference_json(conf),
            "participants": [participant_json(conf, p) for p in conf.participants.values()],
            "history": [participant_json(conf, p) for p in conf.history],
            "holding": [p.call_sid for p in conf.connected if conf.holding(p.call_sid)],
            "timeline": self.timelines[conf.sid].events if conf.sid in self.timelines else [],
        }
