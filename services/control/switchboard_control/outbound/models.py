"""Request and response bodies of outbound calls and campaigns."""

from __future__ import annotations

from datetime import time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator

from switchboard import campaigns, json_limits
from switchboard.agent_settings import AgentSettings
from switchboard.tollfraud import E164

from ..models import PROFILE_NAME

MAX_CONTEXT_BYTES = 8 * 1024
MAX_CONTEXT_FIELDS = 64
NUMBER = Annotated[str, Field(pattern=E164.pattern, examples=["+14155550101"])]


def _bounded_context(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > MAX_CONTEXT_FIELDS:
        raise ValueError(f"context has {len(value)} fields; at most {MAX_CONTEXT_FIELDS}")
    try:
        json_limits.check(value, max_depth=4, max_bytes=MAX_CONTEXT_BYTES)
    except json_limits.LimitError as exc:
        raise ValueError(f"context is {exc.message}") from None
    return value


Context = Annotated[dict[str, Any], AfterValidator(_bounded_context)]


def _zone(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name[:64]!r} (an IANA name such as America/New_York)") from None
    return name


Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
EVERY_DAY: list[Day] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Zone = Annotated[str | None, AfterValidator(_zone), Field(max_length=64, examples=["America/New_York"])]


class _CallOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: NUMBER | None = Field(None, alias="from", description="Caller ID; default OUTBOUND_DEFAULT_FROM")
    profile: str | None = Field(None, pattern=PROFILE_NAME, description="Agent profile (default: the default settings)")
    settings: AgentSettings | None = Field(
        None, description="Agent settings for this call instead of the profile's (a whole document, as PUT "
        "/v1/calls/{callSid}/settings takes it)",
    )
    machine_detection: bool | None = Field(
        None, description="Detect answering machines (the greeting waits for the verdict); default: the "
        "profile's `amd.enabled`",
    )
    ring_timeout_s: int | None = Field(None, ge=5, le=600, description="Ring time; default OUTBOUND_RING_TIMEOUT_S")
    time_limit_s: int | None = Field(None, ge=10, le=4 * 3600, description="Longest call (Twilio's TimeLimit)")
    status_webhook: HttpUrl | None = Field(
        None, description="Gets every status change as signed JSON (X-Switchboard-Signature, like function "
        "webhooks); public https only",
    )


class PlaceCall(_CallOptions):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra={"examples": [{
        "to": "+14155550101", "from": "+14155550100", "profile": "reminders",
        "context": {"name": "Ada", "appointment": "Tuesday at 10"}, "machine_detection": True,
    }]})
    to: NUMBER = Field(..., description="The number to call (E.164), within OUTBOUND_ALLOW")
    context: Context = Field(
        default_factory=dict, description="Template variables for the prompt, greeting and voicemail message "
        "({{name}}), kept on the call",
    )


class CallLinks(BaseModel):
    call: str = Field(..., examples=["/v1/calls/CA0123456789abcdef0123456789abcdef"])
    events: str
    cancel: str


