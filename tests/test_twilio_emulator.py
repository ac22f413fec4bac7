"""Twilio REST emulator over real sockets, driven by Twilio's own Python client.

Calls are created, fetched, listed, updated and canceled with `twilio.rest.Client` pointed
at the emulator, so the emulator is proven to speak the API Twilio's client speaks; every
callback's signature is checked with Twilio's own RequestValidator.
"""

from __future__ import annotations

import asyncio
import email.utils
import json

import httpx
import pytest
from twilio.base.exceptions import TwilioRestException

from switchboard_twilio_emulator.config import EmulatorConfig
from switchboard_twilio_emulator.server import TwilioEmulator

from twilio_fakes import Receiver

TOKEN = "test-auth-token-123"
KEY_SID, KEY_SECRET = "SK" + "5" * 32, "key-secret"
TO, FROM = "+14155550123", "+14155550100"
HANGUP = "<Response><Say>Hello</Say><Hangup/></Response>"


def config(**overrides) -> EmulatorConfig:
    values = {"port": 0, "auth_token": TOKEN, "api_keys": f"{KEY_SID}:{KEY_SECRET}", "setup_ms": 20,
              "say_ms_per_char": 2, "log_level": "WARNING"}
    values.update(overrides)
    return EmulatorConfig(**values)


def person(ring_s: float = 0.1, **more) -> str:
    return json.dumps({"kind": "person", "ring_s": ring_s, **more})


@pytest.fixture()
async def app():
    async with Receiver({"/twiml": HANGUP}) as receiver:
        yield receiver


@pytest.fixture()
async def twilio():
    async with TwilioEmulator(config(), [f"{TO}={person()}"]) as emulator:
        yield emulator


async def create(client, **kwargs):
    return await asyncio.to_thread(client.calls.create, **kwargs)


async def rest_error(fn, *args, **kwargs) -> TwilioRestException:
    with pytest.raises(TwilioRestException) as info:
        await asyncio.to_thread(fn, *args, **kwargs)
    return info.value


# --- the happy path -----------------------------------------------------------------------------


async def test_a_created_call_reports_initiated_ringing_answered_completed_in_order_signed(twilio, app):
    client = twilio.client()
    call = await create(client, to=TO, from_=FROM, url=app.url("/twiml"), status_callback=app.url("/status"),
                        status_callback_event=["initiated", "ringing", "answered", "completed"])
    assert call.status == "queued" and call.direction == "outbound-api" and call.sid.startswith("CA")
    assert call.to == TO and call._from == FROM and call.uri.endswith(f"/Calls/{call.sid}.json")
    await twilio.wait_call(call.sid, "report")
    statuses = app.at("/status")
    assert [h.form["CallStatus"] for h in statuses] == ["initiated", "ringing", "in-progress", "completed"]
    assert [h.form["SequenceNumber"] for h in statuses] == ["0", "1", "2", "3"]
    for hit in statuses:
        assert hit.signed_ok(TOKEN), hit.form
        assert hit.headers["user-agent"] == "TwilioProxy/1.1"
        assert hit.form["CallbackSource"] == "call-progress-events"
        assert hit.form["CallSid"] == call.sid and hit.form["AccountSid"] == twilio.config.account_sid
        assert hit.form["Direction"] == "outbound-api" and hit.form["ApiVersion"] == "2010-04-01"
        assert email.utils.parsedate_to_datetime(hit.form["Timestamp"]).tzinfo is not None
    completed = statuses[-1].form
    assert completed["CallDuration"] == "0" and completed["Duration"] == "0" and completed["SipResponseCode"] == "200"
    assert "CallDuration" not in statuses[2].form
    fetch = app.at("/twiml")[0]
    assert fetch.signed_ok(TOKEN) and fetch.form["CallStatus"] == "in-progress" and fetch.form["To"] == TO
    assert not app.at("/twiml")[0].signed_ok("another-token")
    fetched = await asyncio.to_thread(client.calls(call.sid).fetch)
    assert fetched.status == "completed" and fetched.duration == "0" and fetched.start_time is not None
    assert [h["say"] for h in twilio.call(call.sid).heard] == ["Hello"]


async def test_only_completed_is_sent_by_default_and_get_callbacks_sign_the_query(twilio, app):
    client = twilio.client()
    call = await create(client, to=TO, from_=FROM, url=app.url("/twiml"), method="GET",
                        status_callback=app.url("/status?tenant=a"), status_callback_method="GET")
    await twilio.wait_call(call.sid, "report")
    (status,) = app.at("/status")
    assert status.method == "GET" and status.form["CallStatus"] == "completed" and status.form["tenant"] == "a"
    assert status.signed_ok(TOKEN)
    (fetch,) = app.at("/twiml")
    assert fetch.method == "GET" and fetch.form["CallSid"] == call.sid and fetch.signed_ok(TOKEN)


