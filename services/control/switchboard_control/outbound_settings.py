"""Settings of outbound calls and campaigns: part of the control API's settings (`ControlSettings`
inherits them), read from the same environment.

Outbound dialing is off until configured: OUTBOUND_ENABLED=true needs OUTBOUND_ALLOW (the
prefixes that may be dialled), TWILIO_ACCOUNT_SID with TWILIO_AUTH_TOKEN or an API key, and
CONTROL_PUBLIC_URL (where Twilio calls back). A control API asked to dial without them does not
start, rather than refuse every call at run time.

A module beside `settings`, not inside the `outbound` package: `settings` builds on it, and that
package depends on `settings` (through `deps`).
"""

from __future__ import annotations

from functools import cached_property

from pydantic import Field, SecretStr, field_validator, model_validator

from switchboard.config import CommonSettings
from switchboard.egress_policy import EgressPolicy
from switchboard.tollfraud import E164, DialPolicy, parse_prefixes
from switchboard.twilio_rest import Credentials


class OutboundSettings(CommonSettings):
    outbound_enabled: bool = Field(False, description="Allow outbound calls and campaigns (toll-fraud guard: off)")
    outbound_allow: str = Field(
        "", description="Comma list of number prefixes outbound calls may dial: country codes (+1,+44) or "
        "narrower (+1415); anything else is refused with 403",
    )
    outbound_premium_prefixes: str | None = Field(
        None, description="Comma list of prefixes always refused (premium rate, IRSF ranges); unset: the built-in "
        "list (+1900, +1976, +4470, +449, +979, +881…, see README)",
    )
    outbound_default_from: str | None = Field(
        None, pattern=E164.pattern, description="The caller ID of outbound calls that name none (E.164)"
    )
    outbound_caller_ids: str = Field(
        "", description="Comma list of the only From numbers a request may name (empty: any E.164 number; "
        "Twilio still refuses numbers the account does not own or has not verified)",
    )
    outbound_rate_limit_per_min: int = Field(
        60, ge=1, le=100_000, description="Outbound call and campaign requests per minute per API token (over: 429)"
    )
    outbound_ring_timeout_s: int = Field(30, ge=5, le=600, description="Default ring time of an outbound call")
    outbound_max_campaign_destinations: int = Field(
        10_000, ge=1, le=1_000_000, description="Most destinations one campaign may hold"
    )
    outbound_max_cps: float = Field(
        10.0, gt=0, le=1000, description="The most calls per second a campaign may ask for (the Twilio account's CPS)"
    )
    outbound_check_s: float = Field(
        15.0, ge=1, le=600, description="How often an outbound call whose final status is overdue (past its ring "
        "time) is looked up at Twilio (a status callback lost while control was down)",
    )
    twilio_account_sid: str | None = Field(
        None, pattern=r"^AC[0-9a-fA-F]{32}$", description="The Twilio account outbound calls are placed with"
    )
    twilio_api_key_sid: str | None = Field(
        None, pattern=r"^SK[0-9a-fA-F]{32}$",
        description="An API key for the Calls API (with TWILIO_API_KEY_SECRET); unset: TWILIO_AUTH_TOKEN",
    )
    twilio_api_key_secret: SecretStr | None = Field(None, description="The API key's secret")
    twilio_api_base_url: str = Field("https://api.twilio.com", description="Twilio REST base URL (the emulator's)")
    function_secret: SecretStr | None = Field(
        None, description="HMAC key that signs outbound status webhooks (X-Switchboard-Signature, as the workers "
        "sign function webhooks: use the same key)",
    )
    control_egress_allow: str = Field(
        "", description="Development/test only: comma list of CIDRs or host names status webhooks may reach "
        "although they are not public",
    )
    control_egress_allow_http: bool = Field(False, description="Development only: status webhooks may use plain http")

    @field_validator("outbound_allow", "outbound_caller_ids", "outbound_premium_prefixes")
    @classmethod
    def _prefixes(cls, value: str | None) -> str | None:
        if value:
            parse_prefixes(value)  # a typo stops control at start, not every call later
        return value

    @field_validator("control_egress_allow")
    @classmethod
    def _egress(cls, value: str) -> str:
        EgressPolicy.parse(value)
        return value

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> OutboundSettings:
        if not self.outbound_enabled:
            return self
        missing = []
        if not self.outbound_allow.strip():
            missing.append("OUTBOUND_ALLOW (the prefixes that may be dialled)")
        if not self.twilio_account_sid:
            missing.append("TWILIO_ACCOUNT_SID")
        if self.twilio_api_key_sid and self.twilio_api_key_secret is None:
            missing.append("TWILIO_API_KEY_SECRET (with TWILIO_API_KEY_SID)")
        if not self.twilio_api_key_sid and getattr(self, "twilio_auth_token", None) is None:
            missing.append("TWILIO_AUTH_TOKEN or TWILIO_API_KEY_SID/TWILIO_API_KEY_SECRET")
        if not (getattr(self, "control_public_url", None) or "").startswith(("https://", "http://")):
            missing.append("CONTROL_PUBLIC_URL (where Twilio calls back)")
        if missing:
            raise ValueError("OUTBOUND_ENABLED=true needs " + "; ".join(missing))
        return self

    @cached_property
    def dial_policy(self) -> DialPolicy:
        return DialPolicy.parse(enabled=self.outbound_enabled, allow=self.outbound_allow,
                                premium=self.outbound_premium_prefixes)

    @cached_property
    def caller_ids(self) -> frozenset[str]:
        return frozenset(parse_prefixes(self.outbound_caller_ids))

    @cached_property
    def webhook_egress(self) -> EgressPolicy:
        return EgressPolicy.parse(self.control_egress_allow, allow_http=self.control_egress_allow_http)

    def twilio_credentials(self) -> Credentials | None:
        if not self.twilio_account_sid:
            return None
        if self.twilio_api_key_sid and self.twilio_api_key_secret is not None:
            return Credentials(self.twilio_account_sid, self.twilio_api_key_sid,
                               self.twilio_api_key_secret.get_secret_value())
        token: SecretStr | None = getattr(self, "twilio_auth_token", None)
        if token is None:
            return None
        return Credentials(self.twilio_account_sid, self.twilio_account_sid, token.get_secret_value())
