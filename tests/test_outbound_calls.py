"""Outbound calls end to end: real processes (control, edge, worker, the Deepgram emulator, the
Twilio REST emulator), real sockets, real Redis. Control places each call through the emulator's
Calls API; the emulator calls back (signed), fetches control's TwiML and streams the scripted
callee to the edge; the worker holds the conversation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

import httpx
import orjson
import pytest
from outbound_system import FROM, FUNCTION_SECRET, PERSON, TWILIO_TOKEN, OutboundSystem
from twilio.request_validator import RequestValidator
from twilio.rest.api.v2010.account.call import CallList

from switchboard import webhook_signature
from switchboard.keys import Keys
from switchboard_dev import procs  # the processes: this module is end-to-end

pytestmark = pytest.mark.timeout(300)

PERSON_NUMBER = "+14155550101"


@pytest.fixture(scope="module")
def sb(redis_url, tmp_path_factory):
    system = OutboundSystem(redis_url, "obc:", tmp_path_factory.mktemp("outbound-calls")).start()
    system.callee("default", PERSON)
    yield system
    system.stop()


class Hooks:
    """The user's status webhook: records what it is sent (plain http on loopback, allowed by the test's
    CONTROL_EGRESS_ALLOW)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hooks.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self, call_sid: str) -> list[dict]:
        return [orjson.loads(body) for _, body in self.received if orjson.loads(body).get("call_sid") == call_sid]


@pytest.fixture()
def hooks():
    server = Hooks()
    yield server
    server.server.shutdown()


def events_of(sb: OutboundSystem, call_sid: str) -> list[dict]:
    stream_sid = sb.call(call_sid)["stream_sid"]
    return sb.stack.events(stream_sid)


# --- a person answers ---------------------------------------------------------------------------


def test_a_person_answers_and_talks_byte_exact_and_the_lifecycle_is_recorded_and_forwarded(sb, hooks):
    number = "+14155550111"
    sb.callee(number, {**PERSON, "script": {**PERSON["script"], "turns": 2}})
    r = sb.place(number, context={"name": "Ada"}, status_webhook=hooks.url)
    assert r.status_code == 201, r.text
    placed = r.json()
    call_sid = placed["call_sid"]
    assert placed["status"] == "queued" and placed["from"] == FROM and placed["links"]["call"] == f"/v1/calls/{call_sid}"
    assert r.headers["location"] == f"/v1/calls/{call_sid}"
    ended = sb.emulated_call(call_sid)
    report = ended["report"]
    assert report["turns_completed"] == 2, report
    assert report["byte_exact_out"] is True and report["byte_exact_in"] is True, report
    assert report["warnings"] == {} and ended["status"] == "completed"
    detail = sb.wait_outcome(call_sid)
    outbound = detail["outbound"]
    assert detail["direction"] == "outbound" and outbound["to"] == number and outbound["from"] == FROM
    assert (outbound["status"], outbound["outcome"]) == ("completed", "completed")
    assert outbound["context"] == {"name": "Ada"} and outbound["answered_at"] and outbound["ended_at"]
    assert [line["role"] for line in detail["transcript"]] == ["user", "assistant", "user", "assistant"]
    procs.wait_until(lambda: len(hooks.events(call_sid)) >= 4, 10, "the status webhooks")
    statuses = [e["status"] for e in hooks.events(call_sid)]
    assert statuses == ["initiated", "ringing", "in-progress", "completed"]
    headers, body = hooks.received[-1]
    assert webhook_signature.verify(FUNCTION_SECRET, headers[webhook_signature.HEADER.lower()], body)
    assert orjson.loads(body)["outcome"] == "completed"
    assert sb.metric("switchboard_control_outbound_calls_total", 'outcome="completed"') >= 1


