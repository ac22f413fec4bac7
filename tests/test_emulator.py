"""The Deepgram Voice Agent emulator, run in-process on port 0 and driven by a real websockets client.

Every JSON message the emulator sends is checked against Deepgram's AsyncAPI spec when it is
available. Timings are shortened (200 ms replies, 200 ms end of utterance) to keep the file fast.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from switchboard_dev.testaudio import AGENT_MAGIC, FRAME_BYTES, SILENCE, caller_frame, parse_frame
from switchboard_emulator.config import EmulatorConfig
from switchboard_emulator.server import EmulatorServer
from switchboard_emulator.vad import ENDED, STARTED, Framer, VoiceActivity, detector_for

from deepgram_spec import SPEC_AVAILABLE, requires_spec, validate_client_message, validate_server_message

TIMEOUT = 3.0
KEY = "test-key"

SETTINGS: dict[str, Any] = {
    "type": "Settings",
    "tags": ["switchboard"],
    "audio": {
        "input": {"encoding": "mulaw", "sample_rate": 8000},
        "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
    },
    "agent": {
        "listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
        "think": {
            "provider": {"type": "anthropic", "model": "claude-3-5-haiku-latest"},
            "prompt": "You are a helpful car seller.",
        },
        "speak": {"provider": {"type": "deepgram", "model": "aura-asteria-en"}},
    },
}


def settings(**agent: Any) -> dict[str, Any]:
    result = copy.deepcopy(SETTINGS)
    result["agent"].update(agent)
    return result


def think(prompt: str, functions: list[dict[str, Any]]) -> dict[str, Any]:
    provider = {"type": "anthropic", "model": "claude-3-5-haiku-latest"}
    return {"provider": provider, "prompt": prompt, "functions": functions}


GET_SLOTS = {
    "name": "get_slots",
    "description": "Free appointment slots on a day",
    "parameters": {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]},
}


@asynccontextmanager
async def emulator(**overrides: Any) -> AsyncIterator[EmulatorServer]:
    options: dict[str, Any] = dict(
        port=0, api_key=KEY, eou_ms=200, reply_ms=200, think_ms=20, idle_timeout=3.0, log_level="WARNING"
    )
    options.update(overrides)
    async with EmulatorServer(EmulatorConfig(**options)) as server:
        yield server


class Agent:
    """A client that validates every server JSON message and keeps everything it received, in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any] | bytes] = []

    async def next(self, timeout: float = TIMEOUT) -> dict[str, Any] | bytes:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        if isinstance(raw, bytes):
            self.received.append(raw)
            return raw
        msg = orjson.loads(raw)
        if SPEC_AVAILABLE:
            validate_server_message(msg)
        self.received.append(msg)
        return msg

    async def expect(self, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next JSON message of this type; everything before it stays in `received`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            msg = await self.next(deadline - asyncio.get_running_loop().time())
            if isinstance(msg, dict) and msg["type"] == kind:
                return msg

    async def send(self, msg: dict[str, Any]) -> None:
        if SPEC_AVAILABLE:
            validate_client_message(msg)
        await self.ws.send(orjson.dumps(msg).decode())

    async def expect_closed(self, timeout: float = TIMEOUT) -> int | None:
        with pytest.raises(ConnectionClosed):
            while True:
                await self.next(timeout)
        return self.ws.close_code

    def types(self) -> list[str]:
        return ["audio" if isinstance(m, bytes) else m["type"] for m in self.received]

    def frames(self) -> list[Any]:
        audio = b"".join(m for m in self.received if isinstance(m, bytes))
        return [parse_frame(audio[i : i + FRAME_BYTES]) for i in range(0, len(audio), FRAME_BYTES)]


@asynccontextmanager
async def agent(
    server: EmulatorServer, body: dict[str, Any] | None = SETTINGS, key: str = KEY
) -> AsyncIterator[Agent]:
    async with connect(server.url, additional_headers={"Authorization": f"Token {key}"}, open_timeout=TIMEOUT) as ws:
        client = Agent(ws)
        await client.expect("Welcome")
        if body is not None:
            await client.send(body)
            await client.expect("SettingsApplied")
        yield client


def utterance(number: int, frames: int = 10, silence_frames: int = 15) -> bytes:
    now_us = time.time_ns() // 1000
    speech = b"".join(caller_frame(number, seq, now_us) for seq in range(frames))
    return speech + SILENCE * silence_frames


async def send_chunked(ws: ClientConnection, audio: bytes, size: int) -> None:
    for i in range(0, len(audio), size):
        await ws.send(audio[i : i + size])


async def admin(server: EmulatorServer, route: str, **params: Any) -> Any:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=TIMEOUT) as http:
        response = await http.get(f"/_emulator/{route}", params=params)
    response.raise_for_status()
    return response.json()


