"""Calls through the services in-process (tests/inprocess.py): the call simulator places them
over a real loopback WebSocket to `EdgeServer`, the edge and `Worker`s meet in the session's
redis-server, and the Deepgram emulator answers; no subprocess.

Each behaviour here is also covered end to end with real processes (test_e2e_call,
test_e2e_bad_input, test_faults); this tier is the one a change runs first.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from switchboard_callsim.call import run_call
from switchboard_callsim.twiliomsg import CallIdentity, OutboundStream

from inprocess import InProcess, metric, until

CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'


@pytest.fixture(scope="module")
async def sb(redis_url):
    async with InProcess(redis_url, "cmp:call:", workers=1, edge_config={"edge_max_protocol_errors": 20}) as running:
        yield running


async def test_a_call_is_byte_exact_both_ways_and_its_transcript_recorded(sb):
    result = await run_call(sb.sim(turns=2))
    assert result.ok, result.failure
    assert result.turns_completed == 2
    assert result.byte_exact_out is True, result.out_reasons
    assert result.byte_exact_in is True, result.in_reasons
    record = await sb.wait_call_ended(result.stream_sid)
    assert record["call_sid"] == result.call_sid and record["outcome"] == "completed"
    assert record["worker"] == "cmp:call:w1" and record["edge"] == "cmp:call:edge"
    transcript = [e["role"] for e in await sb.events(result.stream_sid) if e["type"] == "transcript"]
    assert transcript == ["user", "assistant", "user", "assistant"]
    [session] = sb.emulator_sessions(result.call_sid)
    assert session["closed"]


async def test_barge_in_clears_the_agent_audio_and_nothing_of_a_cut_reply_plays_after_its_clear(sb):
    result = await run_call(sb.sim(turns=3, barge_in=True, barge_in_after_ms=200))
    assert result.ok, result.failure
    assert result.clears >= 2 and len(result.barge_in_latencies_us) >= 2
    assert result.byte_exact_out is True, result.out_reasons
    events = await sb.events(result.stream_sid)
    assert [e["type"] for e in events].count("barge_in") >= 2
    cut = [e for e in events if e["type"] == "reply_heard" and e["interrupted"]]
    truths = [ms for ms in result.heard_at_clear_ms if ms > 0]
    assert len(cut) == len(truths) >= 2, (cut, result.heard_at_clear_ms)
    for event, truth_ms in zip(cut, truths, strict=True):
        assert abs(event["heard_ms"] - truth_ms) <= 60, (event, truth_ms)


async def test_a_stopped_worker_s_call_is_taken_over_by_the_other_and_stays_byte_exact(redis_url):
    async with InProcess(redis_url, "cmp:takeover:", workers=2) as fleet:
        ident = CallIdentity.random()
        call = asyncio.create_task(run_call(fleet.sim(turns=4, utterance_ms=800, reply_timeout_ms=10_000), ident))

        async def has_owner() -> bool:
            record = await fleet.call_record(ident.stream_sid)
            return record.get("state") == "active" and bool(record.get("worker"))

        await until(has_owner, 10, "the call to be claimed")
        owner_id = (await fleet.call_record(ident.stream_sid))["worker"]
        owner = next(w for w in fleet.worker_list if w.settings.worker_id == owner_id)

        async def mid_conversation() -> bool:  # the agent has answered once: there is context to carry over
            return any(e["type"] == "transcript" and e["role"] == "assistant" for e in await fleet.events(ident.stream_sid))

        await until(mid_conversation, 10, "the first reply")
        await fleet.stop_worker(owner)  # SIGTERM's drain: stop claiming, hand the call over
        result = await call
        assert result.ok, result.failure
        # Agent audio is checked across both sessions; the caller's only within one session.
        assert result.byte_exact_out is True, result.out_reasons
        record = await fleet.wait_call_ended(ident.stream_sid)
        assert record["outcome"] == "completed" and record["worker"] != owner_id
        resumed = [e for e in await fleet.events(ident.stream_sid) if e["type"] == "deepgram_connected"]
        assert [bool(e.get("resumed")) for e in resumed] == [False, True]
        first, second = fleet.emulator_sessions(ident.call_sid)
        assert first["closed"] and "greeting" not in second["settings"]["agent"]


async def test_malformed_frames_are_counted_and_the_call_beside_them_completes(sb):
    reasons = ("media_before_start", "malformed_json", "unknown_event", "binary_frame", "invalid_base64",
               "wrong_stream_sid", "missing_field")
    before = {r: metric("switchboard_edge_malformed_frames_total", reason=r) for r in reasons}
    healthy = asyncio.create_task(run_call(sb.sim(turns=2)))
    ident = CallIdentity.random()
    async with websockets.connect(sb.edge_url) as ws:
        await ws.send(CONNECTED)
        await ws.send('{"event":"media","streamSid":"MZ1","media":{"payload":"/w=="}}')  # media before start
        await ws.send("{this is not json")
        await ws.send('{"event":"dance","streamSid":"MZ1"}')
        await ws.send(b"\x00\x01binary")
        await ws.send(OutboundStream(ident).start())
        await ws.send(orjson.dumps({"event": "media", "streamSid": ident.stream_sid, "media": {"payload": "@@@"}}).decode())
        await ws.send(orjson.dumps({"event": "media", "streamSid": "MZ" + "f" * 32, "media": {"payload": "/w=="}}).decode())
        await ws.send(orjson.dumps({"event": "mark", "streamSid": ident.stream_sid}).decode())
        await ws.send(orjson.dumps({"event": "stop", "streamSid": ident.stream_sid, "stop": {}}).decode())
    assert await _close_code(sb.edge_url, ["x" * (128 * 1024)]) == 1009  # one oversized frame: that stream only
    assert await _close_code(sb.edge_url, ["garbage"] * 30) == 1008  # a flood: cut at EDGE_MAX_PROTOCOL_ERRORS
    result = await healthy
    assert result.ok, result.failure
    assert result.byte_exact_in and result.byte_exact_out
    for reason, count in before.items():
        assert metric("switchboard_edge_malformed_frames_total", reason=reason) > count, reason
    assert sb.edge.tasks.ok


async def _close_code(url: str, frames: list[str]) -> int | None:
    async with websockets.connect(url) as ws:
        await ws.send(CONNECTED)
        for frame in frames:
            await ws.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    return closed.value.rcvd.code if closed.value.rcvd else None
