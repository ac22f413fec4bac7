"""Transfers to a person, end to end: the Twilio REST emulator places an inbound call through the
control API's /twiml, its scripted caller talks over a real stream (edge, Redis, a worker, the
Deepgram emulator), the agent calls transfer_call, and the emulator carries out what Switchboard
asks of Twilio (a redirect to <Dial>, a conference, the target's leg with its whisper) and calls
back, signed, as Twilio does. Stream tokens and resume grants are on (TWILIO_AUTH_TOKEN set).
"""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import orjson
import pytest
from webhook_receiver import WebhookReceiver

from switchboard import standard_webhooks
from switchboard_dev import procs
from switchboard_twilio_emulator.config import TEST_ACCOUNT_SID, EmulatorConfig
from switchboard_twilio_emulator.server import TwilioEmulator

from system import System, scrape

TOKEN = "transfer-test-auth-token"
SECRET = "whsec_" + base64.b64encode(b"transfer-test-call-ended-secret!").decode()
CALLER, NUMBER, TARGET, NOBODY = "+14155550123", "+14155550100", "+14155550177", "+14155550178"


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"twilio": procs.free_port(), "control": procs.free_port(), "edge": procs.free_port()}


@pytest.fixture(scope="module")
async def receiver():
    async with WebhookReceiver() as hooks:
        yield hooks


@pytest.fixture(scope="module")
def system(redis_url, tmp_path_factory, ports, receiver):
    control_url = f"http://127.0.0.1:{ports['control']}"
    twilio_url = f"http://127.0.0.1:{ports['twilio']}"
    edge_url = f"ws://127.0.0.1:{ports['edge']}/twilio"
    twilio_env = {"TWILIO_ACCOUNT_SID": TEST_ACCOUNT_SID, "TWILIO_API_BASE_URL": twilio_url}
    sb = System(redis_url, "xfer:", tmp_path_factory.mktemp("transfer"), workers=1, auth_token=TOKEN,
                edge_port=ports["edge"], edge_env={"EDGE_PUBLIC_URL": edge_url},
                worker_env={**twilio_env, "TWILIO_AUTH_TOKEN": TOKEN, "CONTROL_PUBLIC_URL": control_url}).start()
    sb.stack.control_port = ports["control"]
    sb.stack.start_control(CONTROL_PUBLIC_URL=control_url, CONTROL_ADMISSION="off", **twilio_env,
                           CALL_ENDED_WEBHOOK_URL=receiver.url("/call-ended"), CALL_ENDED_WEBHOOK_SECRET=SECRET,
                           CONTROL_EGRESS_ALLOW="127.0.0.1/32", CONTROL_EGRESS_ALLOW_HTTP="true")
    yield sb
    sb.stop()


def emulator(system: System, ports: dict[str, int], *callees: str) -> TwilioEmulator:
    config = EmulatorConfig(port=ports["twilio"], auth_token=TOKEN, setup_ms=20, say_ms_per_char=2, cps=20,
                            log_level="WARNING", deepgram_emulator_url=system.emulator_http)
    return TwilioEmulator(config, list(callees))


def callee(number: str, **spec) -> str:
    return f"{number}={json.dumps(spec)}"


async def profile(system: System, name: str, settings: dict) -> None:
    headers = {"Authorization": f"Bearer {system.stack.control_token}"}
    async with httpx.AsyncClient(base_url=system.stack.control_url, headers=headers) as api:
        response = await api.put(f"/v1/profiles/{name}", json=settings)
    assert response.status_code in (200, 201), response.text


async def place(system: System, twilio: TwilioEmulator, profile_name: str, script: dict) -> str:
    caller = {"kind": "person", "script": {"utterance_ms": 600, "lead_ms": 300, "reply_timeout_ms": 8000, **script}}
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{twilio.url}/_emulator/inbound", json={
            "url": f"{system.stack.control_url}/twiml?profile={profile_name}", "from": CALLER, "to": NUMBER,
            "caller": caller})
    assert response.status_code == 201, response.text
    return str(response.json()["sid"])


def transfer_settings(mode: str, target: str, **transfer) -> dict:
    directive = json.dumps({"to": target, "mode": mode})
    return {
        "think": {"prompt": f"You are a receptionist.\nemulator: on turn 1 call transfer_call {directive}",
                  "functions": [{"name": "transfer_call", "description": "Hand the caller to a person",
                                 "parameters": {"type": "object", "properties": {"to": {"type": "string"},
                                                                                 "mode": {"type": "string"}}}}]},
        "transfer": {"destinations": [target], "mode": mode, "ring_timeout_s": 5, **transfer},
    }


