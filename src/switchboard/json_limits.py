"""Bounds on open-ended JSON values: how deep they nest and how large they are (pure, no I/O).

Settings carry a few free-form JSON values (function parameter schemas, endpoint dicts,
provider fields Deepgram may add). Unbounded, one of them can be megabytes, or nested so deep
that serialising it fails (pydantic and orjson give up at a few hundred levels, Python's own
recursion at about a thousand). Depth is measured without recursion, so measuring can never be
what fails; size is measured only once the depth is known to be sane.
"""

from __future__ import annotations

from typing import Any

import orjson


class LimitError(ValueError):
    """A value over one of its limits; `kind` names which (too_deep, too_large, too_many_fields)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def depth(value: Any, stop_after: int = 1 << 30) -> int:
    """Nesting depth of JSON data: 0 for a scalar, 1 for a flat object or array.

    Stops walking as soon as it has seen a level deeper than `stop_after` (and returns that
    depth), so a hostile value costs no more than the part of it within the limit.
    """
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        node, level = pending.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        level += 1
        if level > deepest:
            deepest = level
            if deepest > stop_after:
                return deepest
        pending.extend((child, level) for child in children if isinstance(child, dict | list | tuple))
    return deepest


def encoded_size(value: Any) -> int:
    """Bytes of `value` as compact JSON; LimitError when it cannot be encoded at all."""
    try:
        return len(orjson.dumps(value))
    except orjson.JSONEncodeError as exc:  # integers beyond 64 bits, lone surrogates, nesting orjson refuses
        raise LimitError("unencodable", f"holds a value that cannot be stored as JSON: {exc}") from None


def check(value: Any, *, max_depth: int, max_bytes: int) -> None:
    """Raise LimitError unless `value` nests at most `max_depth` levels and encodes to at most `max_bytes`."""
    levels = depth(value, stop_after=max_depth)
    if levels > max_depth:
        raise LimitError("too_deep", f"nested more than {max_depth} levels deep (at most {max_depth})")
    size = encoded_size(value)
    if size > max_bytes:
        raise LimitError("too_large", f"{size} bytes as JSON (at most {max_bytes})")
