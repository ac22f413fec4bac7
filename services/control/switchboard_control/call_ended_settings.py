"""Settings of the call.ended webhook and the recording links in it (part of `ControlSettings`, same
environment). Twilio's REST credentials (transfers) and the webhook egress allow-list are
`OutboundSettings`' (TWILIO_ACCOUNT_SID, TWILIO_API_BASE_URL, CONTROL_EGRESS_ALLOW…).

A module beside `settings`, not inside the `outbox` package: `settings` builds on it, and that
package depends on `settings` (through `deps`)."""

from __future__ import annotations

from functools import cached_property

from pydantic import Field, HttpUrl, SecretStr, model_validator

from switchboard import standard_webhooks
from switchboard.config import CommonSettings


class CallOutSettings(CommonSettings):
    call_ended_webhook_url: HttpUrl | None = Field(
        None, description="Where every ended call's call.ended goes (https; unset: no deliveries)",
    )
    call_ended_webhook_secret: SecretStr | None = Field(
        None, description="whsec_<base64 of 24+ random bytes>: signs call.ended (Standard Webhooks headers); "
        "required with CALL_ENDED_WEBHOOK_URL",
    )
    call_ended_max_attempts: int = Field(8, ge=1, le=50, description="Deliveries tried before a dead letter")
    call_ended_backoff_s: float = Field(5.0, gt=0, le=3600, description="The pause before the first retry (doubles)")
    call_ended_backoff_cap_s: float = Field(900.0, gt=0, le=86_400, description="The longest pause between retries")
    call_ended_timeout_s: float = Field(10.0, gt=0, le=60, description="One delivery attempt's deadline")
    call_ended_settle_s: float = Field(
        15.0, ge=0, le=300, description="A stream that ended without Twilio saying so (an edge loss) may be "
        "followed by a new stream of the same call: call.ended waits this long for one",
    )
    call_ended_max_dead_letters: int = Field(1000, ge=10, le=100_000, description="Dead letters kept (newest)")
    call_ended_include_transcript: bool = Field(True, description="Put the transcript in call.ended")
    recording_link_ttl_s: int = Field(
        86_400, ge=60, le=30 * 86_400,
        description="How long a call.ended recording link works (never past the journal)",
    )
    recording_link_secret: SecretStr | None = Field(
        None, description="Key of recording links' HMAC (unset: derived from CONTROL_API_TOKEN)",
    )
    @model_validator(mode="after")
    def _signed_deliveries(self) -> CallOutSettings:
        if self.call_ended_webhook_url is None:
            return self
        if self.call_ended_webhook_secret is None:
            raise ValueError("CALL_ENDED_WEBHOOK_URL needs CALL_ENDED_WEBHOOK_SECRET (whsec_…): receivers must be "
                             "able to tell Switchboard's deliveries from anyone else's")
        try:
            standard_webhooks.parse_secret(self.call_ended_webhook_secret.get_secret_value())
        except standard_webhooks.SecretError as exc:
            raise ValueError(f"CALL_ENDED_WEBHOOK_SECRET: {exc}") from None
        return self

    @cached_property
    def call_ended_key(self) -> bytes | None:
        secret = self.call_ended_webhook_secret
        return standard_webhooks.parse_secret(secret.get_secret_value()) if secret is not None else None