def streams_of(system: System, call_sid: str) -> list[str]:
    """The call's streams, oldest first (from the transfer record and the callSid mapping)."""
    with system.redis() as client:
        current = client.get(system.keys.call_by_callsid(call_sid)).decode()
        chain = [current]
        while resume_of := client.hget(system.keys.call(chain[0]), "resume_of"):
            chain.insert(0, resume_of.decode())
    return chain


def steps(events: list[dict]) -> list[str]:
    return [e["step"] for e in events if e["type"] == "transfer"]


async def until(predicate, timeout: float = 15, what: str = "a condition") -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_a_cold_transfer_moves_the_call_only_once_the_agents_sentence_has_played(system, ports):
    await profile(system, "cold", transfer_settings("cold", TARGET))
    people = [callee(TARGET, kind="person", ring_s=0.3, talk_s=1)]
    async with emulator(system, ports, *people) as twilio:
        call_sid = await place(system, twilio, "cold", {"turns": 1, "hold_ms": 15000})
        ended = await twilio.wait_call(call_sid, "report", 40)
    (agent_stream,) = ended.report["streams"]
    # The goodbye the agent said after agreeing to transfer played to its last byte before the redirect.
    assert agent_stream["end"] == "stopped" and agent_stream["unplayed_ms"] == 0, agent_stream
    assert ended.report["byte_exact_out"] is True, ended.report
    (child,) = ended.children
    assert child.rec.to == TARGET and str(child.rec.status) == "completed"
    (stream_sid,) = streams_of(system, call_sid)
    events = system.events(stream_sid)
    await until(lambda: "completed" in steps(system.events(stream_sid)), what="the dial action")
    events = system.events(stream_sid)
    assert steps(events) == ["waiting", "dialing", "connected", "completed"], steps(events)
    goodbye = [e for e in events if e["type"] == "reply_heard"][-1]
    assert "the function returned" in goodbye["text"] and not goodbye["interrupted"]
    assert goodbye["heard_ms"] == goodbye["audio_ms"]
    record = system.wait_call_ended(stream_sid)
    assert record["outcome"] == "transferred" and record["end_reason"] == "twilio_stop"
    assert scrape(system.stack.worker_metrics[0], "switchboard_worker_transfers_total", 'step="dialing"') >= 1


async def test_a_warm_transfer_holds_the_caller_whispers_to_the_target_then_joins_them(system, ports):
    await profile(system, "warm", transfer_settings("warm", TARGET, hold_message="Please hold while I connect you."))
    people = [callee(TARGET, kind="person", ring_s=0.3, talk_s=0)]
    async with emulator(system, ports, *people) as twilio:
        call_sid = await place(system, twilio, "warm", {"turns": 1, "hold_ms": 30000})
        (target,) = await twilio.wait_for(lambda: [c for c in twilio.core.calls.values() if c.rec.to == TARGET], 30)
        (stream_sid,) = streams_of(system, call_sid)
        await until(lambda: "connected" in steps(system.events(stream_sid)), 30, "the target to join")
        # The person and the caller now talk: the caller hangs up, which ends the conference.
        await asyncio.to_thread(twilio.client().calls(call_sid).update, status="completed")
        ended = await twilio.wait_call(call_sid, "report", 20)
        target_ended = await twilio.wait_call(target.rec.sid, "ended", 20)
    assert [h["say"] for h in ended.heard if h["source"] == "hold"] == ["Please hold while I connect you."]
    (whisper,) = [h["say"] for h in target_ended.heard]
    assert whisper.startswith(f"Call from {CALLER}.") and "Caller utterance 1" in whisper, whisper
    started = ended.timeline.find("conference-started")[0]
    assert started["others"] == [target.rec.sid]  # caller joined with the person
    (agent_stream,) = ended.report["streams"]
    assert agent_stream["end"] == "stopped" and agent_stream["unplayed_ms"] == 0, agent_stream  # agent gone
    await until(lambda: "completed" in steps(system.events(stream_sid)), 20, "the target's leg to end")
    events = system.events(stream_sid)
    assert steps(events) == ["waiting", "holding", "ringing", "answered", "connected", "completed"], steps(events)
    record = system.call_record(stream_sid)
    assert record["outcome"] == "transferred" and json.loads(record["transfer"])["step"] == "completed"
    headers = {"Authorization": f"Bearer {system.stack.control_token}"}
    async with httpx.AsyncClient(base_url=system.stack.control_url, headers=headers) as api:
        view = (await api.get(f"/v1/calls/{call_sid}/transfer")).json()
        detail = (await api.get(f"/v1/calls/{call_sid}")).json()
        async with api.stream("GET", f"/v1/calls/{call_sid}/events", params={"types": "transfer,call_ended"},
                              timeout=10) as sse:
            text = (await sse.aread()).decode()
    assert view["state"] == "completed" and view["mode"] == "warm" and view["target_call_sid"] == target.rec.sid
    assert [t["step"] for t in detail["transfers"]] == steps(events)
    # A follower of the call's events sees the transfer through: past the agent's own end, to the person.
    followed = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    ends = [e.get("outcome") for e in followed if e["type"] == "call_ended"]
    assert ends == ["transferring", "transferred"], followed
    assert [e["step"] for e in followed if e["type"] == "transfer"][:5] == [
        "waiting", "holding", "ringing", "answered", "connected"]


