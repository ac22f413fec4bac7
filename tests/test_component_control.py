"""The control API in-process: `create_app(settings)` driven through httpx's ASGI transport,
against the session's redis-server, with the edge, a worker and the Deepgram emulator in the
same event loop (tests/inprocess.py). The call simulator fetches its TwiML from the app too.

End-to-end twins with real processes: test_control_api, test_admission.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from switchboard_callsim.call import SimConfig, run_call
from switchboard_callsim.script import CallScript
from switchboard_callsim.twiliomsg import CallIdentity, OutboundStream

from inprocess import CONTROL_BASE, InProcess, metric, until

BUSY = "Sorry, all our agents are busy right now. Please call again later."  # the default


@pytest.fixture(scope="module")
async def sb(redis_url):
    async with InProcess(redis_url, "cmp:control:", workers=1) as running:
        yield running


def new_call(**params: str) -> CallIdentity:
    return CallIdentity("AC" + "0" * 32, "CA" + uuid.uuid4().hex, "MZ" + uuid.uuid4().hex, dict(params))


async def wait_state(api: httpx.AsyncClient, call_sid: str, state: str, timeout: float = 15) -> dict:
    detail: dict = {}

    async def reached() -> bool:
        nonlocal detail
        response = await api.get(f"/v1/calls/{call_sid}")
        detail = response.json() if response.status_code == 200 else {}
        return detail.get("state") == state

    await until(reached, timeout, f"call {call_sid} to be {state}")
    return detail


async def test_the_api_refuses_a_missing_or_wrong_token_and_health_needs_none(sb):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sb.app), base_url=CONTROL_BASE) as anonymous:
        for method, path in (("GET", "/v1/profiles"), ("POST", "/v1/calls/CA1/say"), ("GET", "/v1/calls/CA1/events")):
            missing = await anonymous.request(method, path, json={})
            wrong = await anonymous.request(method, path, json={}, headers={"Authorization": "Bearer " + "x" * 29})
            assert missing.status_code == wrong.status_code == 401, (method, path)
        assert (await anonymous.get("/readyz")).json() == {"ready": True, "redis": True}


async def test_settings_are_versioned_and_their_secrets_are_write_only(sb):
    api = sb.api
    doc = {"think": {"provider": {"type": "open_ai", "model": "gpt-4o-mini", "api_key": "sk-very-secret"},
                     "prompt": "Sell cars.",
                     "endpoint": {"url": "https://llm.example.com/v1", "headers": {"authorization": "Bearer llm-secret"}}}}
    first = await api.put("/v1/profiles/secretive", json=doc)
    assert first.status_code == 200 and first.json()["version"] == 1 and first.headers["ETag"] == '"1"'
    shown = await api.get("/v1/profiles/secretive")
    settings = shown.json()["settings"]
    assert settings["think"]["provider"]["api_key"] == "***"
    assert settings["think"]["endpoint"]["headers"] == {"authorization": "***"}
    assert "sk-very-secret" not in shown.text and "llm-secret" not in shown.text
    # The masked document sent back with one change keeps the stored secrets.
    settings["think"]["prompt"] = "Sell cars politely."
    second = await api.put("/v1/profiles/secretive", json=settings, headers={"If-Match": '"1"'})
    assert second.status_code == 200 and second.json()["version"] == 2
    stored = orjson.loads(await sb.redis.get(f"{sb.prefix}config:profile:secretive"))
    assert stored["settings"]["think"]["provider"]["api_key"] == "sk-very-secret"
    assert stored["settings"]["think"]["endpoint"]["headers"]["authorization"] == "Bearer llm-secret"
    assert stored["settings"]["think"]["prompt"] == "Sell cars politely."
    assert (await api.put("/v1/profiles/secretive", json=settings, headers={"If-Match": '"1"'})).status_code == 412
    assert {"name": "secretive", "version": 2} in (await api.get("/v1/profiles")).json()["profiles"]
    bad = await api.put("/v1/profiles/secretive", json={"think": {"provider": {"api_key": "sk-leak", "temperature": 9}}})
    assert bad.status_code == 422 and "temperature" in bad.text and "sk-leak" not in bad.text
    assert (await api.delete("/v1/profiles/secretive")).status_code == 204
    assert (await api.get("/v1/profiles/secretive")).status_code == 404


async def test_live_commands_reach_the_running_call_and_its_event_stream_ends_with_it(sb):
    api = sb.api
    ident = new_call()
    call = asyncio.create_task(run_call(sb.sim(turns=1, utterance_ms=600, hold_ms=30_000), ident))
    await wait_state(api, ident.call_sid, "active")
    # The transport hands the body over once the app is done: the stream must end by itself.
    follower = asyncio.create_task(api.get(f"/v1/calls/{ident.call_sid}/events", timeout=30))

    async def replied() -> bool:
        return any(e["type"] == "transcript" and e["role"] == "assistant" for e in await sb.events(ident.stream_sid))

    await until(replied, 15, "the agent's first reply")
    prompt = await api.post(f"/v1/calls/{ident.call_sid}/prompt", json={"prompt": "Now you sell boats."})
    assert prompt.status_code == 200 and prompt.json()["applied"] is True, prompt.text
    assert prompt.json()["worker"] == f"{sb.prefix}w1"
    say = await api.post(f"/v1/calls/{ident.call_sid}/say", json={"text": "A message from the office."})
    assert say.json()["applied"] is True, say.text

    async def said() -> bool:
        return any(e.get("content") == "A message from the office." for e in await sb.events(ident.stream_sid))

    await until(said, 10, "the injected line in the transcript")
    assert [m["prompt"] for m in sb.control_messages(ident.call_sid, "UpdatePrompt")] == ["Now you sell boats."]
    assert sb.control_messages(ident.call_sid, "InjectAgentMessage")[0]["message"] == "A message from the office."

    hangup = await api.post(f"/v1/calls/{ident.call_sid}/hangup", json={"after_reply": True})
    assert hangup.json()["applied"] is True, hangup.text
    result = await call  # Switchboard hung up before the script's 30 s hold was over
    assert result.failure == "closed by the server before the script finished"
    stream = await asyncio.wait_for(follower, 20)
    assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
    kinds = [line[7:] for line in stream.text.splitlines() if line.startswith("event: ")]
    assert kinds[-1] == "call_ended" and {"transcript", "prompt_updated", "hangup_requested"} <= set(kinds)
    detail = await wait_state(api, ident.call_sid, "ended")
    assert detail["overrides"]["prompt"] == "Now you sell boats."
    assert (await api.post(f"/v1/calls/{ident.call_sid}/say", json={"text": "hello?"})).status_code == 409
    assert (await api.post("/v1/calls/CAnosuchcall/say", json={"text": "hello?"})).status_code == 404


async def test_a_per_call_prompt_set_before_the_call_is_the_prompt_deepgram_receives(sb):
    ident = new_call()
    prompt = "You sell bicycles only."
    put = await sb.api.patch(f"/v1/calls/{ident.call_sid}/settings", json={"think": {"prompt": prompt}})
    assert put.status_code == 200 and put.json()["version"] == 1, put.text
    result = await run_call(sb.sim(turns=1, utterance_ms=600), ident)
    assert result.ok, result.failure
    assert sb.emulator_sessions(ident.call_sid)[0]["settings"]["agent"]["think"]["prompt"] == prompt
    detail = await wait_state(sb.api, ident.call_sid, "ended")
    assert detail["settings_source"] == "call" and [t["role"] for t in detail["transcript"]] == ["user", "assistant"]


# --- admission ------------------------------------------------------------------------------------
SHORT = CallScript(turns=1, lead_ms=300, utterance_ms=600)


@pytest.fixture(scope="module")
async def one_slot(redis_url):
    async with InProcess(redis_url, "cmp:admission:", workers=1, capacity=1,
                         edge_config={"edge_admission_wait_s": 0.5}) as running:
        yield running


async def idle(sb: InProcess) -> None:
    """The one slot is free again: the previous test's calls have ended."""
    await until(lambda: not sb.worker_list[0].sessions, 15, "the worker to be idle")


