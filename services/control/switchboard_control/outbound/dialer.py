"""Placing one outbound call: the toll-fraud guard, an admission slot, the record, Twilio's create.

    spec → refused?  (OUTBOUND_ENABLED, OUTBOUND_ALLOW, premium rate, caller IDs: 403/422)
         → a worker slot reserved for it (503 when the fleet is full)
         → the outbound record, keyed by a fresh `ref` (before Twilio can call back about it)
         → POST Calls.json: Url = /twiml/outbound?ref=…, StatusCallback + the four events,
           async AMD when asked; Twilio's refusal → a clear `DialError`, slot released
         → bound to the callSid Twilio gave it

Binding happens again, idempotently, on Twilio's first callback or TwiML fetch, whichever
comes first: Twilio may call back before its answer to the create has been read here.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from switchboard import settings_store, twilio_rest
from switchboard.agent_settings import AgentSettings
from switchboard.answering import Amd
from switchboard.egress_policy import Refused, check_addresses, check_url
from switchboard.outbound import OField
from switchboard.twilio_rest import CallsApi, TwilioApiError

from ..deps import State
from . import metrics, slots
from .store import OutboundStore

log = logging.getLogger(__name__)

SETUP_S = 30  # besides ringing: queueing at Twilio (CPS), dialling, the TwiML fetch


@dataclass(frozen=True, slots=True)
class DialSpec:
    to: str
    from_: str | None = None
    profile: str | None = None
    settings: AgentSettings | None = None
    context: dict[str, Any] = field(default_factory=dict)
    machine_detection: bool | None = None
    ring_timeout_s: int | None = None
    time_limit_s: int | None = None
    status_webhook: str | None = None
    campaign: str | None = None
    index: int | None = None


class DialError(Exception):
    """The call was not placed: an HTTP status for the API, a reason for metrics, a message for people."""

    def __init__(self, status: int, reason: str, message: str, *, retry_after_s: float | None = None,
                 twilio: TwilioApiError | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after_s = retry_after_s
        self.twilio = twilio


@dataclass(frozen=True, slots=True)
class Placed:
    ref: str
    call_sid: str
    status: str
    from_: str
    machine_detection: bool


class Dialer:
    def __init__(self, state: State, store: OutboundStore, api: CallsApi | None) -> None:
        self.state = state
        self.settings = state.settings
        self.store = store
        self.api = api

    # --- before anything is dialled ----------------------------------------------------------------
    def webhook_refusal(self, url: str | None) -> DialError | None:
        """A status webhook that could never be sent (not https, a private address literal): said now."""
        if not url:
            return None
        parsed = httpx.URL(url)
        try:
            target = check_url(parsed.scheme, parsed.host, parsed.port, self.settings.webhook_egress)
            if target.literal is not None:
                check_addresses(target.host, [target.literal], self.settings.webhook_egress)
        except Refused as refused:
            return DialError(422, "webhook_refused", f"status_webhook: {refused.detail}")
        return None

    def refusal(self, to: str, from_: str | None) -> DialError | None:
        """Why `to` may not be dialled from `from_` (None: it may)."""
        settings = self.settings
        refused = settings.dial_policy.check(to)
        if refused is not None:
            status = 403 if refused.reason in ("outbound_disabled", "not_allowed", "premium_rate") else 422
            return DialError(status, refused.reason, refused.message)
        caller = from_ or settings.outbound_default_from
        if not caller:
            return DialError(422, "caller_id", "no caller ID: give `from`, or set OUTBOUND_DEFAULT_FROM")
        if settings.caller_ids and caller not in settings.caller_ids:
            return DialError(403, "caller_id", f"{caller} is not one of OUTBOUND_CALLER_IDS")
        if self.api is None:
            return DialError(503, "outbound_disabled", "no Twilio credentials (TWILIO_ACCOUNT_SID …)")
        return None

    async def detection(self, spec: DialSpec) -> tuple[bool, Amd]:
        """Whether this call detects machines, and how: the request, else the call's settings' `amd`."""
        agent = spec.settings
        if agent is None:
            agent = (await settings_store.resolve(self.state.redis, self.state.keys, "", spec.profile)).settings
        enabled = agent.amd.enabled if spec.machine_detection is None else spec.machine_detection
        return enabled, agent.amd

    # --- dialling ----------------------------------------------------------------------------------
    async def place(self, spec: DialSpec, *, ref: str | None = None, origin: str = "api",
                    before_create: Callable[[], Awaitable[None]] | None = None) -> Placed:
        """Dial `spec.to`; raises DialError (nothing dialled, nothing held) when it cannot be.
        `before_create` runs right before Twilio is asked (a campaign's pace)."""
        refused = self.refusal(spec.to, spec.from_)
        if refused is not None:
            raise refused
        assert self.api is not None
        settings = self.settings
        ref = ref or uuid.uuid4().hex
        caller = spec.from_ or settings.outbound_default_from or ""
        ring_s = spec.ring_timeout_s or settings.outbound_ring_timeout_s
        detect, amd = await self.detection(spec)
        reserved = settings.control_admission != "off"
        if reserved and not await slots.reserve(self.state.redis, self.state.keys, ref, ring_s + SETUP_S):
            raise DialError(503, "no_capacity", "no free agent slot for the call: try again shortly",
                            retry_after_s=5)
        record = {OField.TO: spec.to, OField.FROM: caller, OField.PROFILE: spec.profile or "",
                  OField.CONTEXT: orjson.dumps(spec.context).decode(), OField.AMD: "1" if detect else "",
                  OField.WEBHOOK: spec.status_webhook or "", OField.RING_TIMEOUT_S: str(ring_s),
                  OField.CAMPAIGN: spec.campaign or "", OField.INDEX: "" if spec.index is None else str(spec.index)}
        if spec.settings is not None:
            record[OField.SETTINGS] = orjson.dumps(spec.settings.model_dump(mode="json", exclude_none=True)).decode()
        await self.store.create(ref, record)
        base = (settings.control_public_url or "").rstrip("/")
        params = twilio_rest.create_params(
            to=spec.to, from_=caller, url=f"{base}/twiml/outbound?ref={ref}",
            status_callback=f"{base}/twilio/outbound/status?ref={ref}", ring_timeout_s=ring_s,
            time_limit_s=spec.time_limit_s,
            amd=twilio_rest.Amd(f"{base}/twilio/outbound/amd?ref={ref}", amd.detection_timeout_s,
                                amd.speech_end_threshold_ms) if detect else None,
        )
        try:
            if before_create is not None:
                await before_create()
            call = await self.api.create(params)
        except TwilioApiError as exc:
            if reserved:
                await slots.release(self.state.redis, self.state.keys, ref)
            code = f" (Twilio error {exc.code})" if exc.code else ""
            await self.store.fail(ref, f"{exc.kind}: {exc.message}{code}")
            error = _dial_error(exc)
            metrics.REFUSED.labels(error.reason).inc()
            log.warning("Twilio did not place the call: %s", exc, extra={"ref": ref, "twilio_code": exc.code,
                                                                          "campaign": spec.campaign or ""})
            raise error from exc
        call_sid = str(call.get("sid", ""))
        if call_sid:
            await self.bind(ref, call_sid)
        metrics.PLACED.labels(origin).inc()
        log.info("outbound call placed", extra={"call_sid": call_sid, "ref": ref, "amd": detect,
                                                "campaign": spec.campaign or ""})
        return Placed(ref, call_sid, str(call.get("status", "queued")), caller, detect)

    async def bind(self, ref: str, call_sid: str) -> None:
        """The record, the slot and the call's own settings now answer to `call_sid` (idempotent)."""
        if not await self.store.bind(ref, call_sid):
            return
        state = self.state
        await slots.rename(state.redis, state.keys, ref, call_sid)
        raw = await state.redis.hget(self.store.okeys.call(ref), OField.SETTINGS)
        if raw:
            # Validated when the request came in; stored where the worker resolves a call's settings.
            agent = AgentSettings.model_validate(orjson.loads(raw))
            await settings_store.write(state.redis, state.keys.call_settings(call_sid), agent,
                                       ttl_s=self.settings.call_settings_ttl_s)


def _dial_error(exc: TwilioApiError) -> DialError:
    code = f" (Twilio error {exc.code})" if exc.code else ""
    reason = f"twilio_{exc.kind}"
    match exc.kind:
        case "invalid_number":
            return DialError(422, reason, f"Twilio refused the number: {exc.message}{code}", twilio=exc)
        case "caller_id":
            return DialError(422, reason, f"Twilio refused the caller ID: {exc.message}{code}", twilio=exc)
        case "auth":
            return DialError(502, reason, "Twilio refused Switchboard's credentials" + code + ": check "
                             "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or TWILIO_API_KEY_SID/SECRET)", twilio=exc)
        case "rate_limited":
            return DialError(429, reason, f"Twilio is rate-limiting this account{code}: retry later",
                             retry_after_s=exc.retry_after_s or 1, twilio=exc)
        case "server":
            return DialError(502, reason, f"Twilio failed (HTTP {exc.status}{code}), also when retried", twilio=exc)
        case "unreachable":
            return DialError(502, reason, f"Twilio could not be reached: {exc.message}", twilio=exc)
        case _:
            return DialError(422, reason, f"Twilio refused the call: {exc.message}{code}", twilio=exc)
