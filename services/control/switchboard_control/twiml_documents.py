"""The TwiML documents control answers Twilio with: `<Connect><Stream>` to the edge with the
caller's data as `<Parameter>`s and a `<Redirect>` to `/twiml/continue` for failover, and the
busy, hold and goodbye answers; and control's address as Twilio knows it (`public_base`,
`signed_url`: the URL a Twilio request's signature covers).

Served by `routes.twiml` (inbound calls, reconnects), `routes.transfers` (a caller sent back to
the agent) and `outbound.callbacks` (an answered outbound call); a module of its own, not a
route's, so that the `outbound` package needs nothing from `routes`.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode
from xml.etree import ElementTree as ET

from fastapi import Request

from .settings import ControlSettings

# Webhook fields passed on to the call as <Parameter>s (the edge stores them on the call record).
CALLER_FIELDS = ("CallSid", "From", "To", "CallerName", "Direction", "ForwardedFrom")
MAX_PARAMETER_CHARS = 499  # Twilio: name + value of one <Parameter> under 500 characters
# XML 1.0 forbids these in a document; a caller name carrying one would make the TwiML unparseable.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def form_value(form: dict[str, list[str]], name: str) -> str:
    """The first value of a field of Twilio's form, or ""."""
    values = form.get(name)
    return values[0] if values else ""


def caller_parameters(form: dict[str, list[str]], profile: str | None) -> dict[str, str]:
    parameters = {"profile": profile} if profile else {}
    for name in CALLER_FIELDS:
        if value := xml_text(form_value(form, name)):
            parameters[name] = value[: MAX_PARAMETER_CHARS - len(name)]
    return parameters


def xml_text(text: str) -> str:
    """`text` without the characters XML 1.0 cannot carry (ElementTree would write them as they are)."""
    return _NOT_XML.sub("", text)


def public_base(settings: ControlSettings, request: Request) -> str:
    """Control's address as Twilio knows it: behind a proxy, only CONTROL_PUBLIC_URL does."""
    return settings.control_public_url.rstrip("/") if settings.control_public_url else str(request.base_url).rstrip("/")


def signed_url(settings: ControlSettings, request: Request) -> str:
    """The URL Twilio signed for this request: the one it was configured with, and the query."""
    query = request.url.query
    return f"{public_base(settings, request)}{request.url.path}" + (f"?{query}" if query else "")


def continue_url(settings: ControlSettings, request: Request, profile: str | None, attempt: int) -> str:
    base = public_base(settings, request)
    query = urlencode({**({"profile": profile} if profile else {}), "attempt": attempt})
    return f"{base}/twiml/continue?{query}"


def render(settings: ControlSettings, parameters: dict[str, str], redirect_url: str) -> bytes:
    response = ET.Element("Response")
    connect = ET.SubElement(response, "Connect")
    stream = ET.SubElement(connect, "Stream", url=settings.edge_public_url)
    for name, value in parameters.items():
        ET.SubElement(stream, "Parameter", name=name, value=value)
    # Runs when the stream closes or cannot be opened: /twiml/continue decides between
    # hanging up (Switchboard ended the call) and reconnecting (the stream dropped).
    ET.SubElement(response, "Redirect", method="POST").text = redirect_url
    return _serialized(response)


def busy(settings: ControlSettings) -> bytes:
    response = ET.Element("Response")
    ET.SubElement(response, "Say").text = settings.control_admission_busy_say
    ET.SubElement(response, "Hangup")
    return _serialized(response)


def hold(settings: ControlSettings, retry_url: str) -> bytes:
    # Twilio runs the verbs in order: speak, wait, then fetch /twiml again (a signed POST).
    response = ET.Element("Response")
    ET.SubElement(response, "Say").text = settings.control_admission_hold_say
    ET.SubElement(response, "Pause", length=str(settings.control_admission_hold_pause_s))
    ET.SubElement(response, "Redirect", method="POST").text = retry_url
    return _serialized(response)


def goodbye(settings: ControlSettings, *, apologise: bool) -> bytes:
    response = ET.Element("Response")
    if apologise:
        ET.SubElement(response, "Say").text = settings.fallback_say
    ET.SubElement(response, "Hangup")
    return _serialized(response)


def _serialized(response: ET.Element) -> bytes:
    document: bytes = ET.tostring(response, encoding="utf-8", xml_declaration=True)
    return document
