"""The state of one conversation, as the worker sees it (pure: no I/O, no clock of its own).

It follows Deepgram's events and audio, the Deepgram session coming and going, and what the
edge reports back from Twilio (mark echoes, clears, timings), and decides what happens next
as a list of actions: the marks and the clear, what the caller heard, dead air, when the
call ends (now, or once the agent's current reply has been sent), whether a dropped session
is reopened or the call given up, what the new session is told, and which utterance a
takeover must replay. The worker's session carries the actions out; `switchboard-journal
replay` feeds a recorded call through the same object, so a whole call, reconnects and
re-asks included, can be reproduced offline.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import orjson

from .. import deepgram, entries
from ..entries import Entry, Kind
from ..messages import CallField, Event
from .actions import Action, Count, Emit, GiveUp, Hangup, Observe, Reconnect, Record, ToAgent, ToCaller
from .amd import AmdConfig, AmdGate, Decision, decide
from .config import ConversationConfig
from .context import build as build_context
from .dead_air import Activity, DeadAirWatch
from .dtmf import KeypadCollector
from .handoff import Handoff
from .replies import ReplyLedger

STABLE_SESSION_S = 30.0  # a Deepgram session this old resets the reconnect budget
# VAD fires a few hundred ms into an utterance: a replay starts this much earlier.
UTTERANCE_LEAD_MS = 700


class Conversation:
    def __init__(
        self, config: ConversationConfig, now: float, session_id: str | None = None, *, wall_offset_s: float = 0.0
    ) -> None:
        """`now` is the caller's clock (seconds); `wall_offset_s` turns it into Unix time (Redis' ids)."""
        self.session_id = session_id or os.urandom(3).hex()
        self._wall_offset_s = wall_offset_s
        self._activity = Activity(last_heard_at=now, last_agent_audio_at=now)
        self._ledger = ReplyLedger(config, self.session_id)
        self._dead_air = DeadAirWatch(config)
        self._config = config
        self._keypad = KeypadCollector(config.dtmf)
        self._handoff = Handoff()
        self._utterance_transit_us = 0
        self._utterance_at = ""
        # The Deepgram session and the end of the call.
        self.connected = False
        self._connected_at = now
        self._reconnects = 0
        self._last_error: str | None = None
        self._reask = False
        self._unanswered: str | None = None
        self._stopped = False
        self._end_after_reply: str | None = None
        self.hangup_reason: str | None = None
        # Outbound calls with answering-machine detection (amd.py): the greeting waits for the verdict.
        self._amd: AmdGate | None = None
        self._say_when_connected: str | None = None

    # --- configuration --------------------------------------------------------------------------
    @property
    def config(self) -> ConversationConfig:
        return self._config

    @config.setter
    def config(self, config: ConversationConfig) -> None:
        """New settings mid-call (a prompt or voice change): notes about what was heard use them."""
        self._config = self._ledger.config = self._dead_air.config = config
        self._keypad.config = config.dtmf

    @property
    def playing(self) -> bool:
        """Some reply may still be playing to the caller."""
        return self._ledger.playing

    @property
    def agent_speaking(self) -> bool:
        return self._ledger.speaking is not None

    # --- Deepgram → ---------------------------------------------------------------------------
    def on_agent_message(self, msg: dict[str, Any], now: float) -> list[Action]:
        kind = msg.get("type")
        actions: list[Action] = []
        if kind == "UserStartedSpeaking":
            self._caller_active(now)
            self._activity.caller_speaking = True  # until the transcript of what they said arrives
            self._utterance_transit_us = 0
            # Always clear: a clear that finds nothing to flush costs nothing, and a missed
            # one would let the agent talk over the caller.
            actions.append(ToCaller(entries.clear()))
            if self.playing or self.agent_speaking:
                actions.append(Emit(Event.BARGE_IN, {"reply": self._ledger.latest()}))
                actions.append(Observe("barge_in", ""))
            else:
                actions.append(Emit(Event.USER_STARTED_SPEAKING, {}))
            self._ledger.speaking = None
            # Where this utterance began, as a Redis stream id (ms): a takeover replays it
            # to the new session if it is never transcribed.
            self._utterance_at = f"{int((now + self._wall_offset_s) * 1000) - UTTERANCE_LEAD_MS}-0"
            actions.append(Record({CallField.UTT_POS: self._utterance_at}))
        elif kind == "ConversationText":
            role, content = str(msg.get("role", "")), str(msg.get("content", ""))
            actions.append(Emit(Event.TRANSCRIPT, {"role": role, "content": content}))
            if role == "user":
                self._caller_active(now)
                self._activity.caller_speaking = False
                # That utterance is answered: marked with its own position, so that the two
                # writes may land in either order ("equal" means nothing to replay either way).
                actions.extend((Count(CallField.TURNS), Record({CallField.UTT_ANSWERED: self._utterance_at})))
            elif role == "assistant":
                self._ledger.assistant_text(content)
                self._activity.last_heard_at = now
        elif kind == "AgentStartedSpeaking":
            self._handoff.reply_started()
            actions.extend(self._ledger.start(now, msg, self._utterance_transit_us))
            self._utterance_transit_us = 0
            self._activity.last_agent_audio_at = now
            self._dead_air.reply_started()
        elif kind == "AgentAudioDone":
            actions.extend(self._ledger.audio_done())
            if self._end_after_reply is not None:
                actions.extend(self.request_hangup(self._end_after_reply))
        elif kind == "LatencyReport":
            actions.extend(self._ledger.latency_report(msg))
        elif kind in ("AgentThinking", "FunctionCallRequest"):
            self._activity.last_heard_at = now  # the agent is busy answering
        elif kind == "InjectionRefused":
            actions.extend(self._dead_air.injection_refused(self._end_call))
        elif kind == "Error":
            self._last_error = str(msg.get("code", "UNKNOWN"))
        return actions + self._played(now)

    def on_agent_audio(self, nbytes: int, now: float) -> list[Action]:
        """Call after the audio itself went to :out: a mark goes right behind it when due."""
        self._activity.last_agent_audio_at = self._activity.last_heard_at = now
        return self._ledger.audio(nbytes)

    # --- the Deepgram session -------------------------------------------------------------------
    def context(self, events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """`agent.context.messages` for a new session, from the call's recorded events so far."""
        built = build_context(events, reask=self._reask)
        self._reask = False
        self._unanswered = built.unanswered
        return built.messages

    def on_agent_connected(self, now: float) -> list[Action]:
        """A Deepgram session is ready (SettingsApplied): ask again what the old one never answered."""
        self.connected = True
        self._connected_at = now
        self._activity.last_agent_audio_at = now
        held = self._held_words()  # a greeting or voicemail message decided before the session was up
        if self._unanswered is None:
            return held
        message, self._unanswered = self._unanswered, None
        return [*held, ToAgent(deepgram.inject_user_message(message)), Emit(Event.REASK, {"content": message})]

    def on_agent_closed(self, now: float, *, expected: bool = False) -> list[Action]:
        """The Deepgram session ended. Unless the call is ending anyway (`expected`): reopen it, or give up.

        What was sent of a reply in progress is all there is of it.
        """
        self.connected = False
        self._activity.last_agent_audio_at = now
        actions = self._ledger.audio_done() if self.agent_speaking else []
        actions.extend(self._keypad.agent_gone())
        if expected or self._stopped:
            return actions
        code = self._last_error or "closed"
        if code != "closed" and code not in deepgram.RECONNECTABLE_ERRORS:
            return [*actions, *self.request_hangup(f"deepgram_error_{code}"), GiveUp(f"deepgram_{code}")]
        if now - self._connected_at > STABLE_SESSION_S:
            self._reconnects = 0  # the retry budget is for a flapping service, not for a long call
        self._reconnects += 1
        if self._reconnects > self._config.max_reconnects:
            return [*actions, *self.request_hangup("deepgram_gone"), GiveUp("deepgram_gone")]
        self._last_error = None
        return [*actions, Emit(Event.AGENT_RECONNECT, {"cause": code, "attempt": self._reconnects}),
                Observe("reconnect", code), Reconnect(code)]

    def on_agent_unavailable(self, reason: str, outcome: str) -> list[Action]:
        """No Deepgram session could be opened (refused, or the retries ran out)."""
        return [*self.request_hangup(reason), GiveUp(outcome)]

    # --- the end of the call ------------------------------------------------------------------------
    def request_hangup(self, reason: str, *, after_reply: bool = False) -> list[Action]:
        """End the call: now (the edge closes once what was sent has played), or after the agent's next reply."""
        if self.hangup_reason is not None:
            return []
        if after_reply:
            self._end_after_reply = reason
            return []
        self.hangup_reason = reason
        # Twilio asks the control API what to do after the stream closes: hang up, not reconnect.
        return [ToCaller(entries.hangup(reason)), Record({CallField.HANGUP_REQUESTED: reason}),
                Emit(Event.HANGUP_REQUESTED, {"reason": reason}), Hangup(reason)]

    def on_caller_stop(self) -> None:
        """The edge says the stream is over: nothing more is decided for the caller."""
        self._stopped = True

    # --- Twilio (through the edge) → ------------------------------------------------------------
    def on_caller_transit(self, transit_us: int) -> None:
        """The worst edge → worker transit in a batch of caller audio."""
        if transit_us > self._utterance_transit_us:
            self._utterance_transit_us = transit_us

    def on_caller_entry(self, entry: Entry, now: float) -> list[Action]:
        if entry.kind is Kind.MARK:
            actions, audible = self._ledger.mark_echoed(entry.payload.decode(errors="replace"), entry.t_us / 1e6, now)
            if audible:
                self._activity.last_heard_at = now
            return actions + self._played(now)
        if entry.kind is Kind.CLEARED:
            try:
                flushed = [str(name) for name in orjson.loads(entry.payload or b"[]")]
            except (orjson.JSONDecodeError, TypeError):
                flushed = []
            return self._ledger.cleared(flushed, entry.t_us / 1e6) + self._played(now)
        if entry.kind is Kind.TIMING:
            return self._ledger.edge_timing(entry.payload)
        if entry.kind is Kind.DTMF:
            self._caller_active(now)
            return self._keypad.key(entry.payload.decode(errors="replace"), now)
        return []

    # --- keypad input (dtmf.py) -------------------------------------------------------------------
    @property
    def masks_dtmf(self) -> bool:
        """Keys are never stored in clear (the journal's copy of a dtmf entry is masked too)."""
        return self._keypad.masking

    def collect_digits(self, call_id: str, arguments: Any, now: float) -> list[Action]:
        """The agent's `collect_digits` call: answered (DigitsCollected) once an entry is complete."""
        return self._keypad.request(call_id, arguments, now)

    def reveal_digits(self, value: Any) -> Any:
        """Function arguments with masked entries' references replaced by their digits (webhooks only)."""
        return self._keypad.reveal(value)

    # --- leaving the agent (handoff.py) ---------------------------------------------------------
    def when_played(self, token: str, now: float, *, expect_reply: bool, reply_wait_s: float) -> list[Action]:
        """`Played(token)` once what the agent says has played to the caller (at once if nothing does)."""
        return list(self._handoff.wait(token, now, expect_reply=expect_reply, reply_wait_s=reply_wait_s,
                                       quiet=self._quiet))

    def cancel_when_played(self, token: str) -> None:
        self._handoff.cancel(token)

    @property
    def _quiet(self) -> bool:
        return not self.playing and not self.agent_speaking

    def _played(self, now: float) -> list[Action]:
        return list(self._handoff.check(now, quiet=self._quiet)) if self._handoff.waiting else []

    # --- answering-machine detection (amd.py) -------------------------------------------------------
    def start_amd(self, config: AmdConfig, now: float, *, verdict: str | None = None,
                  detection_ms: int | None = None, decided: bool = False) -> list[Action]:
        """This outbound call's greeting waits for Twilio's verdict. A verdict known already is carried
        out at once, unless `decided` (a takeover: the previous session carried it out)."""
        self._amd = AmdGate(config, now)
        if verdict is None:
            return []
        if decided:
            self._amd.settle(decide(verdict, config, waited_ms=0, detection_ms=detection_ms))
            return []
        return self.on_amd_verdict(verdict, detection_ms, now)

    def on_amd_verdict(self, answered_by: str, detection_ms: int | None, now: float) -> list[Action]:
        """Twilio's verdict: greet, leave the voicemail message and hang up, or hang up (once)."""
        if self._amd is None:
            return []  # detection was not asked for on this call: nothing waits for a verdict
        decision = self._amd.verdict(answered_by, detection_ms, now)
        return self._amd_decided(decision, now) if decision is not None else []

    @property
    def holding_caller_audio(self) -> bool:
        """The agent must not hear the line: its verdict is pending, or a machine answered."""
        return self._amd is not None and self._amd.holding_audio

    def withheld_caller_audio(self, nbytes: int) -> None:
        if self._amd is not None:
            self._amd.withheld_bytes += nbytes

    def _amd_decided(self, decision: Decision, now: float) -> list[Action]:
        assert self._amd is not None
        self._caller_active(now)  # the dead-air clocks start at the decision, not at the answer
        config = self._amd.config
        actions: list[Action] = [
            Emit(Event.AMD_DECISION, {**decision.event(), "withheld_bytes": self._amd.withheld_bytes}),
            Record({CallField.AMD_ANSWERED_BY: decision.answered_by, CallField.AMD_ACTION: decision.action,
                    CallField.AMD_WAITED_MS: str(decision.waited_ms),
                    # Known now, recorded now: Twilio's `completed` may reach control before the call's end does.
                    **({CallField.OUTCOME: decision.outcome} if decision.outcome else {})}),
        ]
        if decision.outcome is None:
            return actions + self._say(config.greeting)
        reason = "voicemail" if decision.behaviour == "voicemail" else f"amd_{decision.answered_by}"
        if decision.action == "leave_message" and config.voicemail_message:
            actions += self._say(config.voicemail_message)
            actions += self.request_hangup(reason, after_reply=True)  # once the message has been sent
        else:
            actions += self.request_hangup(reason)
        return [*actions, GiveUp(decision.outcome)]

    def _say(self, text: str | None) -> list[Action]:
        if not text:
            return []
        if self.connected:
            return [ToAgent(deepgram.inject_agent_message(text))]
        self._say_when_connected = text
        return []

    def _held_words(self) -> list[Action]:
        text, self._say_when_connected = self._say_when_connected, None
        return [ToAgent(deepgram.inject_agent_message(text))] if text else []

    # --- time ---------------------------------------------------------------------------------
    def tick(self, now: float) -> list[Action]:
        """Twice a second. While an answering machine is being detected the line is quiet on purpose:
        only the verdict's timeout, no dead air; else `_tick`."""
        if self._amd is not None and self._amd.pending and not self._stopped:
            decision = self._amd.tick(now)
            return self._amd_decided(decision, now) if decision is not None else []
        return self._tick(now)

    def _tick(self, now: float) -> list[Action]:
        """Twice a second: dead air and keypad timeouts while a Deepgram session is up and the call is
        not ending; a pending handoff's deadline in any case."""
        if self._stopped:
            return []
        if not self.connected or self.hangup_reason is not None:
            return self._played(now)  # a handoff is not held up by a reconnecting agent
        # Unconfirmed replies expire first: that may be what makes the call quiet for a handoff.
        actions = self._ledger.expire_unconfirmed(now)
        actions += self._keypad.tick(now) + self._played(now)
        decided = self._dead_air.tick(now, self._ledger, self._activity, self._end_call)
        if any(isinstance(action, Reconnect) for action in decided):
            self._reask = True  # the reply it was giving was never heard: the new session answers again
        return actions + decided

    # --- helpers ------------------------------------------------------------------------------
    def _end_call(self, reason: str, after_reply: bool) -> list[Action]:
        return self.request_hangup(reason, after_reply=after_reply)

    def _caller_active(self, now: float) -> None:
        self._activity.last_heard_at = now
        self._dead_air.caller_active()
