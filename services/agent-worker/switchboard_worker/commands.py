"""Live commands from the control API, applied to the call's Deepgram session.

Each `messages.Envelope` on the call's `:cmd` stream is answered in the call's events with
`{"type": "command_result", "id", "op", "ok", "detail", "worker"}`; the control API waits
for it. The commands are the control API's own models (`switchboard.messages`), validated
there and parsed here with the same types. A command found after its `expires_at` (the call
had no owner yet, or changed owner) is refused unapplied: the control API has already told
its client that it timed out.
"""

from __future__ import annotations

import logging
import time

import orjson
from pydantic import ValidationError

from switchboard import deepgram, messages
from switchboard.entries import Kind
from switchboard.messages import Event

from .port import CallHandle

log = logging.getLogger(__name__)


def on_command_entries(session: CallHandle, batch: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
    for entry_id, fields in batch:
        if fields.get(b"k") != Kind.COMMAND.value:
            continue
        raw = fields.get(b"p", b"{}")
        try:
            envelope = messages.parse_envelope(raw)
        except ValidationError as exc:
            # A control API newer than this worker (an op it does not know): say no rather than
            # let the caller of the API wait for a timeout, if the command can be named at all.
            command_id, op = _names(raw)
            log.warning("refusing an invalid command %s: %d error(s)", op, exc.error_count(), extra=session.extra)
            if command_id:
                session.event(Event.COMMAND_RESULT, id=command_id, op=op, ok=False,
                              detail=f"invalid {op or 'command'} for this worker",
                              worker=session.port.settings.worker_id)
            continue
        ok, detail = apply(session, envelope)
        op = envelope.command.op
        log.info("command %s: %s", op, detail, extra={**session.extra, "ok": ok})
        session.event(Event.COMMAND_RESULT, id=envelope.id, op=op, ok=ok, detail=detail,
                      worker=session.port.settings.worker_id)
        session.port.bookkeeping.advance(session.call_key, messages.CallField.CMD_POS, entry_id)


def apply(session: CallHandle, envelope: messages.Envelope) -> tuple[bool, str]:
    if envelope.expires_at is not None and time.time() > envelope.expires_at:
        return False, "expired before this worker got it; not applied"
    match envelope.command:
        case messages.UpdatePrompt(prompt=prompt):
            if not session.send_to_agent(deepgram.update_prompt(prompt)):
                return False, "agent not connected"
            session.settings.think.prompt = prompt
            session.remember_override("prompt", prompt)
            return True, "UpdatePrompt sent"
        case messages.UpdateSpeak(speak=speak):
            payload = speak.model_dump(mode="json", exclude_none=True)
            if not session.send_to_agent(deepgram.update_speak(payload)):
                return False, "agent not connected"
            # Kept on the session too, so a reconnect's Settings carries the new voice.
            session.settings.speak = speak
            session.remember_override("speak", payload)
            return True, "UpdateSpeak sent"
        case messages.Say(text=text, behavior=behavior):
            if not session.send_to_agent(deepgram.inject_agent_message(text, behavior)):
                return False, "agent not connected"
            return True, "InjectAgentMessage sent"
        case messages.InjectUser(text=text):
            if not session.send_to_agent(deepgram.inject_user_message(text)):
                return False, "agent not connected"
            return True, "InjectUserMessage sent"
        case messages.Transfer(to=to, mode=mode, announce=announce, summary=summary):
            return session.transfer(to, mode, by="api", announce=announce, summary=summary)
        case messages.AmdVerdict(answered_by=answered_by, detection_ms=detection_ms):
            return session.amd_verdict(answered_by, detection_ms)
        case messages.Hangup(after_reply=after_reply):
            if after_reply and session.agent_speaking:
                session.request_hangup("command", after_reply=True)
                return True, "hanging up after the current reply"
            session.request_hangup("command")
            return True, "hanging up"
    return False, "unknown command"  # unreachable: the union is closed


def _names(raw: bytes) -> tuple[str, str]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "", ""
    if not isinstance(doc, dict):
        return "", ""
    command = doc.get("command")
    op = command.get("op") if isinstance(command, dict) else None
    return str(doc.get("id") or "")[:64], str(op or "")[:40]
