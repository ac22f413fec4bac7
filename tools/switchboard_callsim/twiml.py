"""What Twilio does with TwiML, as far as a media stream is concerned (pure).

A voice webhook answer is a list of verbs that Twilio runs in order: `<Say>` speaks,
`<Pause length="N">` waits N seconds, `<Connect><Stream>` opens the stream and blocks until
it closes, `<Redirect>` fetches new TwiML that replaces the rest of the document (for
Switchboard: reconnect the same call to a healthy edge, or look for a free slot again while
on hold), `<Hangup/>` ends the call. When the verbs run out, Twilio hangs up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree import ElementTree as ET


class TwimlError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Connect:
    url: str
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Say:
    text: str


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float = 1.0


@dataclass(frozen=True, slots=True)
class Redirect:
    url: str
    method: str = "POST"


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


Verb = Connect | Say | Pause | Redirect | Hangup


@dataclass(frozen=True, slots=True)
class Twiml:
    verbs: tuple[Verb, ...] = ()

    # Summaries of the document, for callers that only look at it.
    @property
    def stream_url(self) -> str | None:
        return next((v.url for v in self.verbs if isinstance(v, Connect)), None)

    @property
    def parameters(self) -> dict[str, str]:
        return next((v.parameters for v in self.verbs if isinstance(v, Connect)), {})

    @property
    def says(self) -> tuple[str, ...]:
        return tuple(v.text for v in self.verbs if isinstance(v, Say))


def parse(document: bytes | str) -> Twiml:
    """The verbs Twilio would run; a `<Redirect>` or `<Hangup/>` ends the list (nothing after runs)."""
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise TwimlError(f"TwiML is not XML: {exc}") from None
    if root.tag != "Response":
        raise TwimlError(f"TwiML root is <{root.tag}>, not <Response>")
    verbs: list[Verb] = []
    for verb in root:
        if verb.tag == "Connect":
            stream = verb.find("Stream")
            if stream is None or not stream.get("url"):
                raise TwimlError("<Connect> without a <Stream url>")
            parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
            verbs.append(Connect(stream.get("url", ""), parameters))
        elif verb.tag == "Say":
            verbs.append(Say(verb.text or ""))
        elif verb.tag == "Pause":
            try:
                seconds = float(verb.get("length", "1"))
            except ValueError:
                raise TwimlError(f"<Pause length={verb.get('length')!r}> is not a number") from None
            verbs.append(Pause(max(0.0, seconds)))
        elif verb.tag == "Redirect":
            url = (verb.text or "").strip()
            if not url:
                raise TwimlError("<Redirect> without a URL")
            verbs.append(Redirect(url, verb.get("method", "POST").upper()))
            break
        elif verb.tag == "Hangup":
            verbs.append(Hangup())
            break
        # Other verbs (<Play>, <Gather>, ...) do nothing a stream test can observe.
    return Twiml(tuple(verbs))
