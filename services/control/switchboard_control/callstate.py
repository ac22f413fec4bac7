"""Reading calls from Redis: the record hash, the live set and the events stream.

A call is addressed by callSid; `callsid:<CallSid>` names its current stream (a call may
get a new stream after edge loss), and every per-call key is keyed by that streamSid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import HTTPException, status

from switchboard import redis_types
from switchboard.agent_settings import Speak
from switchboard.messages import CallField, Event, RecordState
from switchboard.redaction import redact
from switchboard.settings_secrets import masked

from .deps import State
from .models import CallDetail, CallSummary, FunctionCallRecord, TranscriptLine, TurnLatency

_PARAM_SECRET_HINTS = ("token", "secret", "key", "password", "bind")


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_sid: str
    stream_sid: str
    fields: dict[str, str]

    @property
    def state(self) -> str:
        return self.fields.get(CallField.STATE, RecordState.WAITING)

    @property
    def ended(self) -> bool:
        return self.state == RecordState.ENDED


def _text(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}


async def find(state: State, call_sid: str) -> CallRecord | None:
    stream_sid = redis_types.maybe_text(await state.redis.get(state.keys.call_by_callsid(call_sid)))
    if stream_sid is None:
        return None
    raw = redis_types.fields(await state.redis.hgetall(state.keys.call(stream_sid)))
    if not raw:
        return None
    return CallRecord(call_sid, stream_sid, _text(raw))


async def require(state: State, call_sid: str, *, live: bool = False) -> CallRecord:
    """The call, or 404; with live=True an ended call is a 409."""
    record = await find(state, call_sid)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"call {call_sid} not found")
    if live and record.ended:
        raise HTTPException(status.HTTP_409_CONFLICT, f"call {call_sid} has ended")
    return record


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def summary(fields: dict[str, str], call_sid: str | None = None) -> CallSummary:
    return CallSummary(
        call_sid=call_sid or fields.get(CallField.CALL_SID, ""),
        stream_sid=fields.get(CallField.STREAM_SID, ""),
        profile=fields.get(CallField.PROFILE) or None,
        worker=fields.get(CallField.WORKER) or None,
        edge=fields.get(CallField.EDGE) or None,
        state=fields.get(CallField.STATE, RecordState.WAITING),
        started_at=redis_types.number(fields.get(CallField.STARTED_AT)),
        turns=_int(fields.get(CallField.TURNS)) or 0,
        settings_source=fields.get(CallField.SETTINGS_SOURCE) or None,
        settings_version=_int(fields.get(CallField.SETTINGS_VERSION)),
    )


async def live_calls(state: State, limit: int, offset: int) -> tuple[list[CallSummary], int]:
    live_key = state.keys.live_calls()
    total = await state.redis.zcard(live_key)
    sids = await state.redis.zrange(live_key, offset, offset + limit - 1)
    if not sids:
        return [], total
    # Call hashes live on different cluster slots: a non-transactional pipeline is fine.
    pipe = state.redis.pipeline(transaction=False)
    for sid in redis_types.members(sids):
        pipe.hgetall(state.keys.call(sid.decode()))
    calls = [summary(_text(raw)) for raw in await pipe.execute() if raw]
    return calls, total


async def events(state: State, stream_sid: str) -> list[tuple[str, dict[str, Any]]]:
    raw = redis_types.entries(await state.redis.xrange(state.keys.events(stream_sid)))
    return [(entry_id.decode(), event) for entry_id, fields in raw if (event := decode_event(fields)) is not None]


def decode_event(fields: dict[bytes, bytes]) -> dict[str, Any] | None:
    """An event of a call's :events stream as every read path shows it: secrets masked (an
    error or a function's answer may quote a URL with credentials)."""
    try:
        event = orjson.loads(fields.get(b"p", b""))
    except orjson.JSONDecodeError:
        return None
    return redact(event) if isinstance(event, dict) and "type" in event else None


