"""What the caller heard, where a turn's time goes, and the dead-air watchdog, end to end.

Real edge, workers, Deepgram emulator and Twilio simulator; each test sets its call's
agent settings (per callSid, as the control API would) before the call starts.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from switchboard import settings_store
from switchboard.agent_settings import AgentSettings
from switchboard_callsim.call import SimConfig, run_call
from switchboard_callsim.script import CallScript
from switchboard_callsim.twiliomsg import CallIdentity

from system import System, scrape

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def system(redis_url, tmp_path_factory):
    sb = System(redis_url, "e2econv:", tmp_path_factory.mktemp("e2e-conv"), workers=1).start()
    yield sb
    sb.stop()


def call_with(system: System, settings: dict, **script) -> tuple[CallIdentity, SimConfig]:
    ident = CallIdentity.random()
    doc = AgentSettings.model_validate(settings)
    with system.redis() as client:
        client.set(system.keys.call_settings(ident.call_sid), settings_store.encode(doc, 1))
    config = SimConfig(url=system.edge_url, emulator_url=system.emulator_http,
                       script=CallScript(lead_ms=300, **script))
    return ident, config


def worker_metrics(system: System) -> int:
    return int(system.worker_services[0].env["METRICS_PORT"])


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


async def test_each_turn_records_where_its_time_went(system):
    ident, config = call_with(system, {}, turns=2)
    result = await run_call(config, ident)
    assert result.ok, result.failure
    system.wait_call_ended(result.stream_sid)
    events = system.events(result.stream_sid)
    turns = [e for e in of_type(events, "turn_latency") if "switchboard_ms" in e]
    assert [t["reply"] for t in turns] == [1, 2]
    for turn in turns:
        stages = turn["stages"]
        # Switchboard's share, measured from timestamps at both ends of each hop...
        assert 0 < stages["caller_to_deepgram"] < 500 and 0 < stages["worker_to_edge"] < 500, stages
        assert turn["switchboard_ms"] == pytest.approx(stages["caller_to_deepgram"] + stages["worker_to_edge"], abs=0.02)
        # ...and Deepgram's own, from AgentStartedSpeaking and LatencyReport.
        assert stages["deepgram_total"] >= stages["deepgram_ttt"] > 0, stages
        assert "deepgram_ttt_text" in stages
    for stage in ("caller_to_deepgram", "worker_to_edge", "deepgram_total", "deepgram_ttt_text"):
        assert scrape(worker_metrics(system), "switchboard_worker_turn_stage_seconds_count", f'stage="{stage}"') >= 2


async def test_the_agent_is_told_what_the_caller_did_not_hear(system):
    ident, config = call_with(system, {"heard": {"tell_agent": True}}, turns=3, barge_in=True, barge_in_after_ms=200)
    result = await run_call(config, ident)
    assert result.ok, result.failure
    system.wait_call_ended(result.stream_sid)
    cut = [e for e in of_type(system.events(result.stream_sid), "reply_heard") if e["interrupted"]]
    assert len(cut) >= 2
    session = system.emulator_sessions(ident.call_sid)[0]
    updates = [m["body"] for m in session["control_messages"] if m["type"] == "UpdateThink"]
    assert len(updates) >= len(cut)
    prompt = updates[0]["think"]["prompt"]
    assert prompt.startswith("You are a helpful car seller.")
    assert "interrupted your last reply" in prompt and cut[0]["unheard_text"] in prompt
    # Deepgram's own Settings shape: the whole think block, provider included.
    assert updates[0]["think"]["provider"]["model"] == "claude-3-5-haiku-latest"


async def test_a_silent_caller_is_asked_once_then_the_call_ends_politely(system):
    dead_air = {"caller_idle_s": 1.0, "max_reengage": 1, "reengage_message": "Hello, are you there?",
                "goodbye_message": "Goodbye for now."}
    ident, config = call_with(system, {"dead_air": dead_air}, turns=1, hold_ms=15_000)
    started = time.monotonic()
    result = await run_call(config, ident)
    took = time.monotonic() - started
    assert took < 12, "Switchboard should have ended the call long before the caller's 15 s hold"
    record = system.wait_call_ended(result.stream_sid)
    assert record["hangup_requested"] == "dead_air_caller_idle"
    fired = of_type(system.events(result.stream_sid), "dead_air")
    assert [(e["kind"], e["action"]) for e in fired] == [("caller_idle", "reengage"), ("caller_idle", "end_call")]
    session = system.emulator_sessions(ident.call_sid)[0]
    said = [m["body"]["message"] for m in session["control_messages"] if m["type"] == "InjectAgentMessage"]
    assert said == ["Hello, are you there?", "Goodbye for now."]
    # The goodbye was played before the line closed: its reply ended with its end mark echoed.
    heard = of_type(system.events(result.stream_sid), "reply_heard")
    assert heard[-1]["text"] == "Goodbye for now." and not heard[-1]["interrupted"]
    assert scrape(worker_metrics(system), "switchboard_worker_dead_air_total", 'action="end_call",kind="caller_idle"') >= 1


async def test_an_agent_that_stalls_mid_reply_is_reconnected_with_context(system):
    ident, config = call_with(system, {"dead_air": {"agent_stall_s": 1.0}}, turns=2, reply_timeout_ms=12_000)
    system.emulator_faults(mute=1)
    try:
        call = asyncio.create_task(run_call(config, ident))
        for _ in range(100):  # the stall is noticed within agent_stall_s plus one watchdog tick
            await asyncio.sleep(0.1)
            with system.redis() as client:
                sids = client.get(system.keys.call_by_callsid(ident.call_sid))
            if sids and of_type(system.events(sids.decode()), "dead_air"):
                break
        else:
            pytest.fail("the stall was never noticed")
    finally:
        system.emulator_faults(mute=0)
    result = await call
    assert result.ok, result.failure
    system.wait_call_ended(result.stream_sid)
    fired = of_type(system.events(result.stream_sid), "dead_air")
    assert [(e["kind"], e["action"]) for e in fired] == [("agent_stall", "reconnect")]
    sessions = system.emulator_sessions(ident.call_sid)
    assert len(sessions) == 2
    # The reply the caller never heard is not in the new session's context; the question is asked again.
    context = sessions[1]["settings"]["agent"].get("context", {}).get("messages", [])
    assert all(m.get("role") != "assistant" for m in context), context
    asked = [m["body"]["content"] for m in sessions[1]["control_messages"] if m["type"] == "InjectUserMessage"]
    assert asked == ["Caller utterance 1 (1200 ms)"]
    assert sessions[1]["settings"]["agent"].get("greeting") is None
