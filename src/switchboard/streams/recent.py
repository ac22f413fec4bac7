"""What a writer's pipelines gave Redis in the last moments, to write again if Redis lost it.

Redis may lose what it had acknowledged: killed before a reader fetched an entry, or restarted
from an AOF that lacks the last writes. A writer keeps its pipelines of the last `RETAIN_S` as
they went (the objects exist anyway: keeping them a little longer allocates nothing), and after
a failure writes their entries again under the ids Redis gave them. An entry Redis still has is
refused (its id is not above the stream's last); one it lost comes back in place, before
anything newer; a reader, which asks for ids above the last it saw, gets each entry once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

from ..entries import Kind

# Readers fetch an entry within milliseconds of its write, within ~100 ms on a saturated box.
# What is kept costs memory (about 6 KB per call at the edge and at the worker), so this covers
# a Redis killed before a reader fetched what it acknowledged, not the last second an AOF with
# appendfsync everysec may lose.
RETAIN_S = 0.25


class Item(Protocol):
    kind: Kind
    payload: bytearray | bytes
    t_us: int


class Queue(Protocol):
    @property
    def items(self) -> Sequence[Item]: ...

    @property
    def maxlen(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Again:
    """One entry to write again: its stream, the id Redis gave it, and what it held."""

    key: str
    maxlen: int
    entry_id: bytes
    kind: bytes
    payload: bytes
    t_us: int


@dataclass(frozen=True, slots=True)
class _Pipeline:
    at: float  # monotonic
    batch: Mapping[str, Queue]
    replies: list[Any]  # Redis' replies in order: an XADD's id (or its error), an EXPIRE's count
    expired: frozenset[str]  # keys whose XADDs were followed by an EXPIRE (one more reply)


class RecentWrites:
    def __init__(self, retain_s: float = RETAIN_S) -> None:
        self._retain_s = retain_s
        self._pipelines: deque[_Pipeline] = deque()

    def add(self, now: float, batch: Mapping[str, Queue], replies: list[Any], expired: frozenset[str]) -> None:
        self._pipelines.append(_Pipeline(now, batch, replies, expired))
        while self._pipelines[0].at < now - self._retain_s:
            self._pipelines.popleft()

    def entries(self, now: float) -> Iterator[Again]:
        """What Redis took in the last RETAIN_S, in the order it was written; journal records are
        best effort and left out."""
        for pipeline in self._pipelines:
            if pipeline.at < now - self._retain_s:
                continue
            answers = iter(pipeline.replies)
            for key, queue in pipeline.batch.items():
                for item in queue.items:
                    entry_id = next(answers)
                    if not isinstance(entry_id, RedisError) and item.kind is not Kind.JOURNAL:
                        yield Again(key, queue.maxlen, entry_id, item.kind.value, bytes(item.payload), item.t_us)
                if key in pipeline.expired:
                    next(answers)
