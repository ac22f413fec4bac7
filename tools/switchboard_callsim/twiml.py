"""What Twilio does with TwiML, as far as a media stream is concerned (pure).

A voice webhook answer is run verb by verb: `<Connect><Stream>` opens the stream and blocks
until it closes; then the verbs after `</Connect>` run — a `<Redirect>` fetches new TwiML
(for Switchboard: reconnect the same call to a healthy edge), `<Hangup/>` ends the call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree import ElementTree as ET


class TwimlError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Twiml:
    stream_url: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    redirect: str | None = None  # the first <Redirect> after </Connect>
    hangup: bool = False
    says: tuple[str, ...] = ()


def parse(document: bytes | str) -> Twiml:
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise TwimlError(f"TwiML is not XML: {exc}") from None
    if root.tag != "Response":
        raise TwimlError(f"TwiML root is <{root.tag}>, not <Response>")
    stream_url, parameters, redirect, hangup, says = None, {}, None, False, []
    for verb in root:
        if verb.tag == "Connect" and stream_url is None:
            stream = verb.find("Stream")
            if stream is None or not stream.get("url"):
                raise TwimlError("<Connect> without a <Stream url>")
            stream_url = stream.get("url")
            parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
        elif verb.tag == "Redirect" and redirect is None and not hangup:
            redirect = (verb.text or "").strip() or None
        elif verb.tag == "Hangup" and redirect is None:
            hangup = True
        elif verb.tag == "Say":
            says.append(verb.text or "")
    return Twiml(stream_url, parameters, redirect, hangup, tuple(says))
