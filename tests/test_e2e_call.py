"""One phone call end to end: simulator → edge → Redis → worker → emulator, and back.

Every test drives real processes over real sockets and the session's redis-server.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from switchboard_callsim.call import SimConfig, run_call
from switchboard_callsim.load import run_load
from switchboard_callsim.script import CallScript
from switchboard_callsim.twiliomsg import CallIdentity

from deepgram_spec import SPEC_AVAILABLE, validate_client_message
from system import System, wait_for


@pytest.fixture(scope="module")
def system(redis_url, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("e2e-call")
    sb = System(redis_url, "e2ecall:", log_dir).start()
    yield sb
    sb.stop()


def sim(system: System, **script) -> SimConfig:
    return SimConfig(url=system.edge_url, emulator_url=system.emulator_http,
                     script=CallScript(lead_ms=300, **script))


async def test_audio_is_byte_exact_both_ways_and_the_transcript_is_recorded(system):
    result = await run_call(sim(system, turns=2))
    assert result.ok, result.failure
    assert result.turns_completed == 2
    assert result.byte_exact_out is True, result.out_reasons
    assert result.byte_exact_in is True, result.in_reasons
    record = system.wait_call_ended(result.stream_sid)
    assert record["call_sid"] == result.call_sid and record["outcome"] == "completed"
    transcript = [(e["role"], e["content"]) for e in system.events(result.stream_sid) if e["type"] == "transcript"]
    assert [role for role, _ in transcript] == ["user", "assistant", "user", "assistant"]
    sessions = system.emulator_sessions(result.call_sid)
    assert len(sessions) == 1 and sessions[0]["closed"]


async def test_settings_sent_to_deepgram_are_the_seed_defaults_in_v1_form(system):
    result = await run_call(sim(system, turns=1))
    assert result.ok, result.failure
    settings = system.emulator_sessions(result.call_sid)[0]["settings"]
    assert settings["audio"] == {"input": {"encoding": "mulaw", "sample_rate": 8000},
                                 "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"}}
    agent = settings["agent"]
    assert agent["listen"]["provider"] == {"type": "deepgram", "model": "nova-3"}
    assert agent["think"]["provider"] == {"type": "anthropic", "model": "claude-3-5-haiku-latest"}
    assert agent["think"]["prompt"] == "You are a helpful car seller."
    assert agent["speak"]["provider"] == {"type": "deepgram", "model": "aura-asteria-en"}
    assert f"callsid:{result.call_sid}" in settings["tags"]
    if SPEC_AVAILABLE:
        validate_client_message(settings)


async def test_barge_in_sends_clear_and_stops_the_agents_audio(system):
    result = await run_call(sim(system, turns=3, barge_in=True, barge_in_after_ms=200))
    assert result.ok, result.failure
    assert result.clears >= 2 and len(result.barge_in_latencies_us) >= 2
    assert result.byte_exact_out is True, result.out_reasons  # nothing of a cleared reply after its clear
    events = system.events(result.stream_sid)
    assert [e["type"] for e in events].count("barge_in") >= 2
    # What the caller heard of each cut-off reply, against what the simulated phone really played.
    cut = [e for e in events if e["type"] == "reply_heard" and e["interrupted"]]
    # Every user turn clears; the ones that cut a reply are those with something played.
    truths = [ms for ms in result.heard_at_clear_ms if ms > 0]
    assert len(cut) == len(truths) >= 2, (cut, result.heard_at_clear_ms)
    for event, truth_ms in zip(cut, truths):
        assert abs(event["heard_ms"] - truth_ms) <= 60, (event, truth_ms)
        assert event["text"].startswith(event["heard_text"]) and event["unheard_text"]
        assert event["text"].endswith(event["unheard_text"])
    replies = system.emulator_sessions(result.call_sid)[0]["replies"]
    assert sum(r["interrupted"] for r in replies) >= 2


async def test_twenty_concurrent_calls_over_two_workers_are_never_cross_wired(system):
    report = await run_load(SimConfig(url=system.edge_url, emulator_url=system.emulator_http, calls=20,
                                      ramp_ms=400, script=CallScript(turns=2, lead_ms=300)))
    summary = report.to_dict()
    assert summary["calls"]["completed"] == 20, summary["calls"]
    assert summary["byte_exact_out"]["false"] == 0 and summary["byte_exact_in"]["false"] == 0
    assert summary["byte_exact_in"]["true"] == 20
    owners = Counter(system.call_record(c["stream_sid"]).get("worker") for c in summary["calls_detail"])
    assert len(owners) == 2, owners  # both workers took calls
    assert max(owners.values()) <= system.capacity


async def test_dtmf_and_marks_reach_the_worker(system):
    result = await run_call(sim(system, turns=1, dtmf=((200, "7"),)))
    assert result.ok, result.failure
    system.wait_call_ended(result.stream_sid)
    events = system.events(result.stream_sid)
    assert {"type": "dtmf", "digit": "7"}.items() <= next(e for e in events if e["type"] == "dtmf").items()
    # Marks went out with the agent's audio and came back: the reply played in full.
    heard = [e for e in events if e["type"] == "reply_heard"]
    assert heard and all(not e["interrupted"] and e["heard_text"] == e["text"] for e in heard), heard
    assert result.marks_echoed >= 2 * len(heard)  # start and end of each reply at least


async def test_a_vanished_twilio_socket_ends_the_deepgram_session(system):
    import websockets

    ident = CallIdentity.random()
    async with websockets.connect(system.edge_url) as ws:
        await ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        await ws.send(_start(ident))
        await _until_claimed(system, ident.stream_sid)
        ws.transport.abort()  # no stop, no close frame: the network just went away
    record = system.wait_call_ended(ident.stream_sid)
    assert record["end_reason"] == "twilio_closed"
    wait_for(lambda: all(s["closed"] for s in system.emulator_sessions(ident.call_sid)), 5, "deepgram session closed")


def _start(ident: CallIdentity) -> str:
    import orjson
    return orjson.dumps({"event": "start", "sequenceNumber": "1", "streamSid": ident.stream_sid, "start": {
        "accountSid": ident.account_sid, "streamSid": ident.stream_sid, "callSid": ident.call_sid,
        "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": ident.custom_parameters}}).decode()


async def _until_claimed(system: System, stream_sid: str) -> None:
    for _ in range(200):
        if system.call_record(stream_sid).get("state") == "active":
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"call {stream_sid} was never claimed: {system.call_record(stream_sid)}")


async def test_a_worker_never_holds_more_calls_than_its_capacity(redis_url, tmp_path_factory):
    small = System(redis_url, "e2ecap:", tmp_path_factory.mktemp("e2e-cap"), workers=1, capacity=2).start()
    try:
        load = asyncio.create_task(run_load(SimConfig(url=small.edge_url, calls=3, ramp_ms=300,
                                                      script=CallScript(turns=1, lead_ms=300, hold_ms=500))))
        most, waited = 0, False
        while not load.done():
            with small.redis() as client:
                states = [small.call_record(s.decode()).get("state") for s in client.zrange(small.keys.live_calls(), 0, -1)]
            held = sum(state in ("connecting", "active") for state in states)
            most = max(most, held)
            waited |= held == 2 and "waiting" in states
            await asyncio.sleep(0.05)
        report = (await load).to_dict()
        assert report["calls"]["completed"] == 3, report["calls"]  # the third was served once a slot freed
        assert most == 2 and waited
    finally:
        small.stop()
