"""Standard Webhooks signatures (https://www.standardwebhooks.com), pure.

    webhook-id:        msg_<stable id>       (the same on every retry: receivers deduplicate on it)
    webhook-timestamp: <unix seconds>        (of this attempt: receivers refuse stale ones)
    webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">

keyed with the secret's bytes: a secret is written `whsec_<base64>`, the form the spec's
libraries (`standardwebhooks` for Python, Svix's, …) take as it is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

__all__ = ["MIN_SECRET_BYTES", "PREFIX", "SecretError", "headers", "parse_secret", "sign", "verify"]

PREFIX = "whsec_"
MIN_SECRET_BYTES = 24  # the spec asks for 24 to 64 random bytes


class SecretError(ValueError):
    pass


def parse_secret(secret: str) -> bytes:
    """The key bytes of a `whsec_…` secret; raises SecretError for anything else."""
    if not secret.startswith(PREFIX):
        raise SecretError(f"a Standard Webhooks secret starts with {PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise SecretError("the part after whsec_ is not base64") from None
    if len(key) < MIN_SECRET_BYTES:
        raise SecretError(f"the secret holds {len(key)} bytes; at least {MIN_SECRET_BYTES}")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(key: bytes, msg_id: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(key, msg_id, timestamp, body)}


def verify(key: bytes, given: dict[str, str], body: bytes, *, tolerance_s: float = 300,
           now: float | None = None) -> bool:
    """What a receiver does (tests, and the README's example)."""
    lowered = {k.lower(): v for k, v in given.items()}
    msg_id, stamp, signatures = (lowered.get(name, "") for name in ("webhook-id", "webhook-timestamp",
                                                                    "webhook-signature"))
    if not (msg_id and stamp.isdigit() and signatures):
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance_s:
        return False
    expected = sign(key, msg_id, int(stamp), body).encode()
    return any(hmac.compare_digest(expected, candidate.encode()) for candidate in signatures.split(" "))