async def test_a_full_fleet_answers_a_new_call_with_the_busy_message_and_no_stream(one_slot):
    sb = one_slot
    await idle(sb)
    twilio = sb.twilio_client()
    admitted = metric("switchboard_control_admissions_total", outcome="admitted")
    rejected = metric("switchboard_control_admissions_total", outcome="rejected")
    via_twiml = SimConfig(url="unused", twiml_url=f"{CONTROL_BASE}/twiml", emulator_url=sb.emulator.http_url,
                          script=CallScript(turns=1, lead_ms=300, utterance_ms=600, hold_ms=2000))
    async with twilio:
        holder = asyncio.create_task(run_call(via_twiml, http=twilio))
        await until(lambda: metric("switchboard_control_admissions_total", outcome="admitted") > admitted, 10,
                    "the first call admitted")

        await until(lambda: bool(sb.worker_list[0].sessions), 10, "the worker to take the first call")
        turned_away = await run_call(SimConfig(url="unused", twiml_url=f"{CONTROL_BASE}/twiml", script=SHORT),
                                     http=twilio)
        first = await holder
    assert first.ok, first.failure
    assert first.byte_exact_in and first.byte_exact_out and first.says == []
    assert turned_away.says == [BUSY] and turned_away.twiml_hangup and turned_away.streams == []
    assert metric("switchboard_control_admissions_total", outcome="rejected") == rejected + 1


async def test_the_edge_closes_a_stream_it_cannot_place_with_1013(one_slot):
    sb = one_slot
    await idle(sb)
    taker = CallIdentity.random()
    filler = asyncio.create_task(run_call(sb.sim(turns=1, utterance_ms=600, hold_ms=2500), taker))
    await until(lambda: taker.stream_sid in sb.worker_list[0].sessions, 10, "the only slot to be taken")
    refused = metric("switchboard_edge_rejected_handshakes_total", reason="no_capacity")
    ident = CallIdentity.random()
    async with websockets.connect(sb.edge_url) as ws:
        await ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        await ws.send(OutboundStream(ident).start())
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    assert metric("switchboard_edge_rejected_handshakes_total", reason="no_capacity") == refused + 1
    record = await sb.call_record(ident.stream_sid)
    assert record["state"] == "ended" and record["outcome"] == "no_capacity"
    assert (await filler).ok

