"""The edge's per-stream core, without sockets: Twilio events and agent entries in, actions out,
on a hand-moved clock."""

import pytest

from switchboard import twilio
from switchboard.conversation import mark_name
from switchboard_edge.stream_core import (
    HANGUP_MARK,
    MAX_OUTSTANDING_MARKS,
    AudioTransit,
    Clear,
    Close,
    Digit,
    HangupRequested,
    IllegalTransition,
    Invalid,
    MarkPlayed,
    Phase,
    Refused,
    ReplyTransit,
    SendAudio,
    SendMark,
    StreamCore,
)

SID, CALL = "MZ00000000000000000000000000000001", "CA00000000000000000000000000000001"
T0 = 1000.0  # the shell's monotonic clock, in seconds
WALL_US = 1_700_000_000_000_000


def core(**overrides) -> StreamCore:
    options = {"start_timeout_s": 5.0, "hangup_grace_s": 20.0, "max_protocol_errors": 50, **overrides}
    return StreamCore(now_s=T0, **options)


def start(stream_sid=SID, call_sid=CALL, encoding="audio/x-mulaw", sample_rate=8000) -> twilio.Start:
    return twilio.Start(stream_sid=stream_sid, call_sid=call_sid, account_sid="AC1", tracks=("inbound",),
                        encoding=encoding, sample_rate=sample_rate, channels=1, custom_parameters={})


def live(**overrides) -> StreamCore:
    stream = core(**overrides)
    assert stream.start_received(start()) == [] and stream.phase is Phase.CHECKING
    stream.go_live(SID)
    return stream


def audio(payload: bytes, sent_us: int = WALL_US) -> tuple[bytes, dict[bytes, bytes]]:
    return b"1-0", {b"k": b"a", b"p": payload, b"t": b"%d" % sent_us}


def mark(name: str) -> tuple[bytes, dict[bytes, bytes]]:
    return b"1-0", {b"k": b"m", b"p": name.encode()}


def clear(sent_us: int = WALL_US) -> tuple[bytes, dict[bytes, bytes]]:
    return b"1-0", {b"k": b"c", b"p": b"", b"t": b"%d" % sent_us}


def hangup(reason: str = "agent") -> tuple[bytes, dict[bytes, bytes]]:
    return b"1-0", {b"k": b"h", b"p": reason.encode()}


def echo(name: str) -> twilio.Mark:
    return twilio.Mark(stream_sid=SID, name=name)


def sent(actions) -> list:
    return [a for a in actions if not isinstance(a, AudioTransit)]


# --- lifecycle -------------------------------------------------------------------------------------
def test_a_socket_that_sends_no_start_is_closed_at_the_start_deadline_and_not_before():
    stream = core()
    assert stream.next_deadline() == T0 + 5.0
    assert stream.poll(T0 + 4.999) == []
    actions = stream.poll(T0 + 5.0)
    assert actions == [Refused("no_start"), Invalid("no_start", "no start within 5s", True), Close(1008, "no start")]
    assert stream.end_reason == "no_start" and stream.closing and stream.next_deadline() is None
    assert stream.poll(T0 + 60) == []  # closed once


def test_a_start_stops_the_start_deadline_and_a_second_start_is_an_error():
    stream = live()
    assert stream.next_deadline() is None and stream.poll(T0 + 60) == []
    assert stream.start_received(start()) == [Invalid("duplicate_start", "second start message ignored", True)]
    assert stream.phase is Phase.LIVE


@pytest.mark.parametrize(("bad", "code", "reason"), [
    ({"stream_sid": "MZ/../x"}, 1008, "invalid_sid"),
    ({"call_sid": ""}, 1008, "invalid_sid"),
    ({"encoding": "audio/l16", "sample_rate": 16000}, 1003, "unsupported_media_format"),
])
def test_a_start_of_the_wrong_shape_closes_the_stream_before_any_check(bad, code, reason):
    stream = core()
    actions = stream.start_received(start(**bad))
    assert [type(a) for a in actions] == [Invalid, Close] and actions[0].reason == reason and actions[1].code == code
    assert stream.closing and not stream.announced


def test_illegal_transitions_raise_naming_both_phases():
    stream = core()
    with pytest.raises(IllegalTransition, match="awaiting_start to live"):
        stream.go_live(SID)
    stream.close(1000, "bye")
    with pytest.raises(IllegalTransition, match="closing to live"):
        stream.go_live(SID)


def test_the_first_close_wins_with_its_end_reason():
    stream = live()
    assert stream.close(1011, "try again", "redis_unavailable") == [Close(1011, "try again")]
    assert stream.close(1000, "call ended", "other") == []
    assert stream.end_reason == "redis_unavailable"