async def test_an_api_key_authenticates_and_the_account_token_still_signs(twilio, app):
    client = twilio.client(KEY_SID, KEY_SECRET)
    call = await create(client, to=TO, from_=FROM, twiml=HANGUP, status_callback=app.url("/status"))
    await twilio.wait_call(call.sid, "report")
    assert app.at("/status")[0].signed_ok(TOKEN)
    (entry,) = [e for e in twilio.core.requests.entries() if e["endpoint"] == "calls"]
    assert entry["auth"] == {"ok": True, "kind": "api_key", "username": KEY_SID}
    assert "twiml-inline" in twilio.call(call.sid).timeline.names()


async def test_calls_list_filters_and_pages_like_twilio(twilio):
    client = twilio.client()
    sids = [(await create(client, to=TO, from_=FROM, twiml=HANGUP)).sid for _ in range(3)]
    listed = await asyncio.to_thread(client.calls.list, to=TO, page_size=2)
    assert sorted(c.sid for c in listed) == sorted(sids)
    assert await asyncio.to_thread(client.calls.list, to="+14155550777") == []


# --- refusals -----------------------------------------------------------------------------------


async def test_wrong_credentials_are_401_20003_and_logged_without_the_secret(twilio):
    err = await rest_error(twilio.client(twilio.config.account_sid, "wrong").calls.create, to=TO, from_=FROM,
                           twiml=HANGUP)
    assert (err.status, err.code) == (401, 20003)
    err = await rest_error(twilio.client(KEY_SID, "wrong").calls("CA" + "1" * 32).fetch)
    assert (err.status, err.code) == (401, 20003)
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{twilio.url}/2010-04-01/Accounts/{twilio.config.account_sid}/Calls.json")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert r.json() == {"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003",
                        "status": 401}
    logged = json.dumps(twilio.core.requests.entries())
    assert "wrong" not in logged.replace('"wrong_secret"', "")
    assert twilio.core.calls == {}


async def test_an_invalid_to_is_21211_and_an_unknown_call_is_20404(twilio):
    client = twilio.client()
    err = await rest_error(client.calls.create, to="+15551234567", from_=FROM, twiml=HANGUP)
    assert (err.status, err.code) == (400, 21211) and "+15551234567" in err.msg
    err = await rest_error(client.calls("CA" + "0" * 32).fetch)
    assert (err.status, err.code) == (404, 20404)
    err = await rest_error(client.calls.create, to=TO, from_=FROM, twiml=HANGUP, machine_detection="Sometimes")
    assert (err.status, err.code) == (400, 20001) and "MachineDetection" in err.msg


async def test_an_unverified_caller_id_is_21210():
    async with TwilioEmulator(config(caller_ids="+14155550100")) as twilio:
        err = await rest_error(twilio.client().calls.create, to=TO, from_="+14155550142", twiml=HANGUP)
    assert (err.status, err.code) == (400, 21210)


async def test_missing_to_is_21201_and_unknown_parameters_are_recorded(twilio):
    base = f"{twilio.url}/2010-04-01/Accounts/{twilio.config.account_sid}/Calls.json"
    auth = (twilio.config.account_sid, TOKEN)
    async with httpx.AsyncClient() as http:
        r = await http.post(base, data={"From": FROM, "Twiml": HANGUP}, auth=auth)
        assert r.status_code == 400 and r.json()["code"] == 21201
        r = await http.post(base, data={"To": TO, "From": FROM, "Twiml": HANGUP, "Ringtone": "jazz"}, auth=auth)
        assert r.status_code == 201
    entries = twilio.core.requests.entries(endpoint="calls")
    assert entries[0]["code"] == 21201 and entries[1]["unknown"] == ["Ringtone"]
    assert entries[1]["form"]["Ringtone"] == ["jazz"]
    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"{twilio.url}/_emulator/stats")).json()
    assert stats["unknown_parameters"] == ["Ringtone"] and stats["refusals"] == 1


