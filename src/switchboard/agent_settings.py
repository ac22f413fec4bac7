"""Agent settings: a typed model that maps one-to-one onto Deepgram Voice Agent v1 `Settings`.

The audio block is not configurable: Twilio carries 8 kHz mu-law both ways, so Switchboard
always asks Deepgram for exactly that (no container) and the bytes pass through untouched.
Functions with a `webhook` are run by Switchboard (client-side for Deepgram): the webhook
is ours, so it is never sent to Deepgram.

Every field has a bound (length, count, size, depth): a document is stored in Redis, read at
every call start and sent to Deepgram, so none of it may be unbounded. Over a bound is a
validation error naming the field (the control API answers 422).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, model_validator
from pydantic_core import PydanticCustomError

from . import json_limits
from .answering import Amd, Voicemail
from .call_features import Dtmf, PreCall, Transfer

TWILIO_AUDIO: dict[str, Any] = {
    "input": {"encoding": "mulaw", "sample_rate": 8000},
    "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
}

# --- Bounds ------------------------------------------------------------------------------------
MAX_PROMPT_CHARS = 25_000
MAX_SCHEMA_BYTES = 16 * 1024  # one function's `parameters` (JSON schema), compact JSON
MAX_SCHEMA_DEPTH = 32
MAX_ENDPOINT_BYTES = 8 * 1024  # `think.endpoint` / `speak.endpoint` ({url, headers})
MAX_ENDPOINT_DEPTH = 8
MAX_PROVIDER_EXTRA_FIELDS = 32  # provider fields this model does not name (Deepgram adds new ones)
MAX_PROVIDER_FIELD_NAME = 64
MAX_PROVIDER_VALUE_BYTES = 4 * 1024
MAX_PROVIDER_VALUE_DEPTH = 8
MAX_TAGS = 20
MAX_TAG_CHARS = 128
MAX_KEYTERMS = 100
MAX_KEYTERM_CHARS = 100
MAX_FUNCTIONS = 64
MAX_SETTINGS_BYTES = 256 * 1024  # the whole document: each part within its bound can still add up


def _limit_error(exc: json_limits.LimitError, what: str) -> PydanticCustomError:
    # The message goes through the context, so braces in it are never read as a template.
    return PydanticCustomError(exc.kind, "{what} is {detail}", {"what": what, "detail": exc.message})


def _bounded_json(what: str, *, max_depth: int, max_bytes: int) -> AfterValidator:
    def check(value: Any) -> Any:
        try:
            json_limits.check(value, max_depth=max_depth, max_bytes=max_bytes)
        except json_limits.LimitError as exc:
            raise _limit_error(exc, what) from None
        return value

    return AfterValidator(check)


Schema = Annotated[dict[str, Any], _bounded_json("the schema", max_depth=MAX_SCHEMA_DEPTH, max_bytes=MAX_SCHEMA_BYTES)]
Endpoint = Annotated[
    dict[str, Any], _bounded_json("the endpoint", max_depth=MAX_ENDPOINT_DEPTH, max_bytes=MAX_ENDPOINT_BYTES)
]


class _Open(BaseModel):
    # Deepgram keeps adding provider fields; pass unknown ones through rather than reject them,
    # within bounds: a few dozen fields of a few kB each.
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _bounded_extras(self) -> _Open:
        extra = self.model_extra or {}
        if len(extra) > MAX_PROVIDER_EXTRA_FIELDS:
            raise PydanticCustomError(
                "too_many_fields", "{count} provider fields this API does not know; at most {limit}",
                {"count": len(extra), "limit": MAX_PROVIDER_EXTRA_FIELDS},
            )
        for name, value in extra.items():
            if len(name) > MAX_PROVIDER_FIELD_NAME:
                raise PydanticCustomError(
                    "too_large", "a provider field name is {length} characters long; at most {limit}",
                    {"length": len(name), "limit": MAX_PROVIDER_FIELD_NAME},
                )
            try:
                json_limits.check(value, max_depth=MAX_PROVIDER_VALUE_DEPTH, max_bytes=MAX_PROVIDER_VALUE_BYTES)
            except json_limits.LimitError as exc:
                raise _limit_error(exc, f"provider field {name!r}") from None
        return self


class ListenProvider(_Open):
    type: Literal["deepgram"] = "deepgram"
    model: str = Field("nova-3", min_length=1, max_length=100, examples=["nova-3"])
    keyterms: list[Annotated[str, Field(max_length=MAX_KEYTERM_CHARS)]] | None = Field(None, max_length=MAX_KEYTERMS)
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
    parameters: Schema = Field(
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
    prompt: str = Field("You are a helpful car seller.", max_length=MAX_PROMPT_CHARS)
    functions: list[FunctionDef] = Field(default_factory=list, max_length=MAX_FUNCTIONS)
    endpoint: Endpoint | None = Field(None, description="Bring-your-own LLM endpoint {url, headers}")


class SpeakProvider(_Open):
    type: str = Field("deepgram", min_length=1, max_length=40)
    model: str | None = Field("aura-asteria-en", max_length=100, examples=["aura-2-thalia-en"])


class Speak(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: SpeakProvider = Field(default_factory=SpeakProvider)
    endpoint: Endpoint | None = None


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
    tags: list[Annotated[str, Field(max_length=MAX_TAG_CHARS)]] = Field(default_factory=list, max_length=MAX_TAGS)
    mip_opt_out: bool = False
    # Switchboard's own behaviour around the agent; never sent to Deepgram.
    heard: Heard = Field(default_factory=Heard)
    dead_air: DeadAir = Field(default_factory=DeadAir)
    journal: Journal = Field(default_factory=Journal)
    # Outbound calls: answering-machine detection, and what a machine gets (switchboard.answering).
    amd: Amd = Field(default_factory=Amd)
    voicemail: Voicemail = Field(default_factory=Voicemail)
    dtmf: Dtmf = Field(default_factory=Dtmf)
    transfer: Transfer = Field(default_factory=Transfer)
    precall: PreCall | None = Field(None, description="Optional lookup before the greeting (CRM); see README")

    @model_validator(mode="after")
    def _bounded_document(self) -> AgentSettings:
        try:
            size = json_limits.encoded_size(self.model_dump(mode="json", exclude_none=True))
        except json_limits.LimitError as exc:
            raise _limit_error(exc, "the settings document") from None
        if size > MAX_SETTINGS_BYTES:
            raise PydanticCustomError(
                "too_large", "the settings document is {size} bytes as JSON; at most {limit}",
                {"size": size, "limit": MAX_SETTINGS_BYTES},
            )
        return self

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
