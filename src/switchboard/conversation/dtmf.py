"""Keypad input (DTMF): keys gathered into entries for the agent (pure; the clock is passed in).

Twilio sends one `dtmf` event per key. Keys are gathered into one entry, which ends on the
terminator key, at `max_digits` keys, or after `inter_digit_timeout_s` without a key. A
finished entry goes to whoever waits for it: a pending `collect_digits` function call (the
agent asked for digits) gets them as its result; otherwise, when the profile's `dtmf.enabled`
says so, the agent gets one user message (`InjectUserMessage`) made from `dtmf.message`.

With `dtmf.mask` (card numbers, PINs) the keys never leave this object in clear: the events
show "•" for each key, the agent is told how many keys came and the entry's reference
(`dtmf-1`, …), and only `reveal` — used for the body of a function webhook, the customer's own
system — puts the clear digits back where an argument is exactly that reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .. import deepgram
from ..call_features import Dtmf
from ..messages import Event
from ..templates import render
from .actions import Action, DigitsCollected, Emit, Observe, ToAgent

MASK_CHAR = "•"
MAX_REQUEST_WAIT_S = 120.0
DEFAULT_REQUEST_WAIT_S = 15.0
MAX_VAULT = 8  # masked entries a later function call may still refer to


@dataclass(slots=True)
class _Request:
    call_id: str
    at: float
    wait_s: float
    max_digits: int
    terminator: str
    inter_digit_s: float


class KeypadCollector:
    def __init__(self, config: Dtmf) -> None:
        self.config = config
        self._keys: list[str] = []
        self._last_key_at = 0.0
        self._request: _Request | None = None
        self._entries = 0
        self._vault: dict[str, str] = {}  # ref → clear digits of a masked entry

    @property
    def masking(self) -> bool:
        return self.config.mask

    @property
    def waiting(self) -> bool:
        """A `collect_digits` call waits for an entry."""
        return self._request is not None

    # --- in ----------------------------------------------------------------------------------
    def key(self, digit: str, now: float) -> list[Action]:
        shown = MASK_CHAR if self.masking and digit not in ("#", "*") else digit
        actions: list[Action] = [Emit(Event.DTMF, {"digit": shown, **({"masked": True} if self.masking else {})})]
        if not (self.config.enabled or self._request is not None):
            return actions  # nobody listens: the key is only on the record, as before
        self._keys.append(digit)
        self._last_key_at = now
        if digit == self._terminator:
            actions.extend(self._finish("terminator"))
        elif len(self._value()) >= self._max_digits:
            actions.extend(self._finish("max_digits"))
        return actions

    def request(self, call_id: str, arguments: Any, now: float) -> list[Action]:
        """The agent called `collect_digits`; keys typed ahead of the request count towards it."""
        args = arguments if isinstance(arguments, dict) else {}
        previous, self._request = self._request, _Request(
            call_id, now, _bounded(args.get("timeout_s"), DEFAULT_REQUEST_WAIT_S, 1.0, MAX_REQUEST_WAIT_S),
            int(_bounded(args.get("max_digits"), self.config.max_digits, 1, 64)),
            _terminator(args.get("terminator"), self.config.terminator),
            _bounded(args.get("inter_digit_timeout_s"), self.config.inter_digit_timeout_s, 0.2, 30.0),
        )
        actions: list[Action] = []
        if previous is not None:  # a second request replaces the first, which gets an answer anyway
            actions.append(DigitsCollected(previous.call_id, _json({"error": "replaced by a newer request"})))
        if self._keys and (self._keys[-1] == self._terminator or len(self._value()) >= self._max_digits):
            actions.extend(self._finish("terminator" if self._keys[-1] == self._terminator else "max_digits"))
        return actions

    def tick(self, now: float) -> list[Action]:
        if self._keys and now - self._last_key_at >= self._inter_digit_s:
            return self._finish("timeout")
        request = self._request
        if request is not None and not self._keys and now - request.at >= request.wait_s:
            self._request = None
            return [Emit(Event.DTMF_ENTRY, {"digits": "", "count": 0, "ended_by": "no_input",
                                            "to": "collect_digits"}),
                    Observe("dtmf", "no_input"),
                    DigitsCollected(request.call_id, _json({"digits": "", "count": 0, "timed_out": True}))]
        return []

    def agent_gone(self) -> list[Action]:
        """The Deepgram session that asked ended: its function call can no longer be answered usefully."""
        request, self._request = self._request, None
        if request is None:
            return []
        return [DigitsCollected(request.call_id, _json({"error": "the agent session ended"}))]

    # --- out -----------------------------------------------------------------------------------
    def reveal(self, value: Any) -> Any:
        """`value` (function arguments) with every string that is a masked entry's reference
        replaced by that entry's clear digits: for the function's webhook only, never stored."""
        if isinstance(value, str):
            return self._vault.get(value, value)
        if isinstance(value, dict):
            return {k: self.reveal(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.reveal(v) for v in value]
        return value

    def _finish(self, ended_by: str) -> list[Action]:
        keys, self._keys = self._keys, []
        value = "".join(k for k in keys if k != self._terminator)
        terminated = bool(keys) and keys[-1] == self._terminator
        self._entries += 1
        ref = f"dtmf-{self._entries}"
        masked = self.masking
        shown = (MASK_CHAR * len(value) if masked else value) + (self._terminator if terminated else "")
        if masked:
            self._vault[ref] = value
            while len(self._vault) > MAX_VAULT:
                self._vault.pop(next(iter(self._vault)))
        request, self._request = self._request, None
        to = "collect_digits" if request is not None else "agent" if self.config.enabled else "none"
        entry = {"digits": shown, "count": len(value), "ended_by": ended_by, "to": to}
        if masked:
            entry.update(masked=True, ref=ref)
        actions: list[Action] = [Emit(Event.DTMF_ENTRY, entry), Observe("dtmf", ended_by)]
        if request is not None:
            result: dict[str, Any] = {"digits": MASK_CHAR * len(value) if masked else value, "count": len(value),
                                      "ended_by": ended_by}
            if masked:
                result.update(masked=True, ref=ref,
                              note=f"The digits are hidden; pass {ref!r} to a function that needs them.")
            actions.append(DigitsCollected(request.call_id, _json(result)))
        elif self.config.enabled:
            text = render(self.config.message, {"digits": shown, "count": str(len(value)), "ref": ref})
            actions.append(ToAgent(deepgram.inject_user_message(text)))
        return actions

    def _value(self) -> str:
        return "".join(k for k in self._keys if k != self._terminator)

    @property
    def _terminator(self) -> str:
        return self._request.terminator if self._request is not None else self.config.terminator

    @property
    def _max_digits(self) -> int:
        return self._request.max_digits if self._request is not None else self.config.max_digits

    @property
    def _inter_digit_s(self) -> float:
        return self._request.inter_digit_s if self._request is not None else self.config.inter_digit_timeout_s


def _bounded(value: Any, default: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return min(max(float(value), low), high)


def _terminator(value: Any, default: str) -> str:
    return value if value in ("#", "*", "") else default


def _json(doc: dict[str, Any]) -> str:
    return orjson.dumps(doc).decode()
