"""Secrets out of everything Switchboard shows or records (pure, no I/O).

Three kinds of secret are recognised wherever they appear:
- a field whose *name* is secret-like, in snake, kebab or camel case (`api_key`, `x-api-key`,
  `accessToken`, `clientSecret`, `APIKey`), but not a name that merely starts like one
  (`keyterms`, `max_tokens`);
- the credentials of a URL (`https://user:pass@host`, `https://TOKEN@host`): the whole
  userinfo becomes `***`, since tokens are often put in the user name;
- the value of a secret-like query or fragment parameter (`?api_key=…`, `&sig=…`,
  `#access_token=…`).

`redact` is for what Switchboard records or shows about a call (journals, events): any
secret-like name anywhere, and every URL inside any string. Settings documents have their own,
reversible masking in `agent_settings` (built on `redact_url` and `restore_url` here), because
a client may send the masked form back and the stored secret must then be kept.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import SplitResult, unquote_plus, urlsplit, urlunsplit

MASK = "***"


class MaskedSecretError(ValueError):
    """A write sent MASK for a secret that has no stored value to keep (or must not keep it)."""


# --- names -------------------------------------------------------------------------------------

# Whole words of a name; a word that *ends* with one of the suffixes counts too, so that
# run-together names (`apikey`, `accesstoken`, `clientsecret`) are caught while `keyterms`,
# `tokenizer` or `max_tokens` are not.
_SECRET_WORDS = frozenset({
    "key", "apikey", "secret", "token", "password", "passwd", "pwd", "passphrase", "credential", "credentials",
    "authorization", "auth", "signature", "sig", "cookie", "bearer", "jwt",
})
_SECRET_SUFFIXES = ("token", "secret", "password", "passwd", "apikey", "accesskey", "privatekey", "secretkey",
                    "signature", "credential", "credentials")
_ACRONYM_BOUNDARY = re.compile(r"([A-Z]+)([A-Z][a-z])")  # APIKey → API_Key
_CAMEL_BOUNDARY = re.compile(r"([a-z0-9])([A-Z])")  # accessToken → access_Token
_NON_WORD = re.compile(r"[^A-Za-z0-9]+")


def is_secret_name(name: str) -> bool:
    """Whether a field or parameter called `name` holds a secret."""
    spaced = _CAMEL_BOUNDARY.sub(r"\1_\2", _ACRONYM_BOUNDARY.sub(r"\1_\2", name))
    return any(word in _SECRET_WORDS or word.endswith(_SECRET_SUFFIXES) for word in _NON_WORD.split(spaced.lower()))


def holds_secret(value: Any) -> bool:
    """Whether a value under a secret-like name is worth masking: numbers and booleans are counts,
    limits and switches (`max_tokens: 512`, `ttt_token: 0.3`, `use_auth: true`), never credentials."""
    return not isinstance(value, bool | int | float)


# --- URLs --------------------------------------------------------------------------------------

_URL_CHARS = r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>\\]+"
_WHOLE_URL = re.compile(_URL_CHARS)
_URL_IN_TEXT = re.compile(r"(?<![A-Za-z0-9+.\-])" + _URL_CHARS)


def is_url(value: str) -> bool:
    """A string that is one URL with a scheme and nothing else (`https://…`, `wss://…`)."""
    return _WHOLE_URL.fullmatch(value) is not None


def _userinfo(netloc: str) -> str | None:
    userinfo, at, _host = netloc.rpartition("@")
    return userinfo if at else None


def _host(netloc: str) -> str:
    return netloc.rpartition("@")[2]


def _split(url: str) -> SplitResult | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port, like an unparseable host
    except ValueError:
        return None
    return parts


def _mask_pairs(text: str) -> str:
    pieces = []
    for piece in text.split("&"):
        name, sep, value = piece.partition("=")
        if sep and value and value != MASK and is_secret_name(unquote_plus(name)):
            piece = f"{name}={MASK}"
        pieces.append(piece)
    return "&".join(pieces)


def redact_url(url: str) -> str:
    """`url` with its userinfo and secret-like parameter values replaced by MASK; the same string
    when there is nothing to hide, MASK when it cannot be taken apart (nothing risked)."""
    parts = _split(url)
    if parts is None:
        return MASK
    netloc = parts.netloc if _userinfo(parts.netloc) is None else f"{MASK}@{_host(parts.netloc)}"
    query = _mask_pairs(parts.query)
    fragment = _mask_pairs(parts.fragment) if "=" in parts.fragment else parts.fragment
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url  # untouched, byte for byte (urlunsplit would normalise it)
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_text(text: str) -> str:
    """Every URL inside free text (an error message, a log line) redacted."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group()), text)


