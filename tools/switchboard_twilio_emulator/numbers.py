"""Phone numbers and call endpoints as Twilio accepts them (pure).

Twilio wants E.164 (`+` country code subscriber number, at most 15 digits) and checks the
number plan: a North American number is +1 NPA NXX XXXX with NPA and NXX not starting with
0 or 1, so `+15551234567` is refused (21211) while `+14155550100` is fine. Elsewhere only the
length is checked here (8 to 15 digits). `To` may also be a SIP URI or a Client identity.
"""

from __future__ import annotations

import re

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_NANP = re.compile(r"\+1[2-9][0-9]{2}[2-9][0-9]{6}")
_SIP = re.compile(r"sips?:[^@\s]+@[^@\s]+")
_CLIENT = re.compile(r"client:[A-Za-z0-9_.\-]{1,121}")


def is_phone_number(value: str) -> bool:
    if not _E164.fullmatch(value):
        return False
    if value.startswith("+1"):
        return bool(_NANP.fullmatch(value))
    return 8 <= len(value) - 1 <= 15


def is_sip(value: str) -> bool:
    return bool(_SIP.fullmatch(value))


def is_endpoint(value: str) -> bool:
    """What `To` may name: a phone number, a SIP URI, a Client identity."""
    return is_phone_number(value) or is_sip(value) or bool(_CLIENT.fullmatch(value))


def is_caller_id(value: str) -> bool:
    """What `From` may name: a phone number or a Client identity."""
    return is_phone_number(value) or bool(_CLIENT.fullmatch(value))


def formatted(value: str) -> str:
    """Twilio's `to_formatted`/`from_formatted`: (415) 555-0100 for North America, E.164 elsewhere."""
    if _NANP.fullmatch(value):
        return f"({value[2:5]}) {value[5:8]}-{value[8:]}"
    return value
