"""Recording links: a call.ended payload carries a URL that fetches the call's WAV without the API
token, for a limited time only (pure).

    /recordings/<callSid>.wav?expires=<unix>&sig=<hex HMAC-SHA256 of "<callSid>.<expires>">

The key is RECORDING_LINK_SECRET, or derived from CONTROL_API_TOKEN (so a rotated token also
revokes every link). A link names one call and one expiry; changing either breaks the HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

from pydantic import SecretStr

PATH = "/recordings/{call_sid}.wav"
_DERIVATION = b"switchboard recording links v1"


def link_key(secret: SecretStr | None, api_token: SecretStr | None) -> bytes | None:
    """The HMAC key, or None when there is nothing to derive it from (no links then)."""
    if secret is not None:
        return secret.get_secret_value().encode()
    if api_token is not None:
        return hmac.new(api_token.get_secret_value().encode(), _DERIVATION, hashlib.sha256).digest()
    return None


def signature(key: bytes, call_sid: str, expires: int) -> str:
    return hmac.new(key, f"{call_sid}.{expires}".encode(), hashlib.sha256).hexdigest()


def url(base: str, key: bytes, call_sid: str, expires: int) -> str:
    query = urlencode({"expires": expires, "sig": signature(key, call_sid, expires)})
    return f"{base.rstrip('/')}{PATH.format(call_sid=call_sid)}?{query}"


def check(key: bytes, call_sid: str, expires: int, sig: str, *, now: float | None = None) -> str | None:
    """None if the link is good, else why not (a refusal reason)."""
    if expires < (time.time() if now is None else now):
        return "expired"
    if not hmac.compare_digest(signature(key, call_sid, expires).encode(), sig.encode()):
        return "bad_signature"
    return None
