"""The REST requests the emulator serves, checked against what Twilio documents (pure).

Each `parse_*` turns a form into a frozen request or raises the `TwilioError` Twilio would
answer. Parameter names come from Twilio's API definition (the `twilio` package's resource
classes); a name not listed is unknown: tolerated, as by Twilio, and recorded.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from . import errors, numbers
from .forms import Form, Reader

CALL_EVENTS = ("initiated", "ringing", "answered", "completed")
CONFERENCE_EVENTS = ("start", "end", "join", "leave", "mute", "hold", "modify", "speaker", "announcement")
MACHINE_DETECTION = ("Enable", "DetectMessageEnd")
TWIML_MAX_CHARS = 4000  # Twilio's limit for the Twiml parameter

CREATE_CALL_PARAMS = frozenset({
    "To", "From", "Url", "Method", "Twiml", "ApplicationSid", "FallbackUrl", "FallbackMethod", "StatusCallback",
    "StatusCallbackEvent", "StatusCallbackMethod", "SendDigits", "Timeout", "Record", "RecordingChannels",
    "RecordingStatusCallback", "RecordingStatusCallbackMethod", "RecordingStatusCallbackEvent",
    "RecordingConfigurationId", "SipAuthUsername", "SipAuthPassword", "MachineDetection",
    "MachineDetectionTimeout", "MachineDetectionSpeechThreshold", "MachineDetectionSpeechEndThreshold",
    "MachineDetectionSilenceTimeout", "AsyncAmd", "AsyncAmdStatusCallback", "AsyncAmdStatusCallbackMethod", "Trim",
    "CallerId", "Byoc", "CallReason", "CallToken", "RecordingTrack", "TimeLimit", "ClientNotificationUrl",
    "Passports",
})


@dataclass(frozen=True, slots=True)
class Source:
    """Where a call's TwiML comes from: a URL fetched with a method, or a document given inline."""

    url: str | None = None
    method: str = "POST"
    twiml: str | None = None
    fallback_url: str | None = None
    fallback_method: str = "POST"
    extra: tuple[tuple[str, str], ...] = ()  # added to the request (e.g. DialCallStatus for an action)


@dataclass(frozen=True, slots=True)
class StatusCallback:
    url: str
    method: str = "POST"
    events: frozenset[str] = frozenset({"completed"})  # Twilio's default: only the end


@dataclass(frozen=True, slots=True)
class AmdRequest:
    mode: str  # Enable | DetectMessageEnd
    timeout_s: int = 30
    speech_threshold_ms: int = 2400
    speech_end_threshold_ms: int = 1200
    silence_timeout_ms: int = 5000
    asynchronous: bool = False
    callback: str | None = None
    callback_method: str = "POST"


@dataclass(frozen=True, slots=True)
class CreateCall:
    to: str
    from_: str
    source: Source
    status_callback: StatusCallback | None
    timeout_s: int = 60
    amd: AmdRequest | None = None
    time_limit_s: int = 14_400
    send_digits: str | None = None
    record: bool = False


@dataclass(frozen=True, slots=True)
class UpdateCall:
    status: str | None = None  # canceled | completed
    source: Source | None = None
    status_callback: str | None = None
    status_callback_method: str | None = None
    time_limit_s: int | None = None


@dataclass(frozen=True, slots=True)
class CreateParticipant:
    to: str
    from_: str
    label: str | None
    timeout_s: int
    status_callback: StatusCallback | None
    early_media: bool
    start_conference_on_enter: bool
    end_conference_on_exit: bool
    muted: bool
    beep: str
    wait_url: str | None
    wait_method: str
    conference_status_callback: StatusCallback | None
    amd: AmdRequest | None
    coaching: bool
    call_sid_to_coach: str | None


@dataclass(frozen=True, slots=True)
class UpdateParticipant:
    muted: bool | None = None
    hold: bool | None = None
    hold_url: str | None = None
    announce_url: str | None = None
    announce_method: str = "POST"
    end_conference_on_exit: bool | None = None
    coaching: bool | None = None


@dataclass(frozen=True, slots=True)
class UpdateConference:
    status: str | None = None  # completed
    announce_url: str | None = None
    announce_method: str = "POST"


