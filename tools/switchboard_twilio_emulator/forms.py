"""Form-encoded request bodies as Twilio reads them (pure).

A parameter may repeat (`StatusCallbackEvent=ringing&StatusCallbackEvent=answered`), so a
form is a mapping of name → list of values. `Reader` hands out typed values and remembers
which names were read, so the names nobody read are the request's unknown parameters:
Twilio ignores them, the emulator records them.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit

from . import errors

Form = dict[str, list[str]]
MAX_FORM_BYTES = 64 * 1024
METHODS = ("GET", "POST")


def parse(body: bytes) -> Form:
    if len(body) > MAX_FORM_BYTES:
        raise errors.invalid_parameter("body", f"larger than {MAX_FORM_BYTES} bytes")
    form: Form = {}
    for name, value in parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True):
        form.setdefault(name, []).append(value)
    return form


def is_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class Reader:
    def __init__(self, form: Form) -> None:
        self.form = form
        self.read: set[str] = set()
        self.notes: list[str] = []  # accepted, but not the way Twilio documents it

    def unknown(self) -> list[str]:
        return sorted(set(self.form) - self.read)

    def has(self, name: str) -> bool:
        self.read.add(name)
        return bool(self.form.get(name))

    def one(self, name: str) -> str | None:
        self.read.add(name)
        values = self.form.get(name)
        if not values:
            return None
        if len(values) > 1:
            self.notes.append(f"{name} given {len(values)} times; the last one counts")
        return values[-1]

    def all(self, name: str) -> list[str]:
        self.read.add(name)
        return list(self.form.get(name, []))

    def boolean(self, name: str, default: bool) -> bool:
        value = self.one(name)
        if value is None or value == "":
            return default
        lowered = value.lower()
        if lowered not in ("true", "false"):
            raise errors.invalid_parameter(name, f"{value[:40]!r} is not true or false")
        return lowered == "true"

    def integer(self, name: str, default: int | None, low: int, high: int) -> int | None:
        value = self.one(name)
        if value is None or value == "":
            return default
        try:
            number = int(value)
        except ValueError:
            raise errors.invalid_parameter(name, f"{value[:40]!r} is not an integer") from None
        if not low <= number <= high:
            raise errors.invalid_parameter(name, f"{number} is outside {low}..{high}")
        return number

    def url(self, name: str) -> str | None:
        value = self.one(name)
        if value is None or value == "":
            return None
        if not is_url(value):
            raise errors.invalid_url(name, value)
        return value

    def method(self, name: str, default: str = "POST") -> str:
        value = self.one(name)
        if value is None or value == "":
            return default
        if value.upper() not in METHODS:
            raise errors.invalid_parameter(name, f"{value[:20]!r} is not GET or POST")
        return value.upper()

    def choice(self, name: str, allowed: Iterable[str]) -> str | None:
        value = self.one(name)
        if value is None or value == "":
            return None
        options = tuple(allowed)
        if value not in options:
            raise errors.invalid_parameter(name, f"{value[:40]!r} is not one of {', '.join(options)}")
        return value

    def events(self, name: str, allowed: Iterable[str]) -> frozenset[str]:
        """A repeated parameter; one space-separated value is accepted too (and noted)."""
        options = tuple(allowed)
        found: list[str] = []
        for value in self.all(name):
            parts = value.split()
            if len(parts) > 1:
                self.notes.append(f"{name}={value!r} is space-separated; Twilio documents one value per parameter")
            found += parts
        for event in found:
            if event not in options:
                raise errors.invalid_parameter(name, f"{event[:40]!r} is not one of {', '.join(options)}")
        return frozenset(found)
