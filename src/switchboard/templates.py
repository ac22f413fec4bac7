"""`{{name}}` templates in prompts and greetings, filled from what is known about a call (pure).

    render("Hello {{caller_name|there}}, you called {{to}}.", {"to": "+14155550199"})
    → "Hello there, you called +14155550199."

- `{{name}}` is replaced by the context's value, `{{name|default}}` falls back to `default`
  when the value is missing or empty, and a name with no value and no default becomes "" (a
  prompt never shows a raw `{{…}}` to the model or the caller).
- Names are letters, digits, `_`, `.` and `-` (`{{customer.tier}}` reads a nested context
  field); matching is case-insensitive, so `{{From}}` and `{{from}}` are the same.
- Values come from outside: the caller's number and CNAM name, `<Parameter>`s, an outbound
  call's `context`, a CRM's answer. Each is escaped before it is put in: control characters
  and line breaks become spaces (a value cannot start a new paragraph of instructions), `{`
  and `}` are dropped (a value cannot smuggle in another template, should the text be rendered
  again), and it is cut to `MAX_VALUE_CHARS`. Rendering is one pass: text that a value brings
  in is never itself expanded.

`call_context` builds the context of a call from its stream parameters and any extra context,
`fill_settings` renders an `AgentSettings`' prompt and greeting.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .agent_settings import AgentSettings

__all__ = ["MAX_VALUE_CHARS", "call_context", "escape", "fill_settings", "has_placeholders", "render"]

MAX_VALUE_CHARS = 200
MAX_CONTEXT_FIELDS = 100
_NAME = r"[A-Za-z_][A-Za-z0-9_.-]{0,63}"
_PLACEHOLDER = re.compile(r"\{\{\s*(" + _NAME + r")\s*(?:\|([^{}|]{0,200}))?\}\}")
_SPACES = re.compile(r"\s+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
# Stream parameters that are Switchboard's own one-time grants, never template material.
_PRIVATE_PARAMETERS = frozenset({"sb_token", "sb_resume_of"})
# Twilio's webhook field → the name a template uses for it (the CamelCase name works too).
_TWILIO_NAMES = {"From": "from", "To": "to", "CallerName": "caller_name", "CallSid": "call_sid",
                 "Direction": "direction", "ForwardedFrom": "forwarded_from"}


def escape(value: object) -> str:
    """`value` as safe template text: one line, no braces, no control characters, bounded."""
    text = "" if value is None else str(value)
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text[: MAX_VALUE_CHARS * 4])
    text = _SPACES.sub(" ", text.replace("{", "").replace("}", "")).strip()
    return text[:MAX_VALUE_CHARS].rstrip()


def has_placeholders(template: str | None) -> bool:
    return bool(template) and _PLACEHOLDER.search(template or "") is not None


def render(template: str, context: Mapping[str, str]) -> str:
    """`template` with every placeholder replaced (see the module docstring); `context` keys are
    matched case-insensitively and its values escaped here."""
    folded = {key.lower(): value for key, value in context.items()}

    def fill(match: re.Match[str]) -> str:
        value = escape(folded.get(match[1].lower(), ""))
        if value:
            return value
        return escape(match[2]) if match[2] is not None else ""

    return _PLACEHOLDER.sub(fill, template)


def call_context(parameters: Mapping[str, Any], *extra: Mapping[str, Any] | None) -> dict[str, str]:
    """The template context of a call: its stream parameters (Twilio's From, To, CallerName… under
    their template names, and every other `<Parameter>`), then each `extra` mapping in turn (an
    outbound call's context, a pre-call lookup's answer), later ones winning, nested fields as
    `a.b`. Twilio's own facts (`from`, `to`, `call_sid`, `direction`) are never overridden."""
    context: dict[str, str] = {}
    for name, value in parameters.items():
        if name in _PRIVATE_PARAMETERS or not isinstance(value, str):
            continue
        context[_TWILIO_NAMES.get(name) or _snake(name)] = value
    reserved: dict[str, str] = {name: context[name] for name in ("from", "to", "call_sid", "direction")
                                if name in context}
    for mapping in extra:
        for name, value in _flatten(mapping or {}).items():
            if len(context) >= MAX_CONTEXT_FIELDS and name not in context:
                break
            context[name] = value
    context.update(reserved)
    return context


def fill_settings(settings: AgentSettings, context: Mapping[str, str]) -> AgentSettings:
    """A copy of `settings` with its prompt and greeting rendered (the same object if neither has
    a placeholder). The rendered text is validated again: it must still fit the settings' bounds."""
    prompt, greeting = settings.think.prompt, settings.greeting
    if not (has_placeholders(prompt) or has_placeholders(greeting)):
        return settings
    doc = settings.model_dump(mode="json", exclude_none=True)
    doc["think"]["prompt"] = render(prompt, context)
    if greeting is not None:
        doc["greeting"] = render(greeting, context)
    return type(settings).model_validate(doc)


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def _flatten(mapping: Mapping[str, Any], prefix: str = "", depth: int = 0) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if not re.fullmatch(_NAME, name):
            continue
        if isinstance(value, Mapping):
            if depth < 3:
                out.update(_flatten(value, name + ".", depth + 1))
        elif isinstance(value, (str, int, float, bool)):
            out[name.lower()] = str(value).lower() if isinstance(value, bool) else str(value)
    return out
