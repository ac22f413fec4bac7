"""The call.ended payload, built from Redis once, when its first delivery is attempted.

A call may have had several streams (an edge loss, a caller back from a transfer nobody
answered): each new stream names the one it continues (`resume_of`), and its events begin with
a copy of the transcript and function calls before it (what the new Deepgram session was told).
The payload walks the chain from the first stream and takes each stream's own part once.

What it holds was masked where it was recorded (secrets, masked keypad entries): this module
adds nothing that was not already in the call's events and record. Standard Webhooks' envelope:
`{"type": "call.ended", "timestamp", "data": {…}}`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, cast

from switchboard import ended_calls
from switchboard.journal import JournalError, Source, decode_record
from switchboard.messages import CallField
from switchboard.redis_types import number

from .. import callstate
from ..callstate import CallRecord
from ..deps import State
from . import links

MAX_STREAMS = 12  # a call reconnects at most a few times; a cycle in resume_of must not loop


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if ts else None


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


async def chain(state: State, stream_sid: str) -> list[tuple[str, dict[str, str]]]:
    """The call's streams, oldest first, each with its record (a stream whose record expired ends the walk)."""
    out: list[tuple[str, dict[str, str]]] = []
    seen: set[str] = set()
    sid: str | None = stream_sid
    while sid and sid not in seen and len(out) < MAX_STREAMS:
        seen.add(sid)
        raw = await state.redis.hgetall(state.keys.call(sid))
        if not raw:
            break
        fields = {_text(k): _text(v) for k, v in raw.items()}
        out.append((sid, fields))
        sid = fields.get(CallField.RESUME_OF) or None
    return out[::-1]


def _copies(events: list[tuple[str, dict[str, Any]]]) -> tuple[int, int]:
    """Transcript lines and function calls a resumed stream copied from the one before."""
    lines = calls = 0
    for _id, event in events:
        if event["type"] == "resumed_from_stream":
            return lines, calls
        lines += event["type"] == "transcript"
        calls += event["type"] == "function_call"
    return 0, 0  # not a resumed stream: everything is its own


async def build(state: State, call_sid: str, item: dict[str, Any], *, link_key: bytes | None,
                public_url: str | None, link_ttl_s: int, transcript: bool = True) -> dict[str, Any]:
    streams = await chain(state, item["stream_sid"])
    if not streams:
        # The records expired before anyone could deliver (control was away for longer than
        # CALL_RETENTION_S): what the worker's end said is all there is.
        return _envelope(item.get("ended_at"), {
            "call_sid": call_sid, "stream_sids": [item["stream_sid"]], "ended_at": _iso(item.get("ended_at")),
            "outcome": item.get("outcome"), "end_reason": item.get("reason"), "partial": True,
        })
    lines: list[dict[str, Any]] = []
    functions: list[dict[str, Any]] = []
    keypad: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    latency: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for index, (sid, fields) in enumerate(streams):
        events = await callstate.events(state, sid)
        copied_lines, copied_calls = _copies(events) if index else (0, 0)
        detail = await callstate.detail(state, CallRecord(call_sid, sid, fields))
        lines += [line.model_dump(exclude_none=True) for line in detail.transcript[copied_lines:]]
        functions += [call.model_dump(exclude_none=True) for call in detail.function_calls[copied_calls:]]
        keypad += detail.keypad
        steps += detail.transfers
        latency += [turn.model_dump(exclude_none=True) for turn in detail.latency]
        errors += detail.errors
    first, last = streams[0][1], streams[-1][1]
    params = ended_calls.parameters(first)
    caller, callee = ended_calls.numbers(first, params)
    started, ended = number(first.get(CallField.STARTED_AT)), number(last.get(CallField.ENDED_AT))
    data: dict[str, Any] = {
        "call_sid": call_sid,
        "stream_sids": [sid for sid, _ in streams],
        "direction": ended_calls.direction(first, params),
        "from": caller or None,
        "to": callee or None,
        "caller_name": params.get("CallerName") or None,
        "profile": first.get(CallField.PROFILE) or None,
        "started_at": _iso(started),
        "ended_at": _iso(ended),
        "duration_s": round(ended - started, 3) if started and ended else None,
        "outcome": last.get(CallField.OUTCOME) or item.get("outcome"),
        "end_reason": last.get(CallField.END_REASON) or item.get("reason") or None,
        "hangup_requested": last.get(CallField.HANGUP_REQUESTED) or None,
        "turns": sum(int(fields.get(CallField.TURNS) or 0) for _, fields in streams),
        "keypad": keypad,
        "function_calls": functions,
        "transfers": _transfers(steps),
        "amd": _amd(first, last),
        "latency": latency,
        "errors": errors,
        "recording": await _recording(state, call_sid, streams[-1][0], link_key, public_url, link_ttl_s),
    }
    if transcript:
        data["transcript"] = lines
    return _envelope(ended, data)


def _envelope(ended: float | None, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "call.ended", "timestamp": _iso(ended or time.time()), "data": data}


def _transfers(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Transfer steps grouped by transfer: its target and mode, where it ended up, each step's time."""
    grouped: dict[str, dict[str, Any]] = {}
    for step in steps:
        tid = str(step.get("id") or "")
        if not tid:
            continue
        entry = grouped.setdefault(tid, {"id": tid, "mode": step.get("mode"), "target": step.get("target"),
                                         "by": step.get("by"), "steps": []})
        entry["state"] = step.get("step")
        if step.get("reason"):
            entry["reason"] = step["reason"]
        if step.get("target_call_sid"):
            entry["target_call_sid"] = step["target_call_sid"]
        entry["steps"].append({"step": step.get("step"), "at": _iso(step.get("ts"))})
    return list(grouped.values())


def _amd(first: dict[str, str], last: dict[str, str]) -> dict[str, Any] | None:
    for fields in (last, first):
        if fields.get(CallField.AMD_ANSWERED_BY):
            waited = fields.get(CallField.AMD_WAITED_MS)
            return {"answered_by": fields[CallField.AMD_ANSWERED_BY], "action": fields.get(CallField.AMD_ACTION),
                    "waited_ms": int(waited) if waited and waited.isdigit() else None}
    return None


async def _recording(state: State, call_sid: str, stream_sid: str, key: bytes | None, public_url: str | None,
                     ttl_s: int) -> dict[str, Any] | None:
    """A time-limited link to the WAV when the call's journal recorded audio."""
    if key is None or not public_url:
        return None
    journal = state.keys.journal(stream_sid)
    first = await state.redis.xrange(journal, count=1)
    if not first:
        return None
    try:
        record = decode_record(cast(dict[bytes, bytes], first[0][1]))
        audio = record.source is Source.START and bool(record.json()["settings"]["journal"]["audio"])
    except (JournalError, KeyError, TypeError, ValueError):
        return None
    if not audio:
        return None
    journal_left = await state.redis.ttl(journal)
    lifetime = min(ttl_s, journal_left) if journal_left > 0 else ttl_s
    expires = int(time.time() + lifetime)
    return {"url": links.url(public_url, key, call_sid, expires), "expires_at": _iso(expires)}
