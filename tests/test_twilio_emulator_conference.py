"""Twilio REST emulator, conferences: what a warm transfer needs (issue 15).

The caller is talking to the agent over a stream; a REST update moves it into a conference
where it holds (the waitUrl is fetched and heard); the target is dialled (a new call whose
TwiML whispers then joins, or the Participants API); it answers and the conference starts,
or it never answers and the caller is redirected back to a new stream of the same call.
"""

from __future__ import annotations

import asyncio
import json

from switchboard_twilio_emulator.config import EmulatorConfig
from switchboard_twilio_emulator.server import TwilioEmulator

from twilio_fakes import Receiver, StreamConnection, StreamServer, after_utterance, reply, stream_twiml

TOKEN = "conference-test-token"
CALLER, TARGET, NOBODY, FROM = "+14155550123", "+14155550177", "+14155550178", "+14155550100"


def config() -> EmulatorConfig:
    return EmulatorConfig(port=0, auth_token=TOKEN, setup_ms=20, say_ms_per_char=2, log_level="WARNING", cps=20)


def callee(number: str, **spec) -> str:
    return f"{number}={json.dumps(spec)}"


def conference_twiml(app: Receiver, name: str, after: str = "", **attrs: str) -> str:
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return (f'<Response><Dial><Conference waitUrl="{app.url("/hold")}" statusCallback="{app.url("/conf")}" '
            f'statusCallbackEvent="start end join leave"{extra}>{name}</Conference></Dial>{after}</Response>')


