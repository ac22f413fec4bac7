"""Twilio's media side for one call: fetch a TwiML document and run its verbs in order.

Fetching is Twilio's voice webhook: the call's parameters, POSTed (signed) or put in the
query for GET. A document that cannot be fetched (error 11200) or parsed (12100) goes to
the FallbackUrl if there is one, else the party hears Twilio's application-error message
and the call hangs up. Verbs take the time they would take on a phone; what the party
hears is recorded in `call.heard`. `<Connect><Stream>` hands the line to the simulated
party over a real WebSocket (switchboard_callsim.leg); when the server closes the stream
the next verb runs, as on Twilio. `<Dial>` is the call's host's to run (core.Core hands it
to dialing.py, which builds on this module).
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urljoin

from switchboard_callsim.leg import StreamEnd, StreamSegment

from . import twiml
from .calls import CallActor, Program
from .lifecycle import CallStatus
from .params import voice_params
from .resources import rfc2822
from .steps import Finish, Goto, Step
from .validate import Source

HTTP_RETRIEVAL_FAILURE = 11200
APPLICATION_ERROR_SAY = "We are sorry, an application error has occurred. Goodbye."


def request_params(call: CallActor, extra: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    params = voice_params(call.rec)
    request = call.amd_request
    if call.amd is not None and request is not None and not request.asynchronous and call.rec.answered_by:
        params["AnsweredBy"] = call.rec.answered_by
        params["MachineDetectionDuration"] = str(call.amd.after_ms)
    params.update(extra)
    return params


async def fetch(call: CallActor, kind: str, url: str, method: str,
                extra: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[twiml.Verb, ...] | None, int | None, str]:
    """(verbs, None, url) or (None, Twilio error code, reason)."""
    answer = await call.core.webhooks.send(kind, url, method, request_params(call, extra), call_sid=call.sid)
    call.timeline.add("twiml-fetch", kind=kind, url=url, method=method, status=answer.status, error=answer.error)
    if not answer.ok:
        return None, HTTP_RETRIEVAL_FAILURE, answer.error or f"HTTP {answer.status}"
    try:
        return twiml.parse(answer.body), None, url
    except twiml.TwimlError as exc:
        return None, twiml.PARSE_FAILURE, str(exc)


def document_program(source: Source | None) -> Program:
    async def run(call: CallActor) -> Step:
        if source is None:
            call.timeline.add("error", code=HTTP_RETRIEVAL_FAILURE, reason="the call has no Url or Twiml")
            return Finish("no-twiml")
        verbs: tuple[twiml.Verb, ...] | None
        if source.twiml is not None:
            try:
                verbs, base = twiml.parse(source.twiml), source.url or ""
            except twiml.TwimlError as exc:
                return await _application_error(call, twiml.PARSE_FAILURE, str(exc))
            call.timeline.add("twiml-inline", chars=len(source.twiml))
        else:
            assert source.url is not None
            verbs, code, detail = await fetch(call, "twiml", source.url, source.method, source.extra)
            if verbs is None and source.fallback_url:
                call.timeline.add("error", code=code, reason=detail, fallback=source.fallback_url)
                extra = (*source.extra, ("ErrorCode", str(code)), ("ErrorUrl", source.url))
                verbs, code, detail = await fetch(call, "fallback", source.fallback_url, source.fallback_method, extra)
            if verbs is None:
                assert code is not None
                return await _application_error(call, code, detail)
            base = source.url
        return await run_verbs(call, verbs, base)

    return run


async def _application_error(call: CallActor, code: int, reason: str) -> Step:
    call.timeline.add("error", code=code, reason=reason[:300])
    if call.rec.status is CallStatus.RINGING and call.rec.direction == "inbound":
        call.answer()
    await _say(call, twiml.Say(APPLICATION_ERROR_SAY), source="twilio-error")
    return Finish(f"application-error-{code}")


async def run_verbs(call: CallActor, verbs: tuple[twiml.Verb, ...], base_url: str, source: str = "twiml") -> Step:
    """Run a document's verbs; `source` labels what the party hears (twiml, whisper, hold)."""
    for verb in verbs:
        if call.rec.status is CallStatus.RINGING and call.rec.direction == "inbound":
            if isinstance(verb, twiml.Reject):
                call.timeline.add("verb", verb="Reject", reason=verb.reason)
                return Finish("rejected", CallStatus.BUSY if verb.reason == "busy" else CallStatus.NO_ANSWER)
            call.answer()  # an inbound call is answered by the first verb that is not <Reject>
        step: Step
        match verb:
            case twiml.Say():
                step = await _say(call, verb, source)
            case twiml.Play():
                step = await _play(call, verb, source)
            case twiml.Pause():
                call.timeline.add("verb", verb="Pause", seconds=verb.seconds)
                await asyncio.sleep(verb.seconds)
                step = None
            case twiml.Gather():
                step = await _gather(call, verb, base_url, source)
            case twiml.Redirect():
                call.timeline.add("verb", verb="Redirect", url=verb.url, method=verb.method)
                return Goto(Source(urljoin(base_url, verb.url), verb.method))
            case twiml.Hangup():
                call.timeline.add("verb", verb="Hangup")
                return Finish("twiml-hangup")
            case twiml.Reject():
                call.timeline.add("verb", verb="Reject", reason=verb.reason, note="the call is answered: hangs up")
                return Finish("twiml-hangup")
            case twiml.Connect():
                step = await _connect(call, verb, base_url)
            case twiml.Dial():
                step = await call.core.dial(call, verb, base_url)
            case twiml.Unsupported():
                call.timeline.add("verb-unsupported", verb=verb.tag)
                step = None
        if step is not None or call.pending is not None:
            return step
    return Finish("twiml-ended")


