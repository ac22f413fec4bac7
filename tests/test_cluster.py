"""Switchboard on a Redis Cluster: calls and the control API work on a local 3-master cluster unchanged."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter

import httpx
import orjson
import pytest
from redis.crc import key_slot

from switchboard_callsim.call import SimConfig, run_call
from switchboard_callsim.load import run_load
from switchboard_callsim.script import CallScript
from switchboard_callsim.twiliomsg import CallIdentity
from switchboard_dev import procs

from system import System

pytestmark = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is needed to create a cluster")


@pytest.fixture(scope="module")
def cluster():
    servers = procs.RedisClusterServers().start()
    yield servers
    servers.stop()


async def test_calls_through_a_three_master_cluster_are_byte_exact(cluster, tmp_path):
    env = {"REDIS_CLUSTER": "true"}
    sb = System(cluster.url, "sbc:", tmp_path, workers=2, edge_env=env, worker_env=env).start()
    try:
        report = (await run_load(SimConfig(url=sb.edge_url, emulator_url=sb.emulator_http, calls=10, ramp_ms=300,
                                           script=CallScript(turns=2, lead_ms=300, barge_in=True)))).to_dict()
        assert report["calls"]["completed"] == 10, report["calls"]
        assert report["byte_exact_in"]["true"] == 10 and report["byte_exact_out"]["false"] == 0
        # The calls really were spread over the cluster's masters (hash-tagged per call).
        slots = Counter(key_slot(sb.keys.caller_audio(c["stream_sid"]).encode()) * 3 // 16384
                        for c in report["calls_detail"])
        assert len(slots) >= 2
        for detail in report["calls_detail"]:
            record = sb.wait_call_ended(detail["stream_sid"])
            assert record["outcome"] == "completed"
            assert [e["type"] for e in sb.events(detail["stream_sid"])].count("transcript") >= 4
    finally:
        sb.stop()


async def test_the_control_api_works_on_the_cluster(cluster, tmp_path):
    env = {"REDIS_CLUSTER": "true"}
    sb = System(cluster.url, "sbctl:", tmp_path, workers=1, edge_env=env, worker_env=env).start()
    token = "cluster-control-token-0123"
    _service, port = sb.add_control(api_token=token, **env)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=15,
                                     headers={"Authorization": f"Bearer {token}"}) as api:
            prompt = "You sell cluster-grade bicycles."
            assert (await api.put("/v1/profiles/cluster", json={"think": {"prompt": prompt}})).status_code == 200
            assert (await api.get("/v1/profiles")).json()["profiles"][0]["name"] == "cluster"
            assert (await api.put("/v1/settings/default", json={"greeting": "Hello"})).status_code == 200
            assert (await api.get("/readyz")).status_code == 200

            ident = CallIdentity.random()
            config = SimConfig(url="unused", twiml_url=f"http://127.0.0.1:{port}/twiml?profile=cluster",
                               emulator_url=sb.emulator_http, script=CallScript(turns=1, lead_ms=300, hold_ms=4000))
            call = asyncio.create_task(run_call(config, ident))
            for _ in range(100):  # live in the list once a worker holds it
                listed = (await api.get("/v1/calls")).json()["calls"]
                if any(c["call_sid"] == ident.call_sid and c["state"] == "active" for c in listed):
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the call never showed as active")
            said = await api.post(f"/v1/calls/{ident.call_sid}/say", json={"text": "A word from the cluster."})
            assert said.status_code == 200 and said.json()["applied"] is True, said.text
            kinds = []
            async with api.stream("GET", f"/v1/calls/{ident.call_sid}/events?types=all") as events:
                async for line in events.aiter_lines():
                    if line.startswith("event: "):
                        kinds.append(line[7:])
            result = await call
            assert result.ok, result.failure
            assert "transcript" in kinds and kinds[-1] == "call_ended"
            detail = (await api.get(f"/v1/calls/{ident.call_sid}")).json()
            assert detail["settings_source"] == "profile:cluster" and detail["outcome"] == "completed"
            assert "A word from the cluster." in [line["content"] for line in detail["transcript"]]
            settings = sb.emulator_sessions(ident.call_sid)[0]["settings"]
            assert settings["agent"]["think"]["prompt"] == prompt
            metrics = (await api.get("/metrics")).text
            assert 'switchboard_control_admissions_total{outcome="admitted"}' in metrics
            assert orjson.loads((await api.get("/v1/settings/default")).content)["settings"]["greeting"] == "Hello"
    finally:
        sb.stop()
