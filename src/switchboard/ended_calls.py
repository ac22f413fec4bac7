"""The ended-calls index: which calls ended when, for listing and searching them within retention.

A sorted set streamSid → end time, written by whoever ends a call (the worker's `end_call`, in
the same pipeline that marks the record ended). An entry is kept as long as the call record
(CALL_RETENTION_S): each write also trims entries older than that, so the set never grows past
the calls of one retention period. A stream that ended only because its call moved to a new
stream (edge loss) is not indexed: the call goes on and ends under its new stream.

Searching reads the index newest first and filters on the call records (time, outcome,
profile, direction, number); `matches` and `row` are pure and tested without Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .keys import Keys
from .messages import CallField

# One search looks at no more than this many index entries (newest first), whatever its filters
# match: a cursor continues from where it stopped.
SCAN_LIMIT = 2000


def index_key(keys: Keys) -> str:
    """Sorted set streamSid → ended at (Unix time). (Belongs with the other names in keys.py.)"""
    return f"{keys.prefix}calls:ended"


def add(pipe: Any, keys: Keys, stream_sid: str, ended_at: float, retention_s: int) -> None:
    """Queue the index write on `pipe` (a redis pipeline): the call, and the trim of expired ones."""
    key = index_key(keys)
    pipe.zadd(key, {stream_sid: ended_at})
    pipe.zremrangebyscore(key, "-inf", ended_at - retention_s)
    pipe.expire(key, retention_s)


@dataclass(frozen=True, slots=True)
class Filter:
    since: float | None = None  # ended at or after (Unix time)
    until: float | None = None  # ended at or before
    outcome: str | None = None
    profile: str | None = None
    direction: str | None = None  # inbound | outbound
    number: str | None = None  # a substring of From or To


def parameters(fields: dict[str, str]) -> dict[str, Any]:
    try:
        params = orjson.loads(fields.get(CallField.PARAMS) or "{}")
    except orjson.JSONDecodeError:
        return {}
    return params if isinstance(params, dict) else {}


def direction(fields: dict[str, str], params: dict[str, Any] | None = None) -> str:
    """inbound or outbound: the record's own field when the call was placed by us, else Twilio's
    Direction parameter ("outbound-api", "outbound-dial" are both outbound)."""
    value = fields.get("direction") or str((params if params is not None else parameters(fields)).get("Direction", ""))
    return "outbound" if value.startswith("outbound") else "inbound"


def numbers(fields: dict[str, str], params: dict[str, Any] | None = None) -> tuple[str, str]:
    params = params if params is not None else parameters(fields)
    return (str(fields.get("from") or params.get("From") or ""), str(fields.get("to") or params.get("To") or ""))


def matches(fields: dict[str, str], ended_at: float, wanted: Filter) -> bool:
    if wanted.since is not None and ended_at < wanted.since:
        return False
    if wanted.until is not None and ended_at > wanted.until:
        return False
    if wanted.outcome and (fields.get(CallField.OUTCOME) or "") != wanted.outcome:
        return False
    if wanted.profile and (fields.get(CallField.PROFILE) or "") != wanted.profile:
        return False
    params = parameters(fields)
    if wanted.direction and direction(fields, params) != wanted.direction:
        return False
    if wanted.number:
        digits = wanted.number.replace(" ", "")
        if not any(digits in number for number in numbers(fields, params)):
            return False
    return True


async def search(client: Any, keys: Keys, wanted: Filter, *, limit: int,
                 before: float | None = None) -> tuple[list[tuple[float, dict[str, str]]], float | None]:
    """Ended calls matching `wanted`, newest first: (ended at, record fields) pairs, and the cursor
    for the next page (None: no more). `before` continues a previous page (exclusive)."""
    top = min(x for x in (wanted.until, before) if x is not None) if (wanted.until or before) else None
    high = "+inf" if top is None else (f"({top}" if before is not None and top == before else str(top))
    low = "-inf" if wanted.since is None else str(wanted.since)
    entries = await client.zrevrangebyscore(index_key(keys), high, low, start=0, num=SCAN_LIMIT, withscores=True)
    if not entries:
        return [], None
    pipe = client.pipeline(transaction=False)
    for member, _score in entries:
        pipe.hgetall(keys.call(member.decode()))
    found: list[tuple[float, dict[str, str]]] = []
    last_seen: float | None = None
    for (member, score), raw in zip(entries, await pipe.execute()):
        last_seen = score
        if not raw:
            continue  # the record expired a moment before its index entry
        fields = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
        fields.setdefault(CallField.STREAM_SID, member.decode())
        if matches(fields, score, wanted):
            found.append((score, fields))
            if len(found) == limit:
                return found, score
    return found, (last_seen if len(entries) == SCAN_LIMIT else None)
