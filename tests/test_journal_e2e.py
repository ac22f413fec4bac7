"""The call journal through real processes: a call recorded by a worker, then exported, listened to
and replayed with the real `switchboard-journal` command and the control API.

Stack: the session's redis-server, edge, one worker, the Deepgram emulator, switchboard-control
(uvicorn) and the Twilio call simulator.
"""

from __future__ import annotations

import subprocess

import httpx
import orjson
import pytest
import redis as redis_sync

from switchboard import wav
from switchboard.agent_settings import AgentSettings, Journal
from switchboard.journal import Recorder, Source, decode_journal, from_jsonl
from switchboard_callsim.call import SimConfig, run_call
from switchboard_callsim.script import CallScript
from switchboard_dev import procs
from switchboard_dev.testaudio import CALLER_MAGIC, FRAME_BYTES, parse_frame

from test_control_api import API_TOKEN, ControlStack, new_call
from test_journal import T0, pcm_channels, synthetic_call

PREFIX = "journal:"
RETENTION_S = 7200  # longer than the call record (CALL_RETENTION_S 3600 on the worker)
SECRETS = ("sk-journal-listen-0001", "Bearer sk-journal-llm-0002", "journal-url-pass-0003", "journal-url-key-0004",
           "journal-camel-0005", "journal-hook-pass-0006", "journal-hook-token-0007")


@pytest.fixture(scope="module")
def stack(redis_url, tmp_path_factory):
    running = ControlStack(redis_url, PREFIX, tmp_path_factory.mktemp("journal-e2e")).start()
    yield running
    running.stop()


@pytest.fixture()
async def api(stack):
    async with httpx.AsyncClient(base_url=stack.control_url, headers={"Authorization": f"Bearer {API_TOKEN}"},
                                 timeout=15) as client:
        yield client


def journal_cli(stack: ControlStack, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*procs.console("switchboard-journal"), *args, "--redis-url", stack.redis_url, "--key-prefix", PREFIX],
        capture_output=True, timeout=60,
    )


def records_of(lines: bytes) -> tuple[dict, list]:
    return from_jsonl(lines.splitlines())


async def test_a_recorded_call_is_exported_heard_and_replayed_with_its_barge_ins(stack, api, tmp_path):
    profile = {
        "listen": {"provider": {"type": "deepgram", "model": "nova-3", "api_key": SECRETS[0]}},
        "think": {"provider": {"type": "open_ai", "model": "gpt-4o-mini", "accessToken": SECRETS[4]},
                  "prompt": "Sell cars.",
                  "endpoint": {"url": f"https://bot:{SECRETS[2]}@llm.example.com/v1?api_key={SECRETS[3]}",
                               "headers": {"authorization": SECRETS[1]}},
                  "functions": [{"name": "lookup", "description": "Never called in this call", "webhook": {
                      "url": f"https://ops:{SECRETS[5]}@hooks.example.com/lookup?token={SECRETS[6]}"}}]},
        "journal": {"enabled": True, "audio": True, "retention_s": RETENTION_S},
    }
    assert (await api.put("/v1/profiles/journaled", json=profile)).status_code == 200
    ident = new_call(profile="journaled")
    script = CallScript(turns=3, barge_in=True, barge_in_after_ms=200, lead_ms=300, utterance_ms=600)
    result = await run_call(SimConfig(url=stack.system.edge_url, emulator_url=stack.system.emulator_http,
                                      script=script), ident)
    assert result.ok, result.failure
    assert result.byte_exact_in is True and result.clears >= 2
    stack.system.wait_call_ended(ident.stream_sid)
    key = stack.system.keys.journal(ident.stream_sid)
    with redis_sync.Redis.from_url(stack.redis_url) as client:
        # Until the call ends the journal has the writer's generic TTL (hours); the pipeline that
        # marks the call ended sets the configured retention right after the state.
        procs.wait_until(lambda: 0 < client.ttl(key) <= RETENTION_S, 5, "the journal's retention")
        assert client.ttl(key) > RETENTION_S - 30
        # The callSid keeps naming it as long as the journal lives (the call record's retention is shorter).
        assert client.ttl(stack.system.keys.call_by_callsid(ident.call_sid)) > RETENTION_S - 30

    # dump: every kind of record, and no secret anywhere.
    dump = tmp_path / "call.jsonl"
    run = journal_cli(stack, "dump", "--call", ident.call_sid, "--out", str(dump))
    assert run.returncode == 0, run.stderr
    text = dump.read_bytes()
    for secret in SECRETS:
        assert secret.encode() not in text
    header, records = records_of(text)
    assert header["call_sid"] == ident.call_sid and header["stream_sid"] == ident.stream_sid
    assert {r.source for r in records} == set(Source)
    assert records[0].source is Source.START

    # wav: the caller track holds every frame the simulator sent, byte-exact and in order.
    out = tmp_path / "call.wav"
    run = journal_cli(stack, "wav", "--call", ident.call_sid, "--out", str(out))
    assert run.returncode == 0, run.stderr
    left, right, params = pcm_channels(out.read_bytes())
    assert (params.nchannels, params.framerate) == (2, 8000)
    caller = b"".join(r.entry.payload for r in records if r.source is Source.CALLER and r.data[:1] == b"a")
    frames = [caller[i:i + FRAME_BYTES] for i in range(0, len(caller), FRAME_BYTES)]
    spoken = [(f, info) for f in frames if (info := parse_frame(f)) is not None and info.magic == CALLER_MAGIC]
    per_utterance = script.utterance_frames
    assert [(i.stream_no, i.seq) for _f, i in spoken] == [
        (u, s) for u in range(1, 4) for s in range(per_utterance)
    ]
    position = 0
    for frame, _info in spoken:
        found = left.find(wav.ulaw_to_pcm16(frame), position)
        assert found >= 0 and found % 2 == 0
        position = found + 2 * FRAME_BYTES
    assert any(right)  # the agent spoke
    assert params.nframes / 8000 >= script.lead_ms / 1000 + 3 * script.utterance_ms / 1000

    # replay: the barge-ins come back, and the replay agrees with what the worker recorded.
    run = journal_cli(stack, "replay", "--call", ident.call_sid, "--json", "--check")
    report = orjson.loads(run.stdout)
    assert run.returncode == 0, (report["comparison"], report["notes"])
    replayed = [e["type"] for e in report["replayed_events"]]
    assert replayed.count("barge_in") >= 2
    assert replayed.count("barge_in") == [e["type"] for e in report["recorded_events"]].count("barge_in")
    assert any(e["type"] == "reply_heard" and e["interrupted"] for e in report["replayed_events"])
    human = journal_cli(stack, "replay", "--file", str(dump))
    assert human.returncode == 0 and b"BARGE-IN" in human.stdout and b"MATCH" in human.stdout

    # The control API serves the same journal and the same recording.
    got = await api.get(f"/v1/calls/{ident.call_sid}/journal")
    assert got.status_code == 200 and got.headers["content-type"].startswith("application/x-ndjson")
    assert not [secret for secret in SECRETS if secret.encode() in got.content]
    assert records_of(got.content)[1] == records
    recording = await api.get(f"/v1/calls/{ident.call_sid}/recording.wav")
    assert recording.status_code == 200 and recording.headers["content-type"] == "audio/wav"
    assert recording.content == out.read_bytes()