@dataclass(frozen=True, slots=True)
class Parsed:
    """A request and what the emulator noticed about it (for the request log)."""

    request: object
    unknown: tuple[str, ...]
    notes: tuple[str, ...]


def _finish(reader: Reader, request: object, known: Collection[str] | None = None) -> Parsed:
    unknown = reader.unknown() if known is None else sorted(set(reader.form) - set(known))
    return Parsed(request, tuple(unknown), tuple(reader.notes))


def _numbers(r: Reader, caller_ids: Collection[str] | None) -> tuple[str, str]:
    to = r.one("To")
    if not to:
        raise errors.no_to()
    if not numbers.is_endpoint(to):
        raise errors.invalid_to(to)
    from_ = r.one("From")
    if not from_:
        raise errors.no_from()
    if not numbers.is_caller_id(from_):
        raise errors.invalid_from(from_)
    if caller_ids is not None and from_ not in caller_ids and not from_.startswith("client:"):
        raise errors.unverified_from(from_)
    return to, from_


def _status_callback(
    r: Reader, prefix: str, allowed: tuple[str, ...], default: frozenset[str]
) -> StatusCallback | None:
    url = r.url(prefix)
    method = r.method(prefix + "Method")
    events = r.events(prefix + "Event", allowed)
    if url is None:
        if events:
            r.notes.append(f"{prefix}Event without {prefix}: nothing will be sent")
        return None
    return StatusCallback(url, method, events or default)


def _amd(r: Reader, callback_name: str) -> AmdRequest | None:
    mode = r.choice("MachineDetection", MACHINE_DETECTION)
    timeout = r.integer("MachineDetectionTimeout", 30, 3, 59)
    speech = r.integer("MachineDetectionSpeechThreshold", 2400, 1000, 6000)
    speech_end = r.integer("MachineDetectionSpeechEndThreshold", 1200, 500, 5000)
    silence = r.integer("MachineDetectionSilenceTimeout", 5000, 2000, 10000)
    asynchronous = r.boolean("AsyncAmd", False) if callback_name == "AsyncAmdStatusCallback" else True
    callback = r.url(callback_name)
    callback_method = r.method(callback_name + "Method")
    if mode is None:
        if (asynchronous and callback_name == "AsyncAmdStatusCallback") or callback:
            r.notes.append("AsyncAmd/AMD callback without MachineDetection: no detection runs")
        return None
    if asynchronous and callback is None:
        r.notes.append("asynchronous AMD without a status callback: the verdict is only on the Call resource")
    assert timeout is not None and speech is not None and speech_end is not None and silence is not None
    return AmdRequest(mode, timeout, speech, speech_end, silence, asynchronous, callback, callback_method)


def _source(r: Reader, required: bool) -> Source | None:
    url = r.url("Url")
    method = r.method("Method")
    twiml = r.one("Twiml")
    application = r.one("ApplicationSid")
    fallback_url = r.url("FallbackUrl")
    fallback_method = r.method("FallbackMethod")
    if twiml is not None and len(twiml) > TWIML_MAX_CHARS:
        raise errors.invalid_parameter("Twiml", f"longer than {TWIML_MAX_CHARS} characters")
    if application:
        raise errors.invalid_parameter("ApplicationSid", "TwiML Applications are not emulated; use Url or Twiml")
    if url is None and not twiml:
        if required:
            raise errors.invalid_url("Url", "(missing: give Url, Twiml or ApplicationSid)")
        return None
    if url is not None and twiml:
        r.notes.append("both Url and Twiml given: Twiml wins")
    return Source(None if twiml else url, method, twiml or None, fallback_url, fallback_method)


def parse_create_call(form: Form, caller_ids: Collection[str] | None = None) -> Parsed:
    r = Reader(form)
    to, from_ = _numbers(r, caller_ids)
    source = _source(r, required=True)
    assert source is not None
    status_callback = _status_callback(r, "StatusCallback", CALL_EVENTS, frozenset({"completed"}))
    timeout = r.integer("Timeout", 60, 1, 600)
    amd = _amd(r, "AsyncAmdStatusCallback")
    time_limit = r.integer("TimeLimit", 14_400, 1, 86_400)
    send_digits = r.one("SendDigits")
    if send_digits and not all(c in "0123456789*#wW" for c in send_digits):
        raise errors.invalid_parameter("SendDigits", "only 0-9, *, #, w and W")
    record = r.boolean("Record", False)
    assert timeout is not None and time_limit is not None
    request = CreateCall(to, from_, source, status_callback, timeout, amd, time_limit, send_digits, record)
    return _finish(r, request, CREATE_CALL_PARAMS)


