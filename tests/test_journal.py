"""The call journal without a running system: codec, redaction, bounds, WAV export, JSON lines, replay.

Pure unit tests except one bound check against the session's redis-server and the CLI run
as a subprocess on an exported file.
"""

from __future__ import annotations

import io
import subprocess
import warnings
import wave

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchboard import entries, journal, wav
from switchboard.agent_settings import AgentSettings, Journal
from switchboard.conversation import Conversation, ConversationConfig, Emit, ToCaller
from switchboard.entries import Entry, Kind
from switchboard.journal import JournalError, Recorder, Source, decode_journal, from_jsonl, to_jsonl
from switchboard_dev import procs
from switchboard_dev.testaudio import agent_frame, caller_frame
from switchboard_journal.replay import replay

ON = Journal(enabled=True, audio=True)
T0 = 1_700_000_000_000_000  # µs


def audio_fields(payload: bytes, t_us: int) -> dict[bytes, bytes]:
    return entries.audio(payload, t_us).fields()


# --- codec ---------------------------------------------------------------------------------------------


def test_every_kind_of_record_round_trips_through_the_stream_entry_codec_binary_safe():
    rec = Recorder(ON, clock=lambda: T0 + 5)
    every_byte = bytes(range(256))
    made = [
        rec.start("CA1", "MZ1", AgentSettings(), T0, session_id="abc123"),
        rec.caller_entry(audio_fields(every_byte, T0 - 7)),
        rec.caller_entry(Entry(Kind.CLEARED, b'["sb:abc123:1:0"]', T0 + 1).fields()),
        rec.agent_audio(every_byte, T0 + 2),
        rec.from_deepgram('{"type":"UserStartedSpeaking"}', T0 + 3),
        rec.to_deepgram('{"type":"KeepAlive"}', T0 + 4),
        rec.to_twilio(Entry(Kind.MARK, b"sb:abc123:1:0", T0 + 6)),
        rec.session_event(b'{"type":"barge_in","reply":1}', T0 + 8),
    ]
    # Through Redis' field-map shape and back.
    records = decode_journal([(b"1-%d" % i, e.fields()) for i, e in enumerate(made)])
    assert [r.source for r in records] == [Source.START, Source.CALLER, Source.CALLER, Source.AGENT_AUDIO,
                                           Source.FROM_DEEPGRAM, Source.TO_DEEPGRAM, Source.TO_TWILIO, Source.EVENT]
    assert all(e.kind is Kind.JOURNAL for e in made)
    assert records[1].entry == Entry(Kind.AUDIO, every_byte, T0 - 7) and records[1].t_us == T0 + 5
    assert records[2].entry.kind is Kind.CLEARED
    assert records[3].data == every_byte and records[3].t_us == T0 + 2
    assert records[4].text == '{"type":"UserStartedSpeaking"}'
    assert records[6].entry == Entry(Kind.MARK, b"sb:abc123:1:0", T0 + 6)
    assert records[0].json()["session_id"] == "abc123"
    assert [r.to_entry() for r in records] == made
    # Audio is stored raw: one source byte, kind, timestamp, then the bytes themselves.
    assert made[1].payload == b"ia" + (T0 - 7).to_bytes(8, "big") + every_byte


def test_nothing_is_recorded_when_disabled_and_audio_only_when_asked():
    off = Recorder(Journal(enabled=False, audio=True))
    assert off.caller_entry(audio_fields(b"\xff" * 160, T0)) is None
    assert off.from_deepgram("{}", T0) is None and off.to_deepgram("{}", T0) is None
    assert off.session_event(b"{}", T0) is None and off.start("CA", "MZ", AgentSettings(), T0) is None
    quiet = Recorder(Journal(enabled=True, audio=False))
    assert quiet.caller_entry(audio_fields(b"\xff" * 160, T0)) is None
    assert quiet.agent_audio(b"\xff" * 160, T0) is None
    assert quiet.caller_entry(entries.dtmf("5").fields()) is not None
    assert quiet.to_twilio(entries.clear()) is not None
    # Agent audio reaches the journal through agent_audio only, never twice via to_twilio.
    assert Recorder(ON).to_twilio(entries.audio(b"\xff", T0)) is None


