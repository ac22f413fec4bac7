"""Byte-exact check of the agent audio a call received (pure, no I/O).

Payload boundaries are not frame boundaries: bytes are re-cut into 160-byte frames with
the remainder carried over. Every frame must be a synthetic agent frame; within a reply
`seq` runs 0, 1, 2…; reply numbers only grow; and once a `clear` has cut a reply, no
frame of that reply (or an older one) may follow, since the caller would hear stale audio.
"""

from __future__ import annotations

from switchboard_dev.testaudio import AGENT_MAGIC, FRAME_BYTES, FrameInfo, parse_frame

MAX_REASONS = 5


class AgentAudioChecker:
    __slots__ = ("_floor", "_next_seq", "_reply", "_rest", "bytes", "cut_partial", "errors", "frames", "reasons")

    def __init__(self) -> None:
        self._rest = b""
        self._reply: int | None = None
        self._next_seq = 0
        self._floor = -1  # after a clear: replies <= floor are stale
        self.frames = 0
        self.bytes = 0
        self.errors = 0
        self.reasons: list[str] = []
        self.cut_partial = 0  # partial frames dropped by a clear (legitimate)

    def _fail(self, reason: str) -> None:
        self.errors += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(reason)

    def feed(self, payload: bytes) -> list[FrameInfo]:
        """Check one media payload; returns the agent frames it completed, in order."""
        self.bytes += len(payload)
        data = self._rest + payload if self._rest else payload
        whole = len(data) - len(data) % FRAME_BYTES
        self._rest = data[whole:]
        infos: list[FrameInfo] = []
        for off in range(0, whole, FRAME_BYTES):
            frame_no = self.frames
            self.frames += 1
            info = parse_frame(data[off : off + FRAME_BYTES])
            if info is None or info.magic != AGENT_MAGIC:
                self._fail(f"frame {frame_no} is not an agent frame")
                continue
            self._check_order(frame_no, info)
            infos.append(info)
        return infos

    def _check_order(self, frame_no: int, info: FrameInfo) -> None:
        reply, seq = info.stream_no, info.seq
        if reply <= self._floor:
            self._fail(f"frame {frame_no}: reply {reply} seq {seq} arrived after its clear")
        elif reply != self._reply:
            if self._reply is not None and reply < self._reply:
                self._fail(f"frame {frame_no}: reply {reply} after reply {self._reply}")
            elif seq != 0:
                self._fail(f"frame {frame_no}: reply {reply} starts at seq {seq}")
        elif seq != self._next_seq:
            self._fail(f"frame {frame_no}: reply {reply} seq {seq}, expected {self._next_seq}")
        self._reply, self._next_seq = reply, seq + 1

    def clear(self) -> None:
        if self._rest:
            self.cut_partial += 1
            self._rest = b""
        if self._reply is not None:
            self._floor = max(self._floor, self._reply)

    def finish(self) -> bool:
        """Verdict once the call is over."""
        if self._rest:
            self._fail(f"{len(self._rest)} trailing bytes do not make a whole frame")
            self._rest = b""
        return self.errors == 0
