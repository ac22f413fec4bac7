"""What the conversation core needs to know of a call's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..agent_settings import AgentSettings
from ..call_features import Dtmf


@dataclass(slots=True)
class ConversationConfig:
    tell_agent_heard: bool = False
    think: dict[str, Any] | None = None  # the Settings' agent.think block, for UpdateThink
    agent_stall_s: float = 4.0
    caller_idle_s: float = 15.0
    dead_air_action: str = "reengage"
    reengage_message: str = "Are you still there?"
    max_reengage: int = 2
    goodbye_message: str = "Goodbye!"
    max_reconnects: int = 3  # Deepgram drops in a row before the call gives up (the worker's setting)
    dtmf: Dtmf = field(default_factory=Dtmf)

    @classmethod
    def from_settings(cls, settings: AgentSettings, max_reconnects: int = 3) -> ConversationConfig:
        dead_air = settings.dead_air
        return cls(
            tell_agent_heard=settings.heard.tell_agent,
            think=settings.think_message(),
            agent_stall_s=dead_air.agent_stall_s,
            caller_idle_s=dead_air.caller_idle_s,
            dead_air_action=dead_air.action,
            reengage_message=dead_air.reengage_message,
            max_reengage=dead_air.max_reengage,
            goodbye_message=dead_air.goodbye_message,
            max_reconnects=max_reconnects,
            dtmf=settings.dtmf,
        )
