"""Answering-machine detection on its own: the verdict table, and the conversation core holding the
greeting (and the caller's audio) until the verdict, with a clock moved by hand."""

from __future__ import annotations

import orjson
import pytest

from switchboard.agent_settings import AgentSettings
from switchboard.answering import Amd, Voicemail
from switchboard.conversation import Conversation, ConversationConfig, Emit, GiveUp, Hangup, Record, ToAgent
from switchboard.conversation.amd import AmdConfig, AmdGate, decide
from switchboard.messages import CallField, Event

CONFIG = AmdConfig(greeting="Hi, this is Ava from Example Motors.", voicemail_action="leave_message",
                   voicemail_message="Please call us back.", on_fax="hang_up", on_unknown="greet",
                   on_timeout="hang_up", verdict_timeout_s=10)


def conversation(connected: bool = True) -> Conversation:
    conv = Conversation(ConversationConfig.from_settings(AgentSettings()), 0.0, "s1")
    if connected:
        conv.on_agent_connected(0.0)
    return conv


def said(actions) -> list[str]:
    return [orjson.loads(a.message)["message"] for a in actions
            if isinstance(a, ToAgent) and orjson.loads(a.message)["type"] == "InjectAgentMessage"]


def decision(actions) -> dict:
    (event,) = [a.data for a in actions if isinstance(a, Emit) and a.type == Event.AMD_DECISION]
    return event


@pytest.mark.parametrize(("verdict", "action", "outcome"), [
    ("human", "greet", None),
    ("machine_end_beep", "leave_message", "voicemail"),
    ("machine_end_silence", "leave_message", "voicemail"),
    ("machine_end_other", "leave_message", "voicemail"),
    ("machine_start", "leave_message", "voicemail"),
    ("fax", "hang_up", "amd_fax"),
    ("unknown", "greet", None),
    ("timeout", "hang_up", "amd_timeout"),
    ("something_new", "greet", None),  # a verdict Twilio adds later is treated like unknown
])
def test_each_verdict_leads_to_the_configured_action_and_outcome(verdict, action, outcome):
    chosen = decide(verdict, CONFIG, waited_ms=1)
    assert (chosen.action, chosen.outcome) == (action, outcome)


def test_a_machine_with_hang_up_ends_as_voicemail_and_fax_can_be_treated_as_a_machine():
    config = AmdConfig(voicemail_action="hang_up", on_fax="voicemail")
    assert (decide("machine_end_beep", config, waited_ms=0).action, decide("fax", config, waited_ms=0).outcome) \
        == ("hang_up", "voicemail")


def test_the_gate_decides_once_and_holds_audio_until_a_person_is_greeted():
    gate = AmdGate(CONFIG, 0.0)
    assert gate.pending and gate.holding_audio
    assert gate.verdict("human", 2100, 2.5).waited_ms == 2500
    assert gate.verdict("machine_end_beep", 3000, 3.0) is None  # a repeated or late verdict changes nothing
    assert not gate.holding_audio


def test_the_greeting_waits_for_a_human_verdict_and_is_said_then():
    conv = conversation()
    assert conv.start_amd(CONFIG, 0.0) == []
    assert conv.holding_caller_audio
    assert conv.tick(5.0) == []  # quiet on purpose: no dead air, no greeting
    actions = conv.on_amd_verdict("human", 2300, 2.4)
    assert said(actions) == [CONFIG.greeting]
    assert decision(actions) == {"answered_by": "human", "behaviour": "greet", "action": "greet", "outcome": None,
                                 "waited_ms": 2400, "detection_ms": 2300, "withheld_bytes": 0}
    assert not conv.holding_caller_audio and conv.hangup_reason is None
    (record,) = [a for a in actions if isinstance(a, Record)]
    assert record.fields[CallField.AMD_ACTION] == "greet"


def test_a_machine_gets_the_message_then_a_hang_up_after_it_has_been_said_with_outcome_voicemail():
    conv = conversation()
    conv.start_amd(CONFIG, 0.0)
    conv.withheld_caller_audio(160 * 50)
    actions = conv.on_amd_verdict("machine_end_beep", 4100, 4.2)
    assert said(actions) == ["Please call us back."]
    assert decision(actions)["withheld_bytes"] == 8000
    assert [a.outcome for a in actions if isinstance(a, GiveUp)] == ["voicemail"]
    assert not any(isinstance(a, Hangup) for a in actions)  # not before the message
    assert conv.holding_caller_audio  # the agent never hears the machine
    conv.on_agent_message({"type": "AgentStartedSpeaking"}, 4.5)
    done = conv.on_agent_message({"type": "AgentAudioDone"}, 6.0)
    assert [a.reason for a in done if isinstance(a, Hangup)] == ["voicemail"]


def test_a_verdict_before_the_agent_session_is_up_is_said_when_it_connects():
    conv = conversation(connected=False)
    assert said(conv.start_amd(CONFIG, 0.0, verdict="human", detection_ms=900)) == []
    assert said(conv.on_agent_connected(1.0)) == [CONFIG.greeting]
    assert said(conv.on_agent_connected(2.0)) == []  # once


def test_no_verdict_in_time_is_the_configured_timeout_behaviour():
    conv = conversation()
    conv.start_amd(CONFIG, 0.0)
    assert conv.tick(9.5) == []
    actions = conv.tick(10.0)
    assert decision(actions)["answered_by"] == "timeout"
    assert [a.reason for a in actions if isinstance(a, Hangup)] == ["amd_timeout"]
    assert [a.outcome for a in actions if isinstance(a, GiveUp)] == ["amd_timeout"]


def test_a_takeover_remembers_the_old_sessions_decision_without_greeting_again():
    conv = conversation()
    assert conv.start_amd(CONFIG, 0.0, verdict="human", detection_ms=2000, decided=True) == []
    assert not conv.holding_caller_audio
    assert conv.on_amd_verdict("human", 2000, 1.0) == []


def test_a_call_without_detection_ignores_verdicts_and_hears_everything():
    conv = conversation()
    assert conv.on_amd_verdict("machine_end_beep", 100, 1.0) == []
    assert not conv.holding_caller_audio


def test_settings_blocks_build_the_config():
    config = AmdConfig.from_blocks(Amd(on_unknown="hang_up"), Voicemail(action="leave_message"),
                                   greeting="Hello", message="Call back")
    assert (config.greeting, config.voicemail_action, config.voicemail_message, config.on_unknown) \
        == ("Hello", "leave_message", "Call back", "hang_up")
