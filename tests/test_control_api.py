"""The control API end to end: real uvicorn (switchboard-control), real Redis, edge, one worker,
the Deepgram emulator, and the call simulator; local HTTP endpoints play a function webhook
and Twilio's REST API.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs
from xml.etree import ElementTree as ET

import httpx
import orjson
import pytest
import redis as redis_sync

from switchboard.keys import Keys
from switchboard.webhook_signature import HEADER as SIGNATURE_HEADER
from switchboard.webhook_signature import verify
from switchboard_callsim.call import SimConfig, run_call
from switchboard_callsim.script import CallScript
from switchboard_callsim.twiliomsg import CallIdentity
from switchboard_dev import procs

from system import System

API_TOKEN = "test-control-token-0123456789"
TWILIO_TOKEN = "test-twilio-auth-token"
FUNCTION_SECRET = "test-function-secret"
PUBLIC_URL = "https://control.example.com"
EDGE_PUBLIC_URL = "wss://edge.example.com/twilio"
TWILIO_SID = "AC00000000000000000000000000000000"


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeHttp:
    """Answers POST /ok/* with JSON, /fail/* with 500, /twilio/* like Twilio's Call update; records all."""

    requests: list[Recorded] = field(default_factory=list)

    def start(self) -> FakeHttp:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.requests.append(Recorded(self.path, dict(self.headers.items()), body))
                if self.path.startswith("/fail"):
                    self._answer(500, b'{"oops": true}')
                elif self.path.startswith("/twilio"):
                    self._answer(200, b'{"sid": "CA", "status": "in-progress"}')
                else:
                    self._answer(200, b'{"slots": ["10:00", "14:30"]}')

            def _answer(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def control_service(redis_url: str, prefix: str, **env: str) -> tuple[procs.Service, int]:
    port = procs.free_port()
    service = procs.control(redis_url, port, api_token=API_TOKEN, auth_token=TWILIO_TOKEN,
                            edge_public_url=EDGE_PUBLIC_URL, KEY_PREFIX=prefix, CONTROL_PUBLIC_URL=PUBLIC_URL,
                            COMMAND_ACK_TIMEOUT_S="3", CALL_RETENTION_S="600", **env)
    return service, port


@dataclass
class ControlStack:
    redis_url: str
    prefix: str
    log_dir: Path

    def start(self) -> ControlStack:
        self.fake = FakeHttp().start()
        self.system = System(
            self.redis_url, self.prefix, self.log_dir, workers=1,
            worker_env={"FUNCTION_SECRET": FUNCTION_SECRET, "TWILIO_ACCOUNT_SID": TWILIO_SID,
                        "TWILIO_AUTH_TOKEN": "fake-twilio-rest-token", "TWILIO_API_BASE_URL": f"{self.fake.url}/twilio",
                        # The fake webhook receiver is local plain http: admitted only by these dev settings.
                        "WORKER_EGRESS_ALLOW": "127.0.0.1/32", "WORKER_EGRESS_ALLOW_HTTP": "true"},
        ).start()
        service, self.control_port = control_service(self.redis_url, self.prefix)
        self.control = self.system._run(service)
        return self

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def stop(self) -> None:
        self.system.stop()
        self.fake.stop()


# --- fixtures and helpers ------------------------------------------------------------------------

PREFIX = "ctlapi:"


@pytest.fixture(scope="module")
def stack(redis_url, tmp_path_factory):
    running = ControlStack(redis_url, PREFIX, tmp_path_factory.mktemp("control-api")).start()
    yield running
    running.stop()


@pytest.fixture()
async def api(stack):
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with httpx.AsyncClient(base_url=stack.control_url, headers=headers, timeout=15) as client:
        yield client


def new_call(**params: str) -> CallIdentity:
    import uuid

    return CallIdentity("AC" + "0" * 32, "CA" + uuid.uuid4().hex, "MZ" + uuid.uuid4().hex, dict(params))


def sim(stack: ControlStack, **script) -> SimConfig:
    script = {"lead_ms": 300, "utterance_ms": 600, **script}
    return SimConfig(url=stack.system.edge_url, script=CallScript(**script))


async def wait_state(api: httpx.AsyncClient, call_sid: str, state: str, timeout: float = 15) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        response = await api.get(f"/v1/calls/{call_sid}")
        if response.status_code == 200:
            last = response.json()
            if last["state"] == state:
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"call {call_sid} never reached {state}: {last}")


async def until(predicate, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def control_messages(stack: ControlStack, call_sid: str, kind: str) -> list[dict]:
    sessions = stack.system.emulator_sessions(call_sid)
    return [m["body"] for s in sessions for m in s["control_messages"] if m["type"] == kind]


# --- security ----------------------------------------------------------------------------------------


async def test_every_api_endpoint_rejects_a_missing_or_wrong_token(stack, api):
    async with httpx.AsyncClient(base_url=stack.control_url, timeout=5) as anonymous:
        for method, path in (("GET", "/v1/profiles"), ("GET", "/v1/calls"), ("PUT", "/v1/settings/default"),
                             ("POST", "/v1/calls/CA1/say"), ("GET", "/v1/calls/CA1/events")):
            missing = await anonymous.request(method, path, json={})
            wrong = await anonymous.request(method, path, json={}, headers={"Authorization": "Bearer " + "x" * 29})
            assert missing.status_code == wrong.status_code == 401, (method, path)
            assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert (await anonymous.get("/healthz")).status_code == 200
        assert (await anonymous.get("/readyz")).json() == {"ready": True, "redis": True}
        assert (await anonymous.get("/metrics")).status_code == 200  # METRICS_PUBLIC defaults to true
    assert (await api.get("/v1/profiles")).status_code == 200


async def test_settings_are_versioned_and_secrets_are_write_only(stack, api):
    doc = {"think": {"provider": {"type": "open_ai", "model": "gpt-4o-mini", "api_key": "sk-very-secret"},
                     "prompt": "Sell cars.",
                     "endpoint": {"url": "https://llm.example.com/v1", "headers": {"authorization": "Bearer llm-secret"}}}}
    first = await api.put("/v1/profiles/secretive", json=doc)
    assert first.status_code == 200 and first.json()["version"] == 1
    assert first.headers["ETag"] == '"1"'
    shown = (await api.get("/v1/profiles/secretive")).json()
    assert shown["settings"]["think"]["provider"]["api_key"] == "***"
    assert shown["settings"]["think"]["endpoint"]["headers"] == {"authorization": "***"}
    text = (await api.get("/v1/profiles/secretive")).text
    assert "sk-very-secret" not in text and "llm-secret" not in text
    # Send the masked document back with one change: the secrets stay as stored.
    shown["settings"]["think"]["prompt"] = "Sell cars politely."
    second = await api.put("/v1/profiles/secretive", json=shown["settings"], headers={"If-Match": '"1"'})
    assert second.status_code == 200 and second.json()["version"] == 2
    with redis_sync.Redis.from_url(stack.redis_url) as client:
        stored = orjson.loads(client.get(f"{PREFIX}config:profile:secretive"))
    assert stored["version"] == 2
    assert stored["settings"]["think"]["provider"]["api_key"] == "sk-very-secret"
    assert stored["settings"]["think"]["endpoint"]["headers"]["authorization"] == "Bearer llm-secret"
    assert stored["settings"]["think"]["prompt"] == "Sell cars politely."
    stale = await api.put("/v1/profiles/secretive", json=shown["settings"], headers={"If-Match": "1"})
    assert stale.status_code == 412
    listed = (await api.get("/v1/profiles")).json()["profiles"]
    assert {"name": "secretive", "version": 2} in listed
    # Invalid input: 422 naming the field, never echoing the (secret) input back.
    bad = await api.put("/v1/profiles/secretive", json={"think": {"provider": {"api_key": "sk-leak", "temperature": 9}}})
    assert bad.status_code == 422
    assert "temperature" in bad.text and "sk-leak" not in bad.text
    masked_new = await api.put("/v1/profiles/brand-new", json={"speak": {"endpoint": {"url": "https://tts", "headers": {"x-api-key": "***"}}}})
    assert masked_new.status_code == 422 and "no stored value" in masked_new.text
    assert (await api.delete("/v1/profiles/secretive")).status_code == 204
    assert (await api.get("/v1/profiles/secretive")).status_code == 404
    assert (await api.delete("/v1/profiles/secretive")).status_code == 404


# --- calls ---------------------------------------------------------------------------------------------


async def test_a_per_call_prompt_set_before_the_call_is_the_prompt_deepgram_receives(stack, api):
    ident = new_call()
    prompt = "You sell bicycles only. Per-call prompt for this caller."
    put = await api.patch(f"/v1/calls/{ident.call_sid}/settings", json={"think": {"prompt": prompt}})
    assert put.status_code == 200, put.text
    assert put.json()["version"] == 1 and put.json()["live"] is None
    got = (await api.get(f"/v1/calls/{ident.call_sid}/settings")).json()
    assert got["source"] == "call" and got["settings"]["think"]["prompt"] == prompt
    result = await run_call(sim(stack, turns=1), ident)
    assert result.ok, result.failure
    received = stack.system.emulator_sessions(ident.call_sid)[0]["settings"]
    assert received["agent"]["think"]["prompt"] == prompt
    detail = await wait_state(api, ident.call_sid, "ended")
    assert detail["settings_source"] == "call" and detail["settings_version"] == 1
    assert [line["role"] for line in detail["transcript"]] == ["user", "assistant"]
    assert detail["stream_sid"] == ident.stream_sid and detail["outcome"] == "completed"
    # The assistant line says what the caller heard of it (all of it: nobody interrupted).
    reply = detail["transcript"][1]
    assert reply["reply"] == 1 and reply["heard_text"] == reply["content"] and reply["interrupted"] is False
    assert reply["heard_ms"] == reply["audio_ms"] > 0
    [turn] = detail["latency"]
    assert turn["reply"] == 1 and {"caller_to_deepgram", "worker_to_edge", "deepgram_total"} <= set(turn["stages"])
    assert turn["switchboard_ms"] > 0


async def test_live_commands_reach_the_running_call_and_sse_follows_it(stack, api):
    ident = new_call()
    call = asyncio.create_task(run_call(sim(stack, turns=1, hold_ms=30_000), ident))
    await wait_state(api, ident.call_sid, "active")
    listed = (await api.get("/v1/calls")).json()
    mine = [c for c in listed["calls"] if c["call_sid"] == ident.call_sid]
    assert mine and mine[0]["worker"] == f"{PREFIX}w1" and mine[0]["edge"]

    seen: list[tuple[str, dict]] = []

    async def follow() -> None:
        async with api.stream("GET", f"/v1/calls/{ident.call_sid}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            kind = None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    seen.append((kind, orjson.loads(line[6:])))

    follower = asyncio.create_task(follow())
    await until(lambda: any(k == "transcript" and e["role"] == "assistant" for k, e in seen), 15, "a reply over SSE")

    prompt = await api.post(f"/v1/calls/{ident.call_sid}/prompt", json={"prompt": "Now you sell boats."})
    assert prompt.status_code == 200 and prompt.json()["applied"] is True, prompt.text
    assert prompt.json()["worker"] == f"{PREFIX}w1"
    voice = await api.post(f"/v1/calls/{ident.call_sid}/voice",
                           json={"speak": {"provider": {"type": "deepgram", "model": "aura-2-luna-en"}}})
    assert voice.json()["applied"] is True, voice.text
    patch = await api.patch(f"/v1/calls/{ident.call_sid}/settings",
                            json={"think": {"prompt": "Boats and trailers."}, "greeting": "Ahoy"})
    assert patch.status_code == 200, patch.text
    live = patch.json()["live"]
    assert live["applied"]["update_prompt"]["applied"] is True and live["next_connect"] == ["greeting"]
    say = await api.post(f"/v1/calls/{ident.call_sid}/say", json={"text": "Here is a message from the office."})
    assert say.json()["applied"] is True, say.text
    await until(lambda: any(e.get("content") == "Here is a message from the office." for _, e in seen), 10,
                "the injected agent line in the transcript")

    prompts = [m["prompt"] for m in control_messages(stack, ident.call_sid, "UpdatePrompt")]
    assert prompts == ["Now you sell boats.", "Boats and trailers."]
    assert control_messages(stack, ident.call_sid, "UpdateSpeak")[0]["speak"]["provider"]["model"] == "aura-2-luna-en"
    assert control_messages(stack, ident.call_sid, "InjectAgentMessage")[0]["message"] == "Here is a message from the office."

    hangup = await api.post(f"/v1/calls/{ident.call_sid}/hangup", json={"after_reply": True})
    assert hangup.json()["applied"] is True, hangup.text
    await asyncio.wait_for(follower, 20)  # the stream ends with call_ended
    await call
    kinds = [k for k, _ in seen]
    assert kinds[-1] == "call_ended" and "hangup_requested" in kinds and "prompt_updated" in kinds
    detail = await wait_state(api, ident.call_sid, "ended")
    assert detail["overrides"]["prompt"] == "Boats and trailers."
    # Ended: still readable, but commands are refused; unknown calls are 404.
    assert (await api.post(f"/v1/calls/{ident.call_sid}/say", json={"text": "hello?"})).status_code == 409
    assert (await api.post("/v1/calls/CAnosuchcall/say", json={"text": "hello?"})).status_code == 404
    replay = await api.get(f"/v1/calls/{ident.call_sid}/events?types=transcript")
    lines = [ln for ln in replay.text.splitlines() if ln.startswith("event: ")]
    assert lines[-1] == "event: call_ended" and set(lines[:-1]) == {"event: transcript"}


async def test_function_calls_go_to_signed_webhooks_and_failures_answer_with_an_error(stack, api):
    fake = stack.fake
    prompt = "\n".join([
        "You book test drives.",
        'emulator: on turn 1 call get_slots {"day": "monday"}',
        "emulator: on turn 2 call broken {}",
        "emulator: on turn 3 call end_call {}",
    ])
    functions = [
        {"name": "get_slots", "description": "Free slots", "parameters": {"type": "object", "properties": {"day": {"type": "string"}}},
         "webhook": {"url": f"{fake.url}/ok/slots", "timeout_s": 2, "retries": 0}},
        {"name": "broken", "description": "Always fails", "webhook": {"url": f"{fake.url}/fail/x", "timeout_s": 2, "retries": 1}},
        {"name": "end_call", "description": "Hang up after the goodbye"},
    ]
    assert (await api.put("/v1/profiles/booking", json={"think": {"prompt": prompt, "functions": functions}})).status_code == 200
    ident = new_call(profile="booking")
    before = len(fake.requests)
    result = await run_call(sim(stack, turns=3, hold_ms=20_000), ident)
    detail = await wait_state(api, ident.call_sid, "ended")
    assert detail["settings_source"] == "profile:booking"
    assert [(f["name"], f["outcome"]) for f in detail["function_calls"]] == [
        ("get_slots", "ok"), ("broken", "error"), ("end_call", "ok")]
    responses = control_messages(stack, ident.call_sid, "FunctionCallResponse")
    assert responses[0]["content"] == '{"slots":["10:00","14:30"]}'
    assert "error" in orjson.loads(responses[1]["content"]) and "HTTP 500" in responses[1]["content"]
    hooks = fake.requests[before:]
    assert [r.path for r in hooks] == ["/ok/slots", "/fail/x", "/fail/x"]  # one retry of the failing one
    assert verify(FUNCTION_SECRET, hooks[0].headers[SIGNATURE_HEADER], hooks[0].body)
    assert not verify("another-secret", hooks[0].headers[SIGNATURE_HEADER], hooks[0].body)
    assert orjson.loads(hooks[0].body) == {"call_sid": ident.call_sid, "stream_sid": ident.stream_sid,
                                           "name": "get_slots", "arguments": {"day": "monday"}}
    # end_call: the call ended by itself, after the goodbye had been sent.
    events = stack.system.events(ident.stream_sid)
    kinds = [e["type"] for e in events]
    assert {"type": "hangup_requested", "reason": "end_call"}.items() <= next(
        e for e in events if e["type"] == "hangup_requested").items()
    assert kinds.index("hangup_requested") > max(i for i, k in enumerate(kinds) if k == "agent_audio_done")
    assert result.turns_completed == 3


async def test_transfer_call_redirects_through_twilio_rest_only_to_allowed_numbers(stack, api):
    fake = stack.fake
    prompt = "\n".join([
        "Receptionist.",
        'emulator: on turn 1 call transfer_call {"to": "+19005550000"}',
        'emulator: on turn 2 call transfer_call {"to": "+14155550100"}',
    ])
    functions = [{"name": "transfer_call", "description": "Transfer to sales", "destinations": ["+14155550100"],
                  "parameters": {"type": "object", "properties": {"to": {"type": "string"}}}}]
    ident = new_call()
    put = await api.put(f"/v1/calls/{ident.call_sid}/settings", json={"think": {"prompt": prompt, "functions": functions}})
    assert put.status_code == 200, put.text
    before = len(fake.requests)
    result = await run_call(sim(stack, turns=2), ident)
    assert result.ok, result.failure
    responses = control_messages(stack, ident.call_sid, "FunctionCallResponse")
    assert "not allowed" in orjson.loads(responses[0]["content"])["error"]
    assert orjson.loads(responses[1]["content"])["ok"] is True
    [twilio_call] = fake.requests[before:]
    assert twilio_call.path == f"/twilio/2010-04-01/Accounts/{TWILIO_SID}/Calls/{ident.call_sid}.json"
    form = {k: v[0] for k, v in parse_qs(twilio_call.body.decode()).items()}
    assert form["Twiml"] == "<Response><Dial>+14155550100</Dial></Response>"
    assert twilio_call.headers["Authorization"].startswith("Basic ")


# --- TwiML -----------------------------------------------------------------------------------------------


async def test_twiml_webhook_checks_twilios_signature_and_connects_the_stream(stack):
    from twilio.request_validator import RequestValidator

    form = {"AccountSid": TWILIO_SID, "CallSid": "CA" + "1" * 32, "From": "+14155550111", "To": "+14155550199",
            "Direction": "inbound"}
    url = f"{PUBLIC_URL}/twiml?profile=booking"
    good = RequestValidator(TWILIO_TOKEN).compute_signature(url, form)
    async with httpx.AsyncClient(base_url=stack.control_url, timeout=5) as twilio:
        ok = await twilio.post("/twiml?profile=booking", data=form, headers={"X-Twilio-Signature": good})
        bad = await twilio.post("/twiml?profile=booking", data=form, headers={"X-Twilio-Signature": "Zm9v"})
        tampered = await twilio.post("/twiml?profile=other", data=form, headers={"X-Twilio-Signature": good})
        unsigned = await twilio.post("/twiml", data=form)
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("application/xml")
    assert bad.status_code == tampered.status_code == unsigned.status_code == 403
    root = ET.fromstring(ok.content)
    assert [child.tag for child in root] == ["Connect", "Redirect"]
    stream = root.find("Connect/Stream")
    assert stream.get("url") == EDGE_PUBLIC_URL
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    token = params.pop("sb_token")  # one-time, for the edge to check (replay protection)
    assert params == {"profile": "booking", "CallSid": form["CallSid"], "From": form["From"], "To": form["To"],
                      "Direction": "inbound"}
    token_key = Keys(PREFIX).stream_token(form["CallSid"])
    with redis_sync.Redis.from_url(stack.redis_url) as client:
        assert client.get(token_key).decode() == token
        assert 0 < client.ttl(token_key) <= 120
    assert root.find("Redirect").text == f"{PUBLIC_URL}/twiml/continue?profile=booking&attempt=1"
    assert root.find("Redirect").get("method") == "POST"


async def _continue(stack, form: dict[str, str], query: str) -> ET.Element:
    from twilio.request_validator import RequestValidator

    signed = RequestValidator(TWILIO_TOKEN).compute_signature(f"{PUBLIC_URL}/twiml/continue?{query}", form)
    async with httpx.AsyncClient(base_url=stack.control_url, timeout=5) as twilio:
        response = await twilio.post(f"/twiml/continue?{query}", data=form, headers={"X-Twilio-Signature": signed})
    assert response.status_code == 200, response.text
    return ET.fromstring(response.content)


async def test_after_a_dropped_stream_twilio_is_sent_back_to_an_edge_with_the_old_stream_named(stack):
    call_sid, old_stream = "CA" + "2" * 32, "MZ" + "2" * 32
    with redis_sync.Redis.from_url(stack.redis_url) as client:
        client.hset(f"{PREFIX}call:{{{old_stream}}}", mapping={"call_sid": call_sid, "state": "active", "profile": "booking"})
        client.set(f"{PREFIX}callsid:{call_sid}", old_stream, ex=60)
    root = await _continue(stack, {"CallSid": call_sid, "AccountSid": TWILIO_SID}, "attempt=1")
    assert [child.tag for child in root] == ["Connect", "Redirect"]
    params = {p.get("name"): p.get("value") for p in root.findall("Connect/Stream/Parameter")}
    assert params["sb_resume_of"] == old_stream and params["profile"] == "booking"
    assert root.find("Redirect").text.endswith("attempt=2")
    # A stream that keeps failing is not retried for ever.
    root = await _continue(stack, {"CallSid": call_sid, "AccountSid": TWILIO_SID}, "attempt=4")
    assert [child.tag for child in root] == ["Say", "Hangup"]


async def test_a_call_switchboard_ended_on_purpose_hangs_up_instead_of_reconnecting(stack):
    for reason, tags in (("end_call", ["Hangup"]), ("deepgram_gone", ["Say", "Hangup"])):
        call_sid, stream = "CA" + reason[:8].encode().hex().ljust(32, "0")[:32], "MZ" + "3" * 32
        with redis_sync.Redis.from_url(stack.redis_url) as client:
            client.hset(f"{PREFIX}call:{{{stream}}}", mapping={"call_sid": call_sid, "state": "active",
                                                                "hangup_requested": reason})
            client.set(f"{PREFIX}callsid:{call_sid}", stream, ex=60)
        root = await _continue(stack, {"CallSid": call_sid, "AccountSid": TWILIO_SID}, "attempt=1")
        assert [child.tag for child in root] == tags, reason


async def test_metrics_count_requests_by_route_template_commands_and_twiml(stack, api):
    await api.get("/v1/calls/CAnotacall")
    text = (await api.get("/metrics")).text
    assert 'switchboard_control_http_requests_total{method="GET",route="/v1/calls/{call_sid}",status="404"}' in text
    assert "CAnotacall" not in text
    assert 'switchboard_control_http_request_duration_seconds_bucket{le="0.001",method="GET",route="/v1/calls/{call_sid}"}' in text
    assert 'switchboard_control_commands_total{op="update_prompt",result="applied"}' in text
    assert 'switchboard_control_twiml_requests_total{result="bad_signature"}' in text
    assert "switchboard_control_live_calls " in text
