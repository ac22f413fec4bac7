"""Injected faults shared by every session, changed at run time through the admin endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from .config import EmulatorConfig

_INT_FIELDS = ("reject_next", "reject_status", "drop_after_ms", "error_after_ms")


class FaultError(ValueError):
    """A fault query the emulator cannot apply (bad number, unknown name)."""


class _Switch:
    """A fault that is on or off, and that code can wait out."""

    def __init__(self) -> None:
        self._off = asyncio.Event()
        self._off.set()

    @property
    def on(self) -> bool:
        return not self._off.is_set()

    def set(self, on: bool) -> None:
        if on:
            self._off.clear()
        else:
            self._off.set()

    async def wait_off(self) -> None:
        if not self._off.is_set():
            await self._off.wait()


class Faults:
    def __init__(self, config: EmulatorConfig) -> None:
        self._stall = _Switch()
        self._mute = _Switch()
        self.reset()
        # Faults from the command line are part of the emulator's starting state, unlike `reset`.
        self.reject_next = config.reject_next
        self.reject_status = config.reject_status
        self.drop_after_ms = config.drop_after_ms
        self.error_after_ms = config.error_after_ms
        self.error_code = config.error_code

    def reset(self) -> None:
        self.reject_next = 0
        self.reject_status = 429
        self.drop_after_ms = 0
        self.error_after_ms = 0
        self.error_code = "INTERNAL_SERVER_ERROR"
        self.set_stall(False)
        self.set_mute(False)

    @property
    def stalled(self) -> bool:
        return self._stall.on

    def set_stall(self, stalled: bool) -> None:
        self._stall.set(stalled)

    async def wait_running(self) -> None:
        """Return at once unless stalled; a stalled peer neither reads nor writes until resumed."""
        await self._stall.wait_off()

    @property
    def muted(self) -> bool:
        """The agent goes on "speaking" (no AgentAudioDone) but sends no audio: a stalled TTS."""
        return self._mute.on

    def set_mute(self, muted: bool) -> None:
        self._mute.set(muted)

    async def wait_voiced(self) -> None:
        await self._mute.wait_off()

    def take_rejection(self) -> int | None:
        """HTTP status to refuse this handshake with, consuming one of the `reject_next` budget."""
        if self.reject_next <= 0:
            return None
        self.reject_next -= 1
        return self.reject_status

    def apply(self, query: Mapping[str, Sequence[str]]) -> None:
        """Apply `?name=value` pairs; `reset=1` first, so `reset=1&stall=1` means exactly a stall."""
        known = set(_INT_FIELDS) | {"error_code", "stall", "mute", "reset"}
        unknown = set(query) - known
        if unknown:
            raise FaultError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        numbers = {name: _int(query, name) for name in _INT_FIELDS if name in query}
        if not 400 <= numbers.get("reject_status", 400) <= 599:
            raise FaultError("reject_status must be an HTTP error status (400-599)")
        # Validate everything before changing anything: a bad query leaves the faults as they were.
        if _flag(query, "reset"):
            self.reset()
        for name, value in numbers.items():
            setattr(self, name, value)
        if "error_code" in query:
            self.error_code = query["error_code"][-1] or "INTERNAL_SERVER_ERROR"
        if "stall" in query:
            self.set_stall(_flag(query, "stall"))
        if "mute" in query:
            self.set_mute(_flag(query, "mute"))

    def to_json(self) -> dict[str, Any]:
        return {
            "reject_next": self.reject_next,
            "reject_status": self.reject_status,
            "drop_after_ms": self.drop_after_ms,
            "error_after_ms": self.error_after_ms,
            "error_code": self.error_code,
            "stall": self.stalled,
            "mute": self.muted,
        }


def _int(query: Mapping[str, Sequence[str]], name: str) -> int:
    raw = query[name][-1]
    try:
        value = int(raw)
    except ValueError:
        raise FaultError(f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise FaultError(f"{name} must be >= 0")
    return value


def _flag(query: Mapping[str, Sequence[str]], name: str) -> bool:
    return query.get(name, ["0"])[-1].lower() in ("1", "true", "yes", "on")