class PlacedCall(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    call_sid: str = Field(..., examples=["CA0123456789abcdef0123456789abcdef"])
    status: str = Field(..., examples=["queued"])
    to: str
    from_: str = Field(..., alias="from")
    machine_detection: bool
    links: CallLinks


class CancelResult(BaseModel):
    call_sid: str
    status: str = Field(..., description="Twilio's status after the cancel (canceled once Twilio confirms)")


# --- campaigns ------------------------------------------------------------------------------------
class CampaignDestination(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: NUMBER
    context: Context = Field(default_factory=dict)
    timezone: Zone = Field(None, description="The destination's time zone for calling hours")


class CallingHoursModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: time = Field(time(9), description="Local time the window opens", examples=["09:00"])
    end: time = Field(time(20), description="Local time it closes (before start: past midnight)", examples=["20:00"])
    days: list[Day] = Field(
        default_factory=lambda: list(EVERY_DAY), min_length=1, max_length=7,
    )
    timezone: Zone = Field(
        None, description="Used for every destination; unset: each destination's `timezone`, or its country's "
        "when the country has one zone",
    )

    @model_validator(mode="after")
    def _not_empty(self) -> CallingHoursModel:
        if self.start == self.end:
            raise ValueError("calling hours open and close at the same time")
        return self

    def rule(self) -> campaigns.CallingHours:
        return campaigns.CallingHours(self.start, self.end, campaigns.parse_days(list(self.days)))


class RetryRuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attempts: int = Field(1, ge=1, le=10, description="Attempts in all, the first included (1: no retry)")
    spacing_s: float = Field(300, ge=1, le=7 * 86400, description="Between the end of one attempt and the next")


class RetryModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    busy: RetryRuleModel = Field(default_factory=lambda: RetryRuleModel(attempts=3, spacing_s=300))
    no_answer: RetryRuleModel = Field(default_factory=lambda: RetryRuleModel(attempts=3, spacing_s=900),
                                      alias="no-answer")
    failed: RetryRuleModel = Field(default_factory=lambda: RetryRuleModel(attempts=2, spacing_s=900))
    voicemail: RetryRuleModel = Field(default_factory=RetryRuleModel, description="Default: a message left is final")
    error: RetryRuleModel = Field(default_factory=RetryRuleModel,
                                  description="Twilio refused the call (a bad number is not retried by default)")

    def policy(self) -> campaigns.RetryPolicy:
        rules = {"busy": self.busy, "no-answer": self.no_answer, "failed": self.failed, "voicemail": self.voicemail,
                 "error": self.error}
        return campaigns.RetryPolicy({k: campaigns.RetryRule(v.attempts, v.spacing_s) for k, v in rules.items()})


class CampaignSpec(_CallOptions):
    """How a campaign dials (stored with it; every destination's call uses it)."""

    concurrency: int = Field(5, ge=1, le=10_000, description="Most calls of this campaign at once")
    cps: float = Field(1.0, gt=0, le=1000, description="Calls started per second (Twilio's default account CPS is 1)")
    calling_hours: CallingHoursModel | None = Field(None, description="Unset: any time")
    retry: RetryModel = Field(default_factory=RetryModel)


class CampaignCreate(CampaignSpec):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra={"examples": [{
        "name": "spring reminders", "profile": "reminders", "from": "+14155550100", "concurrency": 5, "cps": 2,
        "machine_detection": True,
        "calling_hours": {"start": "09:00", "end": "20:00", "days": ["mon", "tue", "wed", "thu", "fri"],
                          "timezone": "America/Los_Angeles"},
        "retry": {"busy": {"attempts": 3, "spacing_s": 300}, "no-answer": {"attempts": 2, "spacing_s": 900}},
        "destinations": [{"to": "+14155550101", "context": {"name": "Ada"}},
                         {"to": "+14155550102", "context": {"name": "Grace"}}],
    }]})
    name: str = Field("", max_length=200)
    destinations: list[CampaignDestination] = Field(..., min_length=1, max_length=1_000_000)

    @field_validator("destinations")
    @classmethod
    def _distinct(cls, value: list[CampaignDestination]) -> list[CampaignDestination]:
        seen: set[str] = set()
        for index, dest in enumerate(value):
            if dest.to in seen:
                raise ValueError(f"destination {index} ({dest.to}) is listed twice")
            seen.add(dest.to)
        return value

    def spec(self) -> CampaignSpec:
        return CampaignSpec.model_validate(self.model_dump(exclude={"name", "destinations"}, by_alias=True))


class CampaignCounts(BaseModel):
    pending: int = Field(..., description="Waiting for their first or next attempt")
    in_flight: int = Field(..., description="Being dialled or in a call")
    done: int = Field(..., description="Finished (any outcome)")
    attempts: int = Field(..., description="Calls placed so far, retries included")
    outcomes: dict[str, int] = Field(..., description="Finished destinations by final outcome",
                                     examples=[{"completed": 20, "voicemail": 6, "busy": 2}])


class CampaignView(BaseModel):
    id: str
    name: str
    state: Literal["running", "paused", "canceled", "completed"]
    reason: str | None = Field(None, description="Why it is paused, if it paused itself (Twilio refused our "
                               "credentials)")
    created_at: float
    total: int
    concurrency: int
    cps: float
    profile: str | None = None
    counts: CampaignCounts
    next_attempt_at: float | None = Field(None, description="The earliest pending attempt (Unix time)")


class CampaignList(BaseModel):
    campaigns: list[CampaignView]
    total: int


class DestinationResult(BaseModel):
    index: int
    to: str
    status: str = Field(..., description="pending, dialing, in_call, done, canceled")
    outcome: str | None = None
    next_at: float | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    attempts: list[dict[str, Any]] = Field(default_factory=list,
                                           description="Each attempt: call_sid, outcome, answered_by, times")


class DestinationList(BaseModel):
    destinations: list[DestinationResult]
    total: int
