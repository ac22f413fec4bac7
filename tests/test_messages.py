"""Cross-service messages: the control API's command models are what the worker parses."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from switchboard import messages
from switchboard.agent_settings import Speak


@pytest.mark.parametrize("command", [
    messages.Say(text="One moment please."),
    messages.Say(text="Now!", behavior="interrupt"),
    messages.InjectUser(text="I would like a test drive."),
    messages.Hangup(after_reply=True),
    messages.UpdatePrompt(prompt="You are terse."),
    messages.UpdateSpeak(speak=Speak.model_validate({"provider": {"type": "deepgram", "model": "aura-2-luna-en"}})),
])
def test_every_command_travels_in_an_envelope_and_comes_back_the_same(command):
    envelope = messages.Envelope(id="c1", expires_at=1_700_000_000.5, command=command)
    parsed = messages.parse_envelope(envelope.dumps())
    assert parsed == envelope and parsed.command.op == command.op


@pytest.mark.parametrize("raw", [
    {"id": "c1", "command": {"op": "dance"}},  # an op this worker does not know
    {"id": "c1", "command": {"op": "say"}},  # no text
    {"id": "c1", "command": {"op": "say", "text": ""}},
    {"id": "c1", "command": {"op": "say", "text": "hi", "behavior": "shout"}},
    {"id": "c1", "command": {"op": "update_prompt", "prompt": "x", "extra": 1}},
    {"command": {"op": "hangup"}},  # no id
    [],
])
def test_anything_else_is_refused_by_the_same_models(raw):
    with pytest.raises(ValidationError):
        messages.parse_envelope(orjson.dumps(raw))


def test_record_fields_events_and_outcomes_are_the_strings_stored_in_redis():
    assert messages.CallField.HANGUP_REQUESTED == "hangup_requested" and f"{messages.Event.REPLY_HEARD}" == "reply_heard"
    assert messages.Outcome.NO_CAPACITY == "no_capacity" and messages.RecordState.ENDED.encode() == b"ended"
    assert {"outcome": "no_capacity"}.get(messages.CallField.OUTCOME) == messages.Outcome.NO_CAPACITY