async def _say(call: CallActor, verb: twiml.Say, source: str) -> Step:
    call.timeline.add("verb", verb="Say", text=verb.text[:500], loop=verb.loop, source=source)
    call.heard.append({"at": time.time(), "say": verb.text, "source": source})
    await asyncio.sleep(len(verb.text) * verb.loop * call.core.config.say_ms_per_char / 1000)
    return None


async def _play(call: CallActor, verb: twiml.Play, source: str) -> Step:
    call.timeline.add("verb", verb="Play", url=verb.url, loop=verb.loop, digits=verb.digits, source=source)
    call.heard.append({"at": time.time(), "play": verb.url, "digits": verb.digits, "source": source})
    await asyncio.sleep((0.5 if verb.digits and not verb.url else call.core.config.play_s) * verb.loop)
    return None


async def _gather(call: CallActor, verb: twiml.Gather, base_url: str, source: str) -> Step:
    """The prompts play; the party presses nothing; after the timeout Twilio goes on (or to the action)."""
    call.timeline.add("verb", verb="Gather", timeout_s=verb.timeout_s, note="the party presses nothing")
    for child in verb.children:
        if isinstance(child, twiml.Say):
            await _say(call, child, source)
        elif isinstance(child, twiml.Play):
            await _play(call, child, source)
        else:
            await asyncio.sleep(child.seconds)
    await asyncio.sleep(verb.timeout_s)
    if verb.action and verb.action_on_empty_result:
        return Goto(Source(urljoin(base_url, verb.action), verb.method, extra=(("Digits", ""),)))
    return None


async def _connect(call: CallActor, verb: twiml.Connect, base_url: str) -> Step:
    stream = verb.stream
    leg = call.ensure_leg()

    def opened(segment: StreamSegment) -> None:
        call.timeline.add("stream-start", url=stream.url, parameters=stream.parameters, stream_sid=segment.stream_sid)
        if stream.status_callback:
            _stream_event(call, stream, "stream-started", segment.stream_sid)

    call.in_stream = True
    try:
        segment = await leg.stream(call.core.pacer, stream.url, stream.parameters, opened)
    finally:
        call.in_stream = False
    call.timeline.add("stream-end", **segment.to_json())
    if stream.status_callback:
        _stream_event(call, stream, "stream-error" if segment.end is StreamEnd.FAILED else "stream-stopped",
                      segment.stream_sid, segment.failure)
    if segment.end is StreamEnd.HANGUP:
        return Finish("callee-hangup")
    if call.pending is not None:
        return None
    if verb.action:
        return Goto(Source(urljoin(base_url, verb.action), verb.method))
    return None  # the server closed the stream (or it failed): Twilio runs the next verb


def _stream_event(call: CallActor, stream: twiml.Stream, event: str, stream_sid: str,
                  error: str | None = None) -> None:
    params = {"AccountSid": call.rec.account_sid, "CallSid": call.sid, "StreamSid": stream_sid,
              "StreamName": stream.name or stream_sid, "StreamEvent": event,
              "Timestamp": rfc2822(time.time()) or ""}
    if error:
        params["StreamError"] = error
    assert stream.status_callback is not None
    call.callbacks.queue("stream", stream.status_callback, stream.status_callback_method, params)