def test_undecodable_entries_are_refused_or_skipped_as_asked():
    good = Recorder(ON).from_deepgram("{}", T0).fields()
    with pytest.raises(JournalError):
        decode_journal([good, {b"k": b"j", b"p": b"?x", b"t": b"1"}])
    with pytest.raises(JournalError):
        decode_journal([{b"k": b"a", b"p": b"x", b"t": b"1"}])  # an audio entry, not a journal one
    assert len(decode_journal([good, {b"k": b"j", b"p": b"?x", b"t": b"1"}], strict=False)) == 1


# --- redaction ----------------------------------------------------------------------------------------

SECRETS = ("sk-live-AAAA", "dg-key-BBBB", "Bearer CCCC", "aws-secret-DDDD", "aws-session-EEEE",
           "url-key-FFFF", "url-pass-GGGG", "hdr-HHHH")


def secret_settings() -> AgentSettings:
    return AgentSettings.model_validate({
        "listen": {"provider": {"type": "deepgram", "model": "nova-3", "keyterms": ["Switchboard"],
                                "api_key": "dg-key-BBBB"}},
        "think": {
            "provider": {"type": "aws_bedrock", "model": "claude", "credentials": {
                "type": "sts", "region": "us-east-1", "access_key_id": "AKIA0000",
                "secret_access_key": "aws-secret-DDDD", "session_token": "aws-session-EEEE"}},
            "prompt": "You sell cars.",
            "endpoint": {"url": "https://user:url-pass-GGGG@llm.example.com/v1/chat?key=url-key-FFFF&model=m",
                         "headers": {"Authorization": "Bearer CCCC", "x-custom": "hdr-HHHH"}},
        },
        "speak": {"provider": {"type": "open_ai", "model": "tts-1", "voice": "alloy"},
                  "endpoint": {"url": "https://api.openai.com/v1/audio/speech",
                               "headers": {"authorization": "sk-live-AAAA"}}},
        "journal": {"enabled": True, "audio": True},
    })


def test_a_settings_message_to_deepgram_never_stores_a_secret_but_keeps_everything_else():
    rec = Recorder(ON)
    settings = secret_settings()
    sent = orjson.dumps(settings.to_settings_message(tags=["callsid:CA1"])).decode()
    assert all(secret in sent for secret in SECRETS)  # the message really carried them
    stored = rec.to_deepgram(sent, T0).payload
    for secret in SECRETS:
        assert secret.encode() not in stored, secret
    agent = orjson.loads(stored[1:])["agent"]
    assert agent["think"]["prompt"] == "You sell cars."
    assert agent["listen"]["provider"] == {"type": "deepgram", "model": "nova-3", "keyterms": ["Switchboard"],
                                           "api_key": "***"}
    assert set(agent["think"]["provider"]["credentials"].values()) == {"***"}  # the shape stays, no value
    assert agent["think"]["endpoint"] == {
        "url": "https://***@llm.example.com/v1/chat?key=***&model=m",
        "headers": {"Authorization": "***", "x-custom": "***"},
    }
    assert agent["speak"]["provider"]["voice"] == "alloy"