def test_the_request_twilio_receives_uses_only_its_documented_parameters_and_values(sb):
    number = "+14155550112"
    sb.callee(number, PERSON)
    since = max((e["id"] for e in sb.creates()), default=0)
    r = sb.place(number, machine_detection=True, ring_timeout_s=25, time_limit_s=600)
    assert r.status_code == 201, r.text
    (entry,) = sb.creates(since)
    assert entry["status"] == 201 and entry["unknown"] == [] and entry["notes"] == []
    assert entry["auth"]["kind"] == "api_key"
    form = entry["form"]
    # Twilio's official client, generated from Twilio's API definition: every parameter we send is one
    # of its form names, and each enumerated value is one its documentation lists.
    documented = set(re.findall(r'"([A-Z][A-Za-z]+)":', inspect.getsource(CallList._create)))
    assert set(form) <= documented, set(form) - documented
    doc = " ".join(inspect.getdoc(CallList.create).split())
    for param, value in (("machine_detection", "DetectMessageEnd"), ("async_amd", "true"), ("method", "POST"),
                         *(("status_callback_event", event) for event in form["StatusCallbackEvent"])):
        described = doc[doc.index(f":param {param}:"):][:400]
        assert f"`{value}`" in described, (param, value)
    assert form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    single = {k: v[0] for k, v in form.items()}
    assert single["To"] == number and single["From"] == FROM and single["Method"] == "POST"
    assert single["Url"].startswith(f"http://127.0.0.1:{sb.control_port}/twiml/outbound?ref=")
    assert single["StatusCallback"].startswith(f"http://127.0.0.1:{sb.control_port}/twilio/outbound/status?ref=")
    assert single["StatusCallbackMethod"] == "POST" and single["Timeout"] == "25" and single["TimeLimit"] == "600"
    assert single["MachineDetection"] == "DetectMessageEnd" and single["AsyncAmd"] == "true"
    assert single["AsyncAmdStatusCallback"].startswith(f"http://127.0.0.1:{sb.control_port}/twilio/outbound/amd?ref=")
    assert single["AsyncAmdStatusCallbackMethod"] == "POST" and single["MachineDetectionTimeout"] == "30"
    sb.wait_outcome(r.json()["call_sid"])


# --- answering machines -------------------------------------------------------------------------

GREETING = "Hello {{name|there}}, this is Ava from Example Motors."
VOICEMAIL = {"action": "leave_message", "message": "Hi {{name}}, your car is ready. Please call us back."}


def test_with_detection_a_person_is_greeted_only_after_the_human_verdict(sb):
    sb.profile("amd-greet", {"greeting": GREETING, "amd": {"enabled": True, "speech_end_threshold_ms": 500},
                             "voicemail": VOICEMAIL})
    number = "+14155550121"
    # The person's first words come after Twilio's verdict (lead 2.5 s; human after ~1.1 s + the hello).
    sb.callee(number, {**PERSON, "script": {**PERSON["script"], "lead_ms": 2500, "turns": 2}})
    r = sb.place(number, profile="amd-greet", context={"name": "Ada"})
    assert r.status_code == 201, r.text
    assert r.json()["machine_detection"] is True
    call_sid = r.json()["call_sid"]
    ended = sb.emulated_call(call_sid)
    report = ended["report"]
    assert ended["answered_by"] == "human" and report["turns_completed"] == 2, report
    assert report["byte_exact_out"] is True and report["warnings"] == {}, report
    detail = sb.wait_outcome(call_sid)
    assert detail["outbound"]["answered_by"] == "human" and detail["outbound"]["outcome"] == "completed"
    assert detail["outbound"]["amd_action"] == "greet" and detail["outbound"]["amd_ms"] == ended["amd"]["after_ms"]
    events = events_of(sb, call_sid)
    decision = next(e for e in events if e["type"] == "amd_decision")
    assert decision["action"] == "greet" and decision["answered_by"] == "human"
    said = [e for e in events if e["type"] == "transcript" and e["role"] == "assistant"]
    assert said[0]["content"] == "Hello Ada, this is Ava from Example Motors."  # the context filled in
    assert said[0]["ts"] >= decision["ts"]  # not a word before the verdict
    (session,) = sb.deepgram_sessions(call_sid)
    assert "greeting" not in session["settings"]["agent"]  # held back from Settings
    # Toward the agent: every byte the person sent after the verdict, in order, none damaged.
    withheld = decision["withheld_bytes"]
    assert withheld > 0 and session["audio"]["bytes"] == report["sent_audio_bytes"] - withheld
    assert session["caller_frames"]["out_of_order"] == 0 and session["caller_frames"]["corrupt"] == 0
    assert sb.metric("switchboard_control_amd_verdicts_total", 'answered_by="human"') >= 1


