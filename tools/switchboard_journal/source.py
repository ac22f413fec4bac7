"""Where a journal comes from: a call in Redis (by callSid or streamSid) or an exported file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_sync

from switchboard import redis_types
from switchboard.journal import JournalRecord, Source, decode_journal, export_info, from_jsonl
from switchboard.keys import Keys

PAGE = 2000  # XRANGE page: a long journal is read in slices, not in one reply Redis must build at once


class NotFound(LookupError):
    pass


@dataclass
class Journal:
    info: dict[str, Any]  # the export's header: call ids, key, ttl, ...
    records: list[JournalRecord] = field(default_factory=list)

    @property
    def trimmed(self) -> bool:
        """The cap (max_entries) dropped the oldest entries, the start record among them."""
        return bool(self.records) and self.records[0].source is not Source.START


def client(url: str, cluster: bool = False) -> redis_sync.Redis:
    if cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url)  # type: ignore[return-value]
    return redis_sync.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)


def stream_sid_of(redis: redis_sync.Redis, keys: Keys, call: str) -> str:
    """The stream whose journal `call` names: a callSid's current stream, or a streamSid itself."""
    stream_sid = redis_types.maybe_text(redis.get(keys.call_by_callsid(call)))
    if stream_sid is not None and redis.exists(keys.journal(stream_sid)):
        return stream_sid
    if redis.exists(keys.journal(call)):
        return call
    if stream_sid is not None:
        raise NotFound(f"call {call} (stream {stream_sid}) has no journal: journal.enabled was off "
                       "for its settings, or the journal's retention is over")
    raise NotFound(f"no call or stream {call} with a journal (unknown, or its journal's retention is over)")


def read_redis(redis: redis_sync.Redis, keys: Keys, call: str) -> Journal:
    stream_sid = stream_sid_of(redis, keys, call)
    key = keys.journal(stream_sid)
    raw: list[tuple[bytes, dict[bytes, bytes]]] = []
    start = "-"
    while True:
        page = redis_types.entries(redis.xrange(key, min=start, count=PAGE))
        raw.extend(page)
        if len(page) < PAGE:
            break
        start = "(" + page[-1][0].decode()
    fields = redis_types.fields(redis.hgetall(keys.call(stream_sid)))
    record = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
    return Journal(export_info(call, stream_sid, key, record, len(raw), redis.ttl(key)), decode_journal(raw))


def read_file(path: Path) -> Journal:
    with path.open("rb") as lines:
        header, records = from_jsonl(lines)
    info = {k: v for k, v in header.items() if k != "format"}
    return Journal(info, records)

