"""Request and response bodies of the REST API (the agent settings model itself is shared)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from switchboard.agent_settings import AgentSettings

CALL_SID = r"^[A-Za-z0-9]{2,64}$"
PROFILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Problem(BaseModel):
    detail: str = Field(..., examples=["call CA0123 not found"])


class SettingsDocument(BaseModel):
    """A stored settings document. Secrets (API keys, endpoint headers) read as "***"."""

    version: int = Field(..., ge=0, description="Increments on every write; 0 = built-in default", examples=[3])
    source: str = Field(..., description='"call", "profile:<name>", "default" or "builtin"', examples=["profile:sales"])
    settings: AgentSettings


class LiveChanges(BaseModel):
    """What a settings write did to the running call, if the call is live."""

    applied: dict[str, CommandResult] = Field(
        default_factory=dict, description="update_prompt / update_speak sent to the call and their results"
    )
    next_connect: list[str] = Field(
        default_factory=list, description="Changed fields Deepgram cannot change mid-call: used on reconnect"
    )


class CallSettingsDocument(SettingsDocument):
    live: LiveChanges | None = Field(None, description="Set when the call is running")


class ProfileSummary(BaseModel):
    name: str = Field(..., examples=["sales"])
    version: int = Field(..., examples=[2])


class ProfileList(BaseModel):
    profiles: list[ProfileSummary]


class CommandResult(BaseModel):
    applied: bool | None = Field(
        ..., description="True: the owner applied it; false: it refused (see detail); null: not waited for"
    )
    detail: str = Field(..., examples=["UpdatePrompt sent"])
    worker: str | None = Field(None, description="The worker that owns the call", examples=["worker-host-1a2b3c"])
    command_id: str = Field(..., examples=["5f1c2e0b9a9f4a5e8d2b6b7c1f0e3d4a"])


class OutboundView(BaseModel):
    """What an outbound call adds to a call's summary and detail."""

    model_config = ConfigDict(populate_by_name=True)
    to: str
    from_: str = Field(..., alias="from")
    status: str = Field(..., description="Twilio's: queued, initiated, ringing, in-progress, completed, busy, "
                        "no-answer, failed, canceled")
    outcome: str | None = Field(None, description="completed, voicemail, amd_<verdict>, busy, no-answer, failed, "
                                "canceled, error")
    error: str | None = None
    machine_detection: bool = False
    answered_by: str | None = Field(None, description="Twilio's AMD verdict")
    amd_ms: int | None = Field(None, description="Twilio's MachineDetectionDuration")
    amd_action: str | None = Field(None, description="What the call did about it: greet, leave_message, hang_up")
    amd_waited_ms: int | None = Field(None, description="How long the greeting waited for the verdict")
    context: dict[str, Any] = Field(default_factory=dict)
    campaign: str | None = None
    destination: int | None = None
    created_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    duration_s: int | None = None


class CallSummary(BaseModel):
    call_sid: str = Field(..., examples=["CA0123456789abcdef0123456789abcdef"])
    stream_sid: str = Field(..., examples=["MZ0123456789abcdef0123456789abcdef"])
    profile: str | None = Field(None, examples=["sales"])
    worker: str | None = Field(None, description="Owner worker id")
    edge: str | None = None
    state: str = Field(..., examples=["active"], description="waiting | connecting | active | ended")
    started_at: float | None = Field(None, description="Unix time")
    turns: int = 0
    settings_source: str | None = None
    settings_version: int | None = None
    direction: str = Field("inbound", description="inbound | outbound (`state` is `dialing` until it is answered)")
    outbound: OutboundView | None = Field(None, description="Outbound calls: to/from, Twilio's status, AMD, context")


class CallList(BaseModel):
    calls: list[CallSummary]
    total: int = Field(..., description="Live calls in all (the list may be limited)")


class TranscriptLine(BaseModel):
    role: str = Field(..., examples=["user"])
    content: str
    ts: float | None = None
    # Assistant lines: what the caller actually heard (Twilio marks against the reply's audio).
    reply: int | None = Field(None, description="Reply number within its agent session (assistant lines)")
    heard_text: str | None = Field(None, description="The part of `content` the caller heard, estimated from "
                                   "the audio that played before a barge-in; equals `content` when played in full")
    unheard_text: str | None = Field(None, description="The rest, cut off by the caller")
    interrupted: bool | None = None
    heard_ms: int | None = Field(None, description="Agent audio that played to the caller, ms")
    audio_ms: int | None = Field(None, description="Agent audio of this reply that reached Switchboard, ms")


class TurnLatency(BaseModel):
    reply: int
    stages: dict[str, float] = Field(
        ..., description="ms per stage: caller_to_deepgram and worker_to_edge are Switchboard's share; "
        "deepgram_* are Deepgram's own (AgentStartedSpeaking, LatencyReport)",
        examples=[{"caller_to_deepgram": 1.2, "deepgram_total": 742.0, "worker_to_edge": 0.9}],
    )
    switchboard_ms: float | None = Field(None, description="caller_to_deepgram + worker_to_edge")
    ts: float | None = None


class FunctionCallRecord(BaseModel):
    name: str
    arguments: str
    response: str
    outcome: str = Field(..., examples=["ok"])
    ms: float | None = None
    ts: float | None = None


class CallDetail(CallSummary):
    ended_at: float | None = None
    outcome: str | None = None
    end_reason: str | None = None
    parameters: dict[str, str] = Field(default_factory=dict, description="Twilio customParameters")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Live prompt/voice changes")
    transcript: list[TranscriptLine]
    function_calls: list[FunctionCallRecord]
    errors: list[dict[str, Any]]
    latency: list[TurnLatency] = Field(default_factory=list, description="Where each turn's time went")
    dead_air: list[dict[str, Any]] = Field(default_factory=list, description="Dead-air watchdog firings")
    keypad: list[dict[str, Any]] = Field(
        default_factory=list, description="Keypad entries (digits, count, ended_by, to); masked entries show •",
        examples=[[{"digits": "1234#", "count": 4, "ended_by": "terminator", "to": "agent", "ts": 1700000000.5}]],
    )
    transfers: list[dict[str, Any]] = Field(
        default_factory=list, description="Each step of each transfer to a person (id, mode, target, step)",
    )


class Health(BaseModel):
    status: str = Field(..., examples=["ok"])


class Readiness(BaseModel):
    ready: bool
    redis: bool


LiveChanges.model_rebuild()
CallSettingsDocument.model_rebuild()
