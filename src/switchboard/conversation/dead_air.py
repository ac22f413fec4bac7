"""Dead air: the agent stalled mid-reply, or nobody has said anything for a while (pure)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

from ..messages import Event
from .actions import Action, Emit, Observe, Reconnect, ToAgent
from .config import ConversationConfig
from .replies import ReplyLedger

EndCall = Callable[[str, bool], list[Action]]  # (reason, after the current reply) → actions


@dataclass(slots=True)
class Activity:
    """When the line was last audible, either way; shared by the parts of the conversation."""

    last_heard_at: float  # anything audible or said, either way
    last_agent_audio_at: float
    caller_speaking: bool = False  # from UserStartedSpeaking until the transcript of what they said


class DeadAirWatch:
    def __init__(self, config: ConversationConfig) -> None:
        self.config = config
        self.reengaged = 0
        self.stall_reported = False
        self.goodbye_pending = False  # the goodbye was asked for; the call ends after it

    def caller_active(self) -> None:
        self.reengaged = 0

    def reply_started(self) -> None:
        self.stall_reported = False

    def tick(self, now: float, ledger: ReplyLedger, activity: Activity, end_call: EndCall) -> list[Action]:
        config = self.config
        if ledger.speaking is not None:
            silent = now - max(activity.last_agent_audio_at, ledger.speaking.played_out_at())
            if not config.agent_stall_s or silent < config.agent_stall_s or self.stall_reported:
                return []
            self.stall_reported = True
            action = "reconnect" if config.dead_air_action == "reengage" else "end_call"
            activity.last_heard_at = now
            out: list[Action] = [
                Emit(Event.DEAD_AIR, {"kind": "agent_stall", "silent_s": round(silent, 1), "action": action,
                                  "reply": ledger.speaking.number}),
                Observe("dead_air", f"agent_stall:{action}"),
            ]
            if action == "reconnect":
                return [*out, Reconnect("agent_stall")]
            return [*out, *end_call("dead_air_agent_stall", False)]
        if ledger.playing or activity.caller_speaking or not config.caller_idle_s:
            return []
        idle = now - activity.last_heard_at
        if idle < config.caller_idle_s:
            return []
        activity.last_heard_at = now  # the next check is a full period away
        if config.dead_air_action == "reengage" and self.reengaged < config.max_reengage:
            self.reengaged += 1
            action, text = "reengage", config.reengage_message
        else:
            action, text = "end_call", config.goodbye_message
            self.goodbye_pending = True
        message = orjson.dumps({"type": "InjectAgentMessage", "message": text}).decode()
        actions: list[Action] = [
            Emit(Event.DEAD_AIR, {"kind": "caller_idle", "silent_s": round(idle, 1), "action": action,
                              "attempt": self.reengaged}),
            Observe("dead_air", f"caller_idle:{action}"),
            ToAgent(message),
        ]
        if action == "end_call":
            actions.extend(end_call("dead_air_caller_idle", True))
        return actions

    def injection_refused(self, end_call: EndCall) -> list[Action]:
        """The goodbye was refused (someone was speaking): hang up anyway rather than leave dead air."""
        if not self.goodbye_pending:
            return []
        self.goodbye_pending = False
        return end_call("dead_air_caller_idle", False)
