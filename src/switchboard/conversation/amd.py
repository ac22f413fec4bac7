"""Answering-machine detection for an outbound call: hold the greeting until the verdict (pure).

With detection on, the agent neither speaks nor hears the line until Twilio's verdict: the
greeting is left out of `Settings` and the caller's audio is withheld from Deepgram (a person's
"Hello?" or a machine's greeting would otherwise be answered — over the greeting, or into the
recording). This is what Twilio's synchronous AMD does too, where the stream only starts after
the verdict; here the stream is up already, so the verdict acts at once.

    human                     → greet: the greeting (InjectAgentMessage), then the conversation
    machine_end_beep|silence|other, machine_start
                              → the profile's voicemail behaviour: leave_message (the message,
                                then a hang-up) or hang_up; outcome `voicemail`
    fax | unknown | timeout   → configurable: greet, voicemail, or hang_up (outcome amd_<verdict>)

`AmdGate` is the state of one call's detection; the conversation core carries the decision out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..answering import Amd, Behaviour, Voicemail

Action = Literal["greet", "leave_message", "hang_up"]
MACHINE_VERDICTS = frozenset({"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other"})
VOICEMAIL_OUTCOME = "voicemail"
TIMEOUT = "timeout"  # the verdict the call gives itself when Twilio's never came


@dataclass(frozen=True, slots=True)
class AmdConfig:
    greeting: str | None = None  # held back from Settings; said on `greet`
    voicemail_action: Literal["leave_message", "hang_up"] = "hang_up"
    voicemail_message: str = ""
    on_fax: Behaviour = "hang_up"
    on_unknown: Behaviour = "greet"
    on_timeout: Behaviour = "greet"
    verdict_timeout_s: float = 40.0

    @classmethod
    def from_blocks(cls, amd: Amd, voicemail: Voicemail, *, greeting: str | None, message: str) -> AmdConfig:
        """From the settings' blocks, with the greeting and message already rendered."""
        return cls(greeting, voicemail.action, message, amd.on_fax, amd.on_unknown, amd.on_timeout,
                   amd.verdict_timeout_s)


@dataclass(frozen=True, slots=True)
class Decision:
    answered_by: str  # Twilio's verdict, or "timeout"
    behaviour: Behaviour
    action: Action
    outcome: str | None  # None: the conversation goes on; else the call ends with this outcome
    waited_ms: int  # from the detection's start (the call's stream) to the decision
    detection_ms: int | None = None  # Twilio's MachineDetectionDuration

    def event(self) -> dict[str, object]:
        return {"answered_by": self.answered_by, "behaviour": self.behaviour, "action": self.action,
                "outcome": self.outcome, "waited_ms": self.waited_ms, "detection_ms": self.detection_ms}


def behaviour(answered_by: str, config: AmdConfig) -> Behaviour:
    if answered_by == "human":
        return "greet"
    if answered_by in MACHINE_VERDICTS:
        return "voicemail"
    if answered_by == "fax":
        return config.on_fax
    if answered_by == TIMEOUT:
        return config.on_timeout
    return config.on_unknown  # "unknown", and any verdict Twilio adds later


def decide(answered_by: str, config: AmdConfig, *, waited_ms: int, detection_ms: int | None = None) -> Decision:
    chosen = behaviour(answered_by, config)
    if chosen == "greet":
        return Decision(answered_by, chosen, "greet", None, waited_ms, detection_ms)
    if chosen == "voicemail":
        return Decision(answered_by, chosen, config.voicemail_action, VOICEMAIL_OUTCOME, waited_ms, detection_ms)
    return Decision(answered_by, chosen, "hang_up", f"amd_{answered_by}", waited_ms, detection_ms)


class AmdGate:
    """One call's detection: pending until a verdict (or the timeout), then decided once."""

    def __init__(self, config: AmdConfig, now: float) -> None:
        self.config = config
        self.started_at = now
        self.decision: Decision | None = None
        self.withheld_bytes = 0  # caller audio kept from Deepgram while the verdict was pending

    @property
    def pending(self) -> bool:
        return self.decision is None

    @property
    def holding_audio(self) -> bool:
        """Caller audio is kept from the agent: before the verdict, and for good unless it greets."""
        return self.decision is None or self.decision.action != "greet"

    def verdict(self, answered_by: str, detection_ms: int | None, now: float) -> Decision | None:
        """The decision for this verdict, or None if the call decided already (a repeated or late verdict)."""
        if self.decision is not None:
            return None
        waited_ms = max(0, round((now - self.started_at) * 1000))
        self.decision = decide(answered_by, self.config, waited_ms=waited_ms, detection_ms=detection_ms)
        return self.decision

    def tick(self, now: float) -> Decision | None:
        """The timeout decision once `verdict_timeout_s` passed without a verdict."""
        if self.decision is None and now - self.started_at >= self.config.verdict_timeout_s:
            return self.verdict(TIMEOUT, None, now)
        return None

    def settle(self, decision: Decision) -> None:
        """A decision taken before this session (a takeover): remembered, not carried out again."""
        self.decision = decision
