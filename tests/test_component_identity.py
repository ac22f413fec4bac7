"""A stream belongs to one call, and the server decides which: in-process (tests/inprocess.py),
signed end to end like production. The control app (through the ASGI transport) mints the
one-time stream token in its TwiML; an attacker holding a replayed, validly signed handshake
tries every way into a live call on the in-process edge and is refused (1008, counted), hears
nothing, and the victim's call ends byte-exact.

The end-to-end twin with real processes: test_stream_identity.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from switchboard import signature
from switchboard.keys import RESUME_PARAMETER, STREAM_TOKEN_PARAMETER
from switchboard_callsim.call import CallResult, SimConfig, run_call
from switchboard_callsim.twiliomsg import CallIdentity, OutboundStream, new_sid
from switchboard_callsim.twiml import Connect
from switchboard_callsim.twiml import parse as parse_twiml

from inprocess import CONTROL_BASE, InProcess, metric, until

AUTH = "twilio-auth-token-for-component-tests"
EDGE_PUBLIC = "wss://edge.example.com/twilio"  # what Twilio signs the upgrade over
CONTROL_PUBLIC = "https://control.example.com"  # what Twilio signs the webhook over
CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'


@pytest.fixture(scope="module")
async def sb(redis_url):
    async with InProcess(redis_url, "cmp:ident:", workers=1, auth_token=AUTH,
                         edge_config={"edge_public_url": EDGE_PUBLIC},
                         control_config={"edge_public_url": EDGE_PUBLIC, "control_public_url": CONTROL_PUBLIC,
                                          "control_admission": "off"}) as running:
        yield running


async def twiml(sb: InProcess, call_sid: str) -> dict[str, str]:
    """Twilio's signed voice webhook, answered by the app; the <Stream>'s parameters."""
    form = {"AccountSid": "AC" + "0" * 32, "CallSid": call_sid, "From": "+14155550100", "To": "+14155550199"}
    headers = {"X-Twilio-Signature": signature.compute(AUTH, f"{CONTROL_PUBLIC}/twiml", form)}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sb.app), base_url=CONTROL_BASE) as twilio:
        response = await twilio.post("/twiml", data=form, headers=headers)
    assert response.status_code == 200, response.text
    connect = next(v for v in parse_twiml(response.content).verbs if isinstance(v, Connect))
    assert connect.url == EDGE_PUBLIC
    return dict(connect.parameters)


def start(stream_sid: str, call_sid: str, parameters: dict[str, str]) -> str:
    return OutboundStream(CallIdentity("AC" + "0" * 32, call_sid, stream_sid, parameters)).start()


async def attack(sb: InProcess, start_message: str) -> tuple[int | None, int]:
    """A replayed signed upgrade carrying this start: (close code, agent frames heard)."""
    heard = 0
    handshake = {"X-Twilio-Signature": signature.compute(AUTH, EDGE_PUBLIC)}
    async with websockets.connect(sb.edge_url, additional_headers=handshake) as ws:
        await ws.send(CONNECTED)
        await ws.send(start_message)
        try:
            async with asyncio.timeout(10):
                async for message in ws:
                    heard += '"media"' in str(message)
        except ConnectionClosed:
            pass
    return ws.close_code, heard


def rejected(reason: str) -> float:
    return metric("switchboard_edge_rejected_handshakes_total", reason=reason)


async def victim(sb: InProcess) -> tuple[asyncio.Task[CallResult], CallIdentity]:
    """A call with the token its TwiML carried, signed like Twilio's; returned once it is live."""
    call_sid = new_sid("CA")
    ident = CallIdentity("AC" + "0" * 32, call_sid, new_sid("MZ"), await twiml(sb, call_sid))
    config = SimConfig(url=sb.edge_url, public_url=EDGE_PUBLIC, auth_token=AUTH, emulator_url=sb.emulator.http_url,
                       script=sb.sim(turns=3, utterance_ms=800).script)
    task = asyncio.create_task(run_call(config, ident))

    async def live() -> bool:
        return (await sb.call_record(ident.stream_sid)).get("state") == "active"

    await until(live, 15, "the victim's call to be live")
    return task, ident


async def test_the_token_twiml_issued_lets_its_call_in_and_no_replay_or_forgery_gets_into_it(sb):
    task, ident = await victim(sb)
    reasons = ("stream_token", "duplicate_stream", "resume_grant")
    before = {reason: rejected(reason) for reason in reasons}
    # 1. The victim's own start, replayed: its token is used up.
    assert await attack(sb, start(ident.stream_sid, ident.call_sid, ident.custom_parameters)) == (1008, 0)
    # 2. The victim's streamSid with a valid token minted for another call.
    other = new_sid("CA")
    assert await attack(sb, start(ident.stream_sid, other, await twiml(sb, other))) == (1008, 0)
    # 3. A call of the attacker's own, with a valid token, claiming to resume the victim's stream.
    own = new_sid("CA")
    claim = {**await twiml(sb, own), RESUME_PARAMETER: ident.stream_sid}
    assert await attack(sb, start(new_sid("MZ"), own, claim)) == (1008, 0)
    # 4. A made-up token, and none at all.
    forged = new_sid("CA")
    assert await attack(sb, start(new_sid("MZ"), forged, {STREAM_TOKEN_PARAMETER: "made-up"})) == (1008, 0)
    assert await attack(sb, start(new_sid("MZ"), new_sid("CA"), {})) == (1008, 0)
    assert {reason: rejected(reason) - before[reason] for reason in reasons} == {
        "stream_token": 3, "duplicate_stream": 1, "resume_grant": 1}

    result = await task
    assert result.ok, result.failure
    assert result.byte_exact_out and result.byte_exact_in, (result.out_reasons, result.in_reasons)
    assert result.streams == [ident.stream_sid]
    record = await sb.wait_call_ended(ident.stream_sid)
    assert record["call_sid"] == ident.call_sid and record["outcome"] == "completed"
    assert not [e for e in await sb.events(ident.stream_sid) if e["type"] == "resumed_from_stream"]


async def test_an_upgrade_without_twilio_s_signature_is_refused_with_403_and_counted(sb):
    before = rejected("signature")
    for headers in ({}, {"X-Twilio-Signature": signature.compute("another-token", EDGE_PUBLIC)}):
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(sb.edge_url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 403
    assert rejected("signature") == before + 2
