"""Which numbers outbound calls may dial (pure): the toll-fraud guard.

A control API that dials whatever it is given is a way to run up a phone bill: premium-rate
numbers and international revenue-share ranges pay whoever rents them for every minute. So
outbound dialing is off until configured, a destination must be an E.164 number under one of
the operator's allowed prefixes (country codes such as `+1`, or narrower ones such as
`+1415`), and known premium-rate and high-cost prefixes are refused even inside an allowed
country. `DialPolicy.check` says why a number is refused; the control API answers with a 4xx
naming that reason and counts it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")

# Premium-rate, shared-cost and international ranges that toll fraud (IRSF) uses, by prefix.
# Refused even when the country is allowed; OUTBOUND_PREMIUM_PREFIXES replaces this list.
DEFAULT_PREMIUM_PREFIXES = (
    "+1900", "+1976",  # North America: premium rate
    "+4470", "+4487", "+449",  # UK: personal numbers, special services, premium rate (09)
    "+3389",  # France: premium rate (089)
    "+49900", "+49137",  # Germany: premium rate, televoting
    "+61190",  # Australia: premium rate
    "+34803", "+34806", "+34807", "+34905",  # Spain: premium rate, mass calling
    "+39892", "+39899",  # Italy: premium rate
    "+979",  # International Premium Rate Service
    "+870", "+881", "+882", "+883",  # satellite and international networks (IRSF favourites)
)

Reason = Literal["outbound_disabled", "invalid_number", "not_allowed", "premium_rate"]


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: Reason
    message: str


def parse_prefixes(text: str) -> tuple[str, ...]:
    """`"+1, 44,+4420"` → `("+1", "+44", "+4420")`; ValueError on anything that is not digits."""
    out = []
    for raw in text.split(","):
        entry = raw.strip().replace(" ", "")
        if not entry:
            continue
        digits = entry.removeprefix("+")
        if not digits.isdigit() or not 1 <= len(digits) <= 15 or digits[0] == "0":
            raise ValueError(f"{raw.strip()!r} is not a phone number prefix (a country code such as +44, or longer)")
        out.append("+" + digits)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True, slots=True)
class DialPolicy:
    enabled: bool = False
    allow: tuple[str, ...] = ()
    premium: tuple[str, ...] = DEFAULT_PREMIUM_PREFIXES

    @classmethod
    def parse(cls, *, enabled: bool, allow: str, premium: str | None = None) -> DialPolicy:
        return cls(enabled, parse_prefixes(allow),
                   DEFAULT_PREMIUM_PREFIXES if premium is None else parse_prefixes(premium))

    def check(self, number: str) -> Refusal | None:
        """None if `number` may be dialled, else why not."""
        if not self.enabled:
            return Refusal("outbound_disabled", "outbound calls are off: set OUTBOUND_ENABLED=true and "
                                                "OUTBOUND_ALLOW (the prefixes that may be dialled)")
        if not E164.fullmatch(number):
            return Refusal("invalid_number", f"{number[:32]!r} is not an E.164 phone number (+ country code, number)")
        premium = next((p for p in self.premium if number.startswith(p)), None)
        if premium is not None:
            return Refusal("premium_rate", f"{number} is in the premium-rate or high-cost range {premium}: refused")
        if not any(number.startswith(p) for p in self.allow):
            allowed = ", ".join(self.allow) or "none"
            return Refusal("not_allowed", f"{number} is outside the allowed prefixes ({allowed}; OUTBOUND_ALLOW)")
        return None