def test_a_voicemail_gets_the_message_after_the_beep_then_a_hang_up_with_outcome_voicemail(sb):
    sb.profile("amd-vm", {"greeting": GREETING, "amd": {"enabled": True}, "voicemail": VOICEMAIL})
    number = "+14155550122"
    sb.callee(number, {"kind": "voicemail", "ring_s": 0.2, "machine": {
        "lead_ms": 200, "greeting_ms": 1500, "gap_ms": 100, "beep_ms": 300, "record_ms": 8000}})
    r = sb.place(number, profile="amd-vm", context={"name": "Grace"})
    assert r.status_code == 201, r.text
    call_sid = r.json()["call_sid"]
    ended = sb.emulated_call(call_sid)
    machine = ended["report"]["machine"]
    assert ended["answered_by"] == "machine_end_beep"
    assert machine["heard_before_beep_bytes"] == 0, machine  # the greeting never played over the machine's
    assert machine["message_bytes"] > 0 and machine["message_replies"] == 1, machine
    assert ended["report"]["byte_exact_out"] is True
    assert ended["end_reason"] == "twiml-hangup"  # we hung up after the message, not the machine
    detail = sb.wait_outcome(call_sid)
    assert detail["outbound"]["outcome"] == "voicemail" and detail["outbound"]["amd_action"] == "leave_message"
    said = [line["content"] for line in detail["transcript"] if line["role"] == "assistant"]
    assert said == ["Hi Grace, your car is ready. Please call us back."]
    (session,) = sb.deepgram_sessions(call_sid)
    assert "greeting" not in session["settings"]["agent"] and session["audio"]["bytes"] == 0  # heard nothing
    assert sb.metric("switchboard_control_outbound_calls_total", 'outcome="voicemail"') >= 1
    assert sb.metric("switchboard_control_amd_actions_total", 'action="leave_message"') >= 1


def test_a_machine_with_hang_up_behaviour_is_left_at_once_and_a_fax_as_configured(sb):
    sb.profile("amd-hangup", {"greeting": GREETING, "amd": {"enabled": True, "on_fax": "hang_up"},
                              "voicemail": {"action": "hang_up"}})
    machine, fax = "+14155550123", "+14155550124"
    sb.callee(machine, {"kind": "voicemail", "ring_s": 0.2, "machine": {"greeting_ms": 800, "beep_ms": 200}})
    sb.callee(fax, {"kind": "fax", "ring_s": 0.2, "machine": {"record_ms": 8000}})
    sids = [sb.place(n, profile="amd-hangup").json()["call_sid"] for n in (machine, fax)]
    outcomes = [sb.wait_outcome(sid)["outbound"] for sid in sids]
    assert [(o["outcome"], o["amd_action"]) for o in outcomes] == [("voicemail", "hang_up"), ("amd_fax", "hang_up")]
    assert sb.emulated_call(sids[0])["report"]["machine"]["message_bytes"] == 0


# --- calls that never connect -------------------------------------------------------------------


def reserved(sb: OutboundSystem) -> list[bytes]:
    with sb.redis() as client:
        return client.zrange(Keys(sb.prefix).admission_reserved(), 0, -1)


