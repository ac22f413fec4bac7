"""Per-profile settings of what Switchboard does around the agent in a call: keypad input, transfers
to a person, the pre-call lookup. Part of `AgentSettings`, never sent to Deepgram.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

# A number (E.164) or a SIP URI; the profile's allow-list decides whether it may be dialled.
TRANSFER_TARGET = r"^(\+[1-9][0-9]{6,14}|sips?:[^\s<>]{3,200})$"
Target = Annotated[str, Field(pattern=TRANSFER_TARGET)]


class Dtmf(BaseModel):
    """Keypad input: keys are gathered into one entry and told to the agent as one user message."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(
        False, description="Tell the agent every entry the caller keys in (a `collect_digits` request is "
        "answered whatever this says)",
    )
    inter_digit_timeout_s: float = Field(2.0, ge=0.2, le=30, description="An entry ends after this long without a key")
    terminator: Literal["#", "*", ""] = Field("#", description="The key that ends an entry at once (\"\" = none)")
    max_digits: int = Field(32, ge=1, le=64, description="An entry ends at this many keys")
    mask: bool = Field(
        False, description="Card numbers, PINs: the keys are never stored or shown in clear (events, journal, "
        "call detail, SSE, call.ended) and never reach Deepgram; the agent is told how many were keyed, and a "
        "function webhook gets them in clear where an argument is the entry's reference",
    )
    message: str = Field(
        "The caller pressed: {{digits}}", min_length=1, max_length=500,
        description="The user message an entry becomes: {{digits}} (masked when `mask`), {{count}}, {{ref}}",
    )


class Transfer(BaseModel):
    """Handing the call to a person, from the agent's `transfer_call` or `POST /v1/calls/{callSid}/transfer`."""

    model_config = ConfigDict(extra="forbid")
    destinations: list[Target] = Field(
        default_factory=list, max_length=20,
        description="Numbers (E.164) or SIP URIs a call may be transferred to; nothing else is dialled "
        "(with transfer_call's own `destinations`)", examples=[["+14155550100", "sip:desk@example.com"]],
    )
    mode: Literal["cold", "warm"] = Field("cold", description="What transfer_call does when the agent names no mode")
    ring_timeout_s: int = Field(
        20, ge=5, le=120, description="How long the target may ring before it counts as no answer",
    )
    hold_message: str = Field("Please hold while I connect you.", min_length=1, max_length=500,
                              description="Warm: what the caller hears while the target is dialled")
    hold_music_url: HttpUrl | None = Field(None, description="Warm: played after the hold message (mp3/wav URL)")
    no_answer_message: str = Field(
        "I'm sorry, nobody was available to take your call. Is there anything else I can help you with?",
        min_length=1, max_length=500, description="What the agent says when the caller comes back unanswered",
    )
    caller_id: Annotated[str, Field(pattern=r"^\+[1-9][0-9]{6,14}$")] | None = Field(
        None, description="The number the target sees (default: the number the caller dialled)",
    )
    reply_wait_s: float = Field(
        4.0, ge=0, le=30, description="After the agent agreed to transfer, how long its goodbye may take to start "
        "before the call moves anyway",
    )


class PreCall(BaseModel):
    """A lookup before the agent greets (CRM): POSTed the call's From/To/parameters, it answers
    `{"context": {...}, "settings": {...}}` (template values, settings overrides)."""

    model_config = ConfigDict(extra="forbid")
    url: HttpUrl
    timeout_s: float = Field(1.5, gt=0, le=5, description="The greeting waits no longer than this for the answer")
