"""Twilio marks that cut each reply into segments, so Switchboard knows what the caller heard.

Every reply is marked `sb:<session>:<reply>:<offset>` before its first audio and after every
SEGMENT_BYTES of it (offset = agent audio bytes of the reply before the mark); the last one
ends in `:end`. Twilio echoes a mark once the audio before it has played, or at once when a
`clear` flushes it.
"""

from __future__ import annotations

BYTES_PER_MS = 8  # 8 kHz mu-law: one byte per sample
SEGMENT_BYTES = 400 * BYTES_PER_MS  # a mark every 400 ms of agent audio
MARK_PREFIX = "sb:"


def mark_name(session: str, reply: int, offset: int, end: bool = False) -> str:
    return f"{MARK_PREFIX}{session}:{reply}:{offset}{':end' if end else ''}"


def parse_mark(name: str) -> tuple[str, int, int, bool] | None:
    """(session, reply, offset, is_end) of one of our marks, or None for any other name."""
    if not name.startswith(MARK_PREFIX):
        return None
    parts = name[len(MARK_PREFIX):].split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "end"):
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2]), len(parts) == 4
    except ValueError:
        return None


def is_reply_start(name: str) -> bool:
    """The mark sent before a reply's first audio: the edge reports that audio's transit."""
    parsed = parse_mark(name)
    return parsed is not None and parsed[2] == 0 and not parsed[3]