async def closed_session(server: EmulatorServer, tag: str) -> dict[str, Any]:
    """The session with this tag once its handler has finished (it ends just after the socket)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        sessions = await admin(server, "sessions", tag=tag)
        if sessions and sessions[0]["closed"]:
            return sessions[0]
        assert time.monotonic() < deadline, f"session {tag} did not close: {sessions}"
        await asyncio.sleep(0.02)


# --- the spec helper itself


@requires_spec
def test_seed_settings_validate_against_the_spec_and_retired_claude_3_haiku_does_not() -> None:
    validate_client_message(SETTINGS)
    retired = settings(think={"provider": {"type": "anthropic", "model": "claude-3-haiku"}, "prompt": "x"})
    with pytest.raises(jsonschema.ValidationError):
        validate_client_message(retired)


# --- handshake


async def test_handshake_without_a_key_or_with_a_wrong_key_is_refused_with_401() -> None:
    async with emulator() as server:
        with pytest.raises(InvalidStatus) as missing:
            await connect(server.url, open_timeout=TIMEOUT)
        with pytest.raises(InvalidStatus) as wrong:
            await connect(server.url, additional_headers={"Authorization": "Token nope"}, open_timeout=TIMEOUT)
    assert missing.value.response.status_code == 401
    assert wrong.value.response.status_code == 401


async def test_token_subprotocol_and_bearer_are_accepted_and_token_is_echoed() -> None:
    async with emulator(api_key=None) as server:
        async with connect(server.url, subprotocols=["token", "any-key"], open_timeout=TIMEOUT) as ws:
            assert ws.subprotocol == "token"
            assert (await Agent(ws).expect("Welcome"))["request_id"]
        async with connect(server.url, additional_headers={"Authorization": "Bearer jwt"}, open_timeout=TIMEOUT) as ws:
            await Agent(ws).expect("Welcome")


async def test_other_paths_are_404_and_healthz_answers() -> None:
    async with emulator() as server, httpx.AsyncClient(base_url=server.http_url, timeout=TIMEOUT) as http:
        assert (await http.get("/v1/listen")).status_code == 404
        assert (await http.get("/_emulator/healthz")).status_code == 200


# --- session start


async def test_welcome_carries_a_uuid_and_settings_are_applied() -> None:
    async with emulator() as server, agent(server) as client:
        welcome = client.received[0]
        assert isinstance(welcome, dict)
        uuid.UUID(welcome["request_id"])
        assert client.types() == ["Welcome", "SettingsApplied"]


async def test_audio_before_settings_is_an_error_and_closes() -> None:
    async with emulator() as server, agent(server, body=None) as client:
        await client.ws.send(SILENCE)
        error = await client.expect("Error")
        assert error["code"] == "NON_SETTINGS_MESSAGE_BEFORE_SETTINGS"
        await client.expect_closed()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (settings(think={"provider": {"type": "anthropic", "model": "claude-3-haiku"}}), "agent.think.provider.model"),
        ({k: v for k, v in SETTINGS.items() if k != "audio"}, "audio"),
        ({**SETTINGS, "audio": {"input": {"encoding": "mulaw"}}}, "audio.input.sample_rate"),
        (settings(speak={"provider": {"model": "aura-asteria-en"}}), "agent.speak.provider.type"),
        (settings(think=think("x", [{"name": "f", "parameters": {}}])), "agent.think.functions[0].description"),
    ],
)
async def test_invalid_settings_are_refused_naming_the_field(body: dict[str, Any], field: str) -> None:
    async with emulator() as server, agent(server, body=None) as client:
        await client.ws.send(orjson.dumps(body).decode())
        error = await client.expect("Error")
        assert error["code"] == "INVALID_SETTINGS"
        assert field in error["description"]
        await client.expect_closed()


async def test_second_settings_and_unparsable_messages_are_errors() -> None:
    async with emulator() as server:
        async with agent(server) as client:
            await client.send(SETTINGS)
            assert (await client.expect("Error"))["code"] == "SETTINGS_ALREADY_APPLIED"
        async with agent(server) as client:
            await client.ws.send("{not json")
            assert (await client.expect("Error"))["code"] == "UNPARSABLE_CLIENT_MESSAGE"


# --- agent speech


async def test_greeting_is_spoken_as_reply_0_in_consecutive_synthetic_frames() -> None:
    async with emulator(chunk_ms=40) as server, agent(server, settings(greeting="Hello there!")) as client:
        text = await client.expect("ConversationText")
        assert text == {"type": "ConversationText", "role": "assistant", "content": "Hello there!"}
        await client.expect("AgentStartedSpeaking")
        await client.expect("AgentAudioDone")
    chunks = [m for m in client.received if isinstance(m, bytes)]
    assert {len(c) for c in chunks} == {2 * FRAME_BYTES}
    frames = client.frames()
    assert all(f is not None and f.magic == AGENT_MAGIC and f.stream_no == 0 for f in frames)
    assert [f.seq for f in frames] == list(range(10))


async def test_agent_audio_is_paced_in_real_time() -> None:
    async with emulator(reply_ms=400) as server, agent(server, settings(greeting="Hi")) as client:
        await client.expect("AgentStartedSpeaking")
        started = time.monotonic()
        await client.expect("AgentAudioDone")
        elapsed = time.monotonic() - started
    # 20 frames of 20 ms: the last leaves 380 ms after the first.
    assert 0.33 < elapsed < 0.8


async def test_caller_utterance_gets_the_whole_turn_in_order() -> None:
    async with emulator() as server, agent(server) as client:
        # Odd chunk sizes: the emulator must re-frame the byte stream itself.
        await send_chunked(client.ws, utterance(1), 37)
        await client.expect("AgentAudioDone")
        report = await client.expect("LatencyReport")
        await client.expect("History")
        await client.expect("History")
    events = [t for t in client.types() if t not in ("AgentThinking", "Welcome", "SettingsApplied")]
    first_audio = events.index("audio")
    turn_start = ["UserStartedSpeaking", "ConversationText", "ConversationText", "AgentStartedSpeaking"]
    assert events[:first_audio] == turn_start
    assert set(events[first_audio:-4]) == {"audio"}
    assert events[-4:] == ["AgentAudioDone", "LatencyReport", "History", "History"]
    assert report["total_latency"] >= report["ttt_text_latency"] >= 0
    user, assistant = [m for m in client.received if isinstance(m, dict) and m["type"] == "ConversationText"]
    assert user == {"type": "ConversationText", "role": "user", "content": "Caller utterance 1 (200 ms)"}
    assert assistant["role"] == "assistant" and "utterance 1" in assistant["content"]
    assert [(f.stream_no, f.seq) for f in client.frames()] == [(1, seq) for seq in range(10)]


async def test_barge_in_stops_agent_audio_at_once() -> None:
    async with emulator(reply_ms=3000) as server, agent(server, settings(greeting="A long greeting")) as client:
        await client.expect("AgentStartedSpeaking")
        for _ in range(3):
            assert isinstance(await client.next(), bytes)
        await client.ws.send(utterance(1, frames=5))
        await client.expect("UserStartedSpeaking")
        barged_at = len(client.received)
        await client.expect("AgentStartedSpeaking")  # the reply to the interrupting utterance
        after = client.received[barged_at:]
        session = (await admin(server, "sessions"))[0]
    greeting_after = [m for m in after if isinstance(m, bytes) and parse_frame(m).stream_no == 0]
    assert greeting_after == []
    assert not any(isinstance(m, dict) and m["type"] == "AgentAudioDone" for m in after)
    greeting = session["replies"][0]
    assert greeting["number"] == 0 and greeting["interrupted"] and greeting["frames_sent"] < 150


async def test_keepalive_holds_an_idle_session_and_its_absence_times_out() -> None:
    async with emulator(idle_timeout=0.5) as server, agent(server) as client:
        for _ in range(6):
            await client.send({"type": "KeepAlive"})
            with pytest.raises(TimeoutError):
                await client.next(timeout=0.2)
        error = await client.expect("Error", timeout=2.0)
        assert error["code"] == "CLIENT_MESSAGE_TIMEOUT"
        assert await client.expect_closed() == 1011


async def test_update_prompt_and_speak_are_acknowledged_and_recorded() -> None:
    speak = {"provider": {"type": "deepgram", "model": "aura-2-luna-en"}}
    async with emulator() as server, agent(server, {**SETTINGS, "tags": ["callsid:CAupdate"]}) as client:
        await client.send({"type": "UpdatePrompt", "prompt": "Be brief."})
        await client.expect("PromptUpdated")
        await client.send({"type": "UpdateSpeak", "speak": speak})
        await client.expect("SpeakUpdated")
        session = (await admin(server, "sessions", tag="callsid:CAupdate"))[0]
    assert [c["type"] for c in session["control_messages"]] == ["UpdatePrompt", "UpdateSpeak"]
    assert session["control_messages"][1]["body"]["speak"] == speak


async def test_injected_agent_message_is_spoken_and_refused_while_the_agent_speaks() -> None:
    async with emulator(reply_ms=1000) as server, agent(server) as client:
        await client.send({"type": "InjectAgentMessage", "message": "Please hold."})
        text = await client.expect("ConversationText")
        assert text == {"type": "ConversationText", "role": "assistant", "content": "Please hold."}
        await client.expect("AgentStartedSpeaking")
        await client.send({"type": "InjectAgentMessage", "message": "Too early."})
        await client.expect("InjectionRefused")
        await client.expect("AgentAudioDone")
    assert sum(1 for f in client.frames() if f is not None and f.stream_no == 1) == 50


# --- function calls


async def test_scripted_function_call_round_trip() -> None:
    prompt = 'Sell cars.\nemulator: on turn 1 call get_slots {"day": "Tue"}'
    async with emulator() as server, agent(server, settings(think=think(prompt, [GET_SLOTS]))) as client:
        await client.send({"type": "InjectUserMessage", "content": "Any slots?"})
        request = await client.expect("FunctionCallRequest")
        [call] = request["functions"]
        assert call["name"] == "get_slots" and call["client_side"] is True and call["id"].startswith("fc_")
        assert orjson.loads(call["arguments"]) == {"day": "Tue"}
        await client.send({"type": "FunctionCallResponse", "id": call["id"], "name": "get_slots", "content": "10:00"})
        reply = await client.expect("ConversationText")
        assert reply["role"] == "assistant" and "10:00" in reply["content"]
        await client.expect("AgentAudioDone")
        history = [await client.expect("History") for _ in range(3)]
        await client.send({"type": "FunctionCallResponse", "id": "fc_unknown", "name": "get_slots", "content": "x"})
        assert (await client.expect("Warning"))["code"]
    assert history[1]["function_calls"][0] == {**call, "response": "10:00"}


async def test_calling_an_undeclared_function_ends_the_session() -> None:
    async with emulator() as server, agent(server, settings(think=think("x", [GET_SLOTS]))) as client:
        await client.send({"type": "InjectUserMessage", "content": "call cancel_order {}"})
        error = await client.expect("Error")
        assert error["code"] == "NON_EXISTENT_FUNCTION_CALLED"
        await client.expect_closed()
    assert "FunctionCallRequest" not in client.types()


# --- faults and introspection


async def test_rejected_handshakes_get_the_injected_status_then_recover() -> None:
    async with emulator() as server:
        faults = await admin(server, "faults", reject_next=1, reject_status=429)
        assert faults["reject_next"] == 1
        with pytest.raises(InvalidStatus) as refused:
            await connect(server.url, additional_headers={"Authorization": f"Token {KEY}"}, open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 429
        async with agent(server) as client:
            assert client.types() == ["Welcome", "SettingsApplied"]


async def test_drop_after_ms_closes_new_sessions_with_1011() -> None:
    async with emulator() as server:
        await admin(server, "faults", drop_after_ms=100)
        async with agent(server) as client:
            started = time.monotonic()
            assert await client.expect_closed() == 1011
            assert time.monotonic() - started < 1.0
        faults = await admin(server, "faults", reset=1)
        assert faults["drop_after_ms"] == 0


async def test_error_after_ms_sends_the_injected_error_code() -> None:
    async with emulator() as server:
        await admin(server, "faults", error_after_ms=50, error_code="SERVER_GOING_AWAY")
        async with agent(server) as client:
            assert (await client.expect("Error"))["code"] == "SERVER_GOING_AWAY"
            await client.expect_closed()


async def test_a_stalled_emulator_neither_reads_nor_writes_until_resumed() -> None:
    async with emulator() as server:
        await admin(server, "faults", stall=1)
        async with connect(server.url, additional_headers={"Authorization": f"Token {KEY}"}) as ws:
            client = Agent(ws)
            with pytest.raises(TimeoutError):
                await client.next(timeout=0.3)
            assert (await admin(server, "faults", stall=0))["stall"] is False
            await client.expect("Welcome")


async def test_sessions_show_settings_and_the_sha256_of_received_audio() -> None:
    body = {**SETTINGS, "tags": ["switchboard", "callsid:CAintro"]}
    audio = utterance(7, frames=20, silence_frames=5)
    async with emulator() as server:
        async with agent(server, body) as client:
            await send_chunked(client.ws, audio, 160)
            await client.ws.send(b"\x01\x02\x03")  # a partial frame still counts towards bytes and hash
        session = await closed_session(server, "callsid:CAintro")
        assert await admin(server, "sessions", tag="callsid:nobody") == []
    assert session["settings"] == body
    assert session["audio"]["bytes"] == len(audio) + 3
    assert session["audio"]["sha256"] == hashlib.sha256(audio + b"\x01\x02\x03").hexdigest()
    stats = session["caller_frames"]
    assert stats["frames"] == 20 and stats["out_of_order"] == 0 and stats["corrupt"] == 0
    assert stats["latency_ms"]["max"] >= stats["latency_ms"]["p95"] >= stats["latency_ms"]["p50"] >= 0
    assert session["events"][:2] == ["Welcome", "SettingsApplied"]


async def test_shutdown_closes_open_sessions_with_1001_and_records_them() -> None:
    server = EmulatorServer(EmulatorConfig(port=0, api_key=KEY, reply_ms=5000, log_level="WARNING"))
    await server.start()
    try:
        async with agent(server, settings(greeting="Still talking")) as client:
            await client.expect("AgentStartedSpeaking")
            await asyncio.wait_for(server.close(), TIMEOUT)
            assert await client.expect_closed() == 1001
    finally:
        await server.close()
    [session] = server.registry.find()
    assert session.closed and session.close_code == 1001
    assert session.replies[0].interrupted is False and session.replies[0].frames_sent < 250


# --- pure VAD


def test_linear16_speech_is_framed_by_its_byte_rate_and_detected() -> None:
    frame_bytes, loudness = detector_for("linear16", 16000)
    assert frame_bytes == 640
    loud = (12000).to_bytes(2, "little", signed=True) * 320
    quiet = bytes(640)
    vad = VoiceActivity(loudness, start_frames=2, eou_ms=100)
    framer = Framer(frame_bytes)
    events = [vad.step(f) for f in framer.push(loud * 3 + quiet * 5)]
    assert events.count(STARTED) == 1 and events.count(ENDED) == 1
    assert vad.utterance_ms == 60
