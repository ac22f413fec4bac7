"""call.ended end to end: real calls (call simulator → edge → worker → Deepgram emulator), two control
replicas delivering from the Redis outbox to a receiver on loopback, verified with the
`standardwebhooks` package as a receiver would."""

from __future__ import annotations

import asyncio
import base64
import time
import urllib.parse

import httpx
import orjson
import pytest
from webhook_receiver import WebhookReceiver

from switchboard import settings_store, standard_webhooks
from switchboard.agent_settings import AgentSettings
from switchboard_callsim.call import SimConfig, run_call
from switchboard_callsim.script import CallScript
from switchboard_callsim.twiliomsg import CallIdentity
from switchboard_dev import procs

from system import System, scrape

SECRET = "whsec_" + base64.b64encode(b"call-ended-test-secret-32-bytes!").decode()
KEY = standard_webhooks.parse_secret(SECRET)


@pytest.fixture(scope="module")
async def receiver():
    async with WebhookReceiver() as hooks:
        yield hooks


@pytest.fixture(scope="module")
def system(redis_url, tmp_path_factory, receiver):
    sb = System(redis_url, "ended:", tmp_path_factory.mktemp("call-ended"), workers=1).start()
    sb.controls = [sb.stack.start_control(**control_env(sb, receiver))]
    sb.controls.append(sb._run(procs.control(redis_url, procs.free_port(), api_token=sb.stack.control_token,
                                             auth_token=None, edge_public_url=sb.edge_url, KEY_PREFIX=sb.prefix,
                                             **control_env(sb, receiver))))
    yield sb
    sb.stop()


def control_env(sb: System, receiver: WebhookReceiver) -> dict[str, str]:
    return {"CALL_ENDED_WEBHOOK_URL": receiver.url("/hook"), "CALL_ENDED_WEBHOOK_SECRET": SECRET,
            "CONTROL_EGRESS_ALLOW": "127.0.0.1/32", "CONTROL_EGRESS_ALLOW_HTTP": "true",
            "CALL_ENDED_BACKOFF_S": "0.3", "CALL_ENDED_BACKOFF_CAP_S": "1", "CALL_ENDED_MAX_ATTEMPTS": "3",
            "CALL_ENDED_SETTLE_S": "1", "CONTROL_PUBLIC_URL": "http://127.0.0.1:1"}


async def call(system: System, settings: dict | None = None, **script) -> CallIdentity:
    ident = CallIdentity.random()
    if settings is not None:
        with system.redis() as client:
            client.set(system.keys.call_settings(ident.call_sid),
                       settings_store.encode(AgentSettings.model_validate(settings), 1))
    config = SimConfig(url=system.edge_url, emulator_url=system.emulator_http,
                       script=CallScript(**{"turns": 1, "lead_ms": 300, "utterance_ms": 400, **script}))
    result = await run_call(config, ident)
    assert result.ok, result.failure
    return ident


def deliveries(receiver: WebhookReceiver, call_sid: str) -> list:
    return [r for r in receiver.received if r.headers.get("webhook-id") == f"msg_{call_sid}"]


def control_metric(system: System, name: str, labels: str = "") -> float:
    return sum(scrape(int(c.env["CONTROL_PORT"]), name, labels) for c in system.controls if c.alive())


async def test_each_call_is_delivered_once_with_a_valid_signature_by_two_replicas(system, receiver):
    idents = await asyncio.gather(*(call(system) for _ in range(3)))
    for ident in idents:
        await receiver.wait(lambda r, sid=ident.call_sid: deliveries(receiver, sid), 20)
    await asyncio.sleep(1.5)  # a second delivery would have come by now
    webhook = pytest.importorskip("standardwebhooks").Webhook(SECRET)
    for ident in idents:
        (delivery,) = deliveries(receiver, ident.call_sid)
        assert delivery.status == 200
        doc = webhook.verify(delivery.body, delivery.headers)  # raises unless signed with our secret
        assert standard_webhooks.verify(KEY, delivery.headers, delivery.body)
        data = doc["data"]
        assert doc["type"] == "call.ended" and data["call_sid"] == ident.call_sid
        assert data["outcome"] == "completed" and data["direction"] == "inbound" and data["duration_s"] > 0
        assert [line["role"] for line in data["transcript"]] == ["user", "assistant"]
        assert data["transcript"][1]["heard_text"] == data["transcript"][1]["content"]
        assert data["latency"] and data["latency"][0]["stages"]
        assert data["stream_sids"] == [ident.stream_sid] and data["recording"] is None


async def test_a_receiver_500_is_retried_with_the_same_id_and_body(system, receiver):
    receiver.statuses.extend([500, 500])
    ident = await call(system)
    await receiver.wait(lambda r: any(d.status == 200 for d in deliveries(receiver, ident.call_sid)), 20)
    attempts = deliveries(receiver, ident.call_sid)
    assert [d.status for d in attempts] == [500, 500, 200]
    assert len({d.body for d in attempts}) == 1 and len({d.headers["webhook-id"] for d in attempts}) == 1
    assert all(standard_webhooks.verify(KEY, d.headers, d.body) for d in attempts)
    assert attempts[1].at - attempts[0].at >= 0.15  # a backoff, not a hot loop
    assert control_metric(system, "switchboard_control_call_ended_deliveries_total", 'result="failed"') >= 2


