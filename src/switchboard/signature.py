"""Twilio request signatures (X-Twilio-Signature), pure functions.

Follows twilio-python's RequestValidator: HMAC-SHA1 over the full URL plus the sorted
POST parameters, base64, compared in constant time, trying the URL with and without
its default port. For the Media Streams WebSocket upgrade there is no body, so the
signed string is the public wss:// URL alone (Twilio also accepts a trailing '/').
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

_DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}


def compute(auth_token: str, url: str, params: Mapping[str, str | Iterable[str]] | None = None) -> str:
    payload = url
    for name in sorted(params or {}):
        value = (params or {})[name]
        values = [value] if isinstance(value, str) else sorted(set(value))
        for item in values:
            payload += name + item
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _url_variants(url: str) -> list[str]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    # Twilio strips user:password before signing.
    if parts.port is not None:
        netloc = f"{host}:{parts.port}"
        return [urlunsplit(parts._replace(netloc=netloc)), urlunsplit(parts._replace(netloc=host))]
    default = _DEFAULT_PORTS.get(parts.scheme)
    variants = [urlunsplit(parts._replace(netloc=host))]
    if default is not None:
        variants.append(urlunsplit(parts._replace(netloc=f"{host}:{default}")))
    return variants


def is_valid(
    auth_token: str, url: str, signature: str | None, params: Mapping[str, str | Iterable[str]] | None = None
) -> bool:
    if not signature or not auth_token:
        return False
    expected = signature.encode()
    return any(
        hmac.compare_digest(compute(auth_token, candidate, params).encode(), expected)
        for candidate in _url_variants(url)
    )


def stream_signature_valid(auth_token: str, public_stream_url: str, signature: str | None) -> bool:
    """True if a Media Streams upgrade carries Twilio's signature for our public wss:// URL."""
    base = public_stream_url.rstrip("/")
    return is_valid(auth_token, base, signature) or is_valid(auth_token, base + "/", signature)


def public_url_from_proxy_headers(headers: Mapping[str, str], path: str, default_scheme: str = "ws") -> str:
    """Rebuild the URL Twilio connected to from X-Forwarded-* headers (trusted proxies only).

    Twilio signs the wss:// URL, so an https/http forwarded proto maps to wss/ws.
    """
    proto = headers.get("X-Forwarded-Proto", default_scheme).split(",")[0].strip().lower()
    scheme = {"https": "wss", "http": "ws"}.get(proto, proto)
    host = (headers.get("X-Forwarded-Host") or headers.get("Host") or "").split(",")[0].strip()
    return f"{scheme}://{host}{path}"
