"""A stream belongs to one call, and the server decides which.

Twilio signs a Media Streams upgrade over the URL alone, so anyone who saw one handshake can
open more streams, each claiming any streamSid, callSid and parameters. Real processes
(emulator, edge, worker, control API, the session's redis-server) and a victim call in
progress; an attacker with a replayed signed handshake tries to take it over. Every attempt is
refused (1008, counted), hears nothing of the victim's call, and the victim's call goes on
byte-exact to its end.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from xml.etree import ElementTree

import httpx
import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from switchboard import signature
from switchboard.keys import RESUME_PARAMETER, STREAM_TOKEN_PARAMETER
from switchboard_callsim.call import CallResult, SimConfig, run_call
from switchboard_callsim.script import CallScript
from switchboard_callsim.twiliomsg import CallIdentity, OutboundStream, new_sid
from switchboard_callsim.twiml import Connect
from switchboard_callsim.twiml import parse as parse_twiml
from switchboard_dev import procs

from system import System, scrape

AUTH = "twilio-auth-token-for-tests"
CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
VICTIM_SCRIPT = CallScript(turns=4, lead_ms=300, utterance_ms=800)


class Stack:
    """A System plus a control API, signed end to end like production (or open, for TwiML Bins)."""

    def __init__(self, system: System, control_port: int, signed: bool) -> None:
        self.system, self.control_port, self.signed = system, control_port, signed

    @property
    def twiml_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}/twiml"

    def handshake(self) -> dict[str, str]:
        """What a replayed upgrade carries: Twilio's signature over the public stream URL, valid for every call."""
        return {"X-Twilio-Signature": signature.compute(AUTH, self.system.edge_url)} if self.signed else {}

    async def twiml(self, call_sid: str, path: str = "/twiml") -> tuple[httpx.Response, dict[str, str]]:
        """A signed voice webhook as Twilio sends it; returns the answer and its <Stream>'s parameters."""
        url = f"http://127.0.0.1:{self.control_port}{path}"
        form = {"AccountSid": "AC" + "0" * 32, "CallSid": call_sid, "From": "+14155550100", "To": "+14155550199"}
        headers = {"X-Twilio-Signature": signature.compute(AUTH, url, form)} if self.signed else {}
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(url, data=form, headers=headers)
        response.raise_for_status()
        connect = next((v for v in parse_twiml(response.content).verbs if isinstance(v, Connect)), None)
        return response, dict(connect.parameters) if connect else {}

    def rejected(self, reason: str) -> float:
        return scrape(self.system.edge_metrics, "switchboard_edge_rejected_handshakes_total", f'reason="{reason}"')


def _stack(redis_url: str, prefix: str, log_dir: Path, *, signed: bool) -> Stack:
    edge_port = procs.free_port()
    edge_url = f"ws://127.0.0.1:{edge_port}/twilio"  # what Twilio signs, so fixed before the edge starts
    system = System(redis_url, prefix, log_dir, workers=1, auth_token=AUTH if signed else None, edge_port=edge_port,
                    edge_env={"EDGE_START_TIMEOUT_S": "1", "EDGE_PUBLIC_URL": edge_url}).start()
    _service, control_port = system.add_control(auth_token=AUTH if signed else None, CONTROL_ADMISSION="off")
    return Stack(system, control_port, signed)


@pytest.fixture(scope="module")
def signed(redis_url, tmp_path_factory):
    stack = _stack(redis_url, "ident-signed:", tmp_path_factory.mktemp("ident-signed"), signed=True)
    yield stack
    stack.system.stop()


@pytest.fixture(scope="module")
def open_stack(redis_url, tmp_path_factory):
    stack = _stack(redis_url, "ident-open:", tmp_path_factory.mktemp("ident-open"), signed=False)
    yield stack
    stack.system.stop()


# --- helpers -----------------------------------------------------------------------------------------
def _start(stream_sid: str, call_sid: str, parameters: dict[str, str]) -> str:
    ident = CallIdentity("AC" + "0" * 32, call_sid, stream_sid, parameters)
    return OutboundStream(ident).start()


