"""HTTP Basic authentication as Twilio's REST API does it (pure).

Username and password are either the Account SID and its auth token, or an API key SID
(`SK…`) and its secret; either way the account in the URL must be that account. Secrets
are compared in constant time and never leave this module: the request log keeps the
username and the kind of credential only.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Account:
    sid: str
    auth_token: str
    api_keys: Mapping[str, str] = field(default_factory=dict)  # SK… → secret


@dataclass(frozen=True, slots=True)
class AuthResult:
    ok: bool
    kind: str  # account | api_key | none | malformed | unknown_user | wrong_secret | wrong_account
    username: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "kind": self.kind, "username": self.username}


def _basic(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def check(header: str | None, account: Account, path_account_sid: str) -> AuthResult:
    if not header:
        return AuthResult(False, "none")
    pair = _basic(header)
    if pair is None:
        return AuthResult(False, "malformed")
    username, password = pair
    if username == account.sid:
        if not _same(password, account.auth_token):
            return AuthResult(False, "wrong_secret", username)
        kind = "account"
    elif username in account.api_keys:
        if not _same(password, account.api_keys[username]):
            return AuthResult(False, "wrong_secret", username)
        kind = "api_key"
    else:
        return AuthResult(False, "unknown_user", username[:64])
    if path_account_sid != account.sid:
        return AuthResult(False, "wrong_account", username)
    return AuthResult(True, kind, username)
