"""Call simulator: Twilio playback model, audio checks, conversation script, and a real socket run."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import time

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from switchboard_callsim.audiocheck import AgentAudioChecker
from switchboard_callsim.call import SimConfig, run_call
from switchboard_callsim.load import percentiles
from switchboard_callsim.playback import Playback
from switchboard_callsim.script import SILENT, CallScript, Conversation, Phase
from switchboard_callsim.twiliomsg import INVALID, MALFORMED, CallIdentity, ProtocolWarning, parse_server
from switchboard_dev.testaudio import CALLER_MAGIC, FRAME_BYTES, SILENCE, agent_frame, caller_frame, parse_frame

SID = "MZ" + "0" * 32


def frames(reply: int, seqs: range, t: int = 1) -> bytes:
    return b"".join(agent_frame(reply, s, t) for s in seqs)


# --- playback model -----------------------------------------------------------------------------


def test_mark_on_empty_buffer_is_due_at_once():
    pb = Playback()
    pb.push_mark("a", 1_000)
    assert pb.due_marks(1_000) == ["a"]


def test_mark_is_due_when_the_audio_before_it_has_played():
    pb = Playback()
    assert pb.push_audio(1600, 0) == 0  # 200 ms
    pb.push_mark("a", 0)
    assert pb.push_audio(800, 10_000) == 200_000  # queued behind the first chunk
    pb.push_mark("b", 10_000)
    assert pb.due_marks(199_999) == []
    assert pb.due_marks(200_000) == ["a"]
    assert pb.playing(250_000)
    assert pb.due_marks(300_000) == ["b"]
    assert not pb.playing(300_000)


def test_clear_drops_audio_and_returns_pending_marks_in_order():
    pb = Playback()
    pb.push_audio(8000, 0)
    pb.push_mark("a", 0)
    pb.push_mark("b", 0)
    assert pb.clear(50_000) == ["a", "b"]
    assert not pb.playing(50_000)
    assert pb.push_audio(160, 60_000) == 60_000


# --- agent audio checker -----------------------------------------------------------------------


def test_checker_accepts_replies_split_at_arbitrary_byte_boundaries():
    data = frames(0, range(5)) + frames(1, range(3))
    checker = AgentAudioChecker()
    got = []
    pieces = [data[0:7], data[7:333], data[333:500], data[500:1000], data[1000:]]
    for piece in pieces:
        got += checker.feed(piece)
    assert [(i.stream_no, i.seq) for i in got] == [(0, s) for s in range(5)] + [(1, s) for s in range(3)]
    assert checker.finish() and checker.reasons == []


def test_checker_flags_a_missing_frame_within_a_reply():
    checker = AgentAudioChecker()
    checker.feed(frames(1, range(3)) + frames(1, range(4, 6)))
    assert not checker.finish()
    assert "expected 3" in checker.reasons[0]


def test_checker_flags_replies_going_backwards_and_non_agent_frames():
    checker = AgentAudioChecker()
    checker.feed(frames(2, range(2)) + frames(1, range(2)) + SILENCE + caller_frame(1, 0, 1))
    assert not checker.finish()
    assert checker.errors == 3


def test_checker_allows_a_reply_cut_by_clear_but_not_its_stale_tail():
    ok = AgentAudioChecker()
    ok.feed(frames(1, range(3)) + agent_frame(1, 3, 1)[:50])  # cut mid-frame by the clear
    ok.clear()
    ok.feed(frames(2, range(4)))
    assert ok.finish(), ok.reasons
    stale = AgentAudioChecker()
    stale.feed(frames(1, range(3)))
    stale.clear()
    stale.feed(frames(1, range(3, 5)))
    assert not stale.finish()
    assert "after its clear" in stale.reasons[0]


def test_checker_flags_trailing_partial_frame():
    checker = AgentAudioChecker()
    checker.feed(frames(0, range(2))[:-1])
    assert not checker.finish()


# --- Twilio's view of server messages ----------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b'{"event":"clear","streamSid":"' + SID.encode() + b'"}', MALFORMED),
        ("not json", INVALID),
        ('{"event":"hangup","streamSid":"' + SID + '"}', INVALID),
        ('{"event":"clear","streamSid":"MZ1"}', INVALID),
        ('{"event":"clear","streamSid":"' + SID + '","x":1}', INVALID),
        ('{"event":"media","streamSid":"' + SID + '","media":{"payload":"AA==","track":"outbound"}}', INVALID),
        ('{"event":"media","streamSid":"' + SID + '","media":{"payload":"not base64!"}}', INVALID),
        ('{"event":"mark","streamSid":"' + SID + '","mark":{}}', INVALID),
        ('{"event":"mark","streamSid":"' + SID + '"}', INVALID),
    ],
)
def test_invalid_server_messages_get_twilio_warning_codes(frame, code):
    with pytest.raises(ProtocolWarning) as info:
        parse_server(frame, SID)
    assert info.value.code == code


def test_valid_server_messages_parse():
    payload = base64.b64encode(SILENCE).decode()
    assert parse_server(orjson.dumps({"event": "media", "streamSid": SID, "media": {"payload": payload}}).decode(), SID) == (
        "media",
        SILENCE,
    )
    assert parse_server('{"event":"mark","streamSid":"' + SID + '","mark":{"name":"r1"}}', SID) == ("mark", "r1")
    assert parse_server('{"event":"clear","streamSid":"' + SID + '"}', SID) == ("clear", None)


# --- conversation script ----------------------------------------------------------------------


def drive(conv: Conversation, start: int, end: int) -> list[int | None]:
    return [conv.tick(t) for t in range(start, end, 20_000)]


def test_script_speaks_after_lead_waits_for_reply_to_finish_then_hangs_up():
    pb = Playback()
    conv = Conversation(CallScript(turns=1, utterance_ms=100, lead_ms=100, reply_quiet_ms=100), pb, 0)
    out = drive(conv, 0, 200_000)
    assert out[:5] == [SILENT] * 5 and out[5:10] == [1] * 5 and conv.phase is Phase.WAIT
    # utterance ended at 180 ms; the reply's first frame arrives at 300 ms and plays 200 ms
    pb.push_audio(1600, 300_000)
    conv.on_new_reply(300_000, 300_000)
    conv.on_audio(300_000, 300_000)
    assert conv.turn_latencies_us == [120_000]
    assert drive(conv, 300_000, 600_000) == [SILENT] * 15  # plays until 500 ms, quiet until 600 ms
    assert conv.tick(600_000) is None and conv.phase is Phase.DONE


def test_script_fails_the_turn_when_no_reply_arrives():
    conv = Conversation(CallScript(turns=2, utterance_ms=20, lead_ms=0, reply_timeout_ms=100), Playback(), 0)
    out = drive(conv, 0, 200_000)
    assert out[0] == 1 and out[-1] is None
    assert conv.phase is Phase.FAILED and "turn 1" in (conv.failure or "")


def test_barge_in_starts_next_turn_while_reply_plays_and_times_the_clear():
    pb = Playback()
    script = CallScript(turns=2, utterance_ms=40, lead_ms=0, barge_in=True, barge_in_after_ms=100)
    conv = Conversation(script, pb, 0)
    assert drive(conv, 0, 40_000) == [1, 1]
    pb.push_audio(8000, 100_000)  # one second of reply
    conv.on_new_reply(100_000, 100_000)
    conv.on_audio(100_000, 100_000)
    assert conv.tick(180_000) == SILENT
    assert conv.tick(200_000) == 2 and conv.utterance == 2
    conv.on_clear(260_000)
    assert conv.barge_in_latencies_us == [60_000]


# --- percentiles --------------------------------------------------------------------------------


def test_percentiles_are_nearest_rank_in_ms():
    stats = percentiles([i * 1000 for i in range(1, 101)])
    assert stats == {"count": 100, "p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert percentiles([])["p50"] is None


# --- a real call against a fake edge ------------------------------------------------------------


class FakeEdge:
    """Plays agent audio, marks and a clear at a simulated call, and records what comes back."""

    def __init__(self) -> None:
        self.received: list[tuple[float, dict]] = []
        self.checks: dict[str, float] = {}
        self._new = asyncio.Event()
        self._cursor = 0
        self.done = asyncio.Event()

    async def next_message(self, pred, timeout: float = 5.0) -> tuple[float, dict]:
        # Scans forward from the previous match: expectations are met in order.
        async def scan():
            while True:
                while self._cursor < len(self.received):
                    t, msg = self.received[self._cursor]
                    self._cursor += 1
                    if pred(msg):
                        return t, msg
                self._new.clear()
                await self._new.wait()

        return await asyncio.wait_for(scan(), timeout)

    async def handler(self, ws: ServerConnection) -> None:
        reader = asyncio.create_task(self._read(ws))
        try:
            await self._script(ws)
        finally:
            await asyncio.wait_for(reader, 5)
            self.done.set()

    async def _read(self, ws: ServerConnection) -> None:
        async for frame in ws:
            self.received.append((time.monotonic(), orjson.loads(frame)))
            self._new.set()

    async def _script(self, ws: ServerConnection) -> None:
        _, start = await self.next_message(lambda m: m["event"] == "start")
        sid = start["streamSid"]

        def media(audio: bytes) -> str:
            return orjson.dumps({"event": "media", "streamSid": sid, "media": {"payload": base64.b64encode(audio).decode()}}).decode()

        def mark(name: str) -> str:
            return orjson.dumps({"event": "mark", "streamSid": sid, "mark": {"name": name}}).decode()

        def echo_of(name: str):
            return lambda m: m["event"] == "mark" and m["mark"]["name"] == name

        now_us = time.time_ns() // 1000
        # a 200 ms greeting in two odd-sized payloads, then a mark
        greeting = frames(0, range(10), now_us)
        sent = time.monotonic()
        await ws.send(media(greeting[:700]))
        await ws.send(media(greeting[700:]))
        await ws.send(mark("greeting"))
        t, _ = await self.next_message(echo_of("greeting"))
        self.checks["greeting_echo_s"] = t - sent
        sent = time.monotonic()
        await ws.send(mark("idle"))
        t, _ = await self.next_message(echo_of("idle"))
        self.checks["idle_echo_s"] = t - sent
        # one second of reply 1, two marks, then cut it with a clear
        await ws.send(media(frames(1, range(50), time.time_ns() // 1000)))
        await ws.send(mark("r1-a"))
        await ws.send(mark("r1-b"))
        await asyncio.sleep(0.1)  # let some of it play: the clear must cut audio mid-reply
        sent = time.monotonic()
        await ws.send('{"event":"clear","streamSid":"' + sid + '"}')
        t_a, _ = await self.next_message(echo_of("r1-a"))
        t_b, _ = await self.next_message(echo_of("r1-b"))
        self.checks["clear_echo_s"] = max(t_a, t_b) - sent
        # things Twilio would flag: 31950 once, 31951 four times
        await ws.send(b"binary")
        await ws.send("not json")
        await ws.send('{"event":"hangup","streamSid":"' + sid + '"}')
        await ws.send('{"event":"clear","streamSid":"MZ0"}')
        await ws.send(orjson.dumps({"event": "clear", "streamSid": sid, "extra": 1}).decode())

        def is_caller_speech(m: dict) -> bool:
            if m["event"] != "media":
                return False
            info = parse_frame(base64.b64decode(m["media"]["payload"]))
            return info is not None and info.magic == CALLER_MAGIC

        await self.next_message(is_caller_speech)
        await self.next_message(lambda m: m["event"] == "media" and not is_caller_speech(m))
        await ws.send(media(frames(2, range(5), time.time_ns() // 1000)))
        await self.next_message(lambda m: m["event"] == "stop")


async def test_simulated_call_echoes_marks_after_playback_and_on_clear_and_counts_violations():
    edge = FakeEdge()
    async with serve(edge.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        script = CallScript(turns=1, utterance_ms=200, lead_ms=1200, reply_quiet_ms=100, reply_timeout_ms=3000)
        ident = CallIdentity.random({"profile": "test"})
        config = SimConfig(url=f"ws://127.0.0.1:{port}/twilio", script=script, connect_timeout_s=3)
        result = await asyncio.wait_for(run_call(config, ident), 10)
        await asyncio.wait_for(edge.done.wait(), 5)

    assert edge.checks["greeting_echo_s"] >= 0.195  # 200 ms of audio had to play first
    assert edge.checks["greeting_echo_s"] < 0.5
    assert edge.checks["idle_echo_s"] < 0.1
    assert edge.checks["clear_echo_s"] < 0.1  # not after the rest of the second of audio
    assert dict(result.warnings) == {MALFORMED: 1, INVALID: 4}
    assert result.failure == "protocol warnings 31950,31951"
    assert result.marks_echoed == 4 and result.clears == 1
    assert result.byte_exact_out is True, result.out_reasons
    assert result.agent_frames == 65
    assert len(result.turn_latencies_us) == 1 and 0 < result.turn_latencies_us[0] < 1_000_000
    assert len(result.transit_us) == 65

    connected, *msgs = [m for _, m in edge.received]
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = msgs[0]
    assert start["start"]["customParameters"] == {"profile": "test"}
    assert start["start"]["callSid"] == ident.call_sid and start["sequenceNumber"] == "1"
    assert [int(m["sequenceNumber"]) for m in msgs] == list(range(1, len(msgs) + 1))
    media = [m["media"] for m in msgs if m["event"] == "media"]
    assert [int(m["chunk"]) for m in media] == list(range(1, len(media) + 1))
    assert [int(m["timestamp"]) for m in media] == [20 * i for i in range(len(media))]
    assert all(len(base64.b64decode(m["payload"])) == FRAME_BYTES for m in media)
    assert msgs[-1] == {
        "event": "stop",
        "sequenceNumber": str(len(msgs)),
        "streamSid": ident.stream_sid,
        "stop": {"accountSid": ident.account_sid, "callSid": ident.call_sid},
    }
    assert result.sent_audio_bytes == FRAME_BYTES * len(media)


# --- direct relay + emulator + simulator --------------------------------------------------------

HAVE_EMULATOR = importlib.util.find_spec("switchboard_emulator.server") is not None


@pytest.mark.skipif(not HAVE_EMULATOR, reason="switchboard_emulator not available")
async def test_two_calls_through_the_direct_relay_complete_byte_exact_both_ways():
    from switchboard_callsim.direct_relay import RelayConfig, bound_port, relay_server
    from switchboard_callsim.load import run_load
    from switchboard_emulator.config import EmulatorConfig
    from switchboard_emulator.server import EmulatorServer

    emu_config = EmulatorConfig(port=0, eou_ms=300, think_ms=50, reply_ms=400, log_level="WARNING")
    async with EmulatorServer(emu_config) as emulator:
        relay_config = RelayConfig(port=0, deepgram_url=emulator.url, deepgram_api_key="test-key")
        async with relay_server(relay_config) as relay:
            script = CallScript(turns=1, utterance_ms=400, lead_ms=300, reply_timeout_ms=4000, reply_quiet_ms=100)
            config = SimConfig(
                url=f"ws://127.0.0.1:{bound_port(relay)}/twilio",
                calls=2,
                script=script,
                emulator_url=emulator.http_url,
                connect_timeout_s=3,
            )
            report = await asyncio.wait_for(run_load(config), 15)

    data = report.to_dict()
    assert data["calls"] == {"started": 2, "completed": 2, "failed": 0, "failure_reasons": {}}, data["calls_detail"]
    assert data["byte_exact_out"] == {"true": 2, "false": 0, "none": 0}, data["calls_detail"]
    assert data["byte_exact_in"] == {"true": 2, "false": 0, "none": 0}, data["calls_detail"]
    assert data["turn_latency_ms"]["count"] == 2
    assert all(r.agent_frames == 20 for r in report.results)  # 400 ms reply, fully played
