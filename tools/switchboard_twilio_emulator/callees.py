"""Who answers a number, and how (pure): the emulator's scripted callees.

A callee is chosen by the number dialled: a one-shot override queued for that number
(`next`), else the number's script, else the default. Kinds:

- `person`: rings `ring_s`, answers; on a `<Connect><Stream>` it runs a simulator
  `CallScript` (speaks, listens, barges in) and hangs up when it is over; bridged by
  `<Dial>` or in a started conference it talks `talk_s`, then hangs up.
- `voicemail`: rings, answers, plays a greeting, beeps, records up to `record_ms`, hangs up.
- `fax`: answers with a fax tone and hangs up after `machine.record_ms`.
- `busy`, `no_answer`, `failed`: never answers (busy after `ring_s`; no answer until the
  caller's Timeout; failed at once with `sip_code`).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from switchboard_callsim.machine import MachineScript
from switchboard_callsim.script import CallScript

KINDS = ("person", "voicemail", "fax", "busy", "no_answer", "failed")
ANSWERING = frozenset({"person", "voicemail", "fax"})
ANSWERED_BY = ("human", "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax",
               "unknown")
DEFAULT_KEY = "default"
MAX_ONCE = 1000  # one-shot overrides queued per number


@dataclass(frozen=True, slots=True)
class Callee:
    kind: str = "person"
    ring_s: float = 1.0
    talk_s: float = 10.0  # bridged (<Dial>) or in a started conference: hangs up after this (0 = stays)
    hangup_after_s: float = 0.0  # any answered call: hangs up this long after answering (0 = never by itself)
    script: CallScript = field(default_factory=CallScript)
    machine: MachineScript = field(default_factory=MachineScript)
    answered_by: str | None = None  # AMD verdict override
    amd_ms: int | None = None  # AMD decision time override
    sip_code: int = 404  # failed calls

    @property
    def answers(self) -> bool:
        return self.kind in ANSWERING


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be an object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    values = dict(data)
    if cls is CallScript and "dtmf" in values:
        values["dtmf"] = tuple((int(at), str(digit)) for at, digit in values["dtmf"])
    try:
        return cls(**values)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None


def from_json(data: Any) -> Callee:
    """A callee from its JSON form; a clear ValueError for anything Twilio's callee could not be."""
    if not isinstance(data, Mapping):
        raise ValueError("a callee must be a JSON object")
    values = dict(data)
    if "script" in values:
        values["script"] = _build(CallScript, values["script"], "script")
    if "machine" in values:
        values["machine"] = _build(MachineScript, values["machine"], "machine")
    callee = _build(Callee, values, "callee")
    if callee.kind not in KINDS:
        raise ValueError(f"kind {callee.kind!r} is not one of {', '.join(KINDS)}")
    if callee.answered_by is not None and callee.answered_by not in ANSWERED_BY:
        raise ValueError(f"answered_by {callee.answered_by!r} is not one of {', '.join(ANSWERED_BY)}")
    for name in ("ring_s", "talk_s", "hangup_after_s"):
        value = getattr(callee, name)
        if not isinstance(value, (int, float)) or not 0 <= value <= 86_400:
            raise ValueError(f"{name} must be a number of seconds in 0..86400")
    if callee.amd_ms is not None and not (isinstance(callee.amd_ms, int) and 0 <= callee.amd_ms <= 120_000):
        raise ValueError("amd_ms must be an integer in 0..120000")
    if not (isinstance(callee.sip_code, int) and 400 <= callee.sip_code <= 699):
        raise ValueError("sip_code must be a SIP failure code (400..699)")
    return callee


def to_json(callee: Callee) -> dict[str, Any]:
    data = dataclasses.asdict(callee)
    data["script"]["dtmf"] = [list(item) for item in callee.script.dtmf]
    return data


class Directory:
    """The numbers' callees: set at start, changed over the admin API, one-shot overrides first."""

    def __init__(self, default: Callee | None = None, numbers: Mapping[str, Callee] | None = None) -> None:
        self._initial = (default or Callee(), dict(numbers or {}))
        self.reset()

    def reset(self) -> None:
        self.default, numbers = self._initial
        self.numbers: dict[str, Callee] = dict(numbers)
        self.once: dict[str, deque[Callee]] = {}

    def set(self, number: str, callee: Callee) -> None:
        if number == DEFAULT_KEY:
            self.default = callee
        else:
            self.numbers[number] = callee

    def remove(self, number: str) -> bool:
        self.once.pop(number, None)
        return self.numbers.pop(number, None) is not None

    def push_once(self, number: str, callee: Callee) -> int:
        queue = self.once.setdefault(number, deque())
        if len(queue) >= MAX_ONCE:
            raise ValueError(f"at most {MAX_ONCE} one-shot callees per number")
        queue.append(callee)
        return len(queue)

    def pick(self, number: str) -> Callee:
        queue = self.once.get(number)
        if queue:
            callee = queue.popleft()
            if not queue:
                del self.once[number]
            return callee
        return self.numbers.get(number, self.default)

    def peek(self, number: str) -> Callee:
        """Who would answer the next call to this number (nothing consumed)."""
        queue = self.once.get(number)
        return queue[0] if queue else self.numbers.get(number, self.default)

    def to_json(self) -> dict[str, Any]:
        return {
            "default": to_json(self.default),
            "numbers": {number: to_json(c) for number, c in sorted(self.numbers.items())},
            "next": {number: [to_json(c) for c in queue] for number, queue in sorted(self.once.items())},
        }
