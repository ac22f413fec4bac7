"""Twilio's voice webhook: a signed form POST answered with `<Connect><Stream>` to the edge.

The stream gets the profile and the caller's data as `<Parameter>`s (Twilio does not put
From/To into the stream's `start` message). After `</Connect>` comes the fallback: Twilio
runs it when the stream cannot be opened or is closed by us.
"""

from __future__ import annotations

import logging
from typing import Annotated
from urllib.parse import parse_qs
from xml.etree import ElementTree as ET

from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from switchboard import signature

from .. import metrics
from ..deps import StateDep
from ..models import PROFILE_NAME, Problem
from ..settings import ControlSettings

router = APIRouter(tags=["twilio"])
log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
# Webhook fields passed on to the call as <Parameter>s (the edge stores them on the call record).
CALLER_FIELDS = ("CallSid", "From", "To", "CallerName", "Direction", "ForwardedFrom")
MAX_PARAMETER_CHARS = 499  # Twilio: name + value of one <Parameter> under 500 characters

_FORM_SCHEMA = {
    "type": "object",
    "properties": {name: {"type": "string", "maxLength": 200} for name in ("AccountSid", *CALLER_FIELDS)},
    "example": {"AccountSid": "AC0123", "CallSid": "CA0123", "From": "+14155550100", "To": "+14155550199"},
}


@router.post(
    "/twiml",
    response_class=Response,
    openapi_extra={"requestBody": {"required": False, "content": {"application/x-www-form-urlencoded": {"schema": _FORM_SCHEMA}}}},
    responses={
        200: {"content": {"application/xml": {"schema": {"type": "string"}}}, "description": "TwiML"},
        403: {"model": Problem, "description": "Missing or invalid X-Twilio-Signature"},
        413: {"model": Problem},
        503: {"model": Problem, "description": "TWILIO_AUTH_TOKEN is not configured"},
    },
)
async def twiml(
    request: Request,
    state: StateDep,
    profile: Annotated[str | None, Query(pattern=PROFILE_NAME, description="Agent profile of this number")] = None,
) -> Response:
    """Twilio voice webhook (POST, form-encoded, signed by Twilio; no bearer token)."""
    settings = state.settings
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, "request body too large")
    form = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    if settings.twilio_auth_token is None:
        if not (settings.control_insecure_no_auth or settings.control_insecure_twiml):
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "TWILIO_AUTH_TOKEN is not configured")
    elif not signature.is_valid(
        settings.twilio_auth_token.get_secret_value(),
        _signed_url(settings, request),
        request.headers.get("X-Twilio-Signature"),
        form,
    ):
        metrics.TWIML.labels("bad_signature").inc()
        log.warning("TwiML request with a bad signature", extra={"call_sid": _first(form, "CallSid")[:64]})
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid X-Twilio-Signature")
    metrics.TWIML.labels("ok").inc()
    parameters = {"profile": profile} if profile else {}
    for name in CALLER_FIELDS:
        if value := _first(form, name):
            parameters[name] = value[: MAX_PARAMETER_CHARS - len(name)]
    return Response(render(settings, parameters), media_type="application/xml")


def _first(form: dict[str, list[str]], name: str) -> str:
    values = form.get(name)
    return values[0] if values else ""


def _signed_url(settings: ControlSettings, request: Request) -> str:
    # Twilio signs the URL it was configured with; behind a proxy, only CONTROL_PUBLIC_URL knows it.
    base = settings.control_public_url.rstrip("/") if settings.control_public_url else str(request.base_url).rstrip("/")
    query = request.url.query
    return f"{base}{request.url.path}" + (f"?{query}" if query else "")


def render(settings: ControlSettings, parameters: dict[str, str]) -> bytes:
    response = ET.Element("Response")
    connect = ET.SubElement(response, "Connect")
    stream = ET.SubElement(connect, "Stream", url=settings.edge_public_url)
    for name, value in parameters.items():
        ET.SubElement(stream, "Parameter", name=name, value=value)
    response.extend(fallback(settings))
    return ET.tostring(response, encoding="utf-8", xml_declaration=True)


def fallback(settings: ControlSettings) -> list[ET.Element]:
    """Verbs after `</Connect>`: run when the stream fails or ends. (Edge failover will put its
    `<Redirect>` back to this endpoint first.)"""
    say = ET.Element("Say")
    say.text = settings.fallback_say
    return [say, ET.Element("Hangup")]
