"""The call.ended outbox in Redis: the worker that ends a call enqueues it, the control API delivers it.

    worker  end_call ──enqueue──▶ due (callSid → when)  items (callSid → which stream, why)
    control  claim (lease) ─▶ is the call over? ─▶ build the payload once ─▶ POST ─▶ sent / retry / dead

Keys share the `{outbox}` hash tag, so the scripts below touch one Redis Cluster slot. Workers
enqueue only while a control API with a webhook URL has said so (`enabled`, refreshed by its
delivery loop), and never past MAX_OUTBOX entries, so a deployment without call.ended never
collects an outbox. One call is one entry (a later stream of the same call replaces its earlier
end); once delivered, `sent:<callSid>` keeps it from going out twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

MAX_OUTBOX = 100_000
ENABLED_TTL_S = 300  # a control API that stops refreshing this stops workers enqueuing soon after
SENT_TTL_S = 7 * 86_400
ITEMS_TTL_S = 7 * 86_400  # an outbox nobody drains anymore goes away on its own


@dataclass(frozen=True, slots=True)
class OutboxKeys:
    prefix: str = "sb:"

    def _key(self, name: str) -> str:
        return f"{self.prefix}{{outbox}}:call_ended:{name}"

    def enabled(self) -> str:
        """String, with a TTL: a control API delivers call.ended; workers enqueue while it exists."""
        return self._key("enabled")

    def due(self) -> str:
        """Sorted set callSid → when to look at it next (Unix s): first the end, then retries, leases."""
        return self._key("due")

    def items(self) -> str:
        """Hash callSid → JSON {stream_sid, ended_at, reason, outcome}: the end as the worker saw it."""
        return self._key("items")

    def attempts(self) -> str:
        """Hash callSid → delivery attempts so far."""
        return self._key("attempts")

    def payloads(self) -> str:
        """Hash callSid → the payload, built at the first attempt: every retry sends the same bytes."""
        return self._key("payloads")

    def sent(self, call_sid: str) -> str:
        """String: this call's call.ended went out."""
        return self._key(f"sent:{call_sid}")

    def dead(self) -> str:
        """List of JSON {call_sid, attempts, error, failed_at, payload}: deliveries that gave up, newest first."""
        return self._key("dead")


# KEYS: enabled, due, items; ARGV: callSid, due at, item JSON, max entries, items ttl
ENQUEUE = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
if redis.call('zscore', KEYS[2], ARGV[1]) == false and redis.call('zcard', KEYS[2]) >= tonumber(ARGV[4]) then
  return -1
end
redis.call('zadd', KEYS[2], ARGV[2], ARGV[1])
redis.call('hset', KEYS[3], ARGV[1], ARGV[3])
redis.call('expire', KEYS[2], ARGV[5])
redis.call('expire', KEYS[3], ARGV[5])
return 1
"""


def enqueue(pipe: Any, keys: OutboxKeys, *, call_sid: str, stream_sid: str, ended_at: float, reason: str,
            outcome: str) -> None:
    """Queue the enqueue on `pipe` (a redis pipeline, e.g. the one that marks the call ended)."""
    item = orjson.dumps({"stream_sid": stream_sid, "ended_at": round(ended_at, 3), "reason": reason,
                         "outcome": outcome})
    pipe.eval(ENQUEUE, 3, keys.enabled(), keys.due(), keys.items(), call_sid, repr(ended_at), item, MAX_OUTBOX,
              ITEMS_TTL_S)


def parse_item(raw: bytes | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return item if isinstance(item, dict) and isinstance(item.get("stream_sid"), str) else None
