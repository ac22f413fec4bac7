"""Agent-worker settings (environment variables, see README)."""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from switchboard.config import CommonSettings, default_instance_id
from switchboard.egress_policy import EgressPolicy


class WorkerSettings(CommonSettings):
    worker_id: str = Field(default_factory=lambda: default_instance_id("worker"),
                           description="Instance id in logs, leases and the call record")
    worker_capacity: int = Field(50, ge=1, le=5000, description="Most calls this worker holds at once")
    metrics_port: int = Field(9102, ge=0, le=65535, description="Port of /healthz, /readyz, /metrics")
    deepgram_agent_url: str = Field("wss://agent.deepgram.com/v1/agent/converse",
                                    description="Deepgram Voice Agent endpoint (or the emulator)")
    deepgram_api_key: SecretStr = Field(..., description="Deepgram API key (Authorization: Token …)")
    deepgram_connect_timeout_s: float = Field(5.0, gt=0, description="Connect + Settings deadline")
    deepgram_max_reconnects: int = Field(3, ge=0, le=10, description="Per call, after a mid-call drop")
    keepalive_after_s: float = Field(1.0, gt=0, description="Caller audio pause that triggers a KeepAlive")
    keepalive_every_s: float = Field(4.0, gt=0, le=8, description="KeepAlive period while audio is paused")
    lease_ms: int = Field(1500, ge=300, description="A dead worker's calls are taken over after this")
    worker_ws_library: Literal["picows", "websockets"] = Field(
        "picows", description="WebSocket library of the Deepgram side: picows (Cython, a fraction of the CPU per "
        "message) or websockets (pure Python)",
    )
    worker_batch_window_ms: float = Field(
        2.0, ge=0, le=100,
        description="Most a Redis write batch (or the next read) waits for company, and only while entries come "
        "often enough to gather more (many calls); a quiet worker writes and reads at once (0 = never wait)",
    )
    worker_outbox_max_bytes: int = Field(
        1024 * 1024, ge=16 * 1024, description="Caller audio queued for one Deepgram socket before it counts as stalled"
    )
    worker_stall_timeout_s: float = Field(
        10.0, gt=0, description="A Deepgram send slower than this fails the connection"
    )
    worker_load_threshold: float = Field(
        0.85, gt=0, le=10,
        description="Measured load (1.0 = a full core or 20 ms of event-loop lag) past which this worker claims no "
        "new call and admission control counts it as full; calls in progress and takeovers go on",
    )
    worker_outage_buffer_s: float = Field(
        30.0, ge=4, le=300,
        description="While Redis is unreachable, agent audio a call keeps (in order, 8 kB/s) for when it is back; "
        "Deepgram sends replies ahead of playback, so this holds more than a few seconds of outage",
    )
    caller_timeout_s: float = Field(
        5.0, gt=0, description="A call whose caller stream is silent this long (Redis healthy) lost its edge"
    )
    drain_timeout_s: float = Field(25.0, gt=0, description="SIGTERM: hand over calls before this deadline")
    function_secret: SecretStr | None = Field(
        None, description="HMAC key that signs function-call webhooks (unset: unsigned, and the worker warns at start)"
    )
    worker_egress_allow: str = Field(
        "", description="Development/test only: comma list of CIDRs or host names webhooks may reach although "
        "they are not public (loopback, private, link-local…)",
    )
    worker_egress_allow_http: bool = Field(False, description="Development only: webhooks may use plain http")
    worker_webhook_max_bytes: int = Field(
        64 * 1024, ge=1024, le=1024 * 1024,
        description="Longest webhook answer read; a longer one answers the agent with an error",
    )
    twilio_account_sid: str | None = Field(None, description="With TWILIO_AUTH_TOKEN: enables transfer_call")
    twilio_auth_token: SecretStr | None = Field(None, description="Twilio REST credentials for transfer_call")
    twilio_api_base_url: str = Field("https://api.twilio.com", description="Twilio REST base URL (tests: a fake)")
    control_public_url: str | None = Field(
        None, description="The control API's https:// base URL as Twilio reaches it (CONTROL_PUBLIC_URL): where "
        "a transfer's callbacks go; needed for warm transfers and for a cold one to come back on no answer",
    )

    @field_validator("worker_egress_allow")
    @classmethod
    def _valid_allow_list(cls, value: str) -> str:
        EgressPolicy.parse(value)  # a typo must stop the worker at start, not refuse every webhook later
        return value

    @cached_property
    def egress_policy(self) -> EgressPolicy:
        return EgressPolicy.parse(self.worker_egress_allow, allow_http=self.worker_egress_allow_http)