async def test_nobody_answering_a_warm_transfer_brings_the_caller_back_to_the_agent_with_its_context(system, ports):
    await profile(system, "noanswer", transfer_settings("warm", NOBODY, no_answer_message="Sorry, nobody picked up."))
    people = [callee(NOBODY, kind="no_answer")]
    async with emulator(system, ports, *people) as twilio:
        call_sid = await place(system, twilio, "noanswer", {"turns": 2, "hold_ms": 500, "reply_timeout_ms": 15000})
        ended = await twilio.wait_call(call_sid, "report", 60)
    report = ended.report
    assert [s["end"] for s in report["streams"]] == ["stopped", "hangup"], report["streams"]
    # The question asked after the hold was answered by the agent that had the first part of the call.
    assert report["turns_completed"] == 2 and report["byte_exact_out"] is True, report
    first, second = streams_of(system, call_sid)
    assert steps(system.events(first)) == ["waiting", "holding", "ringing", "no_answer", "returning"]
    events = system.events(second)
    assert steps(events) == ["returned"]
    assert any(e["type"] == "resumed_from_stream" and e["stream_sid"] == first for e in events)
    sessions = system.emulator_sessions(call_sid)
    resumed = next(s for s in sessions if (s["settings"].get("agent") or {}).get("context"))
    context = [m.get("content") for m in resumed["settings"]["agent"]["context"]["messages"]]
    assert "Caller utterance 1 (600 ms)" in context  # the new session knows the conversation so far
    assert "greeting" not in resumed["settings"]["agent"]  # and does not greet again
    said = [m["body"].get("message") for m in resumed["control_messages"] if m["type"] == "InjectAgentMessage"]
    assert said == ["Sorry, nobody picked up."]
    record = system.wait_call_ended(second)
    assert record["outcome"] == "completed"
    with system.redis() as client:
        state = client.hget(f"{system.keys.prefix}transfer:{{{call_sid}}}", "state").decode()
    assert state == "returned"


async def test_transfer_over_rest_refuses_a_target_that_is_not_allowed(system, ports):
    await profile(system, "rest", {"transfer": {"destinations": [TARGET]},
                                   "think": {"prompt": "You are a receptionist."}})
    people = [callee(TARGET, kind="person", ring_s=0.2, talk_s=0.5)]
    headers = {"Authorization": f"Bearer {system.stack.control_token}"}
    async with emulator(system, ports, *people) as twilio, httpx.AsyncClient(
            base_url=system.stack.control_url, headers=headers, timeout=10) as api:
        call_sid = await place(system, twilio, "rest", {"turns": 1, "hold_ms": 20000, "lead_ms": 200})
        await until(lambda: _live(system, call_sid), 15, "the call to be live")
        refused = await api.post(f"/v1/calls/{call_sid}/transfer", json={"to": "+19005550000"})
        bad = await api.post(f"/v1/calls/{call_sid}/transfer", json={"to": "call me maybe"})
        moved = await api.post(f"/v1/calls/{call_sid}/transfer",
                               json={"to": TARGET, "announce": "Connecting you to a colleague now."})
        ended = await twilio.wait_call(call_sid, "report", 40)
    assert refused.status_code == 403 and "allow-list" in refused.json()["detail"]
    assert bad.status_code == 422
    assert moved.status_code == 200 and moved.json()["applied"] is True, moved.text
    (agent_stream,) = ended.report["streams"]
    assert agent_stream["unplayed_ms"] == 0  # the announcement played in full first
    sessions = system.emulator_sessions(call_sid)
    said = [m["body"].get("message") for s in sessions for m in s["control_messages"] if m["type"] == "InjectAgentMessage"]
    assert said == ["Connecting you to a colleague now."]
    assert ended.children and ended.children[0].rec.to == TARGET


