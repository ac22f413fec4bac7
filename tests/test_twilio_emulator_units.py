"""Twilio REST emulator, pure parts: validation, auth, lifecycle, pacing, AMD, TwiML, conferences, callees."""

from __future__ import annotations

import base64

import pytest

from switchboard_callsim.machine import BEEP, GREETING, Machine, MachinePhase, MachineScript
from switchboard_callsim.playback import Playback
from switchboard_callsim.script import SILENT, CallScript, Conversation, Phase
from switchboard_twilio_emulator import amd, auth, callees, errors, forms, numbers, twiml, validate
from switchboard_twilio_emulator.conference import Conference, ConferenceStatus, Participant
from switchboard_twilio_emulator.errors import TwilioError
from switchboard_twilio_emulator.lifecycle import CallStatus, Event, IllegalTransition, Subscription, transition
from switchboard_twilio_emulator.pacing import CpsLimiter

AC = "AC" + "a" * 32


def form(**values: str | list[str]) -> dict[str, list[str]]:
    return {k.replace("_", ""): v if isinstance(v, list) else [v] for k, v in values.items()}


def create(**overrides: str | list[str]) -> validate.Parsed:
    base = {"To": ["+14155550123"], "From": ["+14155550100"], "Url": ["https://example.com/twiml"]}
    base.update({k: v if isinstance(v, list) else [v] for k, v in overrides.items()})
    return validate.parse_create_call(base)


def code_of(fn, *args, **kwargs) -> int:
    with pytest.raises(TwilioError) as info:
        fn(*args, **kwargs)
    return info.value.code


# --- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["+14155550100", "+442071838750", "+15005550006", "+4915123456789"])
def test_valid_e164_numbers_pass(number):
    assert numbers.is_phone_number(number)


@pytest.mark.parametrize("number", ["4155550100", "+1415555010", "+15551234567", "+1 415 555 0100", "+0123456789",
                                    "+1234567890123456", "+4412"])
def test_invalid_numbers_are_refused(number):
    assert not numbers.is_phone_number(number)


def test_endpoints_may_be_sip_or_client_and_numbers_format_like_twilio():
    assert numbers.is_endpoint("sip:agent@pbx.example.com") and numbers.is_endpoint("client:alice")
    assert not numbers.is_endpoint("sip:nobody")
    assert numbers.formatted("+14155550100") == "(415) 555-0100"
    assert numbers.formatted("+442071838750") == "+442071838750"


# --- Calls create/update validation -------------------------------------------------------------


def test_a_minimal_create_has_twilios_defaults():
    req = create().request
    assert isinstance(req, validate.CreateCall)
    assert req.timeout_s == 60 and req.amd is None and req.status_callback is None
    assert req.source == validate.Source("https://example.com/twiml", "POST")


def test_create_errors_carry_twilios_codes():
    assert code_of(create, To=[]) == errors.NO_TO
    assert code_of(create, To="555-0100") == errors.INVALID_TO
    assert code_of(create, From=[]) == errors.NO_FROM
    assert code_of(create, From="nobody") == errors.INVALID_FROM
    assert code_of(create, Url="ftp://example.com/x") == errors.INVALID_URL
    assert code_of(create, Url=[]) == errors.INVALID_URL
    assert code_of(create, Method="PUT") == errors.INVALID_PARAMETER
    assert code_of(create, StatusCallbackEvent="hangup", StatusCallback="https://e.com/s") == errors.INVALID_PARAMETER
    assert code_of(create, MachineDetection="Yes") == errors.INVALID_PARAMETER
    assert code_of(create, MachineDetectionTimeout="2", MachineDetection="Enable") == errors.INVALID_PARAMETER
    assert code_of(create, Timeout="601") == errors.INVALID_PARAMETER
    assert code_of(create, AsyncAmd="yes") == errors.INVALID_PARAMETER
    assert code_of(create, Twiml="<Response>" + "x" * 4000 + "</Response>", Url=[]) == errors.INVALID_PARAMETER


def test_an_unverified_caller_id_is_refused_with_21210():
    base = {"To": ["+14155550123"], "From": ["+14155550199"], "Url": ["https://example.com/t"]}
    with pytest.raises(TwilioError) as info:
        validate.parse_create_call(base, caller_ids={"+14155550100"})
    assert info.value.code == errors.UNVERIFIED_FROM and info.value.status == 400
    assert "+14155550199" in info.value.message


