"""Redis replies typed as Switchboard's clients get them.

redis-py types each reply for every client configuration at once: `bytes | str` (a client made
with `decode_responses=True` gets str), hashes and stream ranges that may be None, stream
entries whose id or fields may be None. Switchboard's clients never decode (`config.
redis_client`), so a reply is bytes, a hash maps bytes to bytes, and an entry of XRANGE or
XREAD has both; these helpers say so once instead of narrowing at every call site. `text`
still accepts a str, so a client someone made with decoding keeps working.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, cast

Fields = dict[bytes, bytes]
Entries = list[tuple[bytes, Fields]]


def text(reply: bytes | str, errors: str = "strict") -> str:
    return reply.decode(errors=errors) if isinstance(reply, bytes) else reply


def number(value: str | None) -> float | None:
    """A record field as a number (absent, empty or not a number: None)."""
    try:
        return float(value) if value else None
    except ValueError:
        return None


def maybe_text(reply: bytes | str | None) -> str | None:
    return None if reply is None else text(reply)


def fields(reply: Mapping[Any, Any] | None) -> Fields:
    """An HGETALL reply or one stream entry's fields (nothing: empty)."""
    return cast(Fields, reply) if reply is not None else {}


def members(reply: Any) -> Collection[bytes]:
    """A ZRANGE, SMEMBERS or LRANGE reply: its members."""
    return cast(Collection[bytes], reply)


def entries(reply: Sequence[Any] | None) -> Entries:
    """An XRANGE / XREVRANGE reply, or one stream's entries of an XREAD reply."""
    return cast(Entries, reply) if reply is not None else []


def maybe_bytes(reply: bytes | str | None) -> bytes | None:
    return reply.encode() if isinstance(reply, str) else reply


def streams(reply: Any) -> list[tuple[bytes, Entries]]:
    """An XREAD / XREADGROUP reply (RESP2): per stream, its key and its entries; nothing: empty."""
    return cast(list[tuple[bytes, Entries]], reply or [])


def writable(mapping: Mapping[bytes, Any] | Mapping[str, Any]) -> dict[Any, Any]:
    """A mapping as XADD and HSET take it: redis-py types their dict invariant in its key type,
    so a `dict[bytes, bytes]` or a `dict[str, str]` has to be widened to be passed (no copy)."""
    return cast(dict[Any, Any], mapping)
