"""Keypad input in the conversation core: entries, collect_digits, masking (pure, a hand-moved clock)."""

from __future__ import annotations

import orjson

from switchboard.agent_settings import AgentSettings
from switchboard.conversation import Conversation, ConversationConfig, DigitsCollected, Emit, Observe, ToAgent
from switchboard.entries import Entry, Kind


def conversation(**dtmf) -> Conversation:
    settings = AgentSettings.model_validate({"dtmf": dtmf})
    conv = Conversation(ConversationConfig.from_settings(settings), 0.0, "s1")
    conv.on_agent_connected(0.0)
    return conv


def press(conv: Conversation, keys: str, at: float, step: float = 0.3) -> list:
    actions = []
    for n, key in enumerate(keys):
        actions += conv.on_caller_entry(Entry(Kind.DTMF, key.encode(), 0), at + n * step)
    return actions


def injected(actions) -> list[str]:
    return [orjson.loads(a.message)["content"] for a in actions if isinstance(a, ToAgent)
            and orjson.loads(a.message)["type"] == "InjectUserMessage"]


def events(actions, kind: str) -> list[dict]:
    return [a.data for a in actions if isinstance(a, Emit) and a.type == kind]


def answers(actions) -> list[dict]:
    return [{"id": a.call_id, **orjson.loads(a.content)} for a in actions if isinstance(a, DigitsCollected)]


def test_keys_become_one_user_message_when_the_terminator_is_pressed():
    conv = conversation(enabled=True)
    actions = press(conv, "1234#", 1.0)
    assert injected(actions) == ["The caller pressed: 1234#"]
    assert [e["digit"] for e in events(actions, "dtmf")] == list("1234#")
    (entry,) = events(actions, "dtmf_entry")
    assert entry == {"digits": "1234#", "count": 4, "ended_by": "terminator", "to": "agent"}
    assert Observe("dtmf", "terminator") in actions


def test_an_entry_without_terminator_ends_after_the_inter_digit_timeout_and_not_before():
    conv = conversation(enabled=True, inter_digit_timeout_s=2.0, message="Keys: {{digits}} ({{count}})")
    actions = press(conv, "42", 1.0, step=1.5)  # the second key 1.5 s after the first: same entry
    assert injected(actions) == [] and injected(conv.tick(4.4)) == []
    assert injected(conv.tick(4.5)) == ["Keys: 42 (2)"]
    assert conv.tick(10.0) == [] or injected(conv.tick(10.0)) == []


def test_max_digits_ends_an_entry_and_the_next_key_starts_another():
    conv = conversation(enabled=True, max_digits=3, terminator="")
    actions = press(conv, "12345", 0.0)
    assert injected(actions) == ["The caller pressed: 123"]
    assert injected(conv.tick(10.0)) == ["The caller pressed: 45"]


def test_keys_are_only_recorded_when_nobody_listens():
    conv = conversation()  # dtmf.enabled off, no collect_digits pending: as before this feature
    actions = press(conv, "1#", 0.0) + conv.tick(10.0)
    assert [e["digit"] for e in events(actions, "dtmf")] == ["1", "#"]
    assert injected(actions) == [] and events(actions, "dtmf_entry") == []


def test_collect_digits_is_answered_with_the_entry_and_not_told_to_the_agent_as_speech():
    conv = conversation(enabled=True)
    assert conv.collect_digits("fc-1", {"max_digits": 4}, 1.0) == []
    actions = press(conv, "9876", 2.0)
    assert answers(actions) == [{"id": "fc-1", "digits": "9876", "count": 4, "ended_by": "max_digits"}]
    assert injected(actions) == []
    assert events(actions, "dtmf_entry")[0]["to"] == "collect_digits"


def test_collect_digits_works_with_dtmf_off_and_takes_keys_typed_ahead():
    conv = conversation(enabled=False)
    press(conv, "12", 0.0)  # not listened to: recorded only
    conv.collect_digits("fc-1", {"terminator": "*"}, 1.0)
    actions = press(conv, "55*", 1.5)
    assert answers(actions) == [{"id": "fc-1", "digits": "55", "count": 2, "ended_by": "terminator"}]


def test_collect_digits_times_out_with_an_empty_answer():
    conv = conversation()
    conv.collect_digits("fc-1", {"timeout_s": 3}, 0.0)
    assert answers(conv.tick(2.9)) == []
    actions = conv.tick(3.0)
    assert answers(actions) == [{"id": "fc-1", "digits": "", "count": 0, "timed_out": True}]
    assert events(actions, "dtmf_entry")[0]["ended_by"] == "no_input"


def test_a_pending_request_is_answered_when_the_agent_session_ends():
    conv = conversation()
    conv.collect_digits("fc-1", {}, 0.0)
    actions = conv.on_agent_closed(1.0)
    assert answers(actions) == [{"id": "fc-1", "error": "the agent session ended"}]


def test_masked_keys_never_leave_the_core_in_clear_but_reach_a_webhook_through_their_reference():
    conv = conversation(enabled=True, mask=True)
    actions = press(conv, "4111#", 0.0)
    conv.collect_digits("fc-9", {}, 5.0)
    actions += press(conv, "1234#", 6.0)
    text = b"".join(orjson.dumps(a.data) if isinstance(a, Emit) else
                    (a.message.encode() if isinstance(a, ToAgent) else a.content.encode()) if
                    isinstance(a, (ToAgent, DigitsCollected)) else b"" for a in actions).decode()
    assert "4111" not in text and "1234" not in text and "1" not in text.replace("dtmf-1", "")
    assert injected(actions) == ["The caller pressed: ••••#"]
    (answer,) = answers(actions)
    assert answer["digits"] == "••••" and answer["masked"] is True and answer["ref"] == "dtmf-2"
    assert conv.masks_dtmf
    assert conv.reveal_digits({"pin": "dtmf-2", "card": ["dtmf-1"], "other": "dtmf-3", "n": 4}) == \
        {"pin": "1234", "card": ["4111"], "other": "dtmf-3", "n": 4}


def test_a_new_settings_block_applies_to_the_next_entry():
    conv = conversation()
    settings = AgentSettings.model_validate({"dtmf": {"enabled": True, "terminator": "*"}})
    conv.config = ConversationConfig.from_settings(settings)
    assert injected(press(conv, "7*", 0.0)) == ["The caller pressed: 7*"]
