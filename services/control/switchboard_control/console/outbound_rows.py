"""Outbound calls in the console's table: a live stream placed by Switchboard gets its direction,
numbers and answering-machine verdict from its outbound record, and a call still ringing (no
stream yet) gets a row of its own in state `dialing` (see switchboard.outbound)."""

from __future__ import annotations

from typing import Any

from switchboard.outbound import OField, OutboundKeys
from switchboard.redis_types import number

from . import table

DIALING_ROWS = 500  # ringing calls shown at most (the list API pages the rest)


def _text(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}


def dialing_row(fields: dict[str, str]) -> table.Row:
    ref = fields.get(OField.REF, "")
    return {"call_sid": fields.get(OField.CALL_SID) or ref, "stream_sid": f"outbound:{ref}", "direction": "outbound",
            "from": fields.get(OField.FROM) or None, "to": fields.get(OField.TO) or None,
            "profile": fields.get(OField.PROFILE) or None, "state": "dialing",
            "started_at": number(fields.get(OField.CREATED_AT)), "ended_at": None, "turns": 0, "worker": None,
            "edge": None, "outcome": None, "end_reason": None, "amd": fields.get(OField.ANSWERED_BY) or None,
            "transfers": None, "twilio_status": fields.get(OField.STATUS) or None}


async def decorate(redis: Any, prefix: str, rows: dict[str, table.Row]) -> int:
    """Add what outbound records say to `rows` (in place) and the ringing calls; returns how many
    ringing calls there are in all."""
    okeys = OutboundKeys(prefix)
    listed = list(rows.values())
    pipe = redis.pipeline(transaction=False)
    for row in listed:
        pipe.get(okeys.by_callsid(row["call_sid"]))
    pipe.zcard(okeys.pending())
    pipe.zrange(okeys.pending(), 0, DIALING_ROWS - 1)
    *refs, pending_total, pending = await pipe.execute()
    outbound = [(row, ref.decode()) for row, ref in zip(listed, refs) if ref]
    pipe = redis.pipeline(transaction=False)
    for _row, ref in outbound:
        pipe.hgetall(okeys.call(ref))
    for ref in pending:
        pipe.hgetall(okeys.call(ref.decode()))
    records = await pipe.execute() if outbound or pending else []
    for (row, _ref), raw in zip(outbound, records):
        fields = _text(raw) if raw else {}
        row.update(direction="outbound", twilio_status=fields.get(OField.STATUS) or None)
        row["from"] = fields.get(OField.FROM) or row["from"]
        row["to"] = fields.get(OField.TO) or row["to"]
        row["amd"] = row["amd"] or fields.get(OField.ANSWERED_BY) or None
    for raw in records[len(outbound):]:
        if raw:
            row = dialing_row(_text(raw))
            rows[row["stream_sid"]] = row
    return int(pending_total)