def test_secrets_are_masked_in_live_updates_the_start_record_and_unparseable_text():
    rec = Recorder(ON)
    settings = secret_settings()
    speak = {"type": "UpdateSpeak", "speak": settings.speak.model_dump(mode="json", exclude_none=True)}
    think = {"type": "UpdateThink", "think": settings.to_settings_message()["agent"]["think"]}
    start = rec.start("CA1", "MZ1", settings, T0)
    for entry in (rec.to_deepgram(orjson.dumps(speak), T0), rec.to_deepgram(orjson.dumps(think).decode(), T0), start):
        for secret in SECRETS:
            assert secret.encode() not in entry.payload, secret
    # The recorded settings still validate, so a replay can run with them.
    assert AgentSettings.model_validate(orjson.loads(start.payload[1:])["settings"]).journal.audio
    broken = rec.to_deepgram('{"type":"Settings","api_key":"sk-live-AAAA"', T0)
    assert b"sk-live" not in broken.payload and orjson.loads(broken.payload[1:])["type"] == "Unparseable"
    assert rec.to_deepgram(b"\xff" * 160, T0) is None  # binary: caller audio, recorded as caller entries


# --- bounds -------------------------------------------------------------------------------------------


async def test_the_journal_stream_stays_near_its_cap(redis_url, key_prefix):
    import redis.asyncio as redis

    from switchboard.keys import Keys
    from switchboard.streams import StreamWriter

    rec = Recorder(Journal(enabled=True, audio=True, max_entries=100))
    client = redis.Redis.from_url(redis_url)
    writer = StreamWriter(client)
    task = __import__("asyncio").create_task(writer.run())
    key = Keys(key_prefix).journal("MZcap")
    try:
        for n in range(1000):
            writer.append(key, rec.agent_audio(b"\xff" * 160, T0 + n), maxlen=rec.maxlen)
        await writer.flushed()
        length = await client.xlen(key)
        assert rec.maxlen == 100 and 100 <= length < 200, length  # MAXLEN ~: approximate, never unbounded
        last = decode_journal(await client.xrevrange(key, count=1))[0]
        assert last.t_us == T0 + 999  # the oldest went, the newest stayed
    finally:
        task.cancel()
        await client.delete(key)
        await writer.close()
        await client.aclose()


# --- WAV ----------------------------------------------------------------------------------------------


def pcm_channels(data: bytes) -> tuple[bytes, bytes, wave._wave_params]:
    with wave.open(io.BytesIO(data)) as w:
        params = w.getparams()
        frames = w.readframes(w.getnframes())
    left = b"".join(frames[i:i + 2] for i in range(0, len(frames), 4))
    right = b"".join(frames[i + 2:i + 4] for i in range(0, len(frames), 4))
    return left, right, params


def test_mu_law_decodes_to_the_g711_values():
    table = wav.ULAW_TO_PCM16
    known = {0xFF: 0, 0x7F: 0, 0x00: -32124, 0x80: 32124, 0xF0: 120, 0x70: -120}
    assert {byte: table[byte] for byte in known} == known
    every = bytes(range(256))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop  # Python < 3.13: the reference implementation
        except ImportError:
            return
    assert wav.ulaw_to_pcm16(every) == audioop.ulaw2lin(every, 2)


def synthetic_call() -> list[journal.JournalRecord]:
    """Caller: 10 frames from 0 ms, then 1 s of nothing, then 5 frames. Agent: a 3-frame burst at
    100 ms (plays back to back), a reply at 700 ms cut by a clear at 760 ms."""
    rec = Recorder(ON)
    made: list[Entry] = []
    caller = [(n * 20_000, caller_frame(1, n, 0)) for n in range(10)]
    caller += [(1_200_000 + n * 20_000, caller_frame(2, n, 0)) for n in range(5)]
    for at, frame in caller:
        rec._clock = lambda at=at: T0 + at + 3000  # the worker sees it 3 ms after the edge
        made.append(rec.caller_entry(audio_fields(frame, T0 + at)))
    for n in range(3):
        made.append(rec.agent_audio(agent_frame(1, n, 0), T0 + 100_000 + n * 1000))
    for n in range(10):  # 200 ms of reply 2, received in 9 ms
        made.append(rec.agent_audio(agent_frame(2, n, 0), T0 + 700_000 + n * 1000))
    made.append(rec.to_twilio(Entry(Kind.CLEAR, b"", T0 + 760_000)))
    made.sort(key=lambda e: e.t_us)
    return decode_journal([e.fields() for e in made])