async def test_over_the_cps_limit_reject_mode_answers_429_20429_with_retry_after():
    async with TwilioEmulator(config(cps=1, over_cps="reject")) as twilio:
        client = twilio.client()
        await create(client, to=TO, from_=FROM, twiml=HANGUP)
        err = await rest_error(client.calls.create, to=TO, from_=FROM, twiml=HANGUP)
        assert (err.status, err.code) == (429, 20429)
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{twilio.url}/2010-04-01/Accounts/{twilio.config.account_sid}/Calls.json",
                                data={"To": TO, "From": FROM, "Twiml": HANGUP}, auth=(twilio.config.account_sid, TOKEN))
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert twilio.core.metrics.refusals.labels("20429")._value.get() == 2


async def test_over_the_cps_limit_twilio_queues_the_calls_and_dials_them_one_slot_apart():
    async with TwilioEmulator(config(cps=4)) as twilio:
        client = twilio.client()
        sids = [(await create(client, to=TO, from_=FROM, twiml=HANGUP)).sid for _ in range(3)]
        calls = [await twilio.wait_call(sid, "ended") for sid in sids]
    queued = sorted(c.rec.queue_time_ms for c in calls)  # the slots Twilio gave them: 250 ms apart
    assert queued[0] <= 50 and 150 <= queued[1] <= 260 and 400 <= queued[2] <= 510, queued
    starts = sorted(c.rec.start_time for c in calls)
    assert starts[2] - starts[0] >= 0.45, starts


async def test_injected_faults_answer_twilio_shaped_5xx_then_clear(twilio):
    client = twilio.client()
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{twilio.url}/_emulator/faults", json={"status": 503, "count": 1, "path_contains": "Calls"})
        assert r.status_code == 200
    err = await rest_error(client.calls.create, to=TO, from_=FROM, twiml=HANGUP)
    assert (err.status, err.code) == (503, 20503)
    assert (await create(client, to=TO, from_=FROM, twiml=HANGUP)).status == "queued"


# --- outcomes -----------------------------------------------------------------------------------


async def test_busy_no_answer_and_failed_callees_end_with_their_status(app):
    callees = ['+14155550111={"kind": "busy", "ring_s": 0.1}', '+14155550112={"kind": "no_answer"}',
               '+14155550113={"kind": "failed", "sip_code": 503}']
    async with TwilioEmulator(config(cps=50), callees) as twilio:
        client = twilio.client()
        sids = {}
        for to in ("+14155550111", "+14155550112", "+14155550113"):
            call = await create(client, to=to, from_=FROM, url=app.url("/twiml"), timeout=1,
                                status_callback=app.url(f"/status/{to}"),
                                status_callback_event=["initiated", "ringing", "completed"])
            sids[to] = call.sid
        ended = {to: await twilio.wait_call(sid, "report") for to, sid in sids.items()}
    assert {to: str(c.rec.status) for to, c in ended.items()} == {
        "+14155550111": "busy", "+14155550112": "no-answer", "+14155550113": "failed"}
    assert app.at("/twiml") == []  # nobody answered: no TwiML was fetched
    no_answer = ended["+14155550112"]
    assert 0.95 <= no_answer.rec.end_time - no_answer.rec.start_time < 2.5  # Timeout=1
    for to, codes in (("+14155550111", "486"), ("+14155550112", "487"), ("+14155550113", "503")):
        hits = app.at(f"/status/{to}")
        assert hits[-1].form["SipResponseCode"] == codes and hits[-1].form["CallDuration"] == "0"
        assert all(h.signed_ok(TOKEN) for h in hits)
    assert [h.form["CallStatus"] for h in app.at("/status/+14155550112")] == ["initiated", "ringing", "no-answer"]
    assert [h.form["CallStatus"] for h in app.at("/status/+14155550111")] == ["initiated", "busy"]


async def test_canceling_a_ringing_call_ends_it_canceled_and_nothing_is_fetched(app):
    async with TwilioEmulator(config(), [f"{TO}={person(ring_s=10)}"]) as twilio:
        client = twilio.client()
        call = await create(client, to=TO, from_=FROM, url=app.url("/twiml"), status_callback=app.url("/status"),
                            status_callback_event=["initiated", "ringing", "answered", "completed"])
        await twilio.wait_call(call.sid, "ringing")
        updated = await asyncio.to_thread(client.calls(call.sid).update, status="canceled")
        assert updated.status == "canceled"
        await twilio.wait_call(call.sid, "report")
    assert [h.form["CallStatus"] for h in app.at("/status")] == ["initiated", "ringing", "canceled"]
    assert app.at("/twiml") == []