def test_status_callback_events_and_amd_are_parsed_and_unknown_parameters_recorded():
    parsed = create(StatusCallback="https://e.com/s", StatusCallbackEvent=["initiated", "ringing answered"],
                    StatusCallbackMethod="get", MachineDetection="DetectMessageEnd", AsyncAmd="true",
                    AsyncAmdStatusCallback="https://e.com/amd", Colour="blue")
    req = parsed.request
    assert req.status_callback == validate.StatusCallback(
        "https://e.com/s", "GET", frozenset({"initiated", "ringing", "answered"}))
    assert req.amd == validate.AmdRequest("DetectMessageEnd", 30, 2400, 1200, 5000, True, "https://e.com/amd", "POST")
    assert parsed.unknown == ("Colour",)
    assert any("space-separated" in note for note in parsed.notes)


def test_inline_twiml_wins_and_update_accepts_only_canceled_or_completed():
    assert create(Twiml="<Response/>").request.source.twiml == "<Response/>"
    assert validate.parse_update_call({"Status": ["completed"]}).request.status == "completed"
    assert code_of(validate.parse_update_call, {"Status": ["in-progress"]}) == errors.INVALID_PARAMETER
    update = validate.parse_update_call({"Url": ["https://e.com/next"], "Method": ["GET"]}).request
    assert update.source == validate.Source("https://e.com/next", "GET")