async def test_a_delivery_survives_a_control_restart(system, receiver):
    for control in system.controls:
        control.stop()  # no control API while the call ends: the worker's enqueue waits in Redis
    ident = await call(system)
    system.wait_call_ended(ident.stream_sid)
    await asyncio.sleep(0.5)
    assert deliveries(receiver, ident.call_sid) == []
    for control in system.controls:
        await asyncio.to_thread(control.start, system.stack.log_dir)
    await receiver.wait(lambda r: deliveries(receiver, ident.call_sid), 20)
    assert [d.status for d in deliveries(receiver, ident.call_sid)] == [200]


async def test_a_delivery_that_keeps_failing_becomes_a_dead_letter_and_can_be_sent_again(system, receiver):
    receiver.statuses.extend([503, 503, 503])
    ident = await call(system)
    headers = {"Authorization": f"Bearer {system.stack.control_token}"}
    async with httpx.AsyncClient(base_url=system.stack.control_url, headers=headers) as api:
        for _ in range(100):
            letters = (await api.get("/v1/webhooks/call-ended/dead-letters")).json()["dead_letters"]
            if any(letter["call_sid"] == ident.call_sid for letter in letters):
                break
            await asyncio.sleep(0.2)
        (letter,) = [letter for letter in letters if letter["call_sid"] == ident.call_sid]
        assert letter["attempts"] == 3 and letter["error"] == "HTTP 503" and letter["payload"] is None
        status = (await api.get("/v1/webhooks/call-ended")).json()
        assert status["enabled"] and status["dead_letters"] >= 1 and status["url_host"] == "127.0.0.1"
        assert control_metric(system, "switchboard_control_call_ended_deliveries_total", 'result="dead"') >= 1
        revived = await api.post(f"/v1/webhooks/call-ended/dead-letters/{ident.call_sid}/retry")
        assert revived.status_code == 200
        await receiver.wait(lambda r: any(d.status == 200 for d in deliveries(receiver, ident.call_sid)), 20)
        assert (await api.post(f"/v1/webhooks/call-ended/dead-letters/{ident.call_sid}/retry")).status_code == 404
        assert (await api.get("/v1/webhooks/call-ended/dead-letters", headers={"Authorization": "Bearer x"})
                ).status_code == 401
    assert [d.status for d in deliveries(receiver, ident.call_sid)] == [503, 503, 503, 200]


async def test_masked_keys_stay_masked_and_the_recording_link_works_only_as_signed(system, receiver):
    settings = {"dtmf": {"enabled": True, "mask": True}, "journal": {"enabled": True, "audio": True}}
    ident = await call(system, settings, hold_ms=2500, dtmf=((1500, "9"), (1600, "8"), (1700, "#")))
    await receiver.wait(lambda r: deliveries(receiver, ident.call_sid), 20)
    (delivery,) = deliveries(receiver, ident.call_sid)
    data = delivery.json()["data"]
    assert [k["digits"] for k in data["keypad"]] == ["••#"]
    said = [line["content"] for line in data["transcript"] if line["role"] == "user"]
    assert "The caller pressed: ••#" in said  # what the agent was told (Deepgram's own echo of it)
    assert b"pressed: 98" not in delivery.body and b'"digits":"98' not in delivery.body
    link = data["recording"]["url"]
    parsed = urllib.parse.urlsplit(link)
    base = system.stack.control_url
    async with httpx.AsyncClient(base_url=base) as anyone:  # no bearer token
        wav = await anyone.get(f"{parsed.path}?{parsed.query}")
        query = dict(urllib.parse.parse_qsl(parsed.query))
        tampered = await anyone.get(parsed.path.replace(ident.call_sid, "CA" + "0" * 32), params=query)
        stale = await anyone.get(parsed.path, params={**query, "expires": str(int(time.time()) - 1)})
    assert wav.status_code == 200 and wav.content[:4] == b"RIFF"
    assert tampered.status_code == 403 and stale.status_code == 403
    assert orjson.loads(stale.content)["detail"] == "this recording link is expired or invalid"


async def test_ended_calls_are_listed_with_filters(system, receiver):
    ident = await call(system, {"think": {"prompt": "Plain."}})
    system.wait_call_ended(ident.stream_sid)
    headers = {"Authorization": f"Bearer {system.stack.control_token}"}
    async with httpx.AsyncClient(base_url=system.stack.control_url, headers=headers) as api:
        listed = (await api.get("/v1/calls", params={"ended": "true", "outcome": "completed",
                                                     "direction": "inbound", "since": time.time() - 60})).json()
        outbound = (await api.get("/v1/calls", params={"ended": "true", "direction": "outbound"})).json()
        later = (await api.get("/v1/calls", params={"ended": "true", "since": time.time() + 60})).json()
        other = (await api.get("/v1/calls", params={"ended": "true", "outcome": "transferred"})).json()
        live = (await api.get("/v1/calls")).json()
        bad = await api.get("/v1/calls", params={"ended": "true", "outcome": "Not An Outcome!"})
    row = next(c for c in listed["calls"] if c["call_sid"] == ident.call_sid)
    assert row["outcome"] == "completed" and row["direction"] == "inbound" and row["ended_at"] > row["started_at"]
    assert all(c["call_sid"] != ident.call_sid for c in outbound["calls"] + later["calls"] + other["calls"])
    assert "total" in live and all(c["call_sid"] != ident.call_sid for c in live["calls"])
    assert bad.status_code == 422
