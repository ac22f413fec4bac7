"""Live commands from the control API, applied to the call's Deepgram session.

Each command `{id, op, ...}` is answered in the call's events stream with
`{"type": "command_result", "id", "op", "ok", "detail"}`; the control API waits for it.
Accepted ops: update_prompt, update_speak, say, inject_user, hangup.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson

from switchboard import deepgram
from switchboard.entries import Kind

if TYPE_CHECKING:
    from .session import CallSession

log = logging.getLogger(__name__)


def on_command_entries(session: "CallSession", batch: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
    for entry_id, fields in batch:
        if fields.get(b"k") != Kind.COMMAND.value:
            continue
        try:
            command = orjson.loads(fields.get(b"p", b"{}"))
            if not isinstance(command, dict):
                raise ValueError("command is not an object")
        except ValueError as exc:
            log.warning("ignoring malformed command: %s", exc, extra=session.extra)
            continue
        ok, detail = apply(session, command)
        session.event("command_result", id=command.get("id"), op=command.get("op"), ok=ok, detail=detail)
        session.worker.spawn_write(session.call_key, {"cmd_pos": entry_id})


def apply(session: "CallSession", command: dict[str, Any]) -> tuple[bool, str]:
    op = command.get("op")
    if op == "update_prompt":
        prompt = str(command.get("prompt", ""))
        if not session.send_to_agent(deepgram.update_prompt(prompt)):
            return False, "agent not connected"
        session.settings.think.prompt = prompt
        session.remember_override("prompt", prompt)
        return True, "UpdatePrompt sent"
    if op == "update_speak":
        speak = command.get("speak")
        if not isinstance(speak, dict):
            return False, "speak must be an object"
        if not session.send_to_agent(deepgram.update_speak(speak)):
            return False, "agent not connected"
        session.remember_override("speak", speak)
        return True, "UpdateSpeak sent"
    if op == "say":
        text = str(command.get("text", ""))
        behavior = command.get("behavior")
        if not session.send_to_agent(deepgram.inject_agent_message(text, str(behavior) if behavior else None)):
            return False, "agent not connected"
        return True, "InjectAgentMessage sent"
    if op == "inject_user":
        if not session.send_to_agent(deepgram.inject_user_message(str(command.get("text", "")))):
            return False, "agent not connected"
        return True, "InjectUserMessage sent"
    if op == "hangup":
        if command.get("after_reply"):
            session.end_after_reply()
            return True, "hanging up after the current reply"
        session.request_hangup("command")
        return True, "hanging up"
    return False, f"unknown op {str(op)[:40]!r}"
