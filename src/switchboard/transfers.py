"""Transfers to a person: the record in Redis, its states, the TwiML of each leg, the whisper (pure).

A worker starts a transfer (the agent's `transfer_call`, or `POST /v1/calls/{callSid}/transfer`
through a command) once the agent's sentence has played; from then on Twilio drives it with
signed callbacks to the control API, which any replica can answer from this record:

    cold:  the call → <Dial><Number statusCallback>target</Number></Dial>, action → /twiml/transfer/dialed
           answered → connected; the dial's end → completed, or no answer → back to the agent
    warm:  the caller → <Dial><Conference waitUrl=hold>room</Conference></Dial><Redirect>/twiml/transfer/return
           the target → <Say>whisper</Say><Dial><Conference>room</Conference></Dial>  (Calls API)
           answered → the target hears the whisper → joins: connected (the agent's stream is gone)
           busy / no answer / failed / the ring timeout → the caller is redirected to the return URL,
           which opens a new stream of the same call (one-time token and resume grant), and the
           agent carries on with its context and says nobody answered

A call has one transfer at a time (`TransferKeys.record(callSid)`); each step is also an event
(`transfer`) in the agent stream's events, so SSE, the call detail and call.ended show them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any
from xml.etree import ElementTree as ET

RECORD_TTL_S = 24 * 3600
MAX_WHISPER_CHARS = 600
# A warm transfer whose target neither answered nor failed this long past its ring timeout is
# given up by the control API's sweeper (a lost callback must not leave the caller on hold).
SWEEP_GRACE_S = 15
# A caller sent back to the agent whose new stream has not arrived this long after: the sweeper
# asks Twilio whether the caller is still there.
RETURN_GRACE_S = 30


@dataclass(frozen=True, slots=True)
class TransferKeys:
    prefix: str = "sb:"

    def record(self, call_sid: str) -> str:
        """Hash: the call's current transfer (`Transfer`)."""
        return f"{self.prefix}transfer:{{{call_sid}}}"

    def pending(self) -> str:
        """Sorted set callSid → when the sweeper looks at an open transfer Twilio has said nothing about (Unix s)."""
        return f"{self.prefix}transfers:pending"


class State(StrEnum):
    WAITING = "waiting"  # for the agent's sentence to play
    DIALING = "dialing"  # cold: the call is redirected to <Dial> the target
    HOLDING = "holding"  # warm: the caller holds in the conference, the target rings
    ANSWERED = "answered"  # warm: the target answered and hears the whisper
    CONNECTED = "connected"  # the caller and the person talk; the agent is gone
    COMPLETED = "completed"  # the person's part of the call is over
    NO_ANSWER = "no_answer"  # busy, no answer, failed: the caller goes back to the agent
    RETURNING = "returning"  # the return TwiML was served: a new stream is on its way
    RETURNED = "returned"  # the caller is with the agent again
    ABANDONED = "abandoned"  # the caller hung up while holding
    FAILED = "failed"  # Twilio refused a step before the caller moved: the agent carries on


# The call is not over while a transfer is in one of these: call.ended waits.
OPEN = frozenset({State.WAITING, State.DIALING, State.HOLDING, State.ANSWERED, State.NO_ANSWER, State.RETURNING})
# Twilio's final call statuses other than completed.
UNANSWERED = frozenset({"busy", "no-answer", "failed", "canceled"})