def test_wav_export_places_both_tracks_on_the_timeline_byte_exact():
    records = synthetic_call()
    left, right, params = pcm_channels(wav.render(records).wav())
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, 8000)
    # The caller's last frame ends at 1.2 s + 5 × 20 ms = 1.3 s.
    assert params.nframes == 8000 * 13 // 10

    def at(ms: int) -> int:
        return ms * 8 * 2  # bytes of 16-bit PCM

    first = b"".join(caller_frame(1, n, 0) for n in range(10))
    assert left[:at(200)] == wav.ulaw_to_pcm16(first)
    assert left[at(200):at(1200)] == b"\x00" * at(1000)  # the gap is silence
    assert left[at(1200):] == wav.ulaw_to_pcm16(b"".join(caller_frame(2, n, 0) for n in range(5)))
    # The burst plays back to back from its arrival; the second reply is cut by the clear at 760 ms.
    burst = b"".join(agent_frame(1, n, 0) for n in range(3))
    assert right[:at(100)] == b"\x00" * at(100)
    assert right[at(100):at(160)] == wav.ulaw_to_pcm16(burst)
    reply2 = b"".join(agent_frame(2, n, 0) for n in range(10))
    assert right[at(700):at(760)] == wav.ulaw_to_pcm16(reply2[:480])
    assert right[at(760):] == b"\x00" * (len(right) - at(760))


def test_a_journal_without_audio_has_no_wav():
    rec = Recorder(Journal(enabled=True, audio=False))
    assert rec.caller_entry(audio_fields(b"\xff" * 160, T0)) is None
    records = decode_journal([rec.from_deepgram('{"type":"Welcome"}', T0).fields(),
                              rec.to_twilio(entries.clear()).fields()])
    with pytest.raises(wav.NoAudio, match=r"journal\.audio off"):
        wav.render(records)


def in_pages(records: list[journal.JournalRecord], size: int):
    return lambda: (records[i:i + size] for i in range(0, len(records), size))


def test_the_streamed_wav_is_the_rendered_one_byte_for_byte_at_any_page_size():
    records = synthetic_call()
    rendered = wav.render(records).wav()
    for size in (1, 2, 3, 7, 1000):
        assert b"".join(wav.stream(in_pages(records, size))) == rendered, size
    # The header is the one the stdlib's wave module writes.
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(rendered[44:])
    assert buf.getvalue() == rendered


@st.composite
def journals(draw: st.DrawFn) -> list[journal.JournalRecord]:
    """Caller frames (stamped by the edge, sometimes late or out of order), agent bursts faster
    than real time, clears: what a worker records, in the order it recorded it."""
    rec = Recorder(ON)
    made: list[Entry] = []
    t = T0
    for _ in range(draw(st.integers(1, 60))):
        t += draw(st.integers(0, 400_000))
        what = draw(st.sampled_from(["caller", "caller", "agent", "clear"]))
        if what == "caller":
            skew = draw(st.integers(-50_000, 50_000))
            frame = bytes([draw(st.integers(0, 255))]) * draw(st.sampled_from([80, 160, 320]))
            rec._clock = lambda t=t: t
            made.append(rec.caller_entry(audio_fields(frame, max(1, t + skew))))
        elif what == "agent":
            for n in range(draw(st.integers(1, 8))):
                made.append(rec.agent_audio(bytes([draw(st.integers(0, 255))]) * 160, t + n * 1000))
        else:
            made.append(rec.to_twilio(Entry(Kind.CLEAR, b"", t)))
    return decode_journal([e.fields() for e in made])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=journals(), size=st.integers(1, 12))
def test_any_journal_streams_to_the_same_wav_it_renders_to(records, size):
    try:
        rendered = wav.render(records).wav()
    except wav.NoAudio:
        with pytest.raises(wav.NoAudio):
            b"".join(wav.stream(in_pages(records, size)))
        return
    assert b"".join(wav.stream(in_pages(records, size))) == rendered