async def _attack(stack: Stack, start: str) -> tuple[int | None, int]:
    """Open a stream with a replayed signed handshake and this start: (close code, agent frames heard)."""
    heard = 0
    async with websockets.connect(stack.system.edge_url, additional_headers=stack.handshake()) as ws:
        await ws.send(CONNECTED)
        await ws.send(start)
        try:
            async with asyncio.timeout(10):
                async for message in ws:
                    if '"media"' in str(message):
                        heard += 1
        except ConnectionClosed:
            pass
        return (ws.close_code, heard)


async def _victim(stack: Stack) -> tuple[asyncio.Task[CallResult], str, str]:
    """A call placed through the TwiML webhook, as Twilio does; returns it once its stream is live."""
    ident = CallIdentity.random()
    config = SimConfig(url="unused", twiml_url=stack.twiml_url, auth_token=AUTH if stack.signed else None,
                       emulator_url=stack.system.emulator_http, script=VICTIM_SCRIPT, identities=(ident,))
    task = asyncio.create_task(run_call(config, ident=ident))

    def live_stream() -> str | None:
        with stack.system.redis() as client:
            sid = client.get(stack.system.keys.call_by_callsid(ident.call_sid))
            if sid and client.hget(stack.system.keys.call(sid.decode()), "state") == b"active":
                return sid.decode()
        return None

    await asyncio.to_thread(procs.wait_until, lambda: live_stream() is not None, 15, "the victim's call to be live")
    return task, ident.call_sid, live_stream() or ""


async def _victim_unharmed(stack: Stack, task: asyncio.Task[CallResult], call_sid: str, stream_sid: str) -> None:
    result = await task
    assert result.ok, result.failure
    assert result.byte_exact_out and result.byte_exact_in, (result.out_reasons, result.in_reasons)
    assert result.streams == [stream_sid]  # the call never moved
    record = stack.system.wait_call_ended(stream_sid)
    assert record["call_sid"] == call_sid and record["outcome"] == "completed"
    assert record["end_reason"] != "moved_to_new_stream"
    assert not [e for e in stack.system.events(stream_sid) if e["type"] == "resumed_from_stream"]


# --- takeovers ---------------------------------------------------------------------------------------
async def test_a_replayed_handshake_cannot_take_over_a_live_call_with_a_token_of_another_call(signed):
    task, victim_call, victim_stream = await _victim(signed)
    # The attacker holds a valid token, minted for a call of their own.
    own_call = new_sid("CA")
    _, params = await signed.twiml(own_call)
    assert params[STREAM_TOKEN_PARAMETER]
    before = {r: signed.rejected(r) for r in ("duplicate_stream", "stream_token", "resume_grant")}

    # 1. The victim's streamSid with the attacker's own callSid and token.
    code, heard = await _attack(signed, _start(victim_stream, own_call, params))
    assert (code, heard) == (1008, 0)
    # 2. The victim's streamSid and callSid with that token (minted for another call).
    _, params = await signed.twiml(other := new_sid("CA"))
    code, heard = await _attack(signed, _start(victim_stream, victim_call, params))
    assert (code, heard) == (1008, 0)
    # 3. A stream of the attacker's own call that claims to resume the victim's.
    _, params = await signed.twiml(other2 := new_sid("CA"))
    code, heard = await _attack(signed, _start(new_sid("MZ"), other2,
                                               {**params, RESUME_PARAMETER: victim_stream}))
    assert (code, heard) == (1008, 0)

    assert signed.rejected("duplicate_stream") == before["duplicate_stream"] + 1
    assert signed.rejected("stream_token") == before["stream_token"] + 1
    assert signed.rejected("resume_grant") == before["resume_grant"] + 1
    await _victim_unharmed(signed, task, victim_call, victim_stream)
    assert other  # its token went unused: nothing was minted twice


async def test_without_tokens_neither_a_reused_streamsid_nor_callsid_nor_a_resume_claim_gets_in(open_stack):
    task, victim_call, victim_stream = await _victim(open_stack)
    before = {r: open_stack.rejected(r) for r in ("duplicate_stream", "callsid_in_use", "resume_grant")}
    attempts = [
        _start(victim_stream, victim_call, {}),  # the victim's own start, replayed
        _start(victim_stream, new_sid("CA"), {}),  # its streamSid under another call
        _start(new_sid("MZ"), victim_call, {}),  # a second stream of the victim's call
        _start(new_sid("MZ"), new_sid("CA"), {RESUME_PARAMETER: victim_stream}),  # a resume claim
        _start(new_sid("MZ"), victim_call, {RESUME_PARAMETER: victim_stream}),  # ...even with its callSid
    ]
    for start in attempts:
        assert await _attack(open_stack, start) == (1008, 0)
    assert open_stack.rejected("duplicate_stream") == before["duplicate_stream"] + 2
    assert open_stack.rejected("callsid_in_use") == before["callsid_in_use"] + 1
    assert open_stack.rejected("resume_grant") == before["resume_grant"] + 2
    await _victim_unharmed(open_stack, task, victim_call, victim_stream)


