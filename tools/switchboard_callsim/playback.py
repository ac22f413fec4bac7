"""Twilio's outbound playback buffer, as a pure model (times in µs, no I/O).

Twilio queues the agent audio it receives and plays it in order at 8 bytes/ms; a `mark`
is echoed once everything queued before it has played (at once if nothing is queued);
`clear` drops the queue and echoes every pending mark immediately.
"""

from __future__ import annotations

from collections import deque

US_PER_BYTE = 125  # 8000 bytes/s of 8 kHz mu-law


class Playback:
    __slots__ = ("_marks", "play_end_us")

    def __init__(self) -> None:
        # When the audio queued so far will have finished playing; in the past = idle.
        self.play_end_us = 0
        self._marks: deque[tuple[int, str]] = deque()

    def push_audio(self, nbytes: int, now_us: int) -> int:
        """Queue `nbytes` of audio; returns when it starts playing."""
        start = max(self.play_end_us, now_us)
        self.play_end_us = start + nbytes * US_PER_BYTE
        return start

    def push_mark(self, name: str, now_us: int) -> None:
        # Marks keep their order even when an earlier one is due but not yet collected.
        self._marks.append((max(self.play_end_us, now_us), name))

    def due_marks(self, now_us: int) -> list[str]:
        """Names of the marks whose audio has played by `now_us`, in order (removed)."""
        due: list[str] = []
        marks = self._marks
        while marks and marks[0][0] <= now_us:
            due.append(marks.popleft()[1])
        return due

    def clear(self, now_us: int) -> list[str]:
        """Drop queued audio; returns every pending mark, to be echoed at once."""
        self.play_end_us = min(self.play_end_us, now_us)
        names = [name for _, name in self._marks]
        self._marks.clear()
        return names

    def playing(self, now_us: int) -> bool:
        return self.play_end_us > now_us

    @property
    def pending_marks(self) -> int:
        return len(self._marks)
