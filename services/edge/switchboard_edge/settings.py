"""Edge settings (environment variables, see README)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from switchboard.config import CommonSettings, default_instance_id


class EdgeSettings(CommonSettings):
    edge_id: str = Field(default_factory=lambda: default_instance_id("edge"),
                         description="Instance id in logs and the call record")
    edge_host: str = Field("0.0.0.0", description="Bind address of the Twilio WebSocket server")
    edge_port: int = Field(8080, ge=0, le=65535, description="Twilio WebSocket port (path /twilio)")
    metrics_port: int = Field(9101, ge=0, le=65535, description="Port of /healthz, /readyz, /metrics")
    edge_public_url: str | None = Field(
        None, description="The wss:// stream URL exactly as in the TwiML; Twilio signs it"
    )
    twilio_auth_token: SecretStr | None = Field(
        None, description="Checks X-Twilio-Signature; required unless EDGE_INSECURE_NO_SIGNATURE=true"
    )
    edge_insecure_no_signature: bool = Field(
        False, description="Development only: accept streams without checking X-Twilio-Signature"
    )
    edge_require_stream_token: bool | None = Field(
        None,
        description="Accept a stream only with the one-time token the control API's TwiML issued for its callSid "
        "(default: required whenever TWILIO_AUTH_TOKEN is set; false only for TwiML Bins, see README's Security)",
    )
    edge_start_timeout_s: float = Field(
        5.0, gt=0, le=60, description="A socket that has not sent its start message by then is closed (1008)"
    )
    trust_proxy_headers: bool = Field(False, description="Rebuild the public URL from X-Forwarded-Proto/Host")
    edge_ws_library: Literal["picows", "websockets"] = Field(
        "picows", description="WebSocket library of the Twilio side: picows (Cython, about a third of the CPU per "
        "message) or websockets (pure Python)",
    )
    edge_batch_window_ms: float = Field(
        2.0, ge=0, le=100,
        description="Most a Redis write batch (or the next read) waits for company, and only while entries come "
        "often enough to gather more (many calls); a quiet edge writes and reads at once (0 = never wait)",
    )
    edge_max_frame_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest Twilio WebSocket frame accepted; a larger one closes the stream (1009)"
    )
    edge_outbox_max_bytes: int = Field(
        1024 * 1024, ge=16 * 1024, description="Agent audio queued for one Twilio socket before it counts as stalled"
    )
    edge_stall_timeout_s: float = Field(10.0, gt=0, description="A Twilio send slower than this cuts the socket")
    edge_load_threshold: float = Field(
        0.85, gt=0, le=10,
        description="Measured load (1.0 = a full core or 20 ms of event-loop lag) past which this edge holds new "
        "streams (up to EDGE_ADMISSION_WAIT_S) and admission control counts the fleet as full when every edge is",
    )
    edge_outage_buffer_s: float = Field(
        10.0, ge=4, le=120,
        description="While Redis is unreachable, caller audio a call keeps (in order, 8 kB/s) for when it is back",
    )
    edge_socket_sndbuf: int = Field(
        256 * 1024, ge=0, description="Kernel send buffer per Twilio socket (0 = kernel autotuning, up to MBs each)"
    )
    edge_hangup_grace_s: float = Field(20.0, gt=0, description="Longest wait for the goodbye to play")
    edge_max_protocol_errors: int = Field(50, ge=1, description="Per call, before the stream is closed")
    edge_admission: bool = Field(
        True,
        description="Announce a new stream only while the fleet has a free slot "
        "(TwiML-admitted and reconnecting calls always pass)",
    )
    edge_admission_wait_s: float = Field(
        5.0, ge=0, le=60, description="How long a stream with no free slot waits for one before it is closed with 1013"
    )

    @property
    def stream_token_required(self) -> bool:
        if self.edge_require_stream_token is not None:
            return self.edge_require_stream_token
        return self.twilio_auth_token is not None

    @model_validator(mode="after")
    def _secure_by_default(self) -> EdgeSettings:
        if self.twilio_auth_token is None and not self.edge_insecure_no_signature:
            raise ValueError(
                "TWILIO_AUTH_TOKEN is not set: set it, or set EDGE_INSECURE_NO_SIGNATURE=true "
                "for local development (streams are then accepted unsigned)"
            )
        return self
