"""What the emulator remembers about each session, for `GET /_emulator/sessions`.

Per-frame bookkeeping is kept to integer arithmetic and one dict increment: it runs for every
20 ms of every caller, beside the system under load.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from typing import Any, Final

from switchboard_dev.testaudio import AGENT_MAGIC, CALLER_MAGIC, FRAME_BYTES, parse_frame

MAX_CLOSED: Final = 10_000
MAX_EVENTS: Final = 1_000
MAX_CONTROL: Final = 1_000
_BUCKET_US: Final = 100  # latency histogram resolution
_MAGIC_FIRST_BYTE: Final = CALLER_MAGIC[0]
_MAGICS: Final = (CALLER_MAGIC, AGENT_MAGIC)


class CallerFrameStats:
    """Order and transit time of the synthetic frames a caller sent (see switchboard_dev.testaudio)."""

    __slots__ = ("_hist", "_last", "_max_us", "corrupt", "frames", "out_of_order")

    def __init__(self) -> None:
        self.frames = 0
        self.out_of_order = 0
        self.corrupt = 0
        self._last: tuple[int, int] | None = None
        self._hist: dict[int, int] = {}
        self._max_us = 0

    def feed(self, frame: bytes, now_us: int) -> None:
        if frame[0] != _MAGIC_FIRST_BYTE or len(frame) != FRAME_BYTES:
            return  # silence (0xFF) and real audio: the fast path
        info = parse_frame(frame)
        if info is None:
            if frame[:2] in _MAGICS:
                self.corrupt += 1
            return
        self.frames += 1
        last = self._last
        if last is not None and not (
            (info.stream_no == last[0] and info.seq == last[1] + 1) or (info.stream_no != last[0] and info.seq == 0)
        ):
            self.out_of_order += 1
        self._last = (info.stream_no, info.seq)
        latency = max(0, now_us - info.sent_at_us)
        if latency > self._max_us:
            self._max_us = latency
        bucket = latency // _BUCKET_US
        self._hist[bucket] = self._hist.get(bucket, 0) + 1

    def histogram(self) -> tuple[dict[int, int], int]:
        """Transit-time buckets (100 µs each → frame count) and the exact maximum in µs.

        Percentiles do not pool across sessions; these buckets do (the benchmark sums them).
        """
        return dict(self._hist), self._max_us

    def to_json(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "out_of_order": self.out_of_order,
            "corrupt": self.corrupt,
            "latency_ms": {
                "p50": self._percentile(0.50),
                "p95": self._percentile(0.95),
                "max": self._max_us / 1000 if self.frames else None,
            },
        }

    def _percentile(self, q: float) -> float | None:
        if not self.frames:
            return None
        rank = q * self.frames
        seen = 0
        for bucket in sorted(self._hist):
            seen += self._hist[bucket]
            if seen >= rank:
                return bucket * _BUCKET_US / 1000
        return self._max_us / 1000


class ReplyRecord:
    __slots__ = ("frames_sent", "interrupted", "number", "text")

    def __init__(self, number: int, text: str) -> None:
        self.number = number
        self.text = text
        self.frames_sent = 0
        self.interrupted = False

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "text": self.text,
            "frames_sent": self.frames_sent,
            "interrupted": self.interrupted,
        }


class SessionRecord:
    def __init__(self, request_id: str, path: str) -> None:
        self.request_id = request_id
        self.path = path
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.settings: dict[str, Any] | None = None
        self.tags: list[str] = []
        self.control: list[dict[str, Any]] = []
        self.keepalives = 0
        self.audio_bytes = 0
        self.audio_messages = 0
        self._sha = hashlib.sha256()
        self._sha_hex: str | None = None
        self.caller_frames = CallerFrameStats()
        self.replies: list[ReplyRecord] = []
        self.events: list[str] = []
        self.events_total = 0
        self.closed = False
        self.close_reason: str | None = None
        self.close_code: int | None = None

    def add_audio(self, data: bytes) -> None:
        self.audio_bytes += len(data)
        self.audio_messages += 1
        self._sha.update(data)

    def add_event(self, kind: str) -> None:
        self.events_total += 1
        if len(self.events) < MAX_EVENTS:
            self.events.append(kind)

    def add_control(self, msg: dict[str, Any]) -> None:
        if len(self.control) < MAX_CONTROL:
            self.control.append({"type": msg.get("type"), "body": msg})

    def set_settings(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        tags = settings.get("tags")
        self.tags = [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []

    def close(self, reason: str, code: int | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.ended_at = time.time()
        self.close_reason = reason
        self.close_code = code
        self._sha_hex = self._sha.hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "path": self.path,
            "tags": self.tags,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "settings": self.settings,
            "control_messages": self.control,
            "keepalives": self.keepalives,
            "audio": {
                "bytes": self.audio_bytes,
                "messages": self.audio_messages,
                "sha256": self._sha_hex or self._sha.hexdigest(),
            },
            "caller_frames": self.caller_frames.to_json(),
            "replies": [r.to_json() for r in self.replies],
            "events": self.events,
            "events_total": self.events_total,
            "closed": self.closed,
            "close_reason": self.close_reason,
            "close_code": self.close_code,
        }


class Registry:
    """Active sessions plus the most recent closed ones."""

    def __init__(self, max_closed: int = MAX_CLOSED) -> None:
        self.active: dict[str, SessionRecord] = {}
        self.closed: deque[SessionRecord] = deque(maxlen=max_closed)

    def open(self, record: SessionRecord) -> None:
        self.active[record.request_id] = record

    def finish(self, record: SessionRecord) -> None:
        if self.active.pop(record.request_id, None) is not None:
            self.closed.append(record)

    def find(self, tag: str | None = None, request_id: str | None = None) -> list[SessionRecord]:
        records = [*self.closed, *self.active.values()]
        if tag is not None:
            records = [r for r in records if tag in r.tags]
        if request_id is not None:
            records = [r for r in records if r.request_id == request_id]
        return sorted(records, key=lambda r: r.started_at)
