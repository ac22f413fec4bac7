"""Bad input never takes anything else down: each bad stream is refused or ended alone,
counted in a metric, while a healthy call beside it completes byte-exact.
"""

from __future__ import annotations

import asyncio
import os
import subprocess

import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from switchboard import signature
from switchboard_callsim.call import SimConfig, run_call
from switchboard_callsim.script import CallScript
from switchboard_callsim.twiliomsg import CallIdentity
from switchboard_dev import procs

from system import System, scrape
from test_e2e_call import _start

CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'


@pytest.fixture(scope="module")
def system(redis_url, tmp_path_factory):
    sb = System(redis_url, "e2ebad:", tmp_path_factory.mktemp("e2e-bad"), workers=1,
                edge_env={"EDGE_MAX_PROTOCOL_ERRORS": "20"}).start()
    yield sb
    sb.stop()


def healthy(system: System) -> SimConfig:
    return SimConfig(url=system.edge_url, emulator_url=system.emulator_http,
                     script=CallScript(turns=2, lead_ms=300))


async def _abuse(system: System) -> list[str]:
    """Send every kind of bad frame on separate streams; return how each stream ended."""
    outcomes = []
    ident = CallIdentity.random()
    async with websockets.connect(system.edge_url) as ws:
        await ws.send(CONNECTED)
        await ws.send('{"event":"media","streamSid":"MZ1","media":{"payload":"/w=="}}')  # media before start
        await ws.send("{this is not json")
        await ws.send('{"event":"dance","streamSid":"MZ1"}')
        await ws.send(b"\x00\x01binary")
        await ws.send(_start(ident))
        await ws.send(orjson.dumps({"event": "media", "streamSid": ident.stream_sid, "media": {"payload": "@@@"}}).decode())
        await ws.send(orjson.dumps({"event": "media", "streamSid": "MZ" + "f" * 32, "media": {"payload": "/w=="}}).decode())
        await ws.send(orjson.dumps({"event": "mark", "streamSid": ident.stream_sid}).decode())
        await ws.send(orjson.dumps({"event": "stop", "streamSid": ident.stream_sid, "stop": {}}).decode())
        outcomes.append("stopped")
    async with websockets.connect(system.edge_url) as ws:  # oversized frame: 1009 for this stream only
        await ws.send(CONNECTED)
        await ws.send("x" * (128 * 1024))
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed as exc:
            outcomes.append(f"closed {exc.rcvd.code if exc.rcvd else None}")
    async with websockets.connect(system.edge_url) as ws:  # a flood of garbage: cut at the limit
        for _ in range(30):
            await ws.send("garbage")
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed as exc:
            outcomes.append(f"closed {exc.rcvd.code if exc.rcvd else None}")
    return outcomes


async def test_malformed_frames_are_counted_and_never_disturb_other_calls(system):
    before = {r: system.metric(system.edge_metrics, "switchboard_edge_malformed_frames_total", f'reason="{r}"')
              for r in ("media_before_start", "malformed_json", "unknown_event", "binary_frame", "invalid_base64",
                        "wrong_stream_sid", "missing_field")}
    healthy_call = asyncio.create_task(run_call(healthy(system)))
    outcomes = await _abuse(system)
    result = await healthy_call
    assert result.ok, result.failure
    assert result.byte_exact_in and result.byte_exact_out
    assert outcomes == ["stopped", "closed 1009", "closed 1008"]
    for reason, count in before.items():
        after = system.metric(system.edge_metrics, "switchboard_edge_malformed_frames_total", f'reason="{reason}"')
        assert after > count, reason


async def test_deepgram_refusing_the_key_ends_that_call_cleanly(system, redis_url, tmp_path_factory):
    # Its own fleet (another key prefix): one worker whose Deepgram key is wrong.
    lonely = System(redis_url, "e2ebad401:", tmp_path_factory.mktemp("e2e-401"), workers=0).start()
    try:
        lonely.add_worker("badkey", DEEPGRAM_API_KEY="wrong-key")
        ident = CallIdentity.random()
        async with websockets.connect(lonely.edge_url) as ws:
            await ws.send(CONNECTED)
            await ws.send(_start(ident))
            # The worker cannot open Deepgram (401, not retryable): it asks the edge to hang up,
            # and the edge closes the socket once "Twilio" confirms the (empty) playback.
            await _serve_until_closed(ws, ident.stream_sid)
        record = lonely.wait_call_ended(ident.stream_sid)
        assert record["outcome"] == "deepgram_http_401"
        assert any(e["type"] == "error" and e["code"] == "http_401" for e in lonely.events(ident.stream_sid))
    finally:
        lonely.stop()
    result = await run_call(healthy(system))  # other fleets and calls are untouched
    assert result.ok, result.failure


