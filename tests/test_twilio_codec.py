"""Twilio Media Streams codec: recorded frames in, typed events or clear errors out."""

import base64

import orjson
import pytest

from switchboard import twilio

SID = "MZ" + "a" * 32
START = {
    "event": "start", "sequenceNumber": "1", "streamSid": SID,
    "start": {
        "accountSid": "AC" + "b" * 32, "streamSid": SID, "callSid": "CA" + "c" * 32, "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"profile": "sales", "bind": "tok"},
    },
}


def test_start_carries_ids_format_and_custom_parameters():
    event = twilio.parse(orjson.dumps(START))
    assert isinstance(event, twilio.Start)
    assert (event.stream_sid, event.call_sid) == (SID, "CA" + "c" * 32)
    assert (event.encoding, event.sample_rate, event.channels) == twilio.MEDIA_FORMAT_SUPPORTED
    assert event.custom_parameters == {"profile": "sales", "bind": "tok"}


def test_media_payload_is_decoded_to_raw_bytes_once():
    audio = bytes(range(160))
    frame = {"event": "media", "sequenceNumber": "2", "streamSid": SID,
             "media": {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": base64.b64encode(audio).decode()}}
    event = twilio.parse(orjson.dumps(frame))
    assert isinstance(event, twilio.Media) and event.payload == audio and event.chunk == "1"


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"[1,2]", "not_an_object"),
        (b'{"event":"dance"}', "unknown_event"),
        (b'{"event":"media","streamSid":"MZ1"}', "missing_field"),
        (b'{"event":"media","streamSid":"MZ1","media":{"payload":"***"}}', "invalid_base64"),
        (b'{"event":"media","streamSid":"MZ1","media":{"payload":7}}', "invalid_base64"),
        (b'{"event":"start","start":{"callSid":"CA1"}}', "missing_field"),
        (b'{"event":"mark","streamSid":"MZ1","mark":"x"}', "missing_field"),
    ],
)
def test_malformed_frames_raise_a_protocol_error_with_a_reason(frame, reason):
    with pytest.raises(twilio.TwilioProtocolError) as caught:
        twilio.parse(frame)
    assert caught.value.reason == reason


def test_mark_dtmf_stop_and_connected_parse():
    assert twilio.parse(b'{"event":"connected","protocol":"Call","version":"1.0.0"}') == twilio.Connected("Call", "1.0.0")
    assert twilio.parse(orjson.dumps({"event": "mark", "streamSid": SID, "mark": {"name": "r1"}})) == twilio.Mark(SID, "r1")
    assert twilio.parse(orjson.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "5"}})) == twilio.Dtmf(SID, "5")
    stop = twilio.parse(orjson.dumps({"event": "stop", "streamSid": SID, "stop": {"callSid": "CA1"}}))
    assert stop == twilio.Stop(SID, "CA1")


def test_outbound_messages_are_json_text_in_twilio_shape():
    audio = b"\x01\x02\xff" * 100
    media = orjson.loads(twilio.media_message(SID, audio))
    assert media == {"event": "media", "streamSid": SID, "media": {"payload": base64.b64encode(audio).decode()}}
    assert orjson.loads(twilio.clear_message(SID)) == {"event": "clear", "streamSid": SID}
    assert orjson.loads(twilio.mark_message(SID, 'a"b')) == {"event": "mark", "streamSid": SID, "mark": {"name": 'a"b'}}


# --- whatever a peer sends, the codec answers with an event or a protocol error ------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
_fields = st.sampled_from(["event", "streamSid", "start", "media", "mark", "dtmf", "stop", "callSid", "tracks",
                           "mediaFormat", "customParameters", "sampleRate", "channels", "encoding", "payload", "name",
                           "digit", "accountSid"])
_frames = st.recursive(
    _json,
    lambda children: st.dictionaries(_fields, children, max_size=6),
    max_leaves=16,
)


@settings(max_examples=400, deadline=None)
@given(frame=_frames, event=st.sampled_from(["start", "media", "mark", "dtmf", "stop", "connected", "other"]))
def test_any_json_is_an_event_or_a_protocol_error(frame, event):
    if isinstance(frame, dict):
        frame = {**frame, "event": event}
    try:
        parsed = twilio.parse(orjson.dumps(frame))
    except twilio.TwilioProtocolError as exc:
        assert exc.reason in twilio.Reason.__args__  # type: ignore[attr-defined]
    else:
        assert isinstance(parsed, (twilio.Connected, twilio.Start, twilio.Media, twilio.Mark, twilio.Dtmf, twilio.Stop))


@pytest.mark.parametrize("start", [
    {"tracks": 5}, {"tracks": ["inbound", 3]}, {"mediaFormat": {"sampleRate": "²"}}, {"mediaFormat": {"channels": True}},
    {"mediaFormat": {"sampleRate": 10**12}}, {"mediaFormat": []}, {"customParameters": {"a": [1]}},
    {"customParameters": {"a": "x" * 2000}}, {"accountSid": {}},
])
def test_a_start_with_a_field_of_the_wrong_type_is_an_invalid_field(start):
    frame = {**START, "start": {**START["start"], **start}}
    with pytest.raises(twilio.TwilioProtocolError) as caught:
        twilio.parse(orjson.dumps(frame))
    assert caught.value.reason == "invalid_field"


def test_a_dtmf_digit_is_a_keypad_key():
    with pytest.raises(twilio.TwilioProtocolError):
        twilio.parse(orjson.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "12"}}))
