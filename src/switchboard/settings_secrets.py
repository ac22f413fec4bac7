"""Secrets in agent settings are write-only (pure).

Provider credentials, endpoint headers and URL credentials are stored, sent to Deepgram (or
used by the worker), and never shown again: reads replace them with MASK, and a write that
sends MASK back keeps the stored value, so a client can GET, edit and PUT a document without
knowing its secrets.
"""

from __future__ import annotations

from typing import Any

from .redaction import (
    MASK,
    MaskedSecretError,
    holds_secret,
    is_secret_name,
    is_url,
    redact_url,
    restore_url,
    same_origin,
)

__all__ = ["MASK", "MaskedSecretError", "masked", "restore_secrets"]

# (block, member) pairs whose field *names* say what is secret; prompts and function schemas
# never do (a schema may well describe a parameter called `api_key`). URL credentials and
# secret-like query parameters are masked in every URL-valued string of the document.
_SECRET_CONTAINERS = frozenset({
    ("listen", "provider"),
    ("think", "provider"),
    ("think", "endpoint"),
    ("speak", "provider"),
    ("speak", "endpoint"),
})
_ENDPOINTS = (("think", "endpoint"), ("speak", "endpoint"))

# A place in a settings document: dict keys, list indexes, and ("name", n) for the list item
# whose "name" is n, so that a function's webhook secret follows the function, not its position.
_Part = str | int | tuple[str, str]
_Path = tuple[_Part, ...]


def _item_key(item: Any, index: int) -> _Part:
    if isinstance(item, dict) and isinstance(item.get("name"), str):
        return ("name", item["name"])
    return index


def _shown_path(path: _Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, tuple):
            out += f"[{part[1]}]"
        elif isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _transform(doc: dict[str, Any], on_secret: Any, on_url: Any) -> dict[str, Any]:
    def walk(node: Any, path: _Path, names_matter: bool, under_headers: bool) -> Any:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for name, value in node.items():
                here = (*path, name)
                if under_headers or (names_matter and is_secret_name(name) and holds_secret(value)):
                    out[name] = on_secret(here, value)
                else:
                    inside = names_matter or here in _SECRET_CONTAINERS
                    out[name] = walk(value, here, inside, names_matter and name.lower() == "headers")
            return out
        if isinstance(node, list):
            return [walk(item, (*path, _item_key(item, i)), names_matter, under_headers) for i, item in enumerate(node)]
        if isinstance(node, str) and is_url(node):
            return on_url(path, node)
        return node

    transformed: dict[str, Any] = walk(doc, (), False, False)
    return transformed


def masked(doc: dict[str, Any]) -> dict[str, Any]:
    """A settings document (JSON dict) with every secret value replaced by MASK."""
    return _transform(
        doc, lambda _path, value: MASK if value not in (None, "") else value, lambda _path, url: redact_url(url)
    )


class _Missing(Exception):
    pass


def _lookup(doc: Any, path: _Path) -> Any:
    node = doc
    for part in path:
        if isinstance(part, tuple):
            node = next((i for i in node if isinstance(i, dict) and i.get("name") == part[1]), _Missing) \
                if isinstance(node, list) else _Missing
        elif isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else _Missing
        else:
            node = node.get(part, _Missing) if isinstance(node, dict) else _Missing
        if node is _Missing:
            raise _Missing
    return node


def _origin_moved(new: dict[str, Any], stored: dict[str, Any] | None) -> set[_Path]:
    """The endpoints whose URL now points at another scheme, host or port than the stored one."""
    moved: set[_Path] = set()
    for block, member in _ENDPOINTS:
        try:
            old_url = _lookup(stored, (block, member, "url"))
        except _Missing:
            continue  # nothing stored there: no secret to keep, MASK is refused anyway
        try:
            new_url = _lookup(new, (block, member, "url"))
        except _Missing:
            new_url = None
        if not same_origin(new_url, old_url):
            moved.add((block, member))
    return moved


def restore_secrets(new: dict[str, Any], stored: dict[str, Any] | None) -> dict[str, Any]:
    """`new` with each MASK replaced by the stored secret at the same place.

    A secret is kept only where it would go to the same place as before: a masked header of an
    endpoint whose URL now points at another host, or masked URL credentials for another host,
    must be sent again (MaskedSecretError), or a client could send them to a host of its own.
    """
    moved = _origin_moved(new, stored)

    def keep(path: _Path, value: Any) -> Any:
        if value != MASK:
            return value
        where = _shown_path(path)
        if path[:2] in moved:
            raise MaskedSecretError(
                f"{where} is {MASK!r} but {_shown_path(path[:2])}.url now points elsewhere: send the real value"
            )
        try:
            return _lookup(stored, path)
        except _Missing:
            raise MaskedSecretError(f"{where} is {MASK!r} but no stored value exists to keep: send the real value") \
                from None

    def keep_url(path: _Path, value: str) -> str:
        try:
            old: Any = _lookup(stored, path)
        except _Missing:
            old = None
        try:
            return restore_url(value, old)
        except MaskedSecretError as exc:
            raise MaskedSecretError(f"{_shown_path(path)}: {exc}") from None

    return _transform(new, keep, keep_url)
