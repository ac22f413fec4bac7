"""Outbound calls in the call list and the call detail (hooks of routes.calls).

A call is listed from the moment it is queued: its media stream does not exist yet, so until it
does the call is shown from its outbound record (state `dialing`); once the stream has started
the stream's own record is shown, with the outbound part (`direction`, `outbound`) added.
"""

from __future__ import annotations

import orjson
from fastapi import HTTPException, status

from switchboard.messages import CallField
from switchboard.outbound import FINAL, OField, OutboundKeys
from switchboard.redis_types import number

from ..deps import State
from ..models import CallDetail, CallSummary, OutboundView
from .store import fields_of, text

DIALING = "dialing"  # the state of an outbound call whose stream has not started


def view(fields: dict[str, str], *, amd_action: str | None = None, amd_waited_ms: int | None = None) -> OutboundView:
    """An outbound call as the API shows it (in a call's summary and detail), from its record."""
    try:
        context = orjson.loads(fields.get(OField.CONTEXT) or "{}")
    except orjson.JSONDecodeError:
        context = {}
    return OutboundView(
        to=fields.get(OField.TO, ""), from_=fields.get(OField.FROM, ""), status=fields.get(OField.STATUS, "queued"),
        outcome=fields.get(OField.OUTCOME) or None, error=fields.get(OField.ERROR) or None,
        machine_detection=fields.get(OField.AMD) == "1", answered_by=fields.get(OField.ANSWERED_BY) or None,
        amd_ms=_int(fields.get(OField.AMD_MS)), amd_action=amd_action, amd_waited_ms=amd_waited_ms,
        context=context if isinstance(context, dict) else {}, campaign=fields.get(OField.CAMPAIGN) or None,
        destination=_int(fields.get(OField.INDEX)), created_at=number(fields.get(OField.CREATED_AT)),
        answered_at=number(fields.get(OField.ANSWERED_AT)), ended_at=number(fields.get(OField.ENDED_AT)),
        duration_s=_int(fields.get(OField.DURATION_S)),
    )


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _summary(fields: dict[str, str]) -> CallSummary:
    return CallSummary(call_sid=fields.get(OField.CALL_SID, ""), stream_sid="",
                       profile=fields.get(OField.PROFILE) or None, state=DIALING,
                       started_at=float(fields.get(OField.CREATED_AT) or 0) or None,
                       direction="outbound", outbound=view(fields))


async def listed(state: State, calls: list[CallSummary], total: int, limit: int, offset: int
                 ) -> tuple[list[CallSummary], int]:
    """Live streams first (as listed), then outbound calls not connected yet, oldest first."""
    okeys = OutboundKeys(state.keys.prefix)
    await _decorate(state, calls)
    pending_total = int(await state.redis.zcard(okeys.pending()))
    room = limit - len(calls)
    if room <= 0 or not pending_total:
        return calls, total + pending_total
    start = max(0, offset - total)
    refs = [text(r) for r in await state.redis.zrange(okeys.pending(), start, start + room - 1)]
    pipe = state.redis.pipeline(transaction=False)
    for ref in refs:
        pipe.hgetall(okeys.call(ref))
    records = [fields_of(raw) for raw in await pipe.execute()]
    pipe = state.redis.pipeline(transaction=False)
    for fields in records:
        pipe.exists(state.keys.call_by_callsid(fields.get(OField.CALL_SID) or "-"))
    streaming = await pipe.execute()
    gone = [ref for ref, fields, live in zip(refs, records, streaming)
            if not fields or live or fields.get(OField.STATUS) in FINAL]
    if gone:
        # Its stream started (it is listed as a live call now) or it ended: off the list of waiting ones.
        await state.redis.zrem(okeys.pending(), *gone)
    waiting = [_summary(f) for ref, f in zip(refs, records) if ref not in gone]
    return calls + waiting, total + pending_total - len(gone)


async def _decorate(state: State, calls: list[CallSummary]) -> None:
    okeys = OutboundKeys(state.keys.prefix)
    pipe = state.redis.pipeline(transaction=False)
    for call in calls:
        pipe.get(okeys.by_callsid(call.call_sid))
    refs = await pipe.execute()
    outbound = [(call, text(ref)) for call, ref in zip(calls, refs) if ref is not None]
    if not outbound:
        return
    pipe = state.redis.pipeline(transaction=False)
    for call, ref in outbound:
        pipe.hgetall(okeys.call(ref))
        pipe.hmget(state.keys.call(call.stream_sid), [CallField.AMD_ACTION, CallField.AMD_WAITED_MS])
    replies = await pipe.execute()
    for n, (call, _ref) in enumerate(outbound):
        fields, (action, waited) = fields_of(replies[2 * n]), replies[2 * n + 1]
        waited_text = text(waited) if waited else ""
        if fields:
            call.direction = "outbound"
            call.outbound = view(fields, amd_action=text(action) if action else None,
                                 amd_waited_ms=int(waited_text) if waited_text.isdigit() else None)


async def decorate(state: State, detail: CallDetail) -> CallDetail:
    """A call's detail, with its outbound part if it is an outbound call."""
    await _decorate(state, [detail])
    return detail


async def detail(state: State, call_sid: str) -> CallDetail:
    """An outbound call whose stream never started (queued, ringing, busy…), or 404."""
    okeys = OutboundKeys(state.keys.prefix)
    ref = await state.redis.get(okeys.by_callsid(call_sid))
    raw = await state.redis.hgetall(okeys.call(text(ref))) if ref is not None else None
    if not raw:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"call {call_sid} not found")
    fields = fields_of(raw)
    summary = _summary(fields)
    ended = fields.get(OField.STATUS) in FINAL
    return CallDetail(**{**summary.model_dump(), "state": "ended" if ended else DIALING,
                         "outbound": summary.outbound},
                      ended_at=float(fields[OField.ENDED_AT]) if fields.get(OField.ENDED_AT) else None,
                      outcome=fields.get(OField.OUTCOME) or None, transcript=[], function_calls=[], errors=[])
