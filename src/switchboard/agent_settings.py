"""Agent settings: a typed model that maps one-to-one onto Deepgram Voice Agent v1 `Settings`.

The audio block is not configurable: Twilio carries 8 kHz mu-law both ways, so Switchboard
always asks Deepgram for exactly that (no container) and the bytes pass through untouched.
Functions with a `webhook` are run by Switchboard (client-side for Deepgram): the webhook
is ours, so it is never sent to Deepgram.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

TWILIO_AUDIO: dict[str, Any] = {
    "input": {"encoding": "mulaw", "sample_rate": 8000},
    "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
}


class _Open(BaseModel):
    # Deepgram keeps adding provider fields; pass unknown ones through rather than reject them.
    model_config = ConfigDict(extra="allow")


class ListenProvider(_Open):
    type: Literal["deepgram"] = "deepgram"
    model: str = Field("nova-3", min_length=1, max_length=100, examples=["nova-3"])
    keyterms: list[str] | None = None
    smart_format: bool | None = None


class Listen(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: ListenProvider = Field(default_factory=ListenProvider)


class ThinkProvider(_Open):
    type: Literal["open_ai", "anthropic", "google", "groq", "aws_bedrock", "x_ai"] = "anthropic"
    model: str = Field("claude-3-5-haiku-latest", min_length=1, max_length=100)
    temperature: float | None = Field(None, ge=0, le=2)


class WebhookEndpoint(BaseModel):
    """Where Switchboard's worker sends a function call (HTTPS in production)."""

    model_config = ConfigDict(extra="forbid")
    url: HttpUrl
    timeout_s: float = Field(5.0, gt=0, le=60)
    retries: int = Field(1, ge=0, le=5)


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$", examples=["get_slots"])
    description: str = Field(..., min_length=1, max_length=2000)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        examples=[{"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]}],
    )
    webhook: WebhookEndpoint | None = None
    destinations: list[Annotated[str, Field(pattern=r"^(\+[1-9][0-9]{6,14}|sips?:[^\s<>]{3,200})$")]] | None = Field(
        None,
        max_length=20,
        description="transfer_call only: the numbers (E.164) or SIP URIs the agent may transfer to; "
        "any other destination is refused (no toll fraud by prompt injection)",
        examples=[["+14155550100"]],
    )

    def to_deepgram(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


class Think(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: ThinkProvider = Field(default_factory=ThinkProvider)
    prompt: str = Field("You are a helpful car seller.", max_length=25_000)
    functions: list[FunctionDef] = Field(default_factory=list, max_length=64)
    endpoint: dict[str, Any] | None = Field(None, description="Bring-your-own LLM endpoint {url, headers}")


class SpeakProvider(_Open):
    type: str = Field("deepgram", min_length=1, max_length=40)
    model: str | None = Field("aura-asteria-en", max_length=100, examples=["aura-2-thalia-en"])


class Speak(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: SpeakProvider = Field(default_factory=SpeakProvider)
    endpoint: dict[str, Any] | None = None


class Heard(BaseModel):
    """What the caller actually heard of each reply (Twilio marks), and whether the agent is told."""

    model_config = ConfigDict(extra="forbid")
    tell_agent: bool = Field(
        False,
        description="After a reply the caller cut off, tell the agent (UpdateThink) which part was heard, "
        "so it does not assume the caller heard the rest",
    )


class DeadAir(BaseModel):
    """Dead-air watchdog: the line went quiet when it should not have."""

    model_config = ConfigDict(extra="forbid")
    agent_stall_s: float = Field(
        4.0, ge=0, le=120, description="The agent is speaking but no audio came for this long (0 = off)"
    )
    caller_idle_s: float = Field(
        15.0, ge=0, le=600, description="Neither the caller nor the agent said anything for this long (0 = off)"
    )
    action: Literal["reengage", "end_call"] = Field(
        "reengage",
        description="reengage: the agent says reengage_message (a stalled agent session is reconnected "
        "with context first); after max_reengage tries, or with end_call, the agent says "
        "goodbye_message and the call ends",
    )
    reengage_message: str = Field("Are you still there?", min_length=1, max_length=500)
    max_reengage: int = Field(2, ge=0, le=10)
    goodbye_message: str = Field(
        "I haven't heard from you, so I'll end the call now. Goodbye!", min_length=1, max_length=500
    )


class Journal(BaseModel):
    """Opt-in record of a call's Twilio and Deepgram traffic, for replay and listening."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    audio: bool = Field(False, description="Also keep both audio tracks (about 16 kB per second of call)")
    retention_s: int = Field(86_400, ge=60, le=30 * 86_400, description="How long the journal is kept")
    max_entries: int = Field(50_000, ge=100, le=1_000_000, description="Cap; the oldest entries go first")


class AgentSettings(BaseModel):
    """What the agent hears with, thinks with, says, and how it greets."""

    model_config = ConfigDict(extra="forbid")
    language: str = Field("en", min_length=2, max_length=16)
    listen: Listen = Field(default_factory=Listen)
    think: Think = Field(default_factory=Think)
    speak: Speak = Field(default_factory=Speak)
    greeting: str | None = Field(None, max_length=2000)
    tags: list[str] = Field(default_factory=list, max_length=20)
    mip_opt_out: bool = False
    # Switchboard's own behaviour around the agent; never sent to Deepgram.
    heard: Heard = Field(default_factory=Heard)
    dead_air: DeadAir = Field(default_factory=DeadAir)
    journal: Journal = Field(default_factory=Journal)

    def think_message(self) -> dict[str, Any]:
        """`agent.think` as Deepgram takes it, in `Settings` and in `UpdateThink`."""
        think: dict[str, Any] = {
            "provider": self.think.provider.model_dump(exclude_none=True),
            "prompt": self.think.prompt,
        }
        if self.think.functions:
            think["functions"] = [f.to_deepgram() for f in self.think.functions]
        if self.think.endpoint:
            think["endpoint"] = self.think.endpoint
        return think

    def function(self, name: str) -> FunctionDef | None:
        return next((f for f in self.think.functions if f.name == name), None)

    def to_settings_message(
        self,
        *,
        tags: list[str] | None = None,
        context: list[dict[str, Any]] | None = None,
        resume: bool = False,
    ) -> dict[str, Any]:
        """The Deepgram `Settings` message. On resume the greeting is left out (no second hello)."""
        think = self.think_message()
        speak: dict[str, Any] = {"provider": self.speak.provider.model_dump(exclude_none=True)}
        if self.speak.endpoint:
            speak["endpoint"] = self.speak.endpoint
        agent: dict[str, Any] = {
            "language": self.language,
            "listen": {"provider": self.listen.provider.model_dump(exclude_none=True)},
            "think": think,
            "speak": speak,
        }
        if self.greeting and not resume:
            agent["greeting"] = self.greeting
        if context:
            agent["context"] = {"messages": context}
        message: dict[str, Any] = {
            "type": "Settings",
            "tags": [*self.tags, *(tags or [])],
            "audio": TWILIO_AUDIO,
            "agent": agent,
        }
        if self.mip_opt_out:
            message["mip_opt_out"] = True
        return message


# --- Secrets are write-only -------------------------------------------------------------------
# Provider credentials and endpoint headers (API keys) are stored, sent to Deepgram, and never
# shown again: reads replace them with MASK, and a write that sends MASK back keeps the stored
# value, so a client can GET, edit and PUT a document without knowing its secrets.

MASK = "***"
# Whole words of a field name (api_key, x-api-key, secret_access_key), so that e.g. `keyterms` is not one.
_SECRET_NAME = re.compile(
    r"(?:^|[_\-])(?:key|apikey|secret|token|password|passwd|credentials?|authorization|auth)(?:$|[_\-])", re.IGNORECASE
)
# (block, member) pairs that may hold secrets; prompts and function schemas never do.
_SECRET_CONTAINERS = (
    ("listen", "provider"),
    ("think", "provider"),
    ("think", "endpoint"),
    ("speak", "provider"),
    ("speak", "endpoint"),
)


class MaskedSecretError(ValueError):
    """A write sent MASK for a secret that has no stored value to keep."""


def _walk(node: Any, path: str, under_headers: bool, visit: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for name, value in node.items():
        here = f"{path}.{name}"
        if under_headers or (_SECRET_NAME.search(name) and not isinstance(value, bool)):
            out[name] = visit(here, value)
        else:
            out[name] = _walk(value, here, name.lower() == "headers", visit)
    return out


def _map_secrets(doc: dict[str, Any], visit: Any) -> dict[str, Any]:
    out = dict(doc)
    for block, member in _SECRET_CONTAINERS:
        section = out.get(block)
        if isinstance(section, dict) and isinstance(section.get(member), dict):
            section = dict(section)
            section[member] = _walk(section[member], f"{block}.{member}", False, visit)
            out[block] = section
    return out


def masked(doc: dict[str, Any]) -> dict[str, Any]:
    """A settings document (JSON dict) with every secret value replaced by MASK."""
    return _map_secrets(doc, lambda _path, value: MASK if value not in (None, "") else value)


def _lookup(doc: dict[str, Any] | None, path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise MaskedSecretError(path)
        node = node[part]
    return node


def restore_secrets(new: dict[str, Any], stored: dict[str, Any] | None) -> dict[str, Any]:
    """`new` with each MASK replaced by the stored secret at the same place."""

    def keep(path: str, value: Any) -> Any:
        if value != MASK:
            return value
        try:
            return _lookup(stored, path)
        except MaskedSecretError:
            raise MaskedSecretError(
                f"{path} is {MASK!r} but no stored value exists to keep: send the real value"
            ) from None

    return _map_secrets(new, keep)
