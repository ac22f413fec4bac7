"""The console's call rows: what one table row shows of a call record, and what changed between
two looks at the live calls (pure: no Redis, no clock).

A row carries every column the console knows, including those of features that are only
sometimes there (outbound direction, an answering-machine verdict, transfers): a field the
record lacks is simply absent or null, and the page shows a dash.
"""

from __future__ import annotations

from typing import Any

import orjson

from switchboard import ended_calls
from switchboard.messages import CallField, RecordState

from ..callstate import _parameters  # the same masking of secret-looking parameters as the API

Row = dict[str, Any]

# Record fields that later features write (outbound calls, transfers): shown when present.
_OPTIONAL_FIELDS = {"amd": ("amd_answered_by", "amd", "answered_by"), "transfers": ("transfer", "transfers")}


def _transfer(value: str) -> str:
    """A transfer record (JSON) as one short cell: where to, and how it stands."""
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value[:80]
    if not isinstance(record, dict):
        return str(record)[:80]
    parts = [str(record.get(k)) for k in ("to", "target", "status", "state") if record.get(k)]
    return " · ".join(parts)[:80] or "yes"


def _number(value: str | None) -> float | int | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() and "." not in value else number


def row(fields: dict[str, str]) -> Row:
    params = ended_calls.parameters(fields)
    caller, callee = ended_calls.numbers(fields, params)
    out: Row = {
        "call_sid": fields.get(CallField.CALL_SID, ""),
        "stream_sid": fields.get(CallField.STREAM_SID, ""),
        "direction": ended_calls.direction(fields, params),
        "from": caller or None,
        "to": callee or None,
        "profile": fields.get(CallField.PROFILE) or None,
        "state": fields.get(CallField.STATE, RecordState.WAITING),
        "started_at": _number(fields.get(CallField.STARTED_AT)),
        "ended_at": _number(fields.get(CallField.ENDED_AT)),
        "turns": _number(fields.get(CallField.TURNS)) or 0,
        "worker": fields.get(CallField.WORKER) or None,
        "edge": fields.get(CallField.EDGE) or None,
        "outcome": fields.get(CallField.OUTCOME) or None,
        "end_reason": fields.get(CallField.END_REASON) or None,
    }
    for column, names in _OPTIONAL_FIELDS.items():
        value = next((fields[name] for name in names if fields.get(name)), None)
        if value is None and column == "amd":
            value = params.get("AnsweredBy")
        if value is not None and column == "transfers":
            value = _transfer(value)
        out[column] = value
    return out


def parameters(fields: dict[str, str]) -> dict[str, str]:
    """The call's customParameters as the API shows them (secret-looking ones masked)."""
    return _parameters(fields.get(CallField.PARAMS))


def diff(before: dict[str, Row], after: dict[str, Row]) -> tuple[list[Row], list[str]]:
    """Rows new or changed in `after`, and the stream ids gone from it."""
    changed = [current for sid, current in after.items() if before.get(sid) != current]
    gone = [sid for sid in before if sid not in after]
    return changed, gone