def test_invalid_messages_are_loud_five_times_and_close_the_stream_past_the_budget():
    stream = live(max_protocol_errors=7)
    results = [stream.invalid("bad_json", "x") for _ in range(8)]
    assert [r[0].loud for r in results] == [True] * 5 + [False] * 3
    assert all(len(r) == 1 for r in results[:7]) and results[7][1] == Close(1008, "too many invalid messages")
    assert stream.end_reason == "too_many_protocol_errors"


def test_media_and_events_must_come_after_the_start_and_for_this_stream():
    stream = core()
    assert stream.check_media(SID)[0].reason == "media_before_start"
    assert stream.twilio_event(echo("m"))[0].reason == "event_before_start"
    assert stream.twilio_event(twilio.Connected(protocol="Call", version="1.0.0")) == []
    stream = live()
    assert stream.check_media(SID) == ()  # the hot path: nothing to do
    assert stream.check_media("MZother")[0].reason == "wrong_stream_sid"
    assert stream.twilio_event(twilio.Dtmf(stream_sid="MZother", digit="1"))[0].reason == "wrong_stream_sid"
    assert stream.twilio_event(twilio.Dtmf(stream_sid=SID, digit="#")) == [Digit("#")]


# --- marks and clears --------------------------------------------------------------------------------
def test_audio_between_marks_goes_out_in_order_and_each_entry_s_transit_is_measured():
    stream = live()
    actions = stream.agent_entries([audio(b"a", WALL_US - 3000), audio(b"b"), mark("m1"), audio(b"c")], T0, WALL_US)
    assert sent(actions) == [SendAudio(b"ab"), SendMark("m1"), SendAudio(b"c")]
    assert [a.transit_us for a in actions if isinstance(a, AudioTransit)] == [3000, 0, 0]


def test_a_clear_flushes_the_marks_not_yet_echoed_and_the_worker_is_told_which():
    stream = live()
    stream.agent_entries([mark("m1"), audio(b"x"), mark("m2"), audio(b"y"), mark("m3")], T0, WALL_US)
    assert stream.twilio_event(echo("m1")) == [MarkPlayed("m1")]  # played: no longer outstanding
    actions = stream.agent_entries([audio(b"z"), clear(WALL_US - 40_000)], T0, WALL_US)
    # The batch's own audio before the clear is dropped with everything queued.
    assert sent(actions) == [Clear(("m2", "m3"), 40_000)]
    assert stream.agent_entries([clear()], T0, WALL_US) == [Clear((), 0)]  # nothing left to flush


def test_outstanding_marks_are_capped_oldest_first():
    stream = live()
    stream.agent_entries([mark(f"m{i}") for i in range(MAX_OUTSTANDING_MARKS + 10)], T0, WALL_US)
    (flush,) = stream.agent_entries([clear()], T0, WALL_US)
    assert len(flush.flushed_marks) == MAX_OUTSTANDING_MARKS and flush.flushed_marks[0] == "m10"


def test_the_transit_of_the_first_audio_after_a_reply_start_mark_is_reported_once():
    stream = live()
    reply_start = mark_name("s1", 3, 0)
    assert stream.agent_entries([mark(mark_name("s1", 2, 800))], T0, WALL_US)  # not a reply start
    actions = stream.agent_entries([mark(reply_start), audio(b"a", WALL_US - 12_000), audio(b"b", WALL_US - 5)],
                                   T0, WALL_US)
    assert [a for a in actions if isinstance(a, ReplyTransit)] == [ReplyTransit(reply_start, 12_000)]
    # A clear between the mark and its audio cancels the report: that reply never played.
    stream.agent_entries([mark(mark_name("s1", 4, 0)), clear()], T0, WALL_US)
    assert not [a for a in stream.agent_entries([audio(b"c")], T0, WALL_US) if isinstance(a, ReplyTransit)]


# --- hang-up ----------------------------------------------------------------------------------------
def test_a_hangup_sends_the_goodbye_mark_after_its_audio_and_closes_on_its_echo():
    stream = live()
    actions = stream.agent_entries([audio(b"bye"), hangup("agent_ended")], T0, WALL_US)
    assert sent(actions) == [SendAudio(b"bye"), HangupRequested("agent_ended"), SendMark(HANGUP_MARK)]
    assert stream.next_deadline() == T0 + 20.0
    assert stream.twilio_event(echo(HANGUP_MARK)) == [Close(1000, "call ended")]
    assert stream.next_deadline() is None and stream.end_reason == "twilio_closed"


def test_a_goodbye_that_is_never_echoed_closes_the_stream_after_the_grace_time():
    stream = live(hangup_grace_s=2.0)
    stream.agent_entries([hangup()], T0, WALL_US)
    stream.agent_entries([hangup()], T0 + 1.5, WALL_US)  # a second request does not move the deadline
    assert stream.next_deadline() == T0 + 2.0
    assert stream.poll(T0 + 1.99) == []
    assert stream.poll(T0 + 2.0) == [Close(1000, "call ended")]
    assert stream.poll(T0 + 3.0) == []
