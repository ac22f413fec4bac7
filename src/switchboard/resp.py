"""RESP2 encoding of the two commands on Switchboard's hot path (pure, no I/O).

redis-py encodes every argument of every command through its generic encoder; on the edge
that was ~20 % of the CPU in a py-spy profile at 100 calls. XADD of an audio entry and the
multi-stream XREAD have fixed shapes, so their unchanging parts are encoded once and
cached, and each command is a handful of byte strings handed to one `writelines`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(bulk(arg) for arg in args)


class XaddPacker:
    """`XADD key MAXLEN ~ n * k <kind> p <payload> t <t_us>` with a cached per-stream prefix."""

    def __init__(self) -> None:
        self._prefixes: dict[tuple[str, int], bytes] = {}

    def pack(self, key: str, maxlen: int, kind: bytes, payload: bytes, t_us: int, out: list[bytes]) -> None:
        prefix = self._prefixes.get((key, maxlen))
        if prefix is None:
            prefix = self._prefixes[(key, maxlen)] = (
                b"*12\r\n$4\r\nXADD\r\n" + bulk(key.encode()) + b"$6\r\nMAXLEN\r\n$1\r\n~\r\n"
                + bulk(b"%d" % maxlen) + b"$1\r\n*\r\n$1\r\nk\r\n"
            )
        t = b"%d" % t_us
        out.append(prefix + bulk(kind) + b"$1\r\np\r\n$%d\r\n" % len(payload))
        out.append(payload)
        out.append(b"\r\n$1\r\nt\r\n" + bulk(t))

    @staticmethod
    def pack_again(key: str, maxlen: int, entry_id: bytes, kind: bytes, payload: bytes, t_us: int,
                   out: list[bytes]) -> None:
        """The same entry with the id Redis gave it the first time (a restarted Redis lost it)."""
        out.append(b"*12\r\n$4\r\nXADD\r\n" + bulk(key.encode()) + b"$6\r\nMAXLEN\r\n$1\r\n~\r\n"
                   + bulk(b"%d" % maxlen) + bulk(entry_id) + b"$1\r\nk\r\n" + bulk(kind)
                   + b"$1\r\np\r\n$%d\r\n" % len(payload))
        out.append(payload)
        out.append(b"\r\n$1\r\nt\r\n" + bulk(b"%d" % t_us))

    def forget(self, key: str) -> None:
        for cached in [k for k in self._prefixes if k[0] == key]:
            del self._prefixes[cached]


class XreadPacker:
    """`XREAD COUNT c BLOCK ms STREAMS k1..kn id1..idn` with each key's encoding cached."""

    def __init__(self, count: int, block_ms: int) -> None:
        self._options = b"$5\r\nXREAD\r\n$5\r\nCOUNT\r\n" + bulk(b"%d" % count) + b"$5\r\nBLOCK\r\n" + bulk(
            b"%d" % block_ms
        ) + b"$7\r\nSTREAMS\r\n"
        self._keys: dict[str, bytes] = {}

    def pack(self, streams: Iterable[tuple[str, bytes | str]]) -> list[bytes]:
        keys, ids = [], []
        for key, last_id in streams:
            encoded = self._keys.get(key)
            if encoded is None:
                encoded = self._keys[key] = bulk(key.encode())
            keys.append(encoded)
            ids.append(bulk(last_id if isinstance(last_id, bytes) else last_id.encode()))
        return [b"*%d\r\n" % (2 * len(keys) + 6), self._options, *keys, *ids]

    def forget(self, key: str) -> None:
        self._keys.pop(key, None)


def entries_from_xread(
    response: list[Any] | dict[Any, Any] | None,
) -> list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]:
    """Raw XREAD reply → [(key, [(id, {field: value})])] (what redis-py would build).

    RESP2 answers a list of [key, entries] pairs, RESP3 (redis-py's default protocol with
    Redis 7) a map of key → entries; both are accepted.
    """
    result = []
    pairs = response.items() if isinstance(response, dict) else (response or ())
    for key, raw_entries in pairs:
        entries = []
        for entry_id, flat in raw_entries:
            it = iter(flat or ())
            entries.append((entry_id, dict(zip(it, it))))
        result.append((key, entries))
    return result