async def test_canceling_an_answered_call_changes_nothing_but_completed_hangs_it_up(app):
    app.answers["/twiml"] = "<Response><Pause length='30'/></Response>"
    async with TwilioEmulator(config(), [f"{TO}={person()}"]) as twilio:
        client = twilio.client()
        call = await create(client, to=TO, from_=FROM, url=app.url("/twiml"))
        await twilio.wait_for(lambda: "Pause" in json.dumps(twilio.call(call.sid).timeline.events))
        assert (await asyncio.to_thread(client.calls(call.sid).update, status="canceled")).status == "in-progress"
        assert (await asyncio.to_thread(client.calls(call.sid).update, status="completed")).status == "completed"
        err = await rest_error(client.calls(call.sid).update, twiml=HANGUP)
        assert twilio.call(call.sid).end_reason == "completed-over-rest"
    assert (err.status, err.code) == (400, 21220)


async def test_an_unfetchable_twiml_url_says_the_application_error_and_hangs_up(app):
    app.status_for["/twiml"] = 500
    async with TwilioEmulator(config(), [f"{TO}={person()}"]) as twilio:
        call = await create(twilio.client(), to=TO, from_=FROM, url=app.url("/twiml"))
        ended = await twilio.wait_call(call.sid, "ended")
    assert ended.end_reason == "application-error-11200"
    assert ended.heard[0]["say"].startswith("We are sorry, an application error has occurred")


# --- the load generator and the process ---------------------------------------------------------


async def test_the_load_generator_places_a_paced_campaign_and_collects_every_outcome():
    from switchboard_twilio_emulator.load import Campaign, run_campaign

    numbers = ['+14155550131={"kind": "person", "ring_s": 0.1}', '+14155550132={"kind": "busy", "ring_s": 0.1}',
               '+14155550133={"kind": "voicemail", "ring_s": 0.1, "machine": {"greeting_ms": 300, "record_ms": 500}}']
    async with TwilioEmulator(config(cps=50), numbers) as twilio:
        campaign = Campaign(twilio.url, ("+14155550131", "+14155550132", "+14155550133"), FROM, twiml=HANGUP,
                            count=6, cps=4, concurrency=2, account_sid=twilio.config.account_sid, password=TOKEN,
                            machine_detection="DetectMessageEnd", wait_s=20)
        report = (await run_campaign(campaign)).to_dict()
    assert report["placed"] == 6 and report["refused"] == 0
    assert report["outcomes"] == {"completed": 4, "busy": 2}
    assert report["answered_by"] == {"human": 2, "machine_end_beep": 2}  # synchronous AMD: decided before the TwiML
    creates = report["emulator"]["creates"]
    assert creates["mean_per_second"] <= 4.4 and creates["min_interval_s"] >= 0.25 - 0.1  # jitter on arrival
    assert report["emulator"]["calls"]["max_concurrent"] <= 2
    assert {c["to"] for c in report["calls"]} == {"+14155550131", "+14155550132", "+14155550133"}