async def test_deepgram_429_on_connect_is_retried_and_the_call_goes_on(system):
    system.emulator_faults(reject_next=2, reject_status=429)
    result = await run_call(healthy(system))
    assert result.ok, result.failure
    assert result.byte_exact_in and result.byte_exact_out
    events = system.events(result.stream_sid)
    assert [e["type"] for e in events].count("deepgram_connected") == 1
    assert system.emulator_faults()["reject_next"] == 0


async def _serve_until_closed(ws, stream_sid: str) -> None:
    """Act like Twilio: echo marks (nothing is playing), until the edge closes the socket."""
    async with asyncio.timeout(15):
        async for frame in ws:
            msg = orjson.loads(frame)
            if msg.get("event") == "mark":
                await ws.send(orjson.dumps({"event": "mark", "streamSid": stream_sid, "mark": msg["mark"]}).decode())


async def test_a_call_whose_media_format_is_not_mulaw_is_refused(system):
    ident = CallIdentity.random()
    start = orjson.loads(_start(ident))
    start["start"]["mediaFormat"] = {"encoding": "audio/l16", "sampleRate": 16000, "channels": 1}
    async with websockets.connect(system.edge_url) as ws:
        await ws.send(CONNECTED)
        await ws.send(orjson.dumps(start).decode())
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd.code == 1003


# --- signatures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def signed_edge(redis_url, tmp_path_factory):
    port, metrics_port = procs.free_port(), procs.free_port()
    edge = procs.edge(redis_url, port, metrics_port, auth_token="s3cret-token", KEY_PREFIX="e2esig:",
                      EDGE_PUBLIC_URL="wss://edge.example.com/twilio").start(tmp_path_factory.mktemp("sig"))
    yield port, metrics_port
    edge.stop()


async def test_a_valid_twilio_signature_is_accepted(signed_edge):
    port, _ = signed_edge
    sig = signature.compute("s3cret-token", "wss://edge.example.com/twilio")
    async with websockets.connect(f"ws://127.0.0.1:{port}/twilio", additional_headers={"X-Twilio-Signature": sig}) as ws:
        await ws.send(CONNECTED)


@pytest.mark.parametrize("headers", [{}, {"X-Twilio-Signature": "bm9wZQ=="},
                                     {"X-Twilio-Signature": signature.compute("other-token", "wss://edge.example.com/twilio")},
                                     {"X-Twilio-Signature": signature.compute("s3cret-token", "https://edge.example.com/twilio")}])
async def test_missing_or_wrong_signatures_are_refused_with_403(signed_edge, headers):
    port, metrics_port = signed_edge
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(f"ws://127.0.0.1:{port}/twilio", additional_headers=headers):
            pass
    assert refused.value.response.status_code == 403
    assert scrape(metrics_port, "switchboard_edge_rejected_handshakes_total", 'reason="signature"') >= 1


def test_the_edge_refuses_to_start_without_a_token_or_the_insecure_flag(redis_url):
    env = {"REDIS_URL": redis_url, "EDGE_PORT": "0", "METRICS_PORT": "0"}
    proc = subprocess.run(procs.console("switchboard-edge"), env={**_clean_env(), **env}, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode != 0
    assert "TWILIO_AUTH_TOKEN" in proc.stderr and "EDGE_INSECURE_NO_SIGNATURE" in proc.stderr


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("TWILIO_AUTH_TOKEN", "EDGE_INSECURE_NO_SIGNATURE")}


async def test_unknown_paths_get_404(system):
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(f"ws://127.0.0.1:{system.edge_port}/elsewhere"):
            pass
    assert refused.value.response.status_code == 404



# --- replay-proof streams ------------------------------------------------------------------------

async def test_a_stream_needs_a_fresh_one_time_token_when_the_edge_requires_it(redis_url, tmp_path_factory):
    guarded = System(redis_url, "e2etok:", tmp_path_factory.mktemp("e2e-token"), workers=1,
                     edge_env={"EDGE_REQUIRE_STREAM_TOKEN": "true"}).start()
    try:
        ident = CallIdentity.random({"sb_token": "good-token-123"})
        with guarded.redis() as client:
            client.set(guarded.keys.stream_token(ident.call_sid), "good-token-123", ex=60)
        ok = await run_call(SimConfig(url=guarded.edge_url, script=CallScript(turns=1, lead_ms=300)), ident=ident)
        assert ok.ok, ok.failure
        # The same start again (a captured handshake replayed): the token was used up.
        for replay in (ident, CallIdentity.random({"sb_token": "made-up"}), CallIdentity.random()):
            async with websockets.connect(guarded.edge_url) as ws:
                await ws.send(CONNECTED)
                await ws.send(_start(replay))
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd.code == 1008
        assert scrape(guarded.edge_metrics, "switchboard_edge_rejected_handshakes_total", 'reason="stream_token"') == 3
    finally:
        guarded.stop()