async def run(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


async def until_stop(conn: StreamConnection) -> None:
    await conn.next(lambda m: m.get("event") == "stop", timeout=30)


async def test_warm_transfer_holds_the_caller_whispers_to_the_target_then_joins_them():
    people = [callee(CALLER, kind="person", ring_s=0.1, talk_s=1.5,
                     script={"turns": 2, "lead_ms": 100, "reply_timeout_ms": 20000}),
              callee(TARGET, kind="person", ring_s=0.3, talk_s=0.8)]
    async with StreamServer(until_stop) as edge, Receiver() as app, TwilioEmulator(config(), people) as twilio:
        app.answers["/twiml"] = stream_twiml(edge.url())
        app.answers["/hold"] = "<Response><Say>Please hold while we connect you</Say></Response>"
        client = twilio.client()
        caller = await run(client.calls.create, to=CALLER, from_=FROM, url=app.url("/twiml"))
        await edge.connected.wait()
        # the agent decides to transfer: the caller goes on hold in a conference
        await run(client.calls(caller.sid).update, twiml=conference_twiml(app, "room-1", endConferenceOnExit="true"))
        await app.wait(lambda: app.at("/hold"))
        (room,) = await run(client.conferences.list, friendly_name="room-1")
        assert room.status == "init"
        (held,) = await run(client.conferences(room.sid).participants.list)
        assert held.call_sid == caller.sid and held.status == "connected" and held.end_conference_on_exit
        # dial the target: its TwiML whispers the summary, then joins the same conference
        whisper = "<Response><Say>Caller wants a refund for order 42</Say><Dial><Conference>room-1</Conference></Dial></Response>"
        target = await run(client.calls.create, to=TARGET, from_=FROM, twiml=whisper)
        ended = await twilio.wait_call(caller.sid, "report", 15)
        target_call = await twilio.wait_call(target.sid, "ended")
        fetched = await run(client.conferences(room.sid).fetch)
        await app.wait(lambda: any(h.form["StatusCallbackEvent"] == "conference-end" for h in app.at("/conf")))
    assert edge.connections[0].messages[-1]["event"] == "stop"  # the agent's stream was stopped by the update
    assert [h["say"] for h in ended.heard] == ["Please hold while we connect you"]
    assert ended.heard[0]["source"] == "hold"
    assert [h["say"] for h in target_call.heard] == ["Caller wants a refund for order 42"]
    join = ended.timeline.find("conference-join")[0]
    started = ended.timeline.find("conference-started")[0]
    assert join["holding"] is True and started["others"] == [target.sid]
    assert fetched.status == "completed" and fetched.reason_conference_ended == "participant-with-end-conference-on-exit-left"
    events = [(h.form["StatusCallbackEvent"], h.form.get("CallSid")) for h in app.at("/conf")]
    assert events == [("participant-join", caller.sid), ("participant-join", target.sid), ("conference-start", None),
                      ("participant-leave", target.sid), ("participant-leave", caller.sid), ("conference-end", None)]
    assert all(h.signed_ok(TOKEN) and h.form["FriendlyName"] == "room-1" for h in app.at("/conf"))
    assert [h.form["SequenceNumber"] for h in app.at("/conf")] == [str(n) for n in range(6)]
    assert ended.end_reason == "callee-hangup" and str(target_call.rec.status) == "completed"


async def test_a_target_that_never_answers_leaves_the_caller_to_come_back_to_the_agent():
    async def agent(conn: StreamConnection) -> None:
        if conn.path == "/a":
            return await until_stop(conn)
        await conn.next(lambda m: m.get("event") == "start")
        await reply(conn, 1, 10)
        await until_stop(conn)

    people = [callee(CALLER, kind="person", ring_s=0.1,
                     script={"turns": 1, "utterance_ms": 200, "lead_ms": 100, "reply_timeout_ms": 5000,
                             "reply_quiet_ms": 100}),
              callee(NOBODY, kind="no_answer")]
    async with StreamServer(agent) as edge, Receiver() as app, TwilioEmulator(config(), people) as twilio:
        app.answers["/twiml"] = stream_twiml(edge.url("/a"))
        app.answers["/back"] = stream_twiml(edge.url("/b"))
        client = twilio.client()
        caller = await run(client.calls.create, to=CALLER, from_=FROM, url=app.url("/twiml"))
        await edge.connected.wait()
        await after_utterance(edge.connections[0], 1)  # asked, waiting for the answer, when moved
        await run(client.calls(caller.sid).update, twiml=conference_twiml(app, "room-2"))
        await app.wait(lambda: app.at("/hold"))
        participant = await run(client.conferences("room-2").participants.create, from_=FROM, to=NOBODY, timeout=5,
                                label="human-agent", early_media=True, status_callback=app.url("/target"),
                                status_callback_event=["initiated", "ringing", "answered", "completed"])
        assert participant.status == "queued" and participant.label == "human-agent"
        by_label = await run(client.conferences(participant.conference_sid).participants("human-agent").fetch)
        assert by_label.call_sid == participant.call_sid
        await app.wait(lambda: any(h.form["CallStatus"] == "no-answer" for h in app.at("/target")), timeout=10)
        remaining = await run(client.conferences(participant.conference_sid).participants.list)
        assert [p.call_sid for p in remaining] == [caller.sid]  # the caller still holds, alone
        # nobody came: back to the agent, on a new stream of the same call
        await run(client.calls(caller.sid).update, url=app.url("/back"))
        ended = await twilio.wait_call(caller.sid, "report", 15)
        room = await run(client.conferences(participant.conference_sid).fetch)
    assert [h.form["CallStatus"] for h in app.at("/target")] == ["initiated", "ringing", "no-answer"]
    assert all(h.signed_ok(TOKEN) for h in app.at("/target"))
    assert room.status == "completed" and room.reason_conference_ended == "last-participant-left"
    names = ended.timeline.names()
    assert names.index("conference-join") < names.index("conference-leave") < names.index("ended")
    report = ended.report
    assert [s["end"] for s in report["streams"]] == ["stopped", "hangup"]
    assert report["turns_completed"] == 1, report  # the question asked before the hold was answered after it
    assert ended.end_reason == "callee-hangup"


async def test_ending_a_conference_over_rest_sends_a_dial_caller_on_to_its_next_verb():
    people = [callee(CALLER, kind="person", ring_s=0.1), callee(TARGET, kind="person", ring_s=0.1, talk_s=0)]
    async with Receiver() as app, TwilioEmulator(config(), people) as twilio:
        client = twilio.client()
        twiml = conference_twiml(app, "room-3", after="<Say>Back with the agent</Say><Hangup/>")
        caller = await run(client.calls.create, to=CALLER, from_=FROM, twiml=twiml)
        await app.wait(lambda: app.at("/hold"))
        participant = await run(client.conferences("room-3").participants.create, from_=FROM, to=TARGET)
        await app.wait(lambda: any(h.form["StatusCallbackEvent"] == "conference-start" for h in app.at("/conf")))
        await run(client.conferences(participant.conference_sid).update, status="completed")
        ended = await twilio.wait_call(caller.sid, "ended")
        target = await twilio.wait_call(participant.call_sid, "ended")
        end = await app.wait(lambda: [h for h in app.at("/conf") if h.form["StatusCallbackEvent"] == "conference-end"])
    assert [h["say"] for h in ended.heard if h["source"] != "hold"] == ["Back with the agent"]
    assert ended.timeline.find("conference-kicked") and ended.end_reason == "twiml-hangup"
    assert target.end_reason == "left-conference" and str(target.rec.status) == "completed"
    assert end[0].form["ReasonConferenceEnded"] == "conference-ended-via-api"


async def test_participants_are_held_muted_and_removed_over_rest():
    people = [callee(CALLER, kind="person", ring_s=0.1), callee(TARGET, kind="person", ring_s=0.1, talk_s=0)]
    async with Receiver() as app, TwilioEmulator(config(), people) as twilio:
        app.answers["/hold-music"] = "<Response><Say>You are on hold</Say></Response>"
        client = twilio.client()
        twiml = conference_twiml(app, "room-4", after="<Say>Removed from the call</Say><Hangup/>")
        caller = await run(client.calls.create, to=CALLER, from_=FROM, twiml=twiml)
        await app.wait(lambda: app.at("/hold"))
        participant = await run(client.conferences("room-4").participants.create, from_=FROM, to=TARGET,
                                label="expert")
        await app.wait(lambda: any(h.form["StatusCallbackEvent"] == "conference-start" for h in app.at("/conf")))
        room = client.conferences(participant.conference_sid)
        held = await run(room.participants(caller.sid).update, hold=True, hold_url=app.url("/hold-music"),
                         muted=True)
        assert held.hold is True and held.muted is True
        await app.wait(lambda: app.at("/hold-music"))
        await run(room.participants(caller.sid).delete)
        ended = await twilio.wait_call(caller.sid, "ended")
        remaining = await run(room.participants.list)
        assert [p.label for p in remaining] == ["expert"]
        err = await asyncio.to_thread(lambda: run_error(room.participants("nobody").fetch))
    assert err == (404, 20404)
    assert [h["say"] for h in ended.heard if h["source"] == "hold"][-1] == "You are on hold"
    assert [h["say"] for h in ended.heard if h["source"] == "twiml"] == ["Removed from the call"]
    assert ended.timeline.find("conference-kicked")


def run_error(fn) -> tuple[int, int]:
    from twilio.base.exceptions import TwilioRestException

    try:
        fn()
    except TwilioRestException as exc:
        return exc.status, exc.code
    raise AssertionError("no error")