def parse_update_call(form: Form) -> Parsed:
    r = Reader(form)
    status = r.choice("Status", ("canceled", "completed"))
    source = _source(r, required=False)
    status_callback = r.url("StatusCallback")
    status_callback_method = r.method("StatusCallbackMethod") if r.has("StatusCallbackMethod") else None
    time_limit = r.integer("TimeLimit", None, 1, 86_400)
    return _finish(r, UpdateCall(status, source, status_callback, status_callback_method, time_limit))


def parse_create_participant(form: Form, caller_ids: Collection[str] | None = None) -> Parsed:
    r = Reader(form)
    to, from_ = _numbers(r, caller_ids)
    label = r.one("Label") or None
    timeout = r.integer("Timeout", 60, 5, 600)
    status_callback = _status_callback(r, "StatusCallback", CALL_EVENTS, frozenset({"completed"}))
    early_media = r.boolean("EarlyMedia", True)
    start_on_enter = r.boolean("StartConferenceOnEnter", True)
    end_on_exit = r.boolean("EndConferenceOnExit", False)
    muted = r.boolean("Muted", False)
    beep = r.choice("Beep", ("true", "false", "onEnter", "onExit")) or "true"
    wait_url = r.url("WaitUrl")
    wait_method = r.method("WaitMethod")
    conference_callback = _status_callback(
        r, "ConferenceStatusCallback", CONFERENCE_EVENTS, frozenset({"start", "end"})
    )
    amd = _amd(r, "AmdStatusCallback")
    coaching = r.boolean("Coaching", False)
    coach = r.one("CallSidToCoach") or None
    if coaching and not coach:
        raise errors.invalid_parameter("CallSidToCoach", "required when Coaching is true")
    r.integer("MaxParticipants", 250, 2, 250)
    for name in ("Record", "ConferenceRecord", "ConferenceTrim", "CallerId", "TimeLimit", "Region", "Byoc",
                 "CallReason", "JitterBufferSize", "Trim", "RecordingChannels", "RecordingStatusCallback",
                 "RecordingStatusCallbackMethod", "RecordingStatusCallbackEvent", "RecordingTrack",
                 "ConferenceRecordingStatusCallback", "ConferenceRecordingStatusCallbackMethod",
                 "ConferenceRecordingStatusCallbackEvent", "SipAuthUsername", "SipAuthPassword",
                 "CallToken", "CallerDisplayName", "AmdStatusCallbackMethod", "ClientNotificationUrl"):
        r.one(name)  # documented, not emulated: known, so not reported as unknown
    assert timeout is not None
    request = CreateParticipant(
        to, from_, label, timeout, status_callback, early_media, start_on_enter, end_on_exit, muted, beep, wait_url,
        wait_method, conference_callback, amd, coaching, coach,
    )
    return _finish(r, request)


def _optional_bool(r: Reader, name: str) -> bool | None:
    return r.boolean(name, False) if r.has(name) else None


def parse_update_participant(form: Form) -> Parsed:
    r = Reader(form)
    request = UpdateParticipant(
        muted=_optional_bool(r, "Muted"),
        hold=_optional_bool(r, "Hold"),
        hold_url=r.url("HoldUrl"),
        announce_url=r.url("AnnounceUrl"),
        announce_method=r.method("AnnounceMethod"),
        end_conference_on_exit=_optional_bool(r, "EndConferenceOnExit"),
        coaching=_optional_bool(r, "Coaching"),
    )
    for name in ("HoldMethod", "WaitUrl", "WaitMethod", "BeepOnExit", "CallSidToCoach"):
        r.one(name)
    return _finish(r, request)


def parse_update_conference(form: Form) -> Parsed:
    r = Reader(form)
    request = UpdateConference(
        status=r.choice("Status", ("completed",)),
        announce_url=r.url("AnnounceUrl"),
        announce_method=r.method("AnnounceMethod"),
    )
    return _finish(r, request)