@pytest.mark.parametrize(("kind", "status"), [("busy", "busy"), ("no_answer", "no-answer"), ("failed", "failed")])
def test_a_call_that_never_connects_ends_with_its_status_and_gives_its_slot_back_at_once(sb, kind, status):
    number = {"busy": "+14155550131", "no_answer": "+14155550132", "failed": "+14155550133"}[kind]
    sb.callee(number, {"kind": kind, "ring_s": 0.3})
    r = sb.place(number, ring_timeout_s=5)
    call_sid = r.json()["call_sid"]
    assert call_sid.encode() in reserved(sb)  # a worker slot is held while it rings
    sb.emulated_call(call_sid, wait="ended")
    detail = sb.wait_outcome(call_sid)
    assert detail["state"] == "ended" and detail["outbound"]["outcome"] == status
    assert call_sid.encode() not in reserved(sb)  # at once, not when the reservation lapses
    assert sb.metric("switchboard_control_outbound_calls_total", f'outcome="{status}"') >= 1


def test_a_call_whose_final_status_callback_is_lost_is_looked_up_at_twilio_and_ends(sb):
    # Twilio does not retry a status callback: one lost (control restarting, a proxy closing an idle
    # connection) must not leave the call ringing here with its slot held.
    number = "+14155550134"
    sb.callee(number, {"kind": "no_answer", "ring_s": 0.3})
    r = sb.emulator.post("/_emulator/faults", json={"lose_callback": "status", "call_status": "no-answer"})
    assert r.status_code == 200 and r.json()["lost_callbacks"][0]["remaining"] == 1, r.text
    lookups_before = sb.metric("switchboard_control_outbound_lookups_total", 'result="ended"')
    call_sid = sb.place(number, ring_timeout_s=5).json()["call_sid"]
    assert sb.emulated_call(call_sid, wait="ended")["status"] == "no-answer"
    sent = sb.emulator.get("/_emulator/callbacks", params={"call_sid": call_sid}).json()
    finals = [c for c in sent["callbacks"] if c["params"].get("CallStatus") == "no-answer"]
    assert len(finals) == 1 and finals[0]["status"] is None and "lost" in finals[0]["error"], finals
    assert sb.call(call_sid)["outbound"]["status"] == "ringing"  # what control knew when the callback was lost
    # Looked up once its ring time plus Twilio's dialling margin (10 s) has passed, OUTBOUND_CHECK_S=2 apart.
    detail = sb.wait_outcome(call_sid, timeout=40)
    assert detail["state"] == "ended" and detail["outbound"]["outcome"] == "no-answer"
    assert call_sid.encode() not in reserved(sb)
    assert sb.metric("switchboard_control_outbound_lookups_total", 'result="ended"') == lookups_before + 1
    fetches = sb.emulator.get("/_emulator/requests", params={"endpoint": "call"}).json()["requests"]
    assert any(e["method"] == "GET" and call_sid in e["path"] for e in fetches), fetches


