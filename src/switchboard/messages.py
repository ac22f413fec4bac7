"""What the three services say to each other through Redis, typed in one place.

- `Event`: the types of a call's `:events` entries (worker → control API, SSE, journal);
- `CallField`, `RecordState`, `Outcome`: the call record hash, written by the edge and the
  worker, read by the control API;
- the live commands (control API → the owner worker, on a call's `:cmd` stream): one pydantic
  model per op, validated by the control API when a request comes in and parsed by the worker
  with the very same models; `Envelope` is what travels.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .agent_settings import Speak
from .call_features import TRANSFER_TARGET


class Event(StrEnum):
    TRANSCRIPT = "transcript"
    USER_STARTED_SPEAKING = "user_started_speaking"
    BARGE_IN = "barge_in"
    AGENT_STARTED_SPEAKING = "agent_started_speaking"
    AGENT_AUDIO_DONE = "agent_audio_done"
    REPLY_HEARD = "reply_heard"
    TURN_LATENCY = "turn_latency"
    DTMF = "dtmf"
    DTMF_ENTRY = "dtmf_entry"  # keys collected into one entry for the agent (masked when configured)
    TRANSFER = "transfer"  # one step of a transfer to a person (switchboard.transfers)
    PRECALL = "precall"  # the pre-call lookup: answered, failed or late
    DEAD_AIR = "dead_air"
    HANGUP_REQUESTED = "hangup_requested"
    AGENT_RECONNECT = "agent_reconnect"
    REASK = "reask"
    DEEPGRAM_CONNECTED = "deepgram_connected"
    DEEPGRAM_CLOSED = "deepgram_closed"
    RESUMED_FROM_STREAM = "resumed_from_stream"
    FUNCTION_CALL = "function_call"
    COMMAND_RESULT = "command_result"
    ERROR = "error"
    WARNING = "warning"
    CALL_ENDED = "call_ended"
    # Deepgram's acknowledgements and notices, noted as they come.
    PROMPT_UPDATED = "prompt_updated"
    SPEAK_UPDATED = "speak_updated"
    THINK_UPDATED = "think_updated"
    INJECTION_REFUSED = "injection_refused"
    AGENT_THINKING = "agent_thinking"
    FUNCTION_CALL_CANCELLED = "function_call_cancelled"
    # Made by the control API for a client following a call, never stored.
    STREAM_MOVED = "stream_moved"
    # Outbound calls (switchboard.outbound): Twilio's lifecycle and AMD verdict as control heard
    # them (on the outbound call's own events stream), and what the worker did with the verdict.
    OUTBOUND_STATUS = "outbound_status"
    AMD_VERDICT = "amd_verdict"
    AMD_DECISION = "amd_decision"


class CallField(StrEnum):
    """Fields of a call record (`Keys.call(streamSid)`)."""

    CALL_SID = "call_sid"
    STREAM_SID = "stream_sid"
    ACCOUNT_SID = "account_sid"
    EDGE = "edge"
    WORKER = "worker"
    PROFILE = "profile"
    PARAMS = "params"  # the stream's <Parameter>s, as JSON (a peer's claims; never a decision)
    RESUME_OF = "resume_of"  # the stream this one continues, verified by the edge against its grant
    STATE = "state"
    STARTED_AT = "started_at"
    ENDED_AT = "ended_at"
    OUTCOME = "outcome"
    END_REASON = "end_reason"
    HANGUP_REQUESTED = "hangup_requested"  # why Switchboard asked the edge to end the call
    OVERRIDES = "overrides"  # live prompt/voice changes, as JSON
    TURNS = "turns"
    UTT_POS = "utt_pos"  # where the caller's latest utterance began (a stream id)
    UTT_ANSWERED = "utt_answered"  # the utterance position the last transcript answered
    IN_POS = "in_pos"  # how far the owner has read the caller's stream
    CMD_POS = "cmd_pos"
    SETTINGS_SOURCE = "settings_source"
    SETTINGS_VERSION = "settings_version"
    TRANSFER = "transfer"  # the call's latest transfer to a person, as JSON (switchboard.transfers)
    PRECALL = "precall"  # what the pre-call lookup returned (context, settings), as JSON
    # Outbound calls with answering-machine detection: the verdict, what was done, how long the
    # greeting waited for it (switchboard.conversation.amd).
    AMD_ANSWERED_BY = "amd_answered_by"
    AMD_ACTION = "amd_action"
    AMD_WAITED_MS = "amd_waited_ms"


class RecordState(StrEnum):
    WAITING = "waiting"  # announced, not claimed yet (or waiting for a free slot)
    CONNECTING = "connecting"
    ACTIVE = "active"
    ENDED = "ended"


class Outcome(StrEnum):
    """How a call (or a stream of it) ended, as far as Switchboard decided; Deepgram failures add
    `deepgram_<code>` and hang-ups their own reasons."""

    COMPLETED = "completed"
    ALREADY_ENDED = "already_ended"
    NO_CAPACITY = "no_capacity"  # the edge refused the stream for want of a free slot
    DEEPGRAM_GONE = "deepgram_gone"
    TRANSFERRED = "transferred"  # a person took the call (cold: dialled; warm: answered)
    TRANSFERRING = "transferring"  # warm: the agent's part is over, the caller holds for a person
    VOICEMAIL = "voicemail"  # an answering machine took the call: the message was left (or not), then hung up


# --- live commands -------------------------------------------------------------------------------
class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Say(_Command):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "One moment please.", "behavior": "queue"}]})
    op: Literal["say"] = "say"
    text: str = Field(..., min_length=1, max_length=2000)
    behavior: Literal["default", "queue", "interrupt"] = Field(
        "queue",
        description="queue: after the current speech (the API's default); interrupt: now, cutting the agent off; "
        "default (Deepgram's): refused while anyone speaks, reported as an `injection_refused` event",
    )


class InjectUser(_Command):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "I would like to book a test drive."}]})
    op: Literal["inject_user"] = "inject_user"
    text: str = Field(..., min_length=1, max_length=2000)


class Hangup(_Command):
    model_config = ConfigDict(json_schema_extra={"examples": [{"after_reply": True}]})
    op: Literal["hangup"] = "hangup"
    after_reply: bool = Field(False, description="Let the agent finish its current reply first")


class UpdatePrompt(_Command):
    model_config = ConfigDict(json_schema_extra={"examples": [{"prompt": "You are a polite receptionist."}]})
    op: Literal["update_prompt"] = "update_prompt"
    prompt: str = Field(..., min_length=1, max_length=25_000)


class UpdateSpeak(_Command):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"speak": {"provider": {"type": "deepgram", "model": "aura-2-luna-en"}}}]},
    )
    op: Literal["update_speak"] = "update_speak"
    speak: Speak


class Transfer(_Command):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"to": "+14155550100", "mode": "warm", "announce": "Let me connect you with a colleague."},
    ]})
    op: Literal["transfer"] = "transfer"
    to: str = Field(..., pattern=TRANSFER_TARGET, description="A number or SIP URI on the profile's allow-list")
    mode: Literal["cold", "warm"] = Field(
        "cold", description="cold: the call is redirected to the target once the agent's sentence has played; "
        "warm: the caller holds in a conference while the target hears a summary, then they are joined",
    )
    announce: str | None = Field(None, min_length=1, max_length=500,
                                 description="What the agent says to the caller first (played in full before moving)")
    summary: str | None = Field(None, min_length=1, max_length=1000,
                                description="Warm: what the target hears first (default: built from the transcript)")


AnsweredBy = Literal["human", "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax",
                     "unknown"]


class AmdVerdict(_Command):
    """Twilio's answering-machine verdict for an outbound call (control → the call's worker).

    A command rather than a record field the worker would follow: the worker already follows
    every call's `:cmd` stream through its shared reader, so the verdict arrives within one read
    and is acknowledged like any command, with no polling. The verdict is also on the outbound
    record, which the worker reads when it claims the call: a verdict that came before the
    stream existed, or before a takeover, is not lost. It never expires (`expires_at` unset)."""

    op: Literal["amd_verdict"] = "amd_verdict"
    answered_by: AnsweredBy
    detection_ms: int | None = Field(None, ge=0, le=600_000, description="Twilio's MachineDetectionDuration")
    received_at: float | None = Field(None, description="When control got the verdict (Unix time)")


Command = Annotated[Say | InjectUser | Hangup | UpdatePrompt | UpdateSpeak | Transfer | AmdVerdict,
                    Field(discriminator="op")]


class Envelope(BaseModel):
    """One entry of a call's `:cmd` stream. A command found after `expires_at` is refused
    unapplied: the control API has already told its client that it timed out."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(..., min_length=1, max_length=64)
    expires_at: float | None = None
    command: Command

    def dumps(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))


_ENVELOPE = TypeAdapter(Envelope)


def parse_envelope(raw: bytes) -> Envelope:
    """Raises pydantic.ValidationError (a ValueError) for anything but a valid command."""
    return _ENVELOPE.validate_json(raw)
