"""TwiML documents as Twilio's voice engine reads them (pure).

`parse` turns a `<Response>` into verbs. Verbs the emulator runs: `<Say>`, `<Play>`,
`<Pause>`, `<Gather>` (its nested Say/Play/Pause, no input), `<Redirect>`, `<Hangup>`,
`<Reject>`, `<Connect><Stream>`, `<Dial>` with a number (as text or `<Number>`), `<Sip>`,
`<Client>` or `<Conference>`. Anything else parses as `Unsupported` and is skipped, as
Twilio skips what it cannot run after a schema warning. A document that is not XML, or
whose root is not `<Response>`, is Twilio's error 12100.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree import ElementTree as ET

PARSE_FAILURE = 12100
MAX_LOOP = 100  # `loop="0"` means "until hung up"; the emulator caps it


class TwimlError(ValueError):
    code = PARSE_FAILURE


def _bool(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.strip().lower() == "true"


def _int(value: str | None, default: int, low: int = 0, high: int = 86_400) -> int:
    try:
        number = int(str(value).strip()) if value is not None else default
    except ValueError:
        return default
    return max(low, min(high, number))


def _events(value: str | None) -> frozenset[str]:
    return frozenset((value or "").split())


@dataclass(frozen=True, slots=True)
class Say:
    text: str
    loop: int = 1
    voice: str | None = None


@dataclass(frozen=True, slots=True)
class Play:
    url: str
    loop: int = 1
    digits: str | None = None


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: int = 1


@dataclass(frozen=True, slots=True)
class Gather:
    children: tuple[Say | Play | Pause, ...] = ()
    timeout_s: int = 5
    action: str | None = None
    method: str = "POST"
    action_on_empty_result: bool = False


@dataclass(frozen=True, slots=True)
class Redirect:
    url: str
    method: str = "POST"


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str = "rejected"  # rejected | busy


@dataclass(frozen=True, slots=True)
class Stream:
    url: str
    name: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    status_callback: str | None = None
    status_callback_method: str = "POST"


@dataclass(frozen=True, slots=True)
class Connect:
    stream: Stream
    action: str | None = None
    method: str = "POST"


@dataclass(frozen=True, slots=True)
class StatusHook:
    url: str | None = None
    method: str = "POST"
    events: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class DialNumber:
    """A `<Number>`, `<Sip>` or `<Client>` (or a bare number as `<Dial>` text)."""

    address: str
    kind: str = "number"  # number | sip | client
    url: str | None = None  # the whisper: TwiML run on the called party before the bridge
    method: str = "POST"
    status: StatusHook = StatusHook()
    send_digits: str | None = None


@dataclass(frozen=True, slots=True)
class DialConference:
    name: str
    start_on_enter: bool = True
    end_on_exit: bool = False
    wait_url: str | None = None
    wait_method: str = "POST"
    muted: bool = False
    beep: str = "true"
    status: StatusHook = StatusHook()
    participant_label: str | None = None
    coach: str | None = None


@dataclass(frozen=True, slots=True)
class Dial:
    targets: tuple[DialNumber | DialConference, ...]
    action: str | None = None
    method: str = "POST"
    timeout_s: int = 30
    caller_id: str | None = None
    time_limit_s: int = 14_400
    answer_on_bridge: bool = False


@dataclass(frozen=True, slots=True)
class Unsupported:
    tag: str


Verb = Say | Play | Pause | Gather | Redirect | Hangup | Reject | Connect | Dial | Unsupported


def _text(element: ET.Element) -> str:
    return (element.text or "").strip()


def _say(e: ET.Element) -> Say:
    return Say(_text(e), _int(e.get("loop"), 1, 0, MAX_LOOP) or MAX_LOOP, e.get("voice"))


def _play(e: ET.Element) -> Play:
    return Play(_text(e), _int(e.get("loop"), 1, 0, MAX_LOOP) or MAX_LOOP, e.get("digits"))


def _pause(e: ET.Element) -> Pause:
    return Pause(_int(e.get("length"), 1, 0, 600))


def _hook(e: ET.Element) -> StatusHook:
    return StatusHook(e.get("statusCallback"), (e.get("statusCallbackMethod") or "POST").upper(),
                      _events(e.get("statusCallbackEvent")))


def _dial(e: ET.Element) -> Dial:
    targets: list[DialNumber | DialConference] = []
    for noun in e:
        if noun.tag in ("Number", "Sip", "Client"):
            kind = {"Number": "number", "Sip": "sip", "Client": "client"}[noun.tag]
            address = _text(noun)
            if kind == "client" and not address.startswith("client:"):
                address = "client:" + (noun.findtext("Identity") or address).strip()
            if not address:
                raise TwimlError(f"<{noun.tag}> without an address")
            targets.append(DialNumber(address, kind, noun.get("url"), (noun.get("method") or "POST").upper(),
                                      _hook(noun), noun.get("sendDigits")))
        elif noun.tag == "Conference":
            name = _text(noun)
            if not name:
                raise TwimlError("<Conference> without a name")
            targets.append(DialConference(
                name,
                start_on_enter=_bool(noun.get("startConferenceOnEnter"), True),
                end_on_exit=_bool(noun.get("endConferenceOnExit"), False),
                wait_url=noun.get("waitUrl"),
                wait_method=(noun.get("waitMethod") or "POST").upper(),
                muted=_bool(noun.get("muted"), False),
                beep=noun.get("beep") or "true",
                status=_hook(noun),
                participant_label=noun.get("participantLabel"),
                coach=noun.get("coach"),
            ))
        else:
            raise TwimlError(f"<Dial> cannot contain <{noun.tag}> here")
    if not targets:
        if not _text(e):
            raise TwimlError("<Dial> without anything to dial")
        targets.append(DialNumber(_text(e)))
    return Dial(
        tuple(targets),
        action=e.get("action"),
        method=(e.get("method") or "POST").upper(),
        timeout_s=_int(e.get("timeout"), 30, 5, 600),
        caller_id=e.get("callerId"),
        time_limit_s=_int(e.get("timeLimit"), 14_400, 1, 86_400),
        answer_on_bridge=_bool(e.get("answerOnBridge"), False),
    )


def _connect(e: ET.Element) -> Connect | Unsupported:
    stream = e.find("Stream")
    if stream is None:
        return Unsupported("Connect/" + (e[0].tag if len(e) else ""))  # <Connect><Room>, <VirtualAgent>, ...
    url = stream.get("url") or ""
    if not url:
        raise TwimlError("<Stream> without a url")
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return Connect(
        Stream(url, stream.get("name"), parameters, stream.get("statusCallback"),
               (stream.get("statusCallbackMethod") or "POST").upper()),
        action=e.get("action"),
        method=(e.get("method") or "POST").upper(),
    )


def _gather(e: ET.Element) -> Gather:
    children: list[Say | Play | Pause] = []
    for child in e:
        if child.tag == "Say":
            children.append(_say(child))
        elif child.tag == "Play":
            children.append(_play(child))
        elif child.tag == "Pause":
            children.append(_pause(child))
    return Gather(tuple(children), _int(e.get("timeout"), 5, 0, 600), e.get("action"),
                  (e.get("method") or "POST").upper(), _bool(e.get("actionOnEmptyResult"), False))


def parse(document: str | bytes) -> tuple[Verb, ...]:
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise TwimlError(f"TwiML is not XML: {exc}") from None
    if root.tag != "Response":
        raise TwimlError(f"TwiML root is <{root.tag}>, not <Response>")
    verbs: list[Verb] = []
    for e in root:
        match e.tag:
            case "Say":
                verbs.append(_say(e))
            case "Play":
                verbs.append(_play(e))
            case "Pause":
                verbs.append(_pause(e))
            case "Gather":
                verbs.append(_gather(e))
            case "Redirect":
                if not _text(e):
                    raise TwimlError("<Redirect> without a URL")
                verbs.append(Redirect(_text(e), (e.get("method") or "POST").upper()))
            case "Hangup":
                verbs.append(Hangup())
            case "Reject":
                verbs.append(Reject(e.get("reason") or "rejected"))
            case "Connect":
                verbs.append(_connect(e))
            case "Dial":
                verbs.append(_dial(e))
            case _:
                verbs.append(Unsupported(e.tag))
    return tuple(verbs)