def test_a_ringing_call_can_be_canceled_and_is_listed_from_queued_on(sb):
    number = "+14155550141"
    sb.callee(number, {**PERSON, "ring_s": 20})
    call_sid = sb.place(number).json()["call_sid"]
    listed = sb.api.get("/v1/calls").json()
    mine = [c for c in listed["calls"] if c["call_sid"] == call_sid]
    assert len(mine) == 1 and mine[0]["state"] == "dialing" and mine[0]["direction"] == "outbound"
    assert mine[0]["outbound"]["status"] in ("queued", "initiated", "ringing")
    sb.emulated_call(call_sid, wait="ringing")
    r = sb.api.post(f"/v1/calls/{call_sid}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
    assert sb.emulated_call(call_sid, wait="ended")["status"] == "canceled"
    detail = sb.wait_outcome(call_sid)
    assert detail["outbound"]["outcome"] == "canceled" and call_sid.encode() not in reserved(sb)
    assert sb.api.post(f"/v1/calls/{call_sid}/cancel").status_code == 409
    assert call_sid not in [c["call_sid"] for c in sb.api.get("/v1/calls").json()["calls"]]
    assert sb.api.post("/v1/calls/CA0000000000000000000000000000dead/cancel").status_code == 404


def test_the_live_events_follow_the_call_from_queued_to_its_end(sb):
    sb.profile("amd-sse", {"greeting": GREETING, "amd": {"enabled": True, "speech_end_threshold_ms": 500}})
    number = "+14155550142"
    sb.callee(number, {**PERSON, "script": {**PERSON["script"], "lead_ms": 2500}})
    call_sid = sb.place(number, profile="amd-sse").json()["call_sid"]
    seen: list[dict] = []
    with sb.api.stream("GET", f"/v1/calls/{call_sid}/events", timeout=40) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(orjson.loads(line[6:]))
    kinds = [(e["type"], e.get("status") or e.get("role") or e.get("answered_by") or "") for e in seen]
    statuses = [s for t, s in kinds if t == "outbound_status"]
    assert statuses[:2] == ["queued", "initiated"] and statuses[-1] == "completed", kinds
    order = [t for t, _ in kinds]
    assert order.index("amd_verdict") < order.index("amd_decision") < order.index("transcript"), kinds
    assert order.index("transcript") < len(order) - 1 and seen[-1].get("final") is True


# --- refusals -----------------------------------------------------------------------------------


def test_numbers_outside_the_allow_list_or_premium_rate_are_refused_before_twilio_hears_of_them(sb):
    since = max((e["id"] for e in sb.creates()), default=0)
    before = sb.metric("switchboard_control_outbound_refused_total")
    for to, status, reason in (("+442071838750", 403, "outside the allowed prefixes"),
                               ("+19005550101", 403, "premium-rate"),
                               ("+1415", 422, None)):
        r = sb.place(to)
        assert r.status_code == status, r.text
        if reason:
            assert reason in r.json()["detail"]
    r = sb.api.post("/v1/campaigns", json={"destinations": [{"to": "+14155550150"}, {"to": "+447700900123"}]})
    assert r.status_code == 403 and "destination 1" in r.json()["detail"], r.text
    assert sb.api.get("/v1/campaigns").json()["total"] == 0
    assert sb.creates(since) == []
    assert sb.metric("switchboard_control_outbound_refused_total") >= before + 3
    assert sb.metric("switchboard_control_outbound_refused_total", 'reason="premium_rate"') >= 1


def test_twilios_invalid_number_and_rate_limit_are_clear_errors(sb):
    r = sb.place("+15551234567")  # inside +1, but no such number: Twilio's 21211
    assert r.status_code == 422 and "21211" in r.json()["detail"], r.text
    r = sb.emulator.post("/_emulator/faults", json={"status": 429, "count": 3, "path_contains": "Calls",
                                                    "retry_after_s": 30})
    assert r.status_code == 200
    r = sb.place("+14155550151")
    assert r.status_code == 429 and r.headers["retry-after"] == "30", r.text
    assert "rate-limiting" in r.json()["detail"]
    sb.emulator.delete("/_emulator/faults")
    assert not [m for m in reserved(sb) if re.fullmatch(rb"[0-9a-f]{32}", m)]  # the refused calls' slots are free
    assert sb.metric("switchboard_control_outbound_refused_total", 'reason="twilio_invalid_number"') >= 1
    assert sb.metric("switchboard_control_outbound_refused_total", 'reason="twilio_rate_limited"') >= 1


def signed(url: str, params: dict[str, str], token: str = TWILIO_TOKEN) -> str:
    payload = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def test_unsigned_or_wrongly_signed_callbacks_are_refused_and_change_nothing(sb):
    number = "+14155550161"
    sb.callee(number, {**PERSON, "ring_s": 20})
    call_sid = sb.place(number).json()["call_sid"]
    sb.emulated_call(call_sid, wait="ringing")
    with sb.redis() as client:
        ref = client.get(f"{sb.prefix}outbound:callsid:{call_sid}").decode()
    base = f"http://127.0.0.1:{sb.control_port}"
    form = {"CallSid": call_sid, "CallStatus": "completed", "AccountSid": "AC" + "0" * 31 + "1"}
    before = sb.metric("switchboard_control_outbound_callbacks_total", 'result="bad_signature"')
    for path in ("/twilio/outbound/status", "/twilio/outbound/amd", "/twiml/outbound"):
        url = f"{base}{path}?ref={ref}"
        attempts = [
            {},  # unsigned
            {"X-Twilio-Signature": signed(url, form, "another-token")},  # wrong key
            {"X-Twilio-Signature": signed(f"{base}{path}?ref={'0' * 32}", form)},  # signed for another call
            {"X-Twilio-Signature": signed(url, {**form, "CallStatus": "ringing"})},  # a field changed
        ]
        for headers in attempts:
            r = httpx.post(url, content=urlencode(form), headers={
                "Content-Type": "application/x-www-form-urlencoded", **headers})
            assert r.status_code == 403, (path, headers, r.text)
    assert sb.call(call_sid)["outbound"]["status"] == "ringing"  # nothing applied
    assert sb.metric("switchboard_control_outbound_callbacks_total", 'result="bad_signature"') == before + 12
    ok = httpx.post(f"{base}/twilio/outbound/status?ref={ref}", content=urlencode({**form, "CallStatus": "ringing"}),
                    headers={"Content-Type": "application/x-www-form-urlencoded",
                             "X-Twilio-Signature": signed(f"{base}/twilio/outbound/status?ref={ref}",
                                                          {**form, "CallStatus": "ringing"})})
    assert ok.status_code == 204  # a correctly signed (repeated) callback is taken, and changes nothing
    sb.api.post(f"/v1/calls/{call_sid}/cancel")
    sb.wait_outcome(call_sid)
    assert RequestValidator(TWILIO_TOKEN).validate(f"{base}/x", {"a": "b"}, signed(f"{base}/x", {"a": "b"}))


def test_a_status_webhook_that_could_never_be_sent_is_refused_at_once(sb):
    for url, reason in (("ftp://example.com/hook", "http"), ("http://10.1.2.3/hook", "10.1.2.3")):
        r = sb.place("+14155550171", status_webhook=url)
        assert r.status_code == 422 and reason in r.text, r.text
    assert sb.metric("switchboard_control_outbound_refused_total", 'reason="webhook_refused"') >= 1


def test_the_api_schema_documents_outbound_calls_and_campaigns(sb):
    spec = sb.api.get("/openapi.json").json()
    paths = spec["paths"]
    for path, method in (("/v1/calls", "post"), ("/v1/calls/{call_sid}/cancel", "post"), ("/v1/campaigns", "post"),
                         ("/v1/campaigns", "get"), ("/v1/campaigns/{campaign_id}", "get"),
                         ("/v1/campaigns/{campaign_id}/destinations", "get"),
                         ("/v1/campaigns/{campaign_id}/pause", "post"), ("/v1/campaigns/{campaign_id}/resume", "post"),
                         ("/v1/campaigns/{campaign_id}/cancel", "post"), ("/twiml/outbound", "post"),
                         ("/twilio/outbound/status", "post"), ("/twilio/outbound/amd", "post")):
        assert method in paths[path], (path, method)
    place = paths["/v1/calls"]["post"]
    assert place["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PlaceCall")
    assert {"403", "422", "429", "502", "503"} <= set(place["responses"])
    assert "security" not in paths["/twilio/outbound/status"]["post"]  # Twilio's signature instead
    assert "OutboundView" in spec["components"]["schemas"] and "CampaignView" in spec["components"]["schemas"]
