"""Keypad input end to end: the simulated caller keys digits over a real Twilio stream, through the
edge, Redis and a worker, to the Deepgram emulator (real processes; control for the call detail).
"""

from __future__ import annotations

import urllib.request

import orjson
import pytest

from switchboard import settings_store
from switchboard.agent_settings import AgentSettings
from switchboard_callsim.call import SimConfig, run_call
from switchboard_callsim.script import CallScript
from switchboard_callsim.twiliomsg import CallIdentity

from system import System, scrape


@pytest.fixture(scope="module")
def system(redis_url, tmp_path_factory):
    sb = System(redis_url, "keypad:", tmp_path_factory.mktemp("keypad"), workers=1).start()
    sb.stack.start_control()
    yield sb
    sb.stop()


def place(system: System, settings: dict, keys: str, *, at_ms: int = 2000, **script) -> tuple[CallIdentity, SimConfig]:
    ident = CallIdentity.random()
    with system.redis() as client:
        doc = AgentSettings.model_validate(settings)
        client.set(system.keys.call_settings(ident.call_sid), settings_store.encode(doc, 1))
    dtmf = tuple((at_ms + 100 * n, key) for n, key in enumerate(keys))
    values = {"turns": 1, "lead_ms": 300, "utterance_ms": 600, "hold_ms": 3000, "dtmf": dtmf, **script}
    config = SimConfig(url=system.edge_url, emulator_url=system.emulator_http,
                       script=CallScript(**values))
    return ident, config


def sent_to_deepgram(system: System, call_sid: str, kind: str) -> list[dict]:
    return [m["body"] for s in system.emulator_sessions(call_sid) for m in s["control_messages"] if m["type"] == kind]


def detail(system: System, call_sid: str) -> dict:
    request = urllib.request.Request(f"{system.stack.control_url}/v1/calls/{call_sid}",
                                     headers={"Authorization": f"Bearer {system.stack.control_token}"})
    with urllib.request.urlopen(request) as response:
        return orjson.loads(response.read())


async def test_keys_typed_by_the_caller_reach_the_agent_as_one_injected_message(system):
    ident, config = place(system, {"dtmf": {"enabled": True}}, "1234#")
    result = await run_call(config, ident)
    assert result.ok, result.failure
    system.wait_call_ended(result.stream_sid)
    injected = sent_to_deepgram(system, ident.call_sid, "InjectUserMessage")
    assert [m["content"] for m in injected] == ["The caller pressed: 1234#"]
    (entry,) = [e for e in system.events(result.stream_sid) if e["type"] == "dtmf_entry"]
    assert entry["digits"] == "1234#" and entry["count"] == 4 and entry["ended_by"] == "terminator"
    call = detail(system, ident.call_sid)
    assert [(k["digits"], k["to"]) for k in call["keypad"]] == [("1234#", "agent")]
    worker_metrics = int(system.worker_services[0].env["METRICS_PORT"])
    assert scrape(worker_metrics, "switchboard_worker_dtmf_entries_total", 'ended_by="terminator"') >= 1


async def test_masked_keys_are_stored_nowhere_in_clear_and_never_reach_deepgram(system):
    settings = {"dtmf": {"enabled": True, "mask": True, "message": "Card entered: {{digits}} ({{count}} digits)"},
                "journal": {"enabled": True}}
    ident, config = place(system, settings, "4929#")
    result = await run_call(config, ident)
    assert result.ok, result.failure
    system.wait_call_ended(result.stream_sid)
    injected = sent_to_deepgram(system, ident.call_sid, "InjectUserMessage")
    assert [m["content"] for m in injected] == ["Card entered: ••••# (4 digits)"]
    with system.redis() as client:
        stored = b"".join(
            b"".join(value for _id, fields in client.xrange(key) for value in fields.values())
            for key in (system.keys.events(result.stream_sid), system.keys.journal(result.stream_sid),
                        system.keys.caller_audio(result.stream_sid))
        )
        in_keys = [f[b"p"] for _id, f in client.xrange(system.keys.caller_audio(result.stream_sid)) if f[b"k"] == b"d"]
    assert b"4929" not in stored and b'"digit":"4"' not in stored and b'"digit":"9"' not in stored
    assert in_keys == [b"#"] or in_keys == []  # the digits' own entries were deleted once read
    call = detail(system, ident.call_sid)
    assert call["keypad"][0]["digits"] == "••••#" and "4929" not in orjson.dumps(call).decode()
    journal = urllib.request.Request(f"{system.stack.control_url}/v1/calls/{ident.call_sid}/journal",
                                     headers={"Authorization": f"Bearer {system.stack.control_token}"})
    with urllib.request.urlopen(journal) as response:
        exported = response.read()
    assert b"4929" not in exported and "•".encode() in exported


async def test_collect_digits_answers_the_agents_function_call_with_the_keys(system):
    settings = {"think": {"prompt": 'You take orders.\nemulator: on turn 1 call collect_digits {"max_digits": 4}',
                          "functions": [{"name": "collect_digits", "description": "Ask the caller to key digits"}]}}
    ident, config = place(system, settings, "8642", at_ms=2500, reply_timeout_ms=10000)
    result = await run_call(config, ident)
    assert result.ok, result.failure
    system.wait_call_ended(result.stream_sid)
    (response,) = sent_to_deepgram(system, ident.call_sid, "FunctionCallResponse")
    assert response["name"] == "collect_digits"
    assert orjson.loads(response["content"]) == {"digits": "8642", "count": 4, "ended_by": "max_digits"}
    assert sent_to_deepgram(system, ident.call_sid, "InjectUserMessage") == []  # answered, not told as speech
    events = system.events(result.stream_sid)
    (call,) = [e for e in events if e["type"] == "function_call"]
    assert call["name"] == "collect_digits" and call["outcome"] == "ok" and call["ms"] >= 1000
    replies = [e["content"] for e in events if e["type"] == "transcript" and e["role"] == "assistant"]
    assert any("8642" in text for text in replies), replies  # the agent went on with the digits
