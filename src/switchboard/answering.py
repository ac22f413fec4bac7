"""Per-profile settings of what an outbound call does about answering machines: the `amd` and
`voicemail` blocks of `AgentSettings` (never sent to Deepgram).

With detection on, Twilio listens after the answer and reports `human`, `machine_end_beep`,
`machine_end_silence`, `machine_end_other` (the greeting is over: a message can be left),
`fax` or `unknown`; the agent does not greet until then (switchboard.conversation.amd).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# What a verdict other than human or machine leads to: greet (as for a person), voicemail (as
# for a machine: the `voicemail` block), or hang up at once.
Behaviour = Literal["greet", "voicemail", "hang_up"]


class Amd(BaseModel):
    """Answering-machine detection (Twilio's asynchronous AMD, `DetectMessageEnd`)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(
        False, description="Outbound calls detect answering machines unless the request says otherwise "
        "(the greeting then waits for the verdict, about 2-4 s after the answer)",
    )
    detection_timeout_s: int = Field(
        30, ge=3, le=59, description="Twilio's MachineDetectionTimeout: no verdict by then is `unknown`"
    )
    speech_end_threshold_ms: int | None = Field(
        None, ge=500, le=5000,
        description="Twilio's MachineDetectionSpeechEndThreshold (default 1200): silence after speech that ends "
        "it; lower decides `human` sooner and mistakes more machines for people",
    )
    on_fax: Behaviour = Field("hang_up", description="A fax machine answered")
    on_unknown: Behaviour = Field("greet", description="Twilio could not decide within the detection timeout")
    on_timeout: Behaviour = Field(
        "greet", description="No verdict reached the call (a lost callback) within `verdict_timeout_s`"
    )
    verdict_timeout_s: float = Field(
        40.0, ge=5, le=120,
        description="How long the call waits for Twilio's verdict before `on_timeout` (keep it above "
        "detection_timeout_s)",
    )


class Voicemail(BaseModel):
    """What the agent does when a machine answered (`machine_end_*`)."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["leave_message", "hang_up"] = Field(
        "hang_up", description="leave_message: the agent says `message` after the beep, then hangs up; hang_up: "
        "hang up at once. Either way the call's outcome is `voicemail`",
    )
    message: str = Field(
        "Hello, this is a message for {{name|you}}. Please call us back. Goodbye.",
        min_length=1, max_length=1000,
        description="What is left on the machine; {{name}} and the other context variables are filled in",
    )