def test_streaming_a_half_hour_call_holds_about_a_page_of_audio_not_the_call():
    """Half an hour of caller frames and a reply every 10 s (some cut by a clear), generated page by
    page and never held whole: the mixer keeps a few seconds of samples at a time."""
    page_entries = 1000
    rec = Recorder(ON)

    def pages():
        page: list[Entry] = []
        for n in range(1800 * 50):  # 20 ms frames
            t = T0 + n * 20_000
            rec._clock = lambda t=t: t + 2000
            page.append(rec.caller_entry(audio_fields(b"\x7f" * 160, t)))
            if n % 500 == 0:  # a 2 s reply, received in 0.1 s, cut by the caller every other time
                page += [rec.agent_audio(b"\x10" * 160, t + k * 1000) for k in range(100)]
                if n % 1000 == 0:
                    page.append(rec.to_twilio(Entry(Kind.CLEAR, b"", t + 500_000)))
            if len(page) >= page_entries:
                yield decode_journal([e.fields() for e in page])
                page = []
        yield decode_journal([e.fields() for e in page])

    survey = wav.Survey()
    for records in pages():
        survey.feed(records)
    planner = wav.Planner(survey.start_us)
    for records in pages():
        planner.feed(records)
    mixer = wav.Mixer(planner.plan())
    size, held = len(mixer.header()), 0
    for records in pages():
        size += len(mixer.feed(records))
        held = max(held, len(mixer.caller.samples) + len(mixer.agent.samples))
    size += len(mixer.finish())
    assert mixer.plan.frames == 1800 * 8000
    assert size == 44 + 4 * mixer.plan.frames  # 58 MB of WAV
    assert held < 8000 * 10  # samples held at once: a few seconds of both tracks


# --- JSON lines --------------------------------------------------------------------------------------


def test_json_lines_round_trip_every_record_exactly():
    rec = Recorder(ON)
    records = synthetic_call() + decode_journal([
        rec.caller_entry(Entry(Kind.MARK, b"\xfe\xffnot utf-8", T0).fields()).fields(),
        rec.from_deepgram('{"type":"ConversationText","role":"user","content":"h\\u00e9"}', T0).fields(),
        rec.start("CA1", "MZ1", AgentSettings(), T0).fields(),
    ])
    lines = b"".join(to_jsonl(records, call_sid="CA1", stream_sid="MZ1"))
    header, back = from_jsonl(lines.splitlines())
    assert header["format"] == journal.FORMAT and header["call_sid"] == "CA1"
    assert back == records
    first_audio = orjson.loads(lines.splitlines()[1])
    assert first_audio["source"] == "caller" and first_audio["kind"] == "a" and "audio" in first_audio
    with pytest.raises(JournalError, match="unknown format"):
        from_jsonl([b'{"format": "switchboard-journal/99"}'])
    with pytest.raises(JournalError, match="line 2"):
        from_jsonl([lines.splitlines()[0], b'{"source": "nowhere", "t_us": 1}'])


# --- replay -------------------------------------------------------------------------------------------