def test_error_bodies_are_twilio_shaped():
    err = errors.invalid_to("+1555")
    assert err.body() == {"code": 21211, "message": "The 'To' number +1555 is not a valid phone number.",
                          "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}
    assert errors.authenticate().headers["WWW-Authenticate"].startswith("Basic")
    assert errors.too_many_requests(2).headers == {"Retry-After": "2"}


def test_forms_keep_repeated_parameters_and_refuse_huge_bodies():
    assert forms.parse(b"A=1&A=2&B=") == {"A": ["1", "2"], "B": [""]}
    with pytest.raises(TwilioError):
        forms.parse(b"A=" + b"x" * forms.MAX_FORM_BYTES)


# --- auth ---------------------------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


ACCOUNT = auth.Account(AC, "token", {"SK" + "1" * 32: "key-secret"})


@pytest.mark.parametrize(("header", "kind", "ok"), [
    (basic(AC, "token"), "account", True),
    (basic("SK" + "1" * 32, "key-secret"), "api_key", True),
    (basic(AC, "wrong"), "wrong_secret", False),
    (basic("SK" + "1" * 32, "token"), "wrong_secret", False),
    (basic("AC" + "b" * 32, "token"), "unknown_user", False),
    (None, "none", False),
    ("Bearer abc", "malformed", False),
    ("Basic !!!", "malformed", False),
])
def test_basic_auth_takes_the_account_token_or_an_api_key(header, kind, ok):
    result = auth.check(header, ACCOUNT, AC)
    assert (result.kind, result.ok) == (kind, ok)


def test_valid_credentials_for_another_account_path_are_refused():
    assert auth.check(basic(AC, "token"), ACCOUNT, "AC" + "c" * 32).kind == "wrong_account"


# --- lifecycle ----------------------------------------------------------------------------------


def test_a_call_runs_queued_ringing_in_progress_completed():
    status = CallStatus.QUEUED
    status = transition(status, Event.INITIATED)
    assert status is CallStatus.QUEUED  # the resource stays queued while dialling
    status = transition(status, Event.RINGING)
    status = transition(status, Event.ANSWERED)
    assert transition(status, Event.COMPLETED, CallStatus.COMPLETED) is CallStatus.COMPLETED


def test_illegal_transitions_name_both_states():
    with pytest.raises(IllegalTransition, match="in-progress cannot become completed as busy"):
        transition(CallStatus.IN_PROGRESS, Event.COMPLETED, CallStatus.BUSY)
    with pytest.raises(IllegalTransition, match="completed cannot become ringing"):
        transition(CallStatus.COMPLETED, Event.RINGING)


def test_only_subscribed_events_get_sequence_numbers_from_zero():
    sub = Subscription(frozenset({"ringing", "completed"}))
    assert [sub.take(e) for e in Event] == [None, 0, None, 1]


# --- pacing -------------------------------------------------------------------------------------


def test_queued_calls_are_dialled_one_cps_slot_apart():
    limiter = CpsLimiter(2)
    assert [limiter.reserve(10.0) for _ in range(3)] == [0.0, 0.5, 1.0]
    assert limiter.reserve(20.0) == 0.0


def test_reject_mode_allows_cps_creations_per_second_and_says_when_to_retry():
    limiter = CpsLimiter(2)
    assert limiter.admit(0.0) == (True, 0) and limiter.admit(0.1) == (True, 0)
    assert limiter.admit(0.2) == (False, 1)
    assert limiter.admit(1.0) == (True, 0)
    slow = CpsLimiter(0.25)  # one call per 4 s
    assert slow.admit(0.0) == (True, 0) and slow.admit(1.0) == (False, 3)


# --- AMD ----------------------------------------------------------------------------------------

DETECT_END = validate.AmdRequest("DetectMessageEnd", asynchronous=True)


def test_a_person_is_human_after_a_hello_and_the_speech_end_silence():
    person = callees.Callee("person", script=CallScript(lead_ms=400))
    assert amd.verdict(person, DETECT_END) == amd.Verdict("human", 100 + 700 + 1200)


def test_a_voicemail_is_machine_end_beep_after_its_beep_or_machine_start_with_enable():
    vm = callees.Callee("voicemail", machine=MachineScript(lead_ms=200, greeting_ms=3000, gap_ms=200, beep_ms=400))
    assert amd.verdict(vm, DETECT_END) == amd.Verdict("machine_end_beep", 3800 + amd.BEEP_DETECT_MS)
    enable = validate.AmdRequest("Enable")
    assert amd.verdict(vm, enable) == amd.Verdict("machine_start", 200 + 2400)
    no_beep = callees.Callee("voicemail", machine=MachineScript(lead_ms=200, greeting_ms=3000, beep_ms=0))
    assert amd.verdict(no_beep, DETECT_END) == amd.Verdict("machine_end_silence", 3200 + 1200)


def test_fax_overrides_and_the_detection_timeout():
    assert amd.verdict(callees.Callee("fax"), DETECT_END).answered_by == "fax"
    odd = callees.Callee("person", answered_by="machine_end_other", amd_ms=900)
    assert amd.verdict(odd, DETECT_END) == amd.Verdict("machine_end_other", 900)
    long_greeting = callees.Callee("voicemail", machine=MachineScript(greeting_ms=40_000))
    assert amd.verdict(long_greeting, DETECT_END) == amd.Verdict("unknown", 30_000)
    assert amd.verdict(callees.Callee("busy"), DETECT_END) is None


# --- TwiML --------------------------------------------------------------------------------------


def test_twiml_verbs_parse_with_their_attributes():
    verbs = twiml.parse(
        '<Response><Say loop="2">Hi</Say><Pause length="3"/>'
        '<Connect action="/after"><Stream url="wss://e.com/s"><Parameter name="profile" value="sales"/></Stream></Connect>'
        '<Dial timeout="10" action="/dialed"><Number url="/whisper">+14155550100</Number></Dial>'
        '<Dial>+14155550111</Dial><Dial><Sip>sip:a@b.com</Sip></Dial>'
        '<Dial><Conference waitUrl="/wait" endConferenceOnExit="true" startConferenceOnEnter="false" '
        'statusCallback="/conf" statusCallbackEvent="start end join">room</Conference></Dial>'
        '<Enqueue>q</Enqueue><Redirect method="GET">/next</Redirect><Hangup/></Response>')
    say, pause, connect, dial, bare, sip, conf, unsupported, redirect, hangup = verbs
    assert say == twiml.Say("Hi", 2) and pause == twiml.Pause(3)
    assert connect == twiml.Connect(twiml.Stream("wss://e.com/s", parameters={"profile": "sales"}), "/after")
    assert dial.timeout_s == 10 and dial.action == "/dialed"
    assert dial.targets == (twiml.DialNumber("+14155550100", url="/whisper"),)
    assert bare.targets == (twiml.DialNumber("+14155550111"),)
    assert sip.targets[0].kind == "sip"
    room = conf.targets[0]
    assert (room.name, room.end_on_exit, room.start_on_enter, room.wait_url) == ("room", True, False, "/wait")
    assert room.status.events == {"start", "end", "join"}
    assert unsupported == twiml.Unsupported("Enqueue")
    assert redirect == twiml.Redirect("/next", "GET") and hangup == twiml.Hangup()


@pytest.mark.parametrize("document", ["not xml", "<Say>hi</Say>", "<Response><Dial/></Response>",
                                      "<Response><Connect><Stream/></Connect></Response>",
                                      "<Response><Redirect/></Response>"])
def test_broken_twiml_is_error_12100(document):
    with pytest.raises(twiml.TwimlError) as info:
        twiml.parse(document)
    assert info.value.code == 12100


# --- conferences --------------------------------------------------------------------------------


def seat(sid: str, **kw) -> Participant:
    return Participant(sid, 0.0, **kw)


def test_a_conference_starts_with_two_participants_and_holds_the_first_until_then():
    conf = Conference("CF1", AC, "room", 0.0)
    change = conf.connect(seat("CA1"), 1.0)
    assert [e.name for e in change.events] == ["participant-join"] and conf.holding("CA1")
    change = conf.connect(seat("CA2"), 2.0)
    assert [e.name for e in change.events] == ["participant-join", "conference-start"]
    assert conf.status is ConferenceStatus.IN_PROGRESS and not conf.holding("CA1")


def test_nobody_with_start_on_enter_keeps_everyone_holding():
    conf = Conference("CF1", AC, "room", 0.0)
    conf.connect(seat("CA1", start_on_enter=False), 1.0)
    conf.connect(seat("CA2", start_on_enter=False), 1.0)
    assert not conf.started and conf.holding("CA2")


def test_an_end_on_exit_participant_leaving_ends_it_and_kicks_the_rest():
    conf = Conference("CF1", AC, "room", 0.0)
    conf.connect(seat("CA1"), 1.0)
    conf.connect(seat("CA2", end_on_exit=True), 1.0)
    conf.connect(seat("CA3"), 1.0)
    change = conf.leave("CA2", 2.0)
    assert [e.name for e in change.events] == ["participant-leave", "conference-end"]
    assert sorted(change.kicked) == ["CA1", "CA3"]
    assert conf.reason_ended == "participant-with-end-conference-on-exit-left" and conf.call_sid_ending == "CA2"


def test_the_last_participant_leaving_ends_it_and_a_never_connected_one_leaves_quietly():
    conf = Conference("CF1", AC, "room", 0.0)
    conf.add(seat("CA9"), 0.5)
    conf.connect(seat("CA1"), 1.0)
    assert conf.leave("CA9", 1.5).events == []  # dialled, never answered
    change = conf.leave("CA1", 2.0)
    assert [e.name for e in change.events] == ["participant-leave", "conference-end"]
    assert conf.reason_ended == "last-participant-left"


# --- callees ------------------------------------------------------------------------------------


def test_callees_load_from_json_and_refuse_nonsense_clearly():
    c = callees.from_json({"kind": "voicemail", "ring_s": 2, "machine": {"greeting_ms": 1000, "beep_ms": 0},
                           "script": {"turns": 2, "dtmf": [[100, "1"]]}})
    assert c.machine.greeting_ms == 1000 and c.script.turns == 2 and c.script.dtmf == ((100, "1"),)
    assert callees.from_json(callees.to_json(c)) == c
    for bad, message in (({"kind": "robot"}, "kind"), ({"ring": 1}, "unknown field"),
                         ({"answered_by": "alien"}, "answered_by"), ({"ring_s": -1}, "ring_s"),
                         ({"script": {"turnz": 1}}, "script"), ([], "object")):
        with pytest.raises(ValueError, match=message):
            callees.from_json(bad)


def test_one_shot_callees_come_before_the_numbers_script_then_the_default():
    directory = callees.Directory(callees.Callee("person"), {"+14155550101": callees.Callee("voicemail")})
    directory.push_once("+14155550101", callees.Callee("busy"))
    assert directory.peek("+14155550101").kind == "busy"
    assert [directory.pick("+14155550101").kind for _ in range(2)] == ["busy", "voicemail"]
    assert directory.pick("+14155550102").kind == "person"


# --- the simulated parties ----------------------------------------------------------------------


def test_a_machine_greets_beeps_records_and_knows_what_it_heard_when():
    script = MachineScript(lead_ms=40, greeting_ms=60, gap_ms=20, beep_ms=40, record_ms=100)
    pb = Playback()
    m = Machine(script, pb, 0)
    sent = [m.tick(t * 20_000) for t in range(14)]
    assert sent == [SILENT] * 2 + [GREETING] * 3 + [SILENT] + [BEEP] * 2 + [SILENT] * 5 + [None]
    assert m.phase is MachinePhase.DONE
    m2 = Machine(script, pb2 := Playback(), 0)
    m2.on_audio(50_000, pb2.push_audio(160, 50_000))  # over the greeting
    m2.on_new_reply(170_000, pb2.push_audio(320, 170_000))  # after the beep (ends at 160 ms)
    m2.on_audio(170_000, 170_000)
    assert m2.report()["heard_before_beep_bytes"] == 160
    assert m2.report()["message_bytes"] == 320 and m2.report()["message_replies"] == 1
    assert m2.report()["first_message_audio_ms"] == 10


def test_a_person_on_hold_keeps_waiting_for_the_reply():
    conv = Conversation(CallScript(turns=1, utterance_ms=20, lead_ms=0, reply_timeout_ms=100), Playback(), 0)
    assert conv.tick(0) == 1 and conv.phase is Phase.WAIT
    conv.hold(40_000)
    conv.resume(1_040_000)  # a second on hold: the 100 ms reply timeout has not run out
    assert conv.tick(1_080_000) == SILENT and conv.phase is Phase.WAIT  # deadline moved to 1.1 s
    assert conv.tick(1_100_000) is None and conv.phase is Phase.FAILED
