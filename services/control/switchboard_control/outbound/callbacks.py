"""What Twilio requests about outbound calls, each signed (`X-Twilio-Signature`, checked like `/twiml`):

- `POST /twiml/outbound?ref=…`: the call was answered; it gets `<Connect><Stream>` to the edge
  with a one-time stream token, exactly like an inbound call (`twiml_documents`, `stream_grants`),
  then the same `<Redirect>` to `/twiml/continue` for failover;
- `POST /twilio/outbound/status?ref=…`: initiated, ringing, in-progress, completed|busy|no-answer|failed|canceled;
- `POST /twilio/outbound/amd?ref=…`: the answering-machine verdict.

`ref` names the outbound record control made before it asked Twilio to dial; it is inside the
URL Twilio signs, so a request with a valid signature for it came from Twilio. Unsigned or
wrongly signed requests get 403 and are counted; with no TWILIO_AUTH_TOKEN they are refused
(503) unless CONTROL_INSECURE_TWIML or CONTROL_INSECURE_NO_AUTH says otherwise (development).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from switchboard import signature
from switchboard.messages import Event
from switchboard.outbound import FINAL, OField

from .. import stream_grants, twiml_documents
from ..deps import StateDep
from . import metrics
from .service import outbound_of

router = APIRouter(tags=["twilio"])
log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
Ref = Annotated[str, Query(pattern=r"^[0-9a-f]{32}$", description="The outbound call's reference (in the signed URL)")]
_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"description": "Missing or invalid X-Twilio-Signature"},
    413: {"description": "Body over 64 KiB"},
    503: {"description": "TWILIO_AUTH_TOKEN is not configured"},
}
_FORM = {"requestBody": {"required": False, "content": {"application/x-www-form-urlencoded": {"schema": {
    "type": "object", "properties": {name: {"type": "string", "maxLength": 200} for name in (
        "AccountSid", "CallSid", "CallStatus", "AnsweredBy", "MachineDetectionDuration")}}}}}}


async def _signed_form(request: Request, state: StateDep, kind: str) -> dict[str, list[str]]:
    settings = state.settings
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, "request body too large")
    form = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    if settings.twilio_auth_token is None:
        if settings.control_insecure_no_auth or settings.control_insecure_twiml:
            return form
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "TWILIO_AUTH_TOKEN is not configured")
    url = twiml_documents.signed_url(settings, request)
    if not signature.is_valid(settings.twilio_auth_token.get_secret_value(), url,
                              request.headers.get("X-Twilio-Signature"), form):
        metrics.CALLBACKS.labels(kind, "bad_signature").inc()
        log.warning("outbound %s callback with a bad signature", kind,
                    extra={"call_sid": _first(form, "CallSid")[:64], "reason": "bad_signature"})
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid X-Twilio-Signature")
    return form


def _first(form: dict[str, list[str]], name: str) -> str:
    values = form.get(name)
    return values[0][:200] if values else ""


def _flat(form: dict[str, list[str]]) -> dict[str, str]:
    return {name: values[0][:200] for name, values in form.items() if values}


@router.post("/twiml/outbound", response_class=Response, openapi_extra=_FORM,
             responses={200: {"content": {"application/xml": {"schema": {"type": "string"}}}}, **_RESPONSES})
async def outbound_twiml(request: Request, state: StateDep, ref: Ref) -> Response:
    """Twilio's TwiML fetch for an answered outbound call: `<Connect><Stream>` with a one-time token."""
    form = await _signed_form(request, state, "twiml")
    service = outbound_of(request)
    record = await service.lifecycle.record_for("twiml", ref, _first(form, "CallSid"))
    if record is None or record.get(OField.STATUS) in FINAL:
        return Response(twiml_documents.goodbye(state.settings, apologise=False), media_type="application/xml")
    metrics.CALLBACKS.labels("twiml", "ok").inc()
    profile = record.get(OField.PROFILE) or None
    parameters = twiml_documents.caller_parameters(form, profile)
    await stream_grants.issue(state, form, parameters, step="twiml")
    await service.store.event(ref, {"type": Event.OUTBOUND_STATUS, "status": "connecting"})
    continue_url = twiml_documents.continue_url(state.settings, request, profile, 1)
    return Response(twiml_documents.render(state.settings, parameters, continue_url), media_type="application/xml")


@router.post("/twilio/outbound/status", status_code=204, response_class=Response, openapi_extra=_FORM,
             responses=_RESPONSES)
async def outbound_status(request: Request, state: StateDep, ref: Ref) -> Response:
    """Twilio's status callback of an outbound call (initiated, ringing, answered, completed)."""
    form = await _signed_form(request, state, "status")
    await outbound_of(request).lifecycle.status(ref, _flat(form))
    return Response(status_code=204)


@router.post("/twilio/outbound/amd", status_code=204, response_class=Response, openapi_extra=_FORM,
             responses=_RESPONSES)
async def outbound_amd(request: Request, state: StateDep, ref: Ref) -> Response:
    """Twilio's asynchronous answering-machine verdict for an outbound call."""
    form = await _signed_form(request, state, "amd")
    await outbound_of(request).lifecycle.amd(ref, _flat(form))
    return Response(status_code=204)
