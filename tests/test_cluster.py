"""Switchboard on a Redis Cluster: calls go through a local 3-master cluster unchanged."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest
from redis.crc import key_slot

from switchboard import procs
from switchboard_callsim.call import SimConfig
from switchboard_callsim.load import run_load
from switchboard_callsim.script import CallScript

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