def store_journal(stack: ControlStack, call_sid: str, stream_sid: str, records: list, params: dict) -> None:
    with redis_sync.Redis.from_url(stack.redis_url) as client:
        keys = stack.system.keys
        client.set(keys.call_by_callsid(call_sid), stream_sid, ex=600)
        client.hset(keys.call(stream_sid), mapping={"call_sid": call_sid, "state": "ended",
                                                    "params": orjson.dumps(params)})
        client.expire(keys.call(stream_sid), 600)
        for record in records:
            client.xadd(keys.journal(stream_sid), record.to_entry().fields())
        if records:
            client.expire(keys.journal(stream_sid), 600)


async def test_the_api_and_the_command_serve_a_stored_journal_alike_and_say_what_is_missing(stack, api, tmp_path):
    call, stream = new_call(), new_call()
    records = synthetic_call()
    store_journal(stack, call.call_sid, call.stream_sid, records, {"sb_resume_of": "MZold"})
    # A journal recorded with audio off: the start record and the clear, nothing to listen to.
    start = Recorder(Journal(enabled=True, audio=False)).start(stream.call_sid, stream.stream_sid, AgentSettings(), T0)
    silent = decode_journal([start.fields()]) + [r for r in records if r.source is Source.TO_TWILIO]
    store_journal(stack, stream.call_sid, stream.stream_sid, silent, {})

    body = await api.get(f"/v1/calls/{call.call_sid}/journal")
    assert body.status_code == 200
    header, back = records_of(body.content)
    assert back == records
    assert header["call_sid"] == call.call_sid and header["entries"] == len(records)
    assert header["resumed_from"] == "MZold"  # the stream this one continued has its own journal
    # By streamSid too: after an edge loss the first part of a call keeps its journal under the old stream.
    assert records_of((await api.get(f"/v1/calls/{call.stream_sid}/journal")).content)[1] == records
    run = journal_cli(stack, "dump", "--call", call.call_sid)
    assert run.returncode == 0 and records_of(run.stdout)[1] == records
    assert b"continued stream MZold" in run.stderr

    recording = await api.get(f"/v1/calls/{call.call_sid}/recording.wav")
    assert recording.content == wav.render(records).wav()
    out = tmp_path / "stored.wav"
    assert journal_cli(stack, "wav", "--call", call.stream_sid, "--out", str(out)).returncode == 0
    assert out.read_bytes() == recording.content

    no_audio = await api.get(f"/v1/calls/{stream.call_sid}/recording.wav")
    assert no_audio.status_code == 404 and "journal.audio off" in no_audio.json()["detail"]
    run = journal_cli(stack, "wav", "--call", stream.call_sid, "--out", str(tmp_path / "none.wav"))
    assert run.returncode == 1 and b"journal.audio off" in run.stderr
    unknown = await api.get("/v1/calls/CAnothing/journal")
    assert unknown.status_code == 404 and "no call or stream" in unknown.json()["detail"]
    store_journal(stack, "CAunrecorded", "MZunrecorded", [], {})
    unrecorded = await api.get("/v1/calls/CAunrecorded/journal")
    assert unrecorded.status_code == 404 and "journal.enabled was off" in unrecorded.json()["detail"]
    assert journal_cli(stack, "dump", "--call", "CAunrecorded").returncode == 1
    async with httpx.AsyncClient(base_url=stack.control_url, timeout=5) as anonymous:
        for path in (f"/v1/calls/{call.call_sid}/journal", f"/v1/calls/{call.call_sid}/recording.wav"):
            assert (await anonymous.get(path)).status_code == 401
