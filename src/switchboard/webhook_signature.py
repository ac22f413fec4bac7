"""`X-Switchboard-Signature` on webhooks Switchboard sends (pure): `t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`.

The same scheme as the workers' function webhooks (FUNCTION_SECRET), so one receiver checks
both; the timestamp lets the receiver refuse replays (`verify`'s tolerance).
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-Switchboard-Signature"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str | None, body: bytes, *, tolerance_s: float = 300, now: float | None = None) -> bool:
    """What a receiver does: recompute the HMAC in constant time and refuse stale timestamps."""
    if not header:
        return False
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    timestamp, given = parts.get("t", ""), parts.get("v1", "")
    if not timestamp.isdigit() or abs((now or time.time()) - int(timestamp)) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).rsplit("v1=", 1)[1]
    return hmac.compare_digest(expected.encode(), given.encode())