def _masked_names(text: str) -> list[str]:
    return [name for name, sep, value in (p.partition("=") for p in text.split("&")) if sep and value == MASK]


def _stored_value(text: str, wanted: str) -> str | None:
    for piece in text.split("&"):
        name, sep, value = piece.partition("=")
        if sep and name == wanted and value != MASK:
            return value
    return None


def _restore_pairs(text: str, stored: str, what: str) -> str:
    pieces = []
    for piece in text.split("&"):
        name, sep, value = piece.partition("=")
        if sep and value == MASK:
            kept = _stored_value(stored, name)
            if kept is None:
                raise MaskedSecretError(f"its {what} parameter {name!r} is {MASK!r} but no stored value exists to keep")
            piece = f"{name}={kept}"
        pieces.append(piece)
    return "&".join(pieces)


def _origin(parts: SplitResult) -> tuple[str, str | None, int | None]:
    return parts.scheme.lower(), (parts.hostname or "").lower() or None, parts.port


def same_origin(a: Any, b: Any) -> bool:
    """Whether two URLs reach the same scheme, host and port (values that are no URL: equal)."""
    if not (isinstance(a, str) and isinstance(b, str)):
        return bool(a == b)
    pa, pb = _split(a), _split(b)
    if pa is None or pb is None:
        return a == b
    return _origin(pa) == _origin(pb)


def restore_url(new: str, stored: Any) -> str:
    """`new` (as a client sent it back) with each MASK taken from `stored`, the URL it replaces.

    The stored credentials are kept only for the same scheme, host and port: a client that
    points the URL elsewhere must send them again, or it could send them to a host of its own.
    """
    if MASK not in new:
        return new
    parts = _split(new)
    if parts is None:
        raise MaskedSecretError(f"it holds {MASK!r} but is not a URL whose secret could be kept")
    masked_userinfo = _userinfo(parts.netloc) == MASK
    if not (masked_userinfo or _masked_names(parts.query) or _masked_names(parts.fragment)):
        return new
    old = _split(stored) if isinstance(stored, str) else None
    if old is None:
        raise MaskedSecretError(f"it holds {MASK!r} but no stored URL exists to take the secret from")
    if _origin(parts) != _origin(old):
        raise MaskedSecretError(f"it holds {MASK!r} but its scheme, host or port changed: send the secret again")
    netloc = parts.netloc
    if masked_userinfo:
        userinfo = _userinfo(old.netloc)
        if userinfo is None:
            raise MaskedSecretError(f"its credentials are {MASK!r} but the stored URL has none")
        netloc = f"{userinfo}@{_host(parts.netloc)}"
    query = _restore_pairs(parts.query, old.query, "query")
    fragment = _restore_pairs(parts.fragment, old.fragment, "fragment") if "=" in parts.fragment else parts.fragment
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


# --- anything JSON -------------------------------------------------------------------------------


def redact(node: Any, *, secret: bool = False) -> Any:
    """`node` (JSON) with every secret masked: values of secret-like names at any depth (except
    numbers and booleans, see `holds_secret`), everything under `headers`, and each URL in any
    string. Returns equal data when there is nothing to hide."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for name, value in node.items():
            key = str(name)
            if secret or (is_secret_name(key) and holds_secret(value)):
                out[key] = _mask(value)
            elif key.lower() == "headers":
                out[key] = redact(value, secret=True)
            else:
                out[key] = redact(value)
        return out
    if isinstance(node, list):
        return [redact(item, secret=secret) for item in node]
    if secret:
        return _mask(node)
    if isinstance(node, str):
        return redact_text(node)
    return node


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return redact(value, secret=True)
    if isinstance(value, list):
        return [_mask(item) for item in value]
    return value if value in (None, "") else MASK
