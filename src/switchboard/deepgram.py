"""Deepgram Voice Agent v1 messages, client side (pure codec, no I/O).

Server text frames are parsed into plain dicts keyed by `type`; the worker dispatches on
the type and ignores unknown ones (Deepgram keeps adding events). Client messages are
built here so that their shapes live next to each other and are checked against the spec
in tests.
"""

from __future__ import annotations

from typing import Any

import orjson

KEEPALIVE = '{"type":"KeepAlive"}'

# Errors after which the same call may continue on a fresh connection with context.
RECONNECTABLE_ERRORS = frozenset(
    {
        "INTERNAL_SERVER_ERROR",
        "SERVER_GOING_AWAY",
        "ASR_CONNECTION_CLOSED",
        "ASR_DRIVER_TIMEOUT",
        "FAILED_TO_START_LISTENING",
        "CLIENT_MESSAGE_TIMEOUT",
        "MAXIMUM_SESSION_LENGTH_REACHED",
        "FAILED_TO_THINK",
        "FAILED_TO_SPEAK",
    }
)


class DeepgramProtocolError(ValueError):
    pass


def parse_server(text: str | bytes) -> dict[str, Any]:
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise DeepgramProtocolError(f"server sent invalid JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise DeepgramProtocolError("server message without a string 'type'")
    return msg


def _dump(msg: dict[str, Any]) -> str:
    return orjson.dumps(msg).decode()


def settings(message: dict[str, Any]) -> str:
    return _dump(message)


def update_prompt(prompt: str) -> str:
    return _dump({"type": "UpdatePrompt", "prompt": prompt})


def update_speak(speak: dict[str, Any]) -> str:
    return _dump({"type": "UpdateSpeak", "speak": speak})


def inject_agent_message(message: str, behavior: str | None = None) -> str:
    msg: dict[str, Any] = {"type": "InjectAgentMessage", "message": message}
    if behavior:
        msg["behavior"] = behavior
    return _dump(msg)


def inject_user_message(content: str) -> str:
    return _dump({"type": "InjectUserMessage", "content": content})


def function_call_response(call_id: str, name: str, content: str) -> str:
    return _dump({"type": "FunctionCallResponse", "id": call_id, "name": name, "content": content})


def history_text(role: str, content: str) -> dict[str, Any]:
    return {"type": "History", "role": role, "content": content}


def history_function_call(call_id: str, name: str, arguments: str, response: str) -> dict[str, Any]:
    return {
        "type": "History",
        "function_calls": [
            {"id": call_id, "name": name, "client_side": True, "arguments": arguments, "response": response}
        ],
    }