@dataclass(slots=True)
class Transfer:
    id: str
    call_sid: str
    stream_sid: str  # the agent's stream the call left
    mode: str  # cold | warm
    target: str
    by: str  # agent | api
    state: str = State.WAITING
    profile: str = ""
    reason: str = ""  # why it did not connect
    summary: str = ""  # what the target hears first (warm)
    hold_message: str = ""
    hold_music_url: str = ""
    no_answer_message: str = ""
    ring_timeout_s: int = 20
    caller_id: str = ""  # the number the target sees
    target_call_sid: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    connected_at: float = 0.0
    ended_at: float = 0.0
    returned_stream: str = ""

    @property
    def room(self) -> str:
        return f"sb-{self.id}"

    def to_fields(self) -> dict[str, str]:
        return {name: str(value) for name, value in asdict(self).items()}

    @classmethod
    def from_fields(cls, raw: Mapping[bytes | str, bytes | str]) -> Transfer | None:
        text = {(k.decode() if isinstance(k, bytes) else k): (v.decode(errors="replace") if isinstance(v, bytes) else v)
                for k, v in raw.items()}
        if not text.get("id") or not text.get("call_sid"):
            return None
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in text:
                continue
            value = text[f.name]
            try:
                values[f.name] = int(value) if f.type == "int" else float(value) if f.type == "float" else value
            except ValueError:
                continue
        try:
            return cls(**values)
        except TypeError:
            return None

    def step(self, state: State, *, label: str | None = None, **extra: Any) -> dict[str, Any]:
        """The `transfer` event of a step (also what the call record's `transfer` field holds);
        `label` names a step that does not change the state (the target's phone is ringing)."""
        self.state = state
        self.updated_at = round(time.time(), 3)
        event = {"id": self.id, "mode": self.mode, "target": self.target, "by": self.by, "step": label or str(state)}
        if self.target_call_sid:
            event["target_call_sid"] = self.target_call_sid
        if self.reason:
            event["reason"] = self.reason
        return {**event, **{k: v for k, v in extra.items() if v not in (None, "")}}


# --- what Twilio's callbacks mean --------------------------------------------------------------------
def on_target_status(transfer: Transfer, call_status: str) -> tuple[State | None, bool]:
    """(new state or None, whether the caller must be sent back now) for a status of the target's leg."""
    state = transfer.state
    if call_status == "in-progress":
        if state == State.DIALING:
            return State.CONNECTED, False  # cold: <Dial> bridges the moment the target answers
        if state == State.HOLDING:
            return State.ANSWERED, False  # warm: the whisper plays, then the target joins
        return None, False
    if call_status == "completed" and state == State.CONNECTED:
        return State.COMPLETED, False
    if call_status == "completed" or call_status in UNANSWERED:
        if state in (State.HOLDING, State.ANSWERED):
            return State.NO_ANSWER, True  # the caller holds in the conference: fetch them back
        if state == State.DIALING:
            return State.NO_ANSWER, False  # cold: the <Dial> action brings them back
    return None, False


def on_conference_event(transfer: Transfer, event: str, call_sid: str) -> tuple[State | None, bool]:
    """(new state or None, whether to cancel the target's leg) for a conference status callback."""
    if event == "participant-join" and call_sid and call_sid != transfer.call_sid \
            and transfer.state in (State.HOLDING, State.ANSWERED):
        return State.CONNECTED, False  # only the target's leg joins the caller's room
    if event == "participant-leave" and call_sid == transfer.call_sid \
            and transfer.state in (State.HOLDING, State.ANSWERED):
        return State.ABANDONED, True  # the caller hung up on hold: nobody is left to connect
    return None, False


def on_dial_action(transfer: Transfer, dial_status: str, bridged: bool) -> State:
    """The cold transfer's <Dial> ended: the person's part is over, or nobody answered."""
    if bridged or (dial_status == "completed" and transfer.state == State.CONNECTED):
        return State.COMPLETED
    return State.NO_ANSWER


# --- TwiML -------------------------------------------------------------------------------------------
def _document(response: ET.Element) -> str:
    return ET.tostring(response, encoding="unicode")


def _noun(dial: ET.Element, target: str, status_url: str | None) -> None:
    noun = ET.SubElement(dial, "Sip" if target.startswith(("sip:", "sips:")) else "Number")
    noun.text = target
    if status_url:
        noun.set("statusCallback", status_url)
        noun.set("statusCallbackMethod", "POST")
        noun.set("statusCallbackEvent", "answered completed")


