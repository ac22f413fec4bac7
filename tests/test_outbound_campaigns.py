"""Campaigns end to end, measured from the Twilio REST emulator's own log: the pace and the
concurrency cap are never exceeded, every destination is accounted for, retries follow the
policy, a control restart mid-campaign loses and duplicates nothing, and a campaign whose
Twilio credentials are refused pauses itself saying why.

The emulator refuses any create over 2 per second (`--over-cps reject`): one 429 in its log
would mean the campaign dialled too fast.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections import Counter

import httpx
import pytest
from outbound_system import API_TOKEN, KEY_SID, OutboundSystem

from switchboard_dev import procs

pytestmark = pytest.mark.timeout(600)

NUMBERS = [f"+1415555{2000 + n}" for n in range(30)]
PERSON = {"kind": "person", "ring_s": 0.3,
          "script": {"turns": 1, "utterance_ms": 400, "lead_ms": 300, "reply_timeout_ms": 6000, "hold_ms": 100}}
VOICEMAIL = {"kind": "voicemail", "ring_s": 0.3,
             "machine": {"lead_ms": 100, "greeting_ms": 800, "gap_ms": 100, "beep_ms": 200, "record_ms": 6000}}


@pytest.fixture(scope="module")
def sb(redis_url, tmp_path_factory):
    system = OutboundSystem(redis_url, "obk:", tmp_path_factory.mktemp("outbound-campaigns"), capacity=10,
                            twilio_args=("--cps", "2", "--over-cps", "reject")).start()
    system.callee("default", PERSON)
    system.profile("campaign", {"greeting": "Hello {{name}}, a quick reminder from Example Motors.",
                                "amd": {"enabled": True, "speech_end_threshold_ms": 500},
                                "voicemail": {"action": "leave_message", "message": "Hi {{name}}, please call us."}})
    yield system
    system.stop()


def wait_campaign(sb: OutboundSystem, cid: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        view = sb.api.get(f"/v1/campaigns/{cid}").json()
        if view["state"] in ("completed", "canceled"):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"campaign {cid} not finished after {timeout} s: {view}")
        time.sleep(0.25)  # control is another process: its campaign state is polled


def results(sb: OutboundSystem, cid: str) -> list[dict]:
    return sb.api.get(f"/v1/campaigns/{cid}/destinations", params={"limit": 1000}).json()["destinations"]


def script(n: int) -> tuple[list[dict], list[str]]:
    """The callees destination n meets, attempt after attempt, and the outcomes they lead to."""
    if n % 10 == 3:
        return [{"kind": "busy", "ring_s": 0.3}, PERSON], ["busy", "completed"]  # retried once, then answers
    if n % 10 == 7:
        return [{"kind": "no_answer"}] * 2, ["no-answer", "no-answer"]  # retried once, no answer again
    if n == 9:
        return [{"kind": "failed", "ring_s": 0.1, "sip_code": 503}], ["failed"]  # failed: no retry (policy)
    if n % 5 == 1:
        return [VOICEMAIL], ["voicemail"]
    return [PERSON], ["completed"]


def test_a_campaign_of_30_holds_its_pace_and_concurrency_and_accounts_for_every_destination(sb):
    expected: dict[str, list[str]] = {}
    for n, number in enumerate(NUMBERS):
        callees, outcomes = script(n)
        for callee in callees:
            sb.callee(number, callee, once=True)
        expected[number] = outcomes
    since = max((e["id"] for e in sb.creates()), default=0)
    started = time.monotonic()
    r = sb.api.post("/v1/campaigns", json={
        "name": "thirty", "profile": "campaign", "concurrency": 5, "cps": 2, "ring_timeout_s": 5,
        "retry": {"busy": {"attempts": 2, "spacing_s": 1}, "no-answer": {"attempts": 2, "spacing_s": 1},
                  "failed": {"attempts": 1}},
        "destinations": [{"to": number, "context": {"name": f"Customer {n}"}} for n, number in enumerate(NUMBERS)],
    })
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    assert r.json()["total"] == 30 and r.json()["state"] == "running"
    view = wait_campaign(sb, cid, 240)
    took = time.monotonic() - started
    # Every destination is done, with the outcome and the attempts its callees led to.
    rows = results(sb, cid)
    assert len(rows) == 30 and all(row["status"] == "done" for row in rows), rows
    for row in rows:
        assert [a["outcome"] for a in row["attempts"]] == expected[row["to"]], row
        assert row["outcome"] == expected[row["to"]][-1]
    finals = Counter(outcomes[-1] for outcomes in expected.values())
    attempts = sum(len(outcomes) for outcomes in expected.values())
    assert view["counts"] == {"pending": 0, "in_flight": 0, "done": 30, "attempts": attempts,
                              "outcomes": dict(finals)}, view
    # The emulator's own measurements: never more than 2 creates in any second, 5 calls at once.
    creates = sb.creates(since)
    assert len(creates) == attempts and all(c["status"] == 201 for c in creates), Counter(c["status"] for c in creates)
    per_number = Counter(c["form"]["To"][0] for c in creates)
    assert per_number == {number: len(outcomes) for number, outcomes in expected.items()}  # none dialled twice
    arrivals = sorted(c["received_at"] for c in creates)
    closest_ms = min(b - a for a, b in itertools.pairwise(arrivals)) * 1000
    stats = sb.stats()
    assert stats["creates"]["max_in_any_second"] <= 2 and stats["refusals"] == 0, stats
    assert stats["calls"]["max_concurrent"] <= 5, stats
    # AMD: Twilio's decision time (the emulator's script) and how long each greeting waited for it.
    amd_ms, waited_ms = [], []
    for row in rows:
        for attempt in row["attempts"]:
            if attempt.get("answered_by"):
                detail = sb.call(attempt["call_sid"])["outbound"]
                amd_ms.append(detail["amd_ms"])
                if detail.get("amd_waited_ms") is not None:
                    waited_ms.append(detail["amd_waited_ms"])
    p95 = statistics.quantiles(amd_ms, n=20)[-1] if len(amd_ms) > 1 else amd_ms[0]
    print(f"\ncampaign: 30 destinations, {attempts} calls in {took:.1f} s; max creates in any second "
          f"{stats['creates']['max_in_any_second']} (cps 2), max concurrent {stats['calls']['max_concurrent']} "
          f"(cap 5); closest two creates {closest_ms:.0f} ms apart; outcomes {dict(finals)}; Twilio AMD decision p50 {statistics.median(amd_ms):.0f} ms "
          f"p95 {p95:.0f} ms; greeting waited p50 {statistics.median(waited_ms):.0f} ms "
          f"p95 {statistics.quantiles(waited_ms, n=20)[-1]:.0f} ms ({len(amd_ms)} verdicts)")


def test_a_control_restart_mid_campaign_loses_and_duplicates_no_destination(sb, tmp_path):
    numbers = [f"+1415555{3000 + n}" for n in range(12)]
    for number in numbers:
        sb.callee(number, PERSON)
    since = max((e["id"] for e in sb.creates()), default=0)
    r = sb.api.post("/v1/campaigns", json={"name": "restart", "concurrency": 3, "cps": 2, "ring_timeout_s": 5,
                                           "destinations": [{"to": n} for n in numbers]})
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    control = sb.stack.control_service
    procs.wait_until(lambda: len(sb.creates(since)) >= 4, 30, "four calls of the campaign")
    last_callback = max((c["id"] for c in sb.emulator.get("/_emulator/callbacks").json()["callbacks"]), default=0)
    control.kill()  # SIGKILL: no drain; callbacks Twilio sends meanwhile are lost
    time.sleep(2)  # let calls end while nobody listens (their status callbacks fail)
    control.start(sb.log_dir)
    view = wait_campaign(sb, cid, 180)
    rows = results(sb, cid)
    assert view["counts"]["done"] == 12 and view["counts"]["outcomes"] == {"completed": 12}, view
    assert all(len(row["attempts"]) == 1 for row in rows), rows
    per_number = Counter(c["form"]["To"][0] for c in sb.creates(since))
    assert per_number == dict.fromkeys(numbers, 1), per_number  # each dialled exactly once
    sent = sb.emulator.get("/_emulator/callbacks", params={"since": last_callback, "kind": "status"}).json()
    lost = [c for c in sent["callbacks"] if c["status"] is None and c["params"]["CallStatus"] == "completed"]
    assert lost, "no final status was lost while control was down: the test proved nothing"


def test_a_campaign_whose_twilio_credentials_are_refused_pauses_itself_and_calls_get_502(sb, redis_url, tmp_path):
    port = procs.free_port()
    env = {k: v for k, v in sb.stack.control_service.env.items() if k not in ("CONTROL_PORT",)}
    service = procs.control(redis_url, port, api_token=API_TOKEN, auth_token=env["TWILIO_AUTH_TOKEN"],
                            edge_public_url=env["EDGE_PUBLIC_URL"],
                            **{**env, "KEY_PREFIX": "obk-badkey:", "CONTROL_PUBLIC_URL": f"http://127.0.0.1:{port}",
                               "TWILIO_API_KEY_SID": KEY_SID, "TWILIO_API_KEY_SECRET": "not-the-secret",
                               "OUTBOUND_RATE_LIMIT_PER_MIN": "2", "CONTROL_ADMISSION": "off"})  # no workers here
    service.start(tmp_path)
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {API_TOKEN}"},
                           timeout=30)
        r = api.post("/v1/calls", json={"to": "+14155554001"})
        assert r.status_code == 502 and "credentials" in r.json()["detail"] and "20003" in r.json()["detail"], r.text
        r = api.post("/v1/campaigns", json={"destinations": [{"to": "+14155554002"}, {"to": "+14155554003"}]})
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        def paused() -> dict | None:
            view = api.get(f"/v1/campaigns/{cid}").json()
            return view if view["state"] == "paused" and not view["counts"]["in_flight"] else None
        procs.wait_until(paused, 20, "the pause")
        view = paused()
        assert "credentials" in view["reason"] and view["counts"]["pending"] == 2 and view["counts"]["done"] == 0
        r = api.post("/v1/calls", json={"to": "+14155554004"})  # the third request this minute: over the limit
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, r.text
        metrics = api.get("/metrics").text
        assert 'switchboard_control_outbound_refused_total{reason="rate_limited"} 1.0' in metrics
        assert 'switchboard_control_twilio_requests_total{op="create",result="auth"}' in metrics
        assert api.post(f"/v1/campaigns/{cid}/cancel").json()["state"] == "canceled"
        api.close()
    finally:
        service.stop()
