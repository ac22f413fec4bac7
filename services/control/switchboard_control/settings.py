"""Control API settings (environment variables, see README)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from .call_ended_settings import CallOutSettings
from .outbound_settings import OutboundSettings


# OutboundSettings: outbound calls and campaigns; CallOutSettings: call.ended and recording links (CommonSettings)
class ControlSettings(OutboundSettings, CallOutSettings):
    control_host: str = Field("0.0.0.0", description="Bind address of the REST API")
    control_port: int = Field(8000, ge=0, le=65535)
    control_keep_alive_s: int = Field(
        75, ge=1, le=600, description="How long an idle HTTP keep-alive connection stays open: longer than the "
        "idle timeout of the callers' pools and proxies, so that they close first and a request never meets a "
        "connection closing under it (Twilio does not retry a status callback)",
    )
    control_api_token: SecretStr | None = Field(None, description="Bearer token every /v1 request must carry")
    control_insecure_no_auth: bool = Field(
        False, description="Development only: no bearer token, and the TwiML webhook accepts unsigned requests"
    )
    control_public_url: str | None = Field(
        None, description="https:// base URL Twilio calls the webhook on (what it signs), e.g. https://control.example.com"
    )
    edge_public_url: str = Field(
        "ws://127.0.0.1:8080/twilio", description="wss:// stream URL put into the TwiML (no query string)"
    )
    twilio_auth_token: SecretStr | None = Field(None, description="Validates X-Twilio-Signature on /twiml")
    control_insecure_twiml: bool = Field(
        False, description="Development only: /twiml answers unsigned requests (the API keeps its token)"
    )
    metrics_public: bool = Field(True, description="Serve /metrics without a bearer token")
    control_public_docs: bool = Field(
        False, description="Serve /docs, /redoc and /openapi.json (development; off in production: they map the API)"
    )
    control_max_body_bytes: int = Field(
        1024 * 1024, ge=1024, le=64 * 1024 * 1024,
        description="Largest request body (Twilio's /twiml has its own 64 KiB); refused with 413 before it is read",
    )
    control_max_profiles: int = Field(
        500, ge=1, le=100_000, description="Most named profiles; a new one beyond is refused with 409"
    )
    control_sse_max_per_token: int = Field(
        50, ge=1, description="Most live-event streams one bearer token holds open on a replica (over: 429)"
    )
    control_sse_max_total: int = Field(
        200, ge=1,
        description="Most live-event streams a replica serves (over: 429); each holds a blocking Redis connection",
    )
    command_ack_timeout_s: float = Field(3.0, gt=0, le=60, description="How long a command waits for its owner")
    call_settings_ttl_s: int = Field(
        6 * 3600, ge=60, description="Per-call settings expire this long after their last write"
    )
    sse_keepalive_s: float = Field(15.0, gt=0, le=300, description="Comment line on an idle event stream")
    redis_blocking_connections: int = Field(
        256, ge=4, description="Connections for waits (SSE, command acks); more waiters queue briefly"
    )
    fallback_say: str = Field(
        "Sorry, we cannot take your call right now. Please try again later.",
        max_length=1000,
        description="What Twilio says when the media stream cannot be opened or ends unexpectedly",
    )
    control_admission: Literal["off", "reject", "queue"] = Field(
        "reject",
        description="When the fleet has no free slot, /twiml answers: reject = the busy message and hang up; "
        "queue = the hold message and a retry until a slot frees or CONTROL_ADMISSION_MAX_WAIT_S; off = connect anyway",
    )
    control_admission_busy_say: str = Field(
        "Sorry, all our agents are busy right now. Please call again later.",
        min_length=1, max_length=1000, description="What a caller hears before the hang-up when no slot is free",
    )
    control_admission_hold_say: str = Field(
        "All our agents are busy. Please stay on the line, we will be with you shortly.",
        min_length=1, max_length=1000, description="Queue mode: what a caller on hold hears before each pause",
    )
    control_admission_hold_pause_s: int = Field(
        10, ge=1, le=60, description="Queue mode: seconds of <Pause> between two looks for a free slot"
    )
    control_admission_max_wait_s: int = Field(
        120, ge=0, le=3600, description="Queue mode: longest hold before the busy message (0 = never hold)"
    )
    console_enabled: bool = Field(True, description="Serve the web console at /console")
    console_session_ttl_s: int = Field(
        1800, ge=60, le=86_400, description="A console session ends this long after its last request"
    )
    console_session_max_s: int = Field(
        12 * 3600, ge=300, le=7 * 86_400, description="A console session ends this long after sign-in, used or not"
    )
    console_signin_failures_per_min: int = Field(
        10, ge=1, le=10_000, description="Failed console sign-ins one client address may make a minute (over: 429)"
    )
    console_max_streams: int = Field(
        100, ge=1, le=10_000, description="Most console live feeds (browser tabs) a replica serves (over: 429)"
    )
    console_table_interval_s: float = Field(
        0.5, ge=0.1, le=10, description="How often the console's live-calls table looks for changes"
    )
    console_max_rows: int = Field(5000, ge=10, le=100_000, description="Most live calls the console's table holds")
    console_grafana_url: str | None = Field(
        None, description="The Grafana dashboard the console's fleet view links to (http(s) URL)"
    )

    @model_validator(mode="after")
    def _secure_by_default(self) -> ControlSettings:
        if self.control_api_token is None and not self.control_insecure_no_auth:
            raise ValueError(
                "CONTROL_API_TOKEN is not set: set it, or set CONTROL_INSECURE_NO_AUTH=true for local development"
            )
        if self.control_api_token is not None and len(self.control_api_token.get_secret_value()) < 16:
            raise ValueError("CONTROL_API_TOKEN must be at least 16 characters")
        if self.control_sse_max_total >= self.redis_blocking_connections:
            raise ValueError(
                "CONTROL_SSE_MAX_TOTAL must be below REDIS_BLOCKING_CONNECTIONS: every live-event stream holds one "
                "of those connections, and command acknowledgements need some too"
            )
        if not self.edge_public_url.startswith(("wss://", "ws://")) or "?" in self.edge_public_url:
            raise ValueError("EDGE_PUBLIC_URL must be a wss:// URL without a query string")
        return self
