"""Twilio REST emulator, media side: streams with the scripted party, AMD, redirects, <Dial>, inbound calls.

The `<Stream url>` points at a fake Media Streams server in the test (or, in the last test,
at the real edge with workers and the Deepgram emulator): it sees exactly what Twilio would
send, and the party's audio is checked byte for byte both ways.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest
from twilio.request_validator import RequestValidator

from switchboard_twilio_emulator.config import EmulatorConfig
from switchboard_twilio_emulator.server import TwilioEmulator

from system import System
from twilio_fakes import (
    Receiver,
    StreamConnection,
    StreamServer,
    after_utterance,
    caller_info,
    received_audio,
    reply,
    stream_twiml,
)

TOKEN = "media-test-token"
TO, FROM = "+14155550123", "+14155550100"


def config(**overrides) -> EmulatorConfig:
    values = {"port": 0, "auth_token": TOKEN, "setup_ms": 20, "say_ms_per_char": 2, "log_level": "WARNING", "cps": 20}
    values.update(overrides)
    return EmulatorConfig(**values)


def callee(number: str, **spec) -> str:
    return f"{number}={json.dumps(spec)}"


async def create(client, **kwargs):
    return await asyncio.to_thread(client.calls.create, **kwargs)


# --- a person on a stream -----------------------------------------------------------------------


async def test_a_person_answers_and_talks_over_the_stream_byte_exact_both_ways():
    async def agent(conn: StreamConnection) -> None:
        await conn.next(lambda m: m.get("event") == "start")
        await after_utterance(conn, 1)
        await reply(conn, 1, 20, mark="r1")
        await conn.next(lambda m: m.get("event") == "mark")
        await conn.next(lambda m: m.get("event") == "stop")

    person = callee(TO, kind="person", ring_s=0.1,
                    script={"turns": 1, "utterance_ms": 200, "lead_ms": 100, "reply_quiet_ms": 100, "hold_ms": 100})
    async with StreamServer(agent) as edge, Receiver() as app, TwilioEmulator(config(), [person]) as twilio:
        app.answers["/twiml"] = stream_twiml(edge.url("/twilio?x=1"), profile="sales")
        call = await create(twilio.client(), to=TO, from_=FROM, url=app.url("/twiml"))
        ended = await twilio.wait_call(call.sid, "report", 15)
        (conn,) = edge.connections
        sig = conn.headers["x-twilio-signature"]
        assert RequestValidator(TOKEN).validate(edge.url("/twilio?x=1"), {}, sig)
        start = conn.start["start"]
        assert start["callSid"] == call.sid and start["accountSid"] == twilio.config.account_sid
        assert start["customParameters"] == {"profile": "sales"}
        assert conn.messages[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        stop = conn.messages[-1]
        assert stop["event"] == "stop" and stop["stop"]["callSid"] == call.sid
        audio = received_audio(conn)
    report = ended.report
    assert str(ended.rec.status) == "completed" and ended.end_reason == "callee-hangup"
    assert report["turns_completed"] == 1 and report["byte_exact_out"] is True, report
    assert report["agent_frames"] == 20 and report["marks_echoed"] == 1 and report["warnings"] == {}
    assert report["sent_audio_bytes"] == len(audio)
    assert report["sent_audio_sha256"] == hashlib.sha256(audio).hexdigest()  # byte-exact toward the agent
    assert [s["end"] for s in report["streams"]] == ["hangup"]


async def test_a_redirect_over_rest_stops_the_stream_like_twilio_and_runs_the_new_twiml():
    async def silent_agent(conn: StreamConnection) -> None:
        await conn.next(lambda m: m.get("event") == "stop", timeout=20)

    person = callee(TO, kind="person", ring_s=0.1, script={"turns": 3, "lead_ms": 100, "reply_timeout_ms": 20000})
    async with StreamServer(silent_agent) as edge, Receiver() as app, TwilioEmulator(config(), [person]) as twilio:
        app.answers["/twiml"] = stream_twiml(edge.url(), after="<Say>never said</Say>")
        client = twilio.client()
        call = await create(client, to=TO, from_=FROM, url=app.url("/twiml"))
        await edge.connected.wait()
        conn = edge.connections[0]
        await conn.next(lambda m: caller_info(m) is not None)
        updated = await asyncio.to_thread(client.calls(call.sid).update,
                                          twiml="<Response><Say>Transferring you now</Say><Hangup/></Response>")
        assert updated.status == "in-progress"
        await asyncio.wait_for(conn.closed.wait(), 5)
        ended = await twilio.wait_call(call.sid, "report")
    assert conn.messages[-1]["event"] == "stop"  # Twilio says stop before it closes the socket
    names = ended.timeline.names()
    assert names.index("stream-end") < names.index("redirected") < names.index("ended")
    assert ended.timeline.find("stream-end")[0]["end"] == "stopped"
    assert [h["say"] for h in ended.heard] == ["Transferring you now"]
    assert ended.end_reason == "twiml-hangup"


async def test_a_redirect_that_cuts_the_agents_sentence_shows_how_much_went_unplayed():
    async def agent(conn: StreamConnection) -> None:
        await conn.next(lambda m: m.get("event") == "start")
        await reply(conn, 1, 100, mark="sentence")  # two seconds of speech
        await conn.next(lambda m: m.get("event") == "stop", timeout=20)

    person = callee(TO, kind="person", ring_s=0.1, script={"turns": 1, "lead_ms": 3000})
    async with StreamServer(agent) as edge, Receiver() as app, TwilioEmulator(config(), [person]) as twilio:
        app.answers["/twiml"] = stream_twiml(edge.url())
        client = twilio.client()
        call = await create(client, to=TO, from_=FROM, url=app.url("/twiml"))
        await edge.connected.wait()
        conn = edge.connections[0]
        await conn.next(lambda m: m.get("event") == "media")
        await asyncio.to_thread(client.calls(call.sid).update, twiml="<Response><Hangup/></Response>")
        ended = await twilio.wait_call(call.sid, "report")
    (segment,) = ended.report["streams"]
    assert segment["end"] == "stopped" and 1000 < segment["unplayed_ms"] <= 2000, segment
    assert not any(m.get("event") == "mark" for m in conn.messages)  # the mark never played: never echoed


async def test_a_caller_redirected_to_a_new_stream_carries_on_the_same_conversation():
    async def first(conn: StreamConnection) -> None:
        await conn.next(lambda m: m.get("event") == "stop", timeout=20)

    async def second(conn: StreamConnection) -> None:
        await conn.next(lambda m: m.get("event") == "start")
        await reply(conn, 1, 10)
        await conn.next(lambda m: m.get("event") == "stop")

    servers = iter([first, second])

    async def agent(conn: StreamConnection) -> None:
        await next(servers)(conn)

    person = callee(TO, kind="person", ring_s=0.1, script={"turns": 1, "utterance_ms": 200, "lead_ms": 100,
                                                          "reply_timeout_ms": 4000, "reply_quiet_ms": 100})
    async with StreamServer(agent) as edge, Receiver() as app, TwilioEmulator(config(), [person]) as twilio:
        app.answers["/twiml"] = stream_twiml(edge.url("/a"))
        app.answers["/again"] = stream_twiml(edge.url("/b"))
        client = twilio.client()
        call = await create(client, to=TO, from_=FROM, url=app.url("/twiml"))
        await edge.connected.wait()
        await after_utterance(edge.connections[0], 1)
        await asyncio.to_thread(client.calls(call.sid).update, url=app.url("/again"))
        ended = await twilio.wait_call(call.sid, "report", 15)
    a, b = edge.connections
    assert a.start["start"]["callSid"] == b.start["start"]["callSid"] == call.sid
    assert a.start["streamSid"] != b.start["streamSid"]
    report = ended.report
    assert [s["end"] for s in report["streams"]] == ["stopped", "hangup"]
    assert report["turns_completed"] == 1 and report["byte_exact_out"] is True, report


# --- answering machines -------------------------------------------------------------------------


async def test_a_voicemail_gets_its_amd_verdict_after_the_beep_and_records_only_the_message():
    # lead_ms covers the TwiML fetch and the stream's opening, so the whole greeting goes up the stream
    machine = {"lead_ms": 400, "greeting_ms": 1000, "gap_ms": 100, "beep_ms": 300, "record_ms": 5000}
    vm = callee(TO, kind="voicemail", ring_s=0.1, machine=machine)
    app_ref: list[Receiver] = []

    async def agent(conn: StreamConnection) -> None:
        await conn.next(lambda m: m.get("event") == "start")
        await app_ref[0].wait(lambda: app_ref[0].at("/amd"))  # the agent waits for the verdict, then speaks
        await reply(conn, 1, 25, mark="message")
        await conn.next(lambda m: m.get("event") == "mark")
        await conn.ws.close()

    async with StreamServer(agent) as edge, Receiver() as app, TwilioEmulator(config(), [vm]) as twilio:
        app_ref.append(app)
        app.answers["/twiml"] = stream_twiml(edge.url())
        call = await create(twilio.client(), to=TO, from_=FROM, url=app.url("/twiml"),
                            status_callback=app.url("/status"), status_callback_event=["answered", "completed"],
                            machine_detection="DetectMessageEnd", async_amd="true",
                            async_amd_status_callback=app.url("/amd"))
        ended = await twilio.wait_call(call.sid, "report", 15)
        conn = edge.connections[0]
    (amd,) = app.at("/amd")
    answered = next(h for h in app.at("/status") if h.form["CallStatus"] == "in-progress")
    assert amd.signed_ok(TOKEN)
    assert amd.form == {"AccountSid": twilio.config.account_sid, "CallSid": call.sid,
                        "AnsweredBy": "machine_end_beep", "MachineDetectionDuration": "1900"}
    decided = ended.timeline.find("amd")[0]["at"] - ended.rec.answered_at
    assert 1.9 <= decided <= 2.5  # the beep ends 1.8 s after the answer, detected 0.1 s later
    assert amd.at > answered.at
    assert ended.rec.answered_by == "machine_end_beep"
    assert app.at("/status")[-1].form["AnsweredBy"] == "machine_end_beep"
    machine_report = ended.report["machine"]
    assert machine_report["heard_before_beep_bytes"] == 0  # nothing played over the greeting
    assert machine_report["message_bytes"] == 25 * 160 and machine_report["message_replies"] == 1
    spoken = [caller_info(m).stream_no for m in conn.messages if caller_info(m) is not None]
    assert spoken.count(1) == 50 and spoken.count(2) == 15  # 1 s greeting, 300 ms beep
    assert ended.end_reason == "twiml-hangup" and ended.report["byte_exact_out"] is True


async def test_synchronous_amd_holds_the_twiml_until_the_verdict_and_sends_it_along():
    person = callee(TO, kind="person", ring_s=0.1, amd_ms=300)
    async with Receiver({"/twiml": "<Response><Hangup/></Response>"}) as app, \
            TwilioEmulator(config(), [person]) as twilio:
        call = await create(twilio.client(), to=TO, from_=FROM, url=app.url("/twiml"), machine_detection="Enable")
        ended = await twilio.wait_call(call.sid, "report")
    (fetch,) = app.at("/twiml")
    assert fetch.form["AnsweredBy"] == "human" and fetch.form["MachineDetectionDuration"] == "300"
    assert fetch.at - ended.rec.answered_at >= 0.3


# --- <Dial> -------------------------------------------------------------------------------------


async def test_dial_with_a_whisper_bridges_then_reports_to_the_action():
    target = "+14155550188"
    people = [callee(TO, kind="person", ring_s=0.1), callee(target, kind="person", ring_s=0.2, talk_s=0.5),
              callee("+14155550189", kind="busy", ring_s=0.1)]
    answers = {
        "/twiml": f'<Response><Dial action="/dialed" timeout="5"><Number url="/whisper">{target}</Number></Dial></Response>',
        "/whisper": "<Response><Say>The caller wants a refund</Say></Response>",
        "/dialed": "<Response><Dial action='/busy'>+14155550189</Dial></Response>",
        "/busy": "<Response><Hangup/></Response>",
    }
    async with Receiver(answers) as app, TwilioEmulator(config(), people) as twilio:
        call = await create(twilio.client(), to=TO, from_=FROM, url=app.url("/twiml"))
        ended = await twilio.wait_call(call.sid, "report")
        child = twilio.call(ended.children[0].sid)
    (whisper,) = app.at("/whisper")
    assert whisper.signed_ok(TOKEN)
    assert whisper.form["Direction"] == "outbound-dial" and whisper.form["ParentCallSid"] == call.sid
    assert child.rec.parent_call_sid == call.sid and str(child.rec.status) == "completed"
    assert [h["say"] for h in child.heard] == ["The caller wants a refund"]
    assert child.heard[0]["source"] == "whisper" and ended.heard == []  # the caller did not hear it
    (dialed,) = app.at("/dialed")
    assert dialed.signed_ok(TOKEN)
    assert dialed.form["DialCallStatus"] == "completed" and dialed.form["DialCallSid"] == child.sid
    assert dialed.form["DialBridged"] == "true" and 0 <= int(dialed.form["DialCallDuration"]) <= 3
    assert app.at("/busy")[0].form["DialCallStatus"] == "busy"
    assert ended.end_reason == "twiml-hangup"


# --- inbound --------------------------------------------------------------------------------------


async def test_an_inbound_call_fetches_the_voice_webhook_as_twilio_and_streams():
    async def agent(conn: StreamConnection) -> None:
        await after_utterance(conn, 1)
        await reply(conn, 1, 10)
        await conn.next(lambda m: m.get("event") == "stop")

    caller = {"kind": "person", "script": {"turns": 1, "utterance_ms": 200, "lead_ms": 100, "reply_quiet_ms": 100}}
    async with StreamServer(agent) as edge, Receiver() as app, TwilioEmulator(config()) as twilio:
        app.answers["/voice"] = stream_twiml(edge.url())
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{twilio.url}/_emulator/inbound",
                                json={"url": app.url("/voice"), "from": FROM, "to": TO, "caller": caller})
            assert r.status_code == 201, r.text
            sid = r.json()["sid"]
            r = await http.get(f"{twilio.url}/_emulator/calls/{sid}", params={"wait": "report", "timeout_s": 15})
    detail = r.json()
    (voice,) = app.at("/voice")
    assert voice.signed_ok(TOKEN)
    assert voice.form["Direction"] == "inbound" and voice.form["CallStatus"] == "ringing"
    assert detail["status"] == "completed" and detail["report"]["turns_completed"] == 1
    assert detail["report"]["byte_exact_out"] is True and not detail["wait_timed_out"]


# --- the real edge --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def system(redis_url, tmp_path_factory):
    sb = System(redis_url, "twemu:", tmp_path_factory.mktemp("twilio-emulator"), workers=1).start()
    yield sb
    sb.stop()


async def test_a_person_holds_a_conversation_through_the_real_edge_byte_exact(system):
    person = callee(TO, kind="person", ring_s=0.1,
                    script={"turns": 2, "utterance_ms": 600, "lead_ms": 300, "reply_timeout_ms": 6000})
    twiml = stream_twiml(system.edge_url, profile="default")
    async with TwilioEmulator(config(deepgram_emulator_url=system.emulator_http), [person]) as twilio:
        call = await create(twilio.client(), to=TO, from_=FROM, twiml=twiml)
        ended = await twilio.wait_call(call.sid, "report", 40)
    report = ended.report
    assert report["turns_completed"] == 2, report
    assert report["byte_exact_out"] is True and report["byte_exact_in"] is True, report
    assert ended.end_reason == "callee-hangup" and report["warnings"] == {}


async def test_an_inbound_call_can_be_rejected_busy_and_plays_gathers_and_says_in_order():
    answers = {"/reject": '<Response><Reject reason="busy"/></Response>',
               "/menu": '<Response><Play>https://example.com/hello.mp3</Play><Gather timeout="1" numDigits="1">'
                        '<Say>Press 1 for sales</Say></Gather><Say>Goodbye</Say></Response>'}
    async with Receiver(answers) as app, TwilioEmulator(config(play_s=0.1)) as twilio:
        async with httpx.AsyncClient(base_url=twilio.url) as http:
            sids = []
            for path in ("/reject", "/menu"):
                r = await http.post("/_emulator/inbound", json={"url": app.url(path), "caller": {"kind": "person"}})
                sids.append(r.json()["sid"])
            bad = await http.post("/_emulator/inbound", json={"url": "ftp://nowhere", "caller": {"kind": "person"}})
        rejected = await twilio.wait_call(sids[0], "ended")
        menu = await twilio.wait_call(sids[1], "ended")
    assert bad.status_code == 400 and "url" in bad.json()["error"]
    assert str(rejected.rec.status) == "busy" and rejected.rec.answered_at is None
    assert [h.get("play") or h.get("say") for h in menu.heard] == [
        "https://example.com/hello.mp3", "Press 1 for sales", "Goodbye"]
    assert str(menu.rec.status) == "completed" and menu.end_reason == "twiml-ended"
    gather = next(e for e in menu.timeline.events if e.get("verb") == "Gather")
    assert gather["note"] == "the party presses nothing"
