"""Redis Streams I/O shared by edge and worker: one coalescing writer, one multi-key reader.

- `writer.StreamWriter`: every call on an instance appends without awaiting; once per loop
  tick (or after a configurable window) all pending entries of all calls go out in ONE
  pipeline, in order, merging a call's consecutive audio while Redis is slow; after a failure
  it writes again what Redis acknowledged in the last moments (`recent.RecentWrites`).
- `reader.StreamReader`: one blocking XREAD over all the streams an instance follows (one per
  slot in use on a Redis Cluster), woken by an entry in the instance's own wake stream when a
  stream is added.
- `direct.DirectConnection`: the fast path both use for their hand-packed commands (see
  `switchboard.resp`), outside redis-py's per-command machinery; `direct.ClusterNodes` finds
  each key's master on a Redis Cluster.
"""

from .direct import WRITE_TIMEOUT_S, ClusterNodes, DirectConnection
from .reader import READ_RETRY, StreamHandler, StreamReader
from .writer import MAX_PENDING_AUDIO_BYTES, MAX_PENDING_JOURNAL_ITEMS, WRITE_RETRY, StreamWriter, WriterDied

__all__ = [
    "MAX_PENDING_AUDIO_BYTES",
    "MAX_PENDING_JOURNAL_ITEMS",
    "READ_RETRY",
    "WRITE_RETRY",
    "WRITE_TIMEOUT_S",
    "ClusterNodes",
    "DirectConnection",
    "StreamHandler",
    "StreamReader",
    "StreamWriter",
    "WriterDied",
]