def test_the_console_entry_point_serves_until_sigterm(tmp_path):
    import signal
    import subprocess
    import sys
    import urllib.request

    callees = tmp_path / "callees.json"
    callees.write_text(json.dumps({"default": {"kind": "busy"}, TO: {"kind": "voicemail"}}))
    proc = subprocess.Popen([sys.executable, "-m", "switchboard_twilio_emulator", "--port", "0", "--callees",
                             str(callees), "--log-level", "WARNING"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "listening on http://127.0.0.1:" in line, line
        base = line.rsplit(" ", 1)[1].strip()
        with urllib.request.urlopen(f"{base}/_emulator/callees", timeout=5) as r:
            data = json.loads(r.read())
        assert data["default"]["kind"] == "busy" and data["numbers"][TO]["kind"] == "voicemail"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    bad = subprocess.run([sys.executable, "-m", "switchboard_twilio_emulator", "--callee", "+1415=nope"],
                         check=False, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "callee" in bad.stderr


async def test_no_request_however_malformed_gets_a_500_and_every_refusal_is_twilio_shaped():
    import random
    from urllib.parse import quote_from_bytes

    rng = random.Random(1414)
    names = ["To", "From", "Url", "Twiml", "Method", "Timeout", "StatusCallback", "StatusCallbackEvent",
             "StatusCallbackMethod", "MachineDetection", "MachineDetectionTimeout", "AsyncAmd", "Status",
             "AsyncAmdStatusCallback", "SendDigits", "TimeLimit", "Label", "EarlyMedia", "Muted", "Hold",
             "PageSize", "Page", "Beep", "\x00", "ü"]
    values = ["", " ", "+14155550123", "+15551234567", "true", "TRUE", "-1", "99999999999999999999", "GET", "post",
              "http://127.0.0.1:9/x", "https://", "<Response><Hangup/></Response>", "<Response>", "Enable",
              "completed", "canceled", "initiated ringing", "\udcff", "\u202e", "x" * 5000, "1.5", "0"]
    async with TwilioEmulator(config(cps=1000, default_callee='{"kind": "busy", "ring_s": 0}')) as twilio:
        base = f"{twilio.url}/2010-04-01/Accounts/{twilio.config.account_sid}"
        auth = (twilio.config.account_sid, TOKEN)
        paths = ["/Calls.json", "/Calls/CA" + "0" * 32 + ".json", "/Conferences/room/Participants.json",
                 "/Conferences/CF" + "0" * 32 + ".json", "/Conferences/room/Participants/x.json", "/Nope.json"]
        async with httpx.AsyncClient(timeout=10) as http:
            for _ in range(200):
                form = [(rng.choice(names), rng.choice(values)) for _ in range(rng.randint(0, 8))]
                body = "&".join(quote_from_bytes(k.encode("utf-8", "surrogatepass")) + "="
                                + quote_from_bytes(v.encode("utf-8", "surrogatepass")) for k, v in form).encode()
                method = rng.choice(["GET", "POST", "POST", "DELETE", "PUT"])
                r = await http.request(method, base + rng.choice(paths), content=body, auth=auth,
                                       headers={"Content-Type": "application/x-www-form-urlencoded"})
                assert r.status_code < 500, (method, form, r.text)
                if r.status_code >= 400:
                    err = r.json()
                    assert set(err) == {"code", "message", "more_info", "status"} and err["status"] == r.status_code
            r = await http.post(base + "/Calls.json", content=b"\xff\xfe" * 100, auth=auth)
            assert r.status_code == 400 and r.json()["code"] == 21201
            r = await http.post(base + "/Calls.json", content=b"To=" + b"1" * 70_000, auth=auth)
            assert r.status_code == 400 and "larger than" in r.json()["message"]


# --- the admin API --------------------------------------------------------------------------------


async def test_callees_are_scripted_over_the_admin_api_with_one_shot_overrides_first(twilio, app):
    number = "+14155550150"
    async with httpx.AsyncClient(base_url=twilio.url) as http:
        r = await http.put(f"/_emulator/callees/{number}", json={"kind": "person", "ring_s": 0.1})
        assert r.status_code == 200 and r.json()["kind"] == "person"
        for spec in ({"kind": "busy", "ring_s": 0.1}, {"kind": "no_answer"}):
            assert (await http.post(f"/_emulator/callees/{number}/next", json=spec)).status_code == 200
        assert (await http.get(f"/_emulator/callees/{number}")).json()["kind"] == "busy"
        bad = await http.put(f"/_emulator/callees/{number}", json={"kind": "robot"})
        assert bad.status_code == 400 and "kind" in bad.json()["error"]
        assert (await http.put(f"/_emulator/callees/{number}", content=b"{")).status_code == 400
        client = twilio.client()
        sids = [(await create(client, to=number, from_=FROM, url=app.url("/twiml"), timeout=1)).sid for _ in range(3)]
        statuses = [str((await twilio.wait_call(sid, "ended")).rec.status) for sid in sids]
        assert statuses == ["busy", "no-answer", "completed"]
        r = await http.get(f"/_emulator/calls/{sids[2]}", params={"wait": "report", "timeout_s": "5"})
        detail = r.json()
        assert detail["wait_timed_out"] is False and detail["resource"]["sid"] == sids[2]
        assert "answered" in [e.get("progress") for e in detail["timeline"]]
        assert (await http.get("/_emulator/calls/CAnope")).status_code == 404
        assert (await http.get(f"/_emulator/calls/{sids[2]}", params={"wait": "soon"})).status_code == 400
        callbacks = (await http.get("/_emulator/callbacks", params={"call_sid": sids[2]})).json()["callbacks"]
        assert [c["kind"] for c in callbacks] == ["twiml"] and callbacks[0]["status"] == 200
        assert (await http.delete(f"/_emulator/callees/{number}")).json() == {"removed": True}
        assert (await http.post("/_emulator/reset")).json() == {"reset": True}
        assert (await http.get("/_emulator/requests")).json() == {"requests": []}
        metrics = (await http.get("/metrics")).text
    assert 'switchboard_twilio_emulator_calls_total{direction="outbound-api",status="busy"} 1.0' in metrics
