"""Deepgram Voice Agent v1 wire messages the emulator sends, and its deterministic "LLM".

Pure: builders return encoded JSON (bytes, sent as text frames); nothing here does I/O.
Messages without a body are encoded once, since they are sent on every turn of every session.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Final

import orjson

CLIENT_TYPES: Final = frozenset(
    {
        "Settings",
        "KeepAlive",
        "UpdatePrompt",
        "UpdateSpeak",
        "UpdateThink",
        "UpdateListen",
        "InjectUserMessage",
        "InjectAgentMessage",
        "FunctionCallResponse",
        "ForceEndTurn",
    }
)

SETTINGS_APPLIED: Final = b'{"type":"SettingsApplied"}'
USER_STARTED_SPEAKING: Final = b'{"type":"UserStartedSpeaking"}'
AGENT_AUDIO_DONE: Final = b'{"type":"AgentAudioDone"}'
# Update* message → (ack type, encoded ack)
ACKS: Final = {
    request: (ack, orjson.dumps({"type": ack}))
    for request, ack in (
        ("UpdatePrompt", "PromptUpdated"),
        ("UpdateSpeak", "SpeakUpdated"),
        ("UpdateThink", "ThinkUpdated"),
        ("UpdateListen", "ListenUpdated"),
    )
}


def welcome(request_id: str) -> bytes:
    return orjson.dumps({"type": "Welcome", "request_id": request_id})


def error(code: str, description: str) -> bytes:
    return orjson.dumps({"type": "Error", "code": code, "description": description})


def warning(code: str, description: str) -> bytes:
    return orjson.dumps({"type": "Warning", "code": code, "description": description})


def conversation_text(role: str, content: str) -> bytes:
    return orjson.dumps({"type": "ConversationText", "role": role, "content": content})


def history_text(role: str, content: str) -> bytes:
    return orjson.dumps({"type": "History", "role": role, "content": content})


def history_function_call(call_id: str, name: str, arguments: str, response: str, client_side: bool) -> bytes:
    call = {"id": call_id, "name": name, "client_side": client_side, "arguments": arguments, "response": response}
    return orjson.dumps({"type": "History", "function_calls": [call]})


def agent_thinking(content: str) -> bytes:
    return orjson.dumps({"type": "AgentThinking", "content": content})


def agent_started_speaking(total_s: float, tts_s: float, ttt_s: float) -> bytes:
    return orjson.dumps(
        {"type": "AgentStartedSpeaking", "total_latency": total_s, "tts_latency": tts_s, "ttt_latency": ttt_s}
    )


def latency_report(total_s: float, tts_s: float, ttt_s: float) -> bytes:
    return orjson.dumps({"type": "LatencyReport", "total_latency": total_s, "tts_latency": tts_s,
                         "ttt_token_latency": ttt_s, "ttt_text_latency": ttt_s})


def function_call_request(call_id: str, name: str, arguments: str, client_side: bool) -> bytes:
    fn = {"id": call_id, "name": name, "arguments": arguments, "client_side": client_side}
    return orjson.dumps({"type": "FunctionCallRequest", "functions": [fn]})


def function_call_response(call_id: str, name: str, content: str) -> bytes:
    return orjson.dumps({"type": "FunctionCallResponse", "id": call_id, "name": name, "content": content})


def injection_refused(message: str) -> bytes:
    return orjson.dumps({"type": "InjectionRefused", "message": message})


def new_request_id() -> str:
    return str(uuid.uuid4())


def new_call_id() -> str:
    return f"fc_{uuid.uuid4()}"


# --- The deterministic "LLM": replies and function calls are scripted so tests can predict them.


@dataclass(frozen=True, slots=True)
class PlannedCall:
    name: str
    arguments: str  # a JSON document, as Deepgram sends it


_DIRECTIVE = re.compile(r"^\s*emulator:\s*on turn (\d+) call (\S+)[ \t]*(.*?)\s*$", re.MULTILINE | re.IGNORECASE)
_INJECTED_CALL = re.compile(r"^\s*call (\S+)[ \t]*(.*?)\s*$", re.DOTALL)


def planned_call(prompt: str, turn: int, user_text: str | None) -> PlannedCall | None:
    """The function call due on this user turn: an injected `call <name> <json>` wins over the prompt."""
    if user_text is not None:
        match = _INJECTED_CALL.match(user_text)
        if match:
            return PlannedCall(match[1], _json_arguments(match[2]))
    if "emulator:" not in prompt:
        return None
    for match in _DIRECTIVE.finditer(prompt):
        if int(match[1]) == turn:
            return PlannedCall(match[2], _json_arguments(match[3]))
    return None


def _json_arguments(raw: str) -> str:
    if not raw:
        return "{}"
    try:
        return orjson.dumps(orjson.loads(raw)).decode()
    except orjson.JSONDecodeError:
        # Pass broken arguments through untouched: testing a client's handling of them is legitimate.
        return raw


def user_text(turn: int, speech_ms: int) -> str:
    return f"Caller utterance {turn} ({speech_ms} ms)"


def assistant_text(reply_no: int, turn: int, function_result: str | None = None) -> str:
    if function_result is None:
        return f"Agent reply {reply_no} to caller utterance {turn}."
    return f"Agent reply {reply_no} to caller utterance {turn}: the function returned {function_result}"


def thinking_text(turn: int) -> str:
    return f"Thinking about caller utterance {turn}."


def parse_client_message(text: str | bytes) -> dict[str, Any] | None:
    """The JSON object of a client text frame with a known `type`, else None (UNPARSABLE_CLIENT_MESSAGE)."""
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(msg, dict) or msg.get("type") not in CLIENT_TYPES:
        return None
    return msg


def control_problem(msg: dict[str, Any]) -> str | None:
    """Missing required fields of a non-Settings client message (the spec's `required` lists)."""
    kind = msg["type"]
    required: tuple[tuple[str, type], ...] = {
        "UpdatePrompt": (("prompt", str),),
        "UpdateSpeak": (("speak", object),),
        "UpdateThink": (("think", object),),
        "UpdateListen": (("listen", dict),),
        "InjectUserMessage": (("content", str),),
        "FunctionCallResponse": (("id", str), ("name", str), ("content", str)),
    }.get(kind, ())
    for field, expected in required:
        if not isinstance(msg.get(field), expected) or msg.get(field) is None:
            return f"{kind}.{field} is required"
    if kind == "InjectAgentMessage" and not isinstance(msg.get("message", msg.get("content")), str):
        return "InjectAgentMessage.message is required"
    if kind == "InjectAgentMessage" and msg.get("behavior", "default") not in ("default", "queue", "interrupt"):
        return "InjectAgentMessage.behavior must be default, queue or interrupt"
    return None