def _live(system: System, call_sid: str) -> bool:
    with system.redis() as client:
        sid = client.get(system.keys.call_by_callsid(call_sid))
        return bool(sid) and client.hget(system.keys.call(sid.decode()), "state") == b"active"


async def test_a_forged_transfer_callback_is_refused(system):
    async with httpx.AsyncClient(base_url=system.stack.control_url) as client:
        response = await client.post("/twilio/transfer/status?call=CA1&t=0123456789ab",
                                     data={"CallSid": "CAx", "CallStatus": "no-answer"})
        answer = await client.post("/twiml/transfer/return?call=CA1&t=0123456789ab", data={"CallSid": "CA1"},
                                   headers={"X-Twilio-Signature": "Zm9v"})
    assert response.status_code == 403 and answer.status_code == 403


async def test_one_call_with_a_templated_greeting_keyed_digits_a_warm_transfer_and_its_call_ended(system, ports,
                                                                                                 receiver):
    directive = json.dumps({"to": TARGET, "mode": "warm"})
    await profile(system, "showcase", {
        "greeting": "Hello, thanks for calling {{to}}. I see you are calling from {{from}}.",
        "think": {"prompt": f"You are Acme Motors' front desk, talking to {{{{from}}}}.\n"
                            f"emulator: on turn 2 call transfer_call {directive}",
                  "functions": [{"name": "transfer_call", "description": "Hand the caller to a person"}]},
        "dtmf": {"enabled": True, "message": "The caller keyed their order number: {{digits}}"},
        "transfer": {"destinations": [TARGET], "mode": "warm", "ring_timeout_s": 10,
                     "hold_message": "Please hold while I find a colleague."},
    })
    people = [callee(TARGET, kind="person", ring_s=0.3, talk_s=0)]
    async with emulator(system, ports, *people) as twilio:
        call_sid = await place(system, twilio, "showcase", {
            "turns": 1, "lead_ms": 1800, "hold_ms": 30000, "dtmf": [[4200, "4"], [4300, "2"], [4400, "#"]]})
        (stream_sid,) = await asyncio.to_thread(lambda: streams_of_when_live(system, call_sid))
        await until(lambda: "connected" in steps(system.events(stream_sid)), 40, "the person to take the call")
        await asyncio.to_thread(twilio.client().calls(call_sid).update, status="completed")
        ended = await twilio.wait_call(call_sid, "report", 20)
        (target,) = [c for c in twilio.core.calls.values() if c.rec.to == TARGET]
    await receiver.wait(lambda r: any(d.headers.get("webhook-id") == f"msg_{call_sid}" for d in r), 30)
    (delivery,) = [d for d in receiver.received if d.headers.get("webhook-id") == f"msg_{call_sid}"]
    assert standard_webhooks.verify(standard_webhooks.parse_secret(SECRET), delivery.headers, delivery.body)
    data = delivery.json()["data"]
    lines = [(line["role"], line["content"]) for line in data["transcript"]]
    assert lines[0] == ("assistant", f"Hello, thanks for calling {NUMBER}. I see you are calling from {CALLER}.")
    assert ("user", "The caller keyed their order number: 42#") in lines
    assert [k["digits"] for k in data["keypad"]] == ["42#"]
    (moved,) = data["transfers"]
    assert moved["mode"] == "warm" and moved["target"] == TARGET and moved["state"] in ("connected", "completed")
    assert [step["step"] for step in moved["steps"]][:5] == ["waiting", "holding", "ringing", "answered", "connected"]
    assert data["outcome"] == "transferred" and data["from"] == CALLER and data["to"] == NUMBER
    assert next(h["say"] for h in target.heard).startswith(f"Call from {CALLER}.")
    assert ended.report["streams"][0]["unplayed_ms"] == 0
    out = system.stack.log_dir / "showcase-call-ended.json"
    out.write_bytes(orjson.dumps({"whisper": [h["say"] for h in target.heard], "caller_heard": ended.heard,
                                  "call_ended": delivery.json(), "headers": {k: v for k, v in delivery.headers.items()
                                                                             if k.startswith("webhook-")}},
                                 option=orjson.OPT_INDENT_2))


def streams_of_when_live(system: System, call_sid: str) -> list[str]:
    procs.wait_until(lambda: _live(system, call_sid), 20, "the call to be live")
    return streams_of(system, call_sid)
