"""Client text frames written straight to the transport: the simulator's hot path.

A 500-call load runs beside the system under test on two cores, so the 25,000 media
messages a second skip websockets' per-send machinery (context manager, state checks,
drain). On the wire they are ordinary masked text frames (RFC 6455 §5.2), written whole
and synchronously, so they interleave safely with frames websockets writes itself (the
opening messages, pongs, close). Only used while the connection is OPEN.
"""

from __future__ import annotations

import random
import struct

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - pure-Python fallback
    from websockets.utils import apply_mask

_MEDIUM = struct.Struct("!BBH")
_LARGE = struct.Struct("!BBQ")
_getrandbits = random.getrandbits  # masking keys need not be unpredictable for a load generator


def text_frame(data: bytes) -> bytes:
    n = len(data)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    elif n < 65536:
        header = _MEDIUM.pack(0x81, 0xFE, n)
    else:
        header = _LARGE.pack(0x81, 0xFF, n)
    key = _getrandbits(32).to_bytes(4, "big")
    return header + key + apply_mask(data, key)


def write_text(ws: ClientConnection, data: bytes) -> int:
    """Queue one text message; returns the transport's write-buffer size, or -1 if not open."""
    if ws.protocol.state is not State.OPEN:
        return -1
    transport = ws.transport
    transport.write(text_frame(data))
    return transport.get_write_buffer_size()
