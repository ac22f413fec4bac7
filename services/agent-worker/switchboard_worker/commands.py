"""Live commands from the control API, applied to the call's Deepgram session.

Each command `{id, op, expires_at?, ...}` is answered in the call's events stream with
`{"type": "command_result", "id", "op", "ok", "detail", "worker"}`; the control API waits
for it. A command found after its `expires_at` (the call had no owner yet, or changed owner)
is refused unapplied: the control API has already told its client that it timed out.
Accepted ops: update_prompt, update_speak, say, inject_user, hangup.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from pydantic import ValidationError

from switchboard import deepgram
from switchboard.agent_settings import Speak
from switchboard.entries import Kind

from .port import CallHandle

log = logging.getLogger(__name__)

SAY_BEHAVIORS = frozenset({"default", "queue", "interrupt"})


def on_command_entries(session: CallHandle, batch: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
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
        log.info("command %s: %s", command.get("op"), detail, extra={**session.extra, "ok": ok})
        session.event(
            "command_result", id=command.get("id"), op=command.get("op"), ok=ok, detail=detail,
            worker=session.port.settings.worker_id,
        )
        session.port.bookkeeping.advance(session.call_key, "cmd_pos", entry_id)


def apply(session: CallHandle, command: dict[str, Any]) -> tuple[bool, str]:
    expires_at = command.get("expires_at")
    if isinstance(expires_at, (int, float)) and time.time() > expires_at:
        return False, "expired before this worker got it; not applied"
    op = command.get("op")
    if op == "update_prompt":
        prompt = command.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return False, "prompt must be a non-empty string"
        if not session.send_to_agent(deepgram.update_prompt(prompt)):
            return False, "agent not connected"
        session.settings.think.prompt = prompt
        session.remember_override("prompt", prompt)
        return True, "UpdatePrompt sent"
    if op == "update_speak":
        try:
            speak = Speak.model_validate(command.get("speak"))
        except ValidationError as exc:
            return False, f"invalid speak: {exc.error_count()} error(s)"
        payload = speak.model_dump(mode="json", exclude_none=True)
        if not session.send_to_agent(deepgram.update_speak(payload)):
            return False, "agent not connected"
        # Kept on the session too, so a reconnect's Settings carries the new voice.
        session.settings.speak = speak
        session.remember_override("speak", payload)
        return True, "UpdateSpeak sent"
    if op == "say":
        text = command.get("text")
        behavior = command.get("behavior")
        if not isinstance(text, str) or not text:
            return False, "text must be a non-empty string"
        if behavior is not None and behavior not in SAY_BEHAVIORS:
            return False, f"behavior must be one of {sorted(SAY_BEHAVIORS)}"
        if not session.send_to_agent(deepgram.inject_agent_message(text, behavior)):
            return False, "agent not connected"
        return True, "InjectAgentMessage sent"
    if op == "inject_user":
        text = command.get("text")
        if not isinstance(text, str) or not text:
            return False, "text must be a non-empty string"
        if not session.send_to_agent(deepgram.inject_user_message(text)):
            return False, "agent not connected"
        return True, "InjectUserMessage sent"
    if op == "hangup":
        if command.get("after_reply") and session.agent_speaking:
            session.request_hangup("command", after_reply=True)
            return True, "hanging up after the current reply"
        session.request_hangup("command")
        return True, "hanging up"
    return False, f"unknown op {str(op)[:40]!r}"