async def test_a_replayed_signed_webhook_mints_no_second_token_or_resume_grant(signed):
    call_sid = new_sid("CA")
    first, params = await signed.twiml(call_sid)
    replayed, replayed_params = await signed.twiml(call_sid)
    assert params[STREAM_TOKEN_PARAMETER] and STREAM_TOKEN_PARAMETER not in replayed_params
    # A reconnect mints once per attempt, with a grant for exactly the call's current stream.
    with signed.system.redis() as client:
        client.set(signed.system.keys.call_by_callsid(call_sid), "MZ" + "1" * 32)
        client.hset(signed.system.keys.call("MZ" + "1" * 32), mapping={"call_sid": call_sid, "state": "active"})
    _, resumed = await signed.twiml(call_sid, "/twiml/continue?attempt=1")
    _, replayed_resume = await signed.twiml(call_sid, "/twiml/continue?attempt=1")
    assert resumed[RESUME_PARAMETER] == "MZ" + "1" * 32 and resumed[STREAM_TOKEN_PARAMETER]
    assert RESUME_PARAMETER not in replayed_resume and STREAM_TOKEN_PARAMETER not in replayed_resume
    assert first.status_code == replayed.status_code == 200
    metrics = httpx.get(f"http://127.0.0.1:{signed.control_port}/metrics").text
    assert 'switchboard_control_twiml_requests_total{result="replayed"} 2.0' in metrics


# --- streams that never say who they are, or say it badly ------------------------------------------
async def test_a_socket_that_never_sends_start_is_closed_at_the_deadline(open_stack):
    before = open_stack.rejected("no_start")
    loop = asyncio.get_running_loop()
    async with websockets.connect(open_stack.system.edge_url) as ws:
        opened = loop.time()
        await ws.send(CONNECTED)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        waited = loop.time() - opened
    assert ws.close_code == 1008 and 0.9 < waited < 3, waited
    assert open_stack.rejected("no_start") == before + 1


@pytest.mark.parametrize("change", [
    {"tracks": 5},
    {"tracks": [1, 2]},
    {"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": "²", "channels": 1}},
    {"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": None}},
    {"mediaFormat": {"encoding": ["audio/x-mulaw"], "sampleRate": 8000, "channels": 1}},
    {"customParameters": {"profile": {"nested": True}}},
    {"customParameters": {f"p{n}": "v" for n in range(100)}},
    {"accountSid": 7},
])
async def test_a_malformed_start_is_a_protocol_error_never_an_internal_error(open_stack, change):
    before = scrape(open_stack.system.edge_metrics, "switchboard_edge_malformed_frames_total", 'reason="invalid_field"')
    start = orjson.loads(_start(new_sid("MZ"), new_sid("CA"), {}))
    start["start"].update(change)
    async with websockets.connect(open_stack.system.edge_url) as ws:
        await ws.send(CONNECTED)
        await ws.send(orjson.dumps(start).decode())
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 1008  # the start deadline: no 1011, no traceback
    after = scrape(open_stack.system.edge_metrics, "switchboard_edge_malformed_frames_total", 'reason="invalid_field"')
    assert after == before + 1
    assert open_stack.system.edge.log_path is not None
    log = open_stack.system.edge.log_path.read_text()
    assert '"level":"error"' not in log and "Traceback" not in log


async def test_twiml_stays_well_formed_xml_whatever_the_caller_name(signed):
    url = signed.twiml_url
    form = {"CallSid": new_sid("CA"), "From": "+1415\x005550100", "CallerName": "Eve\x01\x1b[31m\ufffe"}
    headers = {"X-Twilio-Signature": signature.compute(AUTH, url, form)}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(url, data=form, headers=headers)
    assert response.status_code == 200
    stream = ElementTree.fromstring(response.content).find("Connect/Stream")
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert parameters["CallerName"] == "Eve[31m" and parameters["From"] == "+14155550100"
