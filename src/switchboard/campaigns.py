"""Campaigns of outbound calls: the pure rules (no Redis, no clock of their own).

- **Pacing**: Twilio accounts are limited in calls created per second (1 by default). Dials are
  spaced `dial_interval_ms(cps)` apart, a little more than 1/cps, so that the requests still
  fit into any one-second window at Twilio after a few ms of network jitter.
- **Calling hours**: a destination is dialled only inside its window (e.g. 09:00-20:00
  Monday to Friday) in its own time zone; `next_open` says when the window opens next,
  daylight-saving time included.
- **Retries**: busy, no answer and failed (and, if asked, voicemail) are tried again after a
  spacing, up to a number of attempts; `retry_delay_s` says whether and when.
- **Destination state**: one record per destination (`Destination`), moved by pure functions;
  the control API stores it in Redis and moves it with compare-and-set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
RETRYABLE = ("busy", "no-answer", "failed", "voicemail", "error")
# Outcomes of one attempt: Twilio's final statuses, what Switchboard decided (voicemail, amd_*),
# `error` (Twilio refused the call: invalid number, unverified caller ID…), `canceled`.
FINAL_STATES = frozenset({"done", "canceled"})
Status = Literal["pending", "dialing", "in_call", "done", "canceled"]
JITTER_GUARD = 1.08  # dials 8 % further apart than 1/cps …
JITTER_GUARD_MS = 25  # … plus 25 ms: a busy event loop or the network cannot squeeze cps + 1 requests into one
# second at Twilio (measured: single requests arrive up to ~30 ms late on a loaded 2-core machine)


def dial_interval_ms(cps: float) -> int:
    """Milliseconds between two dials of one campaign at `cps` calls per second."""
    if cps <= 0:
        raise ValueError("cps must be positive")
    return math.ceil(1000 / cps * JITTER_GUARD) + JITTER_GUARD_MS


# --- calling hours ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CallingHours:
    start: time = time(9, 0)
    end: time = time(20, 0)  # before `start`: the window runs past midnight
    days: frozenset[int] = frozenset(range(7))  # 0 = Monday

    def _window(self, day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
        opens = datetime.combine(day, self.start, tzinfo=zone)
        closes_on = day if self.end > self.start else day + timedelta(days=1)
        return opens, datetime.combine(closes_on, self.end, tzinfo=zone)

    def next_open(self, now: datetime, zone: ZoneInfo) -> datetime:
        """`now` if it is inside a window, else when the next one opens (aware, UTC); `now` must be aware."""
        local = now.astimezone(zone)
        # Yesterday's window may still be open (past midnight); a week ahead covers every day set.
        for offset in range(-1, 8):
            day = local.date() + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            opens, closes = self._window(day, zone)
            # Compare in UTC: wall-clock arithmetic across a DST change is off by the shift.
            opens_utc, closes_utc = opens.astimezone(UTC), closes.astimezone(UTC)
            if opens_utc <= now < closes_utc:
                return now.astimezone(UTC)
            if opens_utc > now:
                return opens_utc
        raise ValueError("calling hours name no day")  # days is never empty: the API refuses that


# Countries with a single time zone: a destination there needs no `timezone` of its own.
SINGLE_ZONE_COUNTRIES = {
    "+27": "Africa/Johannesburg", "+31": "Europe/Amsterdam", "+32": "Europe/Brussels", "+33": "Europe/Paris",
    "+39": "Europe/Rome", "+41": "Europe/Zurich", "+43": "Europe/Vienna", "+44": "Europe/London",
    "+45": "Europe/Copenhagen", "+46": "Europe/Stockholm", "+47": "Europe/Oslo", "+48": "Europe/Warsaw",
    "+49": "Europe/Berlin", "+65": "Asia/Singapore", "+81": "Asia/Tokyo", "+82": "Asia/Seoul",
    "+91": "Asia/Kolkata", "+353": "Europe/Dublin", "+972": "Asia/Jerusalem",
}


def zone_for(number: str, *given: str | None) -> str | None:
    """The first time zone given, else the number's country's when it has only one, else None."""
    for zone in given:
        if zone:
            return zone
    return next((z for code, z in SINGLE_ZONE_COUNTRIES.items() if number.startswith(code)), None)


def parse_days(names: list[str]) -> frozenset[int]:
    try:
        return frozenset(DAYS.index(name.lower()[:3]) for name in names)
    except ValueError:
        raise ValueError(f"days must be among {', '.join(DAYS)}") from None


# --- retries ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RetryRule:
    attempts: int = 1  # in all, the first one included: 1 = no retry
    spacing_s: float = 300.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    rules: Mapping[str, RetryRule] = field(default_factory=dict)

    def retry_delay_s(self, outcome: str, attempts_made: int) -> float | None:
        """Seconds until the next attempt after `attempts_made` attempts ended with `outcome`, or None."""
        rule = self.rules.get(outcome)
        if rule is None or attempts_made >= rule.attempts:
            return None
        return rule.spacing_s


# --- one destination ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Attempt:
    ref: str  # the outbound call record of this attempt
    started_at: float
    call_sid: str = ""
    outcome: str = ""
    answered_by: str = ""
    ended_at: float | None = None
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in {
            "ref": self.ref, "call_sid": self.call_sid, "started_at": self.started_at, "ended_at": self.ended_at,
            "outcome": self.outcome, "answered_by": self.answered_by, "error": self.error,
        }.items() if v not in ("", None)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(str(data["ref"]), float(data["started_at"]), str(data.get("call_sid", "")),
                   str(data.get("outcome", "")), str(data.get("answered_by", "")),
                   float(data["ended_at"]) if data.get("ended_at") is not None else None, str(data.get("error", "")))


@dataclass(frozen=True, slots=True)
class Destination:
    to: str
    context: dict[str, Any] = field(default_factory=dict)
    timezone: str | None = None
    status: Status = "pending"
    next_at: float | None = None  # Unix time of the next attempt (pending)
    outcome: str = ""  # the final outcome once done
    attempts: tuple[Attempt, ...] = ()

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts and self.status in ("dialing", "in_call") else None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"to": self.to, "status": self.status, "attempts": [a.to_json() for a in self.attempts]}
        if self.context:
            data["context"] = self.context
        if self.timezone:
            data["timezone"] = self.timezone
        if self.next_at is not None:
            data["next_at"] = self.next_at
        if self.outcome:
            data["outcome"] = self.outcome
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Destination:
        return cls(str(data["to"]), dict(data.get("context") or {}), data.get("timezone"),
                   data.get("status", "pending"), data.get("next_at"), str(data.get("outcome", "")),
                   tuple(Attempt.from_json(a) for a in data.get("attempts") or ()))


def dialing(dest: Destination, ref: str, now: float) -> Destination:
    """A new attempt starts (claimed from the queue, not yet accepted by Twilio)."""
    return replace(dest, status="dialing", next_at=None, attempts=(*dest.attempts, Attempt(ref, now)))


def in_call(dest: Destination, call_sid: str) -> Destination:
    """Twilio accepted the attempt: it has a callSid."""
    current = dest.attempts[-1]
    return replace(dest, status="in_call", attempts=(*dest.attempts[:-1], replace(current, call_sid=call_sid)))


def requeue(dest: Destination, at: float) -> Destination:
    """The attempt did not happen (no slot, Twilio's rate limit, outside the hours): not counted."""
    attempts = dest.attempts[:-1] if dest.status == "dialing" else dest.attempts
    return replace(dest, status="pending", next_at=at, attempts=attempts)


def attempt_ended(dest: Destination, outcome: str, now: float, policy: RetryPolicy, *, answered_by: str = "",
                  error: str = "") -> tuple[Destination, float | None]:
    """The current attempt ended: (new state, when to dial again or None when it is done)."""
    current = dest.attempts[-1]
    ended = replace(current, outcome=outcome, answered_by=answered_by or current.answered_by, ended_at=now,
                    error=error)
    attempts = (*dest.attempts[:-1], ended)
    delay = policy.retry_delay_s(outcome, len(attempts))
    if delay is None:
        return replace(dest, status="done", outcome=outcome, next_at=None, attempts=attempts), None
    return replace(dest, status="pending", next_at=now + delay, attempts=attempts), now + delay


def canceled(dest: Destination) -> Destination:
    return replace(dest, status="canceled", outcome="canceled", next_at=None)