def recorded_barge_in_call(tamper: bool = False) -> list[journal.JournalRecord]:
    """A journal as a worker would record it: a Conversation decides, its events are recorded."""
    rec = Recorder(ON)
    settings = AgentSettings()
    conv = Conversation(ConversationConfig.from_settings(settings), T0 / 1e6, "s1")
    out: list[Entry] = [rec.start("CA1", "MZ1", settings, T0, session_id="s1")]

    def apply(actions, t_us):
        for action in actions:
            if isinstance(action, Emit):
                data = dict(action.data)
                if tamper and action.type == "reply_heard":
                    data["heard_ms"] += 500
                out.append(rec.session_event(orjson.dumps({**data, "type": action.type, "ts": t_us / 1e6}), t_us))
            elif isinstance(action, ToCaller):
                out.append(rec.to_twilio(Entry(action.entry.kind, action.entry.payload, t_us)))

    def deepgram(t_ms, **msg):
        t = T0 + t_ms * 1000
        text = orjson.dumps(msg).decode()
        out.append(rec.from_deepgram(text, t))
        apply(conv.on_agent_message(orjson.loads(text), t / 1e6), t)

    def caller(t_ms, entry):
        t = T0 + t_ms * 1000
        rec._clock = lambda: t
        out.append(rec.caller_entry(entry.fields()))
        apply(conv.on_caller_entry(entry, t / 1e6), t)

    deepgram(10, type="Welcome", request_id="r")
    deepgram(300, type="ConversationText", role="assistant", content="Hello there, how can I help you today?")
    deepgram(310, type="AgentStartedSpeaking", total_latency=0.2)
    for n in range(50):  # one second of reply in a 50 ms burst
        t = T0 + (320 + n) * 1000
        out.append(rec.agent_audio(b"\x10" * 160, t))
        apply(conv.on_agent_audio(160, t / 1e6), t)
    deepgram(380, type="AgentAudioDone")
    caller(400, Entry(Kind.MARK, b"sb:s1:1:0", T0 + 400_000))  # Twilio started playing at 400 ms
    deepgram(800, type="UserStartedSpeaking")  # the caller talks over it after 400 ms
    caller(810, Entry(Kind.CLEARED, b'["sb:s1:1:3200", "sb:s1:1:6400", "sb:s1:1:8000:end"]', T0 + 795_000))
    deepgram(1500, type="ConversationText", role="user", content="Stop, I want a red car.")
    caller(1600, entries.stop("twilio_stop"))
    return decode_journal([e.fields() for e in out if e is not None])


def test_replay_reproduces_a_barge_in_and_what_the_caller_heard():
    result = replay(recorded_barge_in_call())
    assert result.ok and result.mismatches == [] and result.compared == result.matched >= 6, result.mismatches
    heard = next(e for e in result.replayed if e["type"] == "reply_heard")
    assert heard["interrupted"] and heard["heard_ms"] == 395 and heard["heard_text"].startswith("Hello")
    what = [line.what for line in result.timeline]
    assert any("BARGE-IN" in w for w in what) and any("stream stopped (twilio_stop)" in w for w in what)


def test_replay_reports_a_call_that_behaved_differently(tmp_path):
    result = replay(recorded_barge_in_call(tamper=True))
    assert not result.ok
    assert [(m.type, m.fields) for m in result.mismatches] == [("reply_heard", ("heard_ms",))]
    # The real command on an exported file: --check fails on the mismatch, passes on the true journal.
    for name, records, expected in (("bad", recorded_barge_in_call(tamper=True), 1),
                                    ("good", recorded_barge_in_call(), 0)):
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(b"".join(to_jsonl(records)))
        run = subprocess.run([*procs.console("switchboard-journal"), "replay", "--file", str(path), "--check"],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == expected, run.stdout + run.stderr
        assert ("MISMATCH" if expected else "MATCH") in run.stdout


def test_replay_of_a_trimmed_or_damaged_journal_says_what_it_could_not_use():
    records = recorded_barge_in_call()[1:]  # the cap took the start record
    broken = journal.JournalRecord(Source.FROM_DEEPGRAM, records[0].t_us, b"{not json")
    weird = journal.JournalRecord(Source.TO_DEEPGRAM, records[0].t_us, b"[1, 2")
    result = replay([broken, weird, *records])
    assert any("no start record" in note for note in result.notes)
    assert any("record 1 (to_deepgram) skipped" in note for note in result.notes)
    assert any(line.what.startswith("unparseable frame") for line in result.timeline)
    # The session id came from the recorded marks, so the barge-in is still reproduced.
    assert result.ok, result.mismatches
