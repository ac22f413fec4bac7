"""`<Dial>`: a child call to a number, SIP URI or client, or a seat in a conference.

The child leg (direction outbound-dial, ParentCallSid set) rings its callee for the Dial's
`timeout`; once answered, the `<Number url>` whisper runs on the child only (what the
called party heard is recorded on the child), then the two legs are bridged until one
side hangs up (a person hangs up after its `talk_s`). The parent then goes on: to the
Dial `action` with DialCallStatus, DialCallSid and DialCallDuration, or to the next verb.
If the parent is redirected or hung up meanwhile, the child is hung up (canceled while
ringing). Only the first noun of a `<Dial>` is dialled (no simultaneous ringing).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urljoin

from . import twiml
from .calls import CallActor
from .lifecycle import CallStatus
from .media import fetch, run_verbs
from .rooms import Rooms
from .steps import Finish, Goto, Step
from .validate import Source, StatusCallback

NESTED_DIAL = 13201  # Twilio: a <Number url> document may not <Dial> (or <Connect>)
DIAL_STATUS = {
    CallStatus.COMPLETED: "completed",
    CallStatus.BUSY: "busy",
    CallStatus.NO_ANSWER: "no-answer",
    CallStatus.FAILED: "failed",
    CallStatus.CANCELED: "canceled",
}


@dataclass(slots=True)
class DialOutcome:
    status: str  # DialCallStatus
    child_sid: str | None
    duration_s: int
    bridged: bool


async def run_dial(call: CallActor, verb: twiml.Dial, base_url: str, rooms: Rooms) -> Step:
    target = verb.targets[0]
    call.timeline.add("verb", verb="Dial", target=getattr(target, "address", None) or getattr(target, "name", None),
                      kind=type(target).__name__, timeout_s=verb.timeout_s, action=verb.action,
                      nouns=len(verb.targets))
    if isinstance(target, twiml.DialConference):
        seconds = await rooms.seat_from_dial(call, target, base_url)
        outcome = DialOutcome("completed", None, round(seconds), True)
    else:
        outcome = await _dial_number(call, verb, target, base_url)
    call.timeline.add("dial-result", status=outcome.status, child_sid=outcome.child_sid,
                      duration_s=outcome.duration_s, bridged=outcome.bridged)
    if call.pending is not None:
        return None
    if verb.action:
        extra = [("DialCallStatus", outcome.status), ("DialCallDuration", str(outcome.duration_s)),
                 ("DialBridged", "true" if outcome.bridged else "false")]
        if outcome.child_sid:
            extra.append(("DialCallSid", outcome.child_sid))
        return Goto(Source(urljoin(base_url, verb.action), verb.method, extra=tuple(extra)))
    return None


async def _dial_number(call: CallActor, verb: twiml.Dial, target: twiml.DialNumber, base_url: str) -> DialOutcome:
    core = call.core
    hook = target.status
    status_callback = (StatusCallback(urljoin(base_url, hook.url), hook.method, hook.events or frozenset({"completed"}))
                       if hook.url else None)
    bridge = Bridge(call, urljoin(base_url, target.url) if target.url else None, target.method)
    child = CallActor(core, to=target.address, from_=verb.caller_id or call.rec.from_, direction="outbound-dial",
                      callee=core.directory.pick(target.address), status_callback=status_callback,
                      ring_timeout_s=verb.timeout_s, parent=call, on_answer=bridge.run, queued=False)
    call.children.append(child)
    child.start()
    call.timeline.add("dial-child", child_sid=child.sid, to=target.address, callee=child.callee.kind)
    try:
        await child.wait_finished()
    finally:
        if not child.finished:
            child.hang_up("parent-left-the-dial")
    bridged = bridge.bridged_at is not None
    return DialOutcome(DIAL_STATUS[child.rec.status], child.sid, child.rec.duration_s or 0, bridged)


class Bridge:
    """The child leg's program: the whisper, then the bridge until someone hangs up."""

    def __init__(self, parent: CallActor, whisper_url: str | None, whisper_method: str) -> None:
        self.parent = parent
        self.whisper_url = whisper_url
        self.whisper_method = whisper_method
        self.bridged_at: float | None = None

    async def run(self, child: CallActor) -> Step:
        if self.whisper_url:
            verbs, code, detail = await fetch(child, "whisper", self.whisper_url, self.whisper_method)
            if verbs is None:
                child.timeline.add("error", code=code, reason=detail)
                return Finish(f"whisper-error-{code}")
            if any(isinstance(v, (twiml.Dial, twiml.Connect)) for v in verbs):
                child.timeline.add("error", code=NESTED_DIAL,
                                   reason="a <Number url> document cannot <Dial> or <Connect>")
                return Finish(f"whisper-error-{NESTED_DIAL}")
            step = await run_verbs(child, verbs, self.whisper_url, source="whisper")
            if isinstance(step, Finish) and step.reason != "twiml-ended":
                return step  # the whisper hung up (call screening said no): no bridge
        self.bridged_at = time.time()
        self.parent.timeline.add("bridged", child_sid=child.sid, to=child.rec.to)
        child.timeline.add("bridged", parent_sid=self.parent.sid)
        callee = child.callee
        if callee.kind == "person" and callee.talk_s > 0:
            child.after(callee.talk_s, lambda: child.hang_up("callee-hangup"))
        await asyncio.Event().wait()  # bridged until an interrupt ends it (a hang-up on either side)
        return None
