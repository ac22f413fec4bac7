"""Transfers, the pure parts: what Twilio's callbacks mean, the TwiML of each leg, the whisper, and the
handoff waiter that keeps a transfer from cutting the agent's sentence (hand-moved clock)."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from switchboard.agent_settings import AgentSettings
from switchboard.conversation import Conversation, ConversationConfig, Played, mark_name
from switchboard.entries import Entry, Kind
from switchboard.transfers import (
    State,
    Transfer,
    cold_twiml,
    hold_twiml,
    on_conference_event,
    on_dial_action,
    on_target_status,
    target_twiml,
    wait_twiml,
    whisper,
)


def transfer(state: State, mode: str = "warm", **values) -> Transfer:
    return Transfer(id="0123456789ab", call_sid="CAcaller", stream_sid="MZold", mode=mode, target="+14155550177",
                    by="agent", state=state, **values)


# --- what Twilio's callbacks mean ---------------------------------------------------------------------------
def test_a_warm_target_answering_then_joining_connects_the_caller():
    t = transfer(State.HOLDING)
    assert on_target_status(t, "ringing") == (None, False)
    assert on_target_status(t, "in-progress") == (State.ANSWERED, False)
    t.state = State.ANSWERED
    assert on_conference_event(t, "participant-join", "CAtarget") == (State.CONNECTED, False)
    assert on_conference_event(t, "participant-join", "CAcaller") == (None, False)  # the caller's own seat
    t.state = State.CONNECTED
    assert on_target_status(t, "completed") == (State.COMPLETED, False)


def test_a_warm_target_that_does_not_answer_sends_the_caller_back_now():
    for status in ("busy", "no-answer", "failed", "canceled"):
        assert on_target_status(transfer(State.HOLDING), status) == (State.NO_ANSWER, True), status
    # answered, but hung up during the whisper, before joining: nobody took the call
    assert on_target_status(transfer(State.ANSWERED), "completed") == (State.NO_ANSWER, True)


def test_a_cold_target_that_does_not_answer_comes_back_through_the_dial_action():
    t = transfer(State.DIALING, mode="cold")
    assert on_target_status(t, "no-answer") == (State.NO_ANSWER, False)  # <Dial>'s action brings them back
    assert on_target_status(t, "in-progress") == (State.CONNECTED, False)
    assert on_dial_action(t, "no-answer", bridged=False) == State.NO_ANSWER
    assert on_dial_action(t, "completed", bridged=True) == State.COMPLETED


def test_the_caller_hanging_up_on_hold_abandons_the_transfer_and_cancels_the_target():
    assert on_conference_event(transfer(State.HOLDING), "participant-leave", "CAcaller") == (State.ABANDONED, True)
    # after a no answer, the caller leaves the room on our own redirect: nothing to decide
    assert on_conference_event(transfer(State.NO_ANSWER), "participant-leave", "CAcaller") == (None, False)


def test_late_or_repeated_callbacks_change_nothing():
    for state in (State.COMPLETED, State.RETURNED, State.ABANDONED, State.FAILED):
        for status in ("in-progress", "completed", "no-answer"):
            assert on_target_status(transfer(state), status) == (None, False)


def test_the_record_round_trips_through_redis_fields():
    t = transfer(State.HOLDING, ring_timeout_s=7, created_at=1.5, summary="Call from Alice.")
    again = Transfer.from_fields({k.encode(): v.encode() for k, v in t.to_fields().items()})
    assert again == t and again.ring_timeout_s == 7 and again.created_at == 1.5
    assert Transfer.from_fields({b"id": b""}) is None


# --- TwiML ------------------------------------------------------------------------------------------------
def test_cold_twiml_dials_the_target_with_a_status_callback_and_an_action():
    doc = ET.fromstring(cold_twiml("+14155550177", timeout_s=15, action_url="https://c/dialed?t=1",
                                   status_url="https://c/status?t=1"))
    dial = doc.find("Dial")
    assert dial.get("timeout") == "15" and dial.get("action") == "https://c/dialed?t=1"
    number = dial.find("Number")
    assert number.text == "+14155550177" and number.get("statusCallbackEvent") == "answered completed"
    assert ET.fromstring(cold_twiml("sip:desk@example.com", timeout_s=15, action_url=None,
                                    status_url=None)).find("Dial/Sip").text == "sip:desk@example.com"


def test_warm_twiml_holds_the_caller_in_the_room_the_target_joins_after_the_whisper():
    t = transfer(State.HOLDING, summary='Call from Bob <"&">.', hold_message="Please hold.",
                 hold_music_url="https://example.com/hold.mp3")
    caller = ET.fromstring(hold_twiml(t, wait_url="https://c/hold", conference_url="https://c/conf",
                                      return_url="https://c/return"))
    room = caller.find("Dial/Conference")
    assert room.text == "sb-0123456789ab" and room.get("startConferenceOnEnter") == "false"
    assert room.get("endConferenceOnExit") == "true" and room.get("waitUrl") == "https://c/hold"
    assert caller.find("Redirect").text == "https://c/return"
    target = ET.fromstring(target_twiml(t))
    assert target.find("Say").text == 'Call from Bob <"&">.'  # escaped in the document, intact when read
    assert target.find("Dial/Conference").get("startConferenceOnEnter") == "true"
    assert target.find("Dial/Conference").text == room.text
    hold = ET.fromstring(wait_twiml(t))
    assert hold.find("Say").text == "Please hold." and hold.find("Play").text == "https://example.com/hold.mp3"


def test_the_whisper_says_who_calls_what_they_want_and_what_was_done():
    events = [
        {"type": "transcript", "role": "user", "content": "Hi, I ordered a blue car."},
        {"type": "transcript", "role": "assistant", "content": "Let me check."},
        {"type": "function_call", "name": "get_order", "outcome": "ok"},
        {"type": "dtmf_entry", "count": 4, "digits": "••••"},
        {"type": "transcript", "role": "user", "content": "It has not arrived, I want a refund."},
        {"type": "function_call", "name": "transfer_call", "outcome": "ok"},
    ]
    text = whisper(events, {"From": "+14155550100", "CallerName": "Alice Smith"})
    assert text.startswith("Call from Alice Smith (+14155550100).")
    assert "I want a refund" in text and "get order (done)" in text and "1 keypad entry" in text
    assert "transfer" not in text and "••••" not in text
    assert whisper(events, {}, reason="Refund for order 42").count("Refund for order 42") == 1
    assert whisper([], {}) == "Call from an unknown number. Connecting you now."
    assert len(whisper([{"type": "transcript", "role": "user", "content": "x " * 2000}], {})) <= 600


# --- the handoff: never cut the agent's sentence ------------------------------------------------------------
def conversation() -> Conversation:
    conv = Conversation(ConversationConfig.from_settings(AgentSettings()), 0.0, "s1")
    conv.on_agent_connected(0.0)
    return conv


def played(actions) -> list[Played]:
    return [a for a in actions if isinstance(a, Played)]


def test_an_agent_transfer_waits_for_the_goodbye_to_start_and_to_be_heard_to_its_end():
    conv = conversation()
    assert played(conv.when_played("t1", 0.0, expect_reply=True, reply_wait_s=4.0)) == []
    actions = conv.on_agent_message({"type": "ConversationText", "role": "assistant", "content": "Bye."}, 0.5)
    actions += conv.on_agent_message({"type": "AgentStartedSpeaking"}, 0.5)
    actions += conv.on_agent_audio(8000, 0.6) + conv.on_agent_message({"type": "AgentAudioDone"}, 0.7)
    assert played(actions) == []  # sent, but not played yet
    start = mark_name("s1", 1, 0)
    assert played(conv.on_caller_entry(Entry(Kind.MARK, start.encode(), 600_000), 0.8)) == []
    assert played(conv.tick(1.0)) == []
    end = next(a.entry.payload.decode() for a in actions if getattr(a, "entry", None) is not None
               and a.entry.kind is Kind.MARK and a.entry.payload.decode().endswith(":end"))
    assert played(conv.on_caller_entry(Entry(Kind.MARK, end.encode(), 1_600_000), 1.6)) == [Played("t1")]


def test_an_agent_that_says_nothing_more_lets_the_transfer_go_after_the_reply_wait():
    conv = conversation()
    conv.when_played("t1", 0.0, expect_reply=True, reply_wait_s=2.0)
    assert played(conv.tick(1.9)) == []
    assert played(conv.tick(2.0)) == [Played("t1")]


def test_a_transfer_over_rest_goes_at_once_when_nothing_is_playing_and_is_bounded_otherwise():
    conv = conversation()
    assert played(conv.when_played("now", 0.0, expect_reply=False, reply_wait_s=4.0)) == [Played("now")]
    conv.on_agent_message({"type": "AgentStartedSpeaking"}, 1.0)  # speaking, and it never ends (no marks)
    conv.when_played("later", 1.0, expect_reply=False, reply_wait_s=4.0)
    assert played(conv.tick(20.0)) == []
    assert played(conv.tick(31.0)) == [Played("later", forced=True)]