def cold_twiml(target: str, *, timeout_s: int, action_url: str | None, status_url: str | None) -> str:
    """The call, redirected: dial the target; the action (if any) hears how it went."""
    response = ET.Element("Response")
    dial = ET.SubElement(response, "Dial", timeout=str(timeout_s))
    if action_url:
        dial.set("action", action_url)
        dial.set("method", "POST")
    _noun(dial, target, status_url)
    return _document(response)


def hold_twiml(transfer: Transfer, *, wait_url: str, conference_url: str, return_url: str) -> str:
    """The caller, redirected into the transfer's conference to hold; when the seat ends, back to us."""
    response = ET.Element("Response")
    dial = ET.SubElement(response, "Dial")
    conference = ET.SubElement(dial, "Conference", waitUrl=wait_url, waitMethod="POST",
                               startConferenceOnEnter="false", endConferenceOnExit="true", beep="false",
                               statusCallback=conference_url, statusCallbackMethod="POST",
                               statusCallbackEvent="join leave")
    conference.text = transfer.room
    ET.SubElement(response, "Redirect", method="POST").text = return_url
    return _document(response)


def target_twiml(transfer: Transfer) -> str:
    """The target's leg once it answers: the whisper, then into the caller's conference."""
    response = ET.Element("Response")
    if transfer.summary:
        ET.SubElement(response, "Say").text = transfer.summary
    dial = ET.SubElement(response, "Dial")
    ET.SubElement(dial, "Conference", startConferenceOnEnter="true", endConferenceOnExit="true",
                  beep="false").text = transfer.room
    return _document(response)


def wait_twiml(transfer: Transfer) -> str:
    """What the caller hears on hold (the conference's waitUrl)."""
    response = ET.Element("Response")
    if transfer.hold_message:
        ET.SubElement(response, "Say").text = transfer.hold_message
    if transfer.hold_music_url:
        ET.SubElement(response, "Play", loop="0").text = transfer.hold_music_url
    return _document(response)


def hangup_twiml() -> str:
    response = ET.Element("Response")
    ET.SubElement(response, "Hangup")
    return _document(response)


# --- the whisper -------------------------------------------------------------------------------------
def whisper(events: Iterable[Mapping[str, Any]], parameters: Mapping[str, str], reason: str | None = None) -> str:
    """What the person taking a warm transfer hears first, from the call so far: who is calling,
    what they want (the agent's own summary if it gave one, else the caller's latest words), and
    what has been done (functions the agent used, keys entered)."""
    said: list[str] = []
    done: list[str] = []
    keyed = 0
    for event in events:
        kind = event.get("type")
        if kind == "transcript" and event.get("role") == "user" and event.get("content"):
            said.append(str(event["content"]))
        elif kind == "function_call" and event.get("name") and event.get("name") not in ("transfer_call",):
            outcome = "done" if event.get("outcome") == "ok" else "failed"
            done.append(f"{str(event['name']).replace('_', ' ')} ({outcome})")
        elif kind == "dtmf_entry" and event.get("count"):
            keyed += 1
    name = _clean(parameters.get("CallerName") or parameters.get("caller_name") or "")
    number = _clean(parameters.get("From") or parameters.get("from") or "")
    who = " ".join(part for part in (name, f"({number})" if name and number else number) if part) or "an unknown number"
    wants = _clean(reason) if reason else "; ".join(_clean(s).rstrip(".") for s in said[-2:])
    parts = [f"Call from {who}."]
    if wants:
        parts.append(f"They want: {wants.rstrip('.')}.")
    if done or keyed:
        steps = done[-4:] + ([f"{keyed} keypad entr{'y' if keyed == 1 else 'ies'}"] if keyed else [])
        parts.append("So far: " + ", ".join(steps) + ".")
    parts.append("Connecting you now.")
    text = " ".join(parts)
    return text if len(text) <= MAX_WHISPER_CHARS else text[: MAX_WHISPER_CHARS - 1].rsplit(" ", 1)[0] + "…"


def _clean(text: str) -> str:
    return " ".join(str(text).split())[:300]