def _overrides(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        overrides = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(overrides, dict):
        return {}
    if isinstance(overrides.get("speak"), dict):
        # The voice may carry an endpoint with an API key: shown masked like stored settings.
        overrides["speak"] = masked({"speak": overrides["speak"]})["speak"]
    return overrides


def _parameters(raw: str | None) -> dict[str, str]:
    try:
        params = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(params, dict):
        return {}
    # customParameters may carry one-time tokens: never shown.
    return {
        str(k): ("***" if any(h in str(k).lower() for h in _PARAM_SECRET_HINTS) else str(v)) for k, v in params.items()
    }


async def detail(state: State, record: CallRecord) -> CallDetail:
    transcript: list[TranscriptLine] = []
    functions: list[FunctionCallRecord] = []
    errors: list[dict[str, Any]] = []
    latency: dict[tuple[int, int], TurnLatency] = {}  # (agent session, reply) → timing
    session = 0
    dead_air: list[dict[str, Any]] = []
    keypad: list[dict[str, Any]] = []  # entries as recorded: masked ones never held their digits
    transfers: list[dict[str, Any]] = []
    # An assistant line comes just before its reply starts; reply_heard names the reply.
    spoken: TranscriptLine | None = None
    by_reply: dict[int, TranscriptLine] = {}
    for _entry_id, event in await events(state, record.stream_sid):
        kind = event["type"]
        if kind == Event.TRANSCRIPT:
            line = TranscriptLine(role=str(event.get("role", "")), content=str(event.get("content", "")),
                                  ts=event.get("ts"))
            transcript.append(line)
            spoken = line if line.role == "assistant" else spoken
        elif kind == Event.AGENT_STARTED_SPEAKING and isinstance(event.get("reply"), int):
            if event["reply"] in by_reply:  # a new agent session numbers its replies from 1 again
                by_reply.clear()
                session += 1
            if spoken is not None:
                spoken.reply = event["reply"]
                by_reply[event["reply"]] = spoken
                spoken = None
        # Replies count from 1: an event without its number matches none.
        elif kind == Event.REPLY_HEARD and (heard := by_reply.get(event.get("reply", 0))) is not None:
            heard.heard_text, heard.unheard_text = event.get("heard_text"), event.get("unheard_text")
            heard.interrupted, heard.heard_ms = event.get("interrupted"), event.get("heard_ms")
            heard.audio_ms = event.get("audio_ms")
        elif (kind == Event.TURN_LATENCY and isinstance(event.get("reply"), int)
              and isinstance(event.get("stages"), dict)):
            turn = latency.setdefault((session, event["reply"]),
                                      TurnLatency(reply=event["reply"], stages={}, ts=event.get("ts")))
            turn.stages.update(event["stages"])  # a late LatencyReport adds to the record
            if event.get("switchboard_ms") is not None:
                turn.switchboard_ms = event["switchboard_ms"]
        elif kind == Event.DEAD_AIR:
            dead_air.append({k: v for k, v in event.items() if k != "type"})
        elif kind == Event.DTMF_ENTRY:
            keypad.append({k: v for k, v in event.items() if k != "type"})
        elif kind == Event.TRANSFER:
            transfers.append({k: v for k, v in event.items() if k != "type"})
        elif kind == Event.FUNCTION_CALL:
            functions.append(
                FunctionCallRecord(
                    name=str(event.get("name", "")), arguments=str(event.get("arguments", "")),
                    response=str(event.get("response", "")), outcome=str(event.get("outcome", "")),
                    ms=event.get("ms"), ts=event.get("ts"),
                )
            )
        elif kind == Event.ERROR:
            errors.append({k: v for k, v in event.items() if k != "type"})
    fields = record.fields
    return CallDetail(
        **summary(fields, record.call_sid).model_dump(),
        ended_at=redis_types.number(fields.get(CallField.ENDED_AT)),
        outcome=fields.get(CallField.OUTCOME) or None,
        end_reason=fields.get(CallField.END_REASON) or None,
        parameters=_parameters(fields.get(CallField.PARAMS)),
        overrides=_overrides(fields.get(CallField.OVERRIDES)),
        transcript=transcript,
        function_calls=functions,
        errors=errors,
        latency=sorted(latency.values(), key=lambda turn: turn.ts or 0),
        dead_air=dead_air,
        keypad=keypad,
        transfers=transfers,
    )


def speak_payload(speak: Speak) -> dict[str, Any]:
    return speak.model_dump(mode="json", exclude_none=True)
