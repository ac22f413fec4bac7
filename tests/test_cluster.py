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


def _node_client(port: int):
    import redis
    return redis.Redis(host="127.0.0.1", port=port)


def _move_slot(cluster, slot: int) -> tuple[int, int]:
    """Reshard one slot to another master the way redis-cli does: IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE."""
    nodes = {node.port: _node_client(node.port) for node in cluster.nodes}
    ids = {port: client.execute_command("CLUSTER", "MYID").decode() for port, client in nodes.items()}
    source = next(port for port, client in nodes.items() if client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
                  or any(s[0] <= slot <= s[1] for s in _owned(client, ids[port])))
    target = next(port for port in nodes if port != source)
    nodes[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
    nodes[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
    while keys := nodes[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        nodes[source].execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
    for client in nodes.values():
        client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    for client in nodes.values():
        client.close()
    return source, target


def _owned(client, node_id: str) -> list[tuple[int, int]]:
    return [(start, end) for start, end, (_host, _port, owner, *_rest), *_replicas
            in client.execute_command("CLUSTER", "SLOTS") if owner.decode() == node_id]


def _cluster_clients(cluster):
    import redis.asyncio as aioredis
    return (aioredis.RedisCluster.from_url(cluster.url),
            aioredis.RedisCluster.from_url(cluster.url, socket_timeout=None))


async def test_streams_follow_a_bucket_that_moves_to_another_master_mid_call(cluster):
    """A resharding mid-call: every entry written before, during (ASK) and after (MOVED) arrives once, in order."""
    from switchboard import entries
    from switchboard.streams import StreamReader, StreamWriter

    client, blocking = _cluster_clients(cluster)
    key = "sbmove:call:{c7}:MZmove:out"
    got = bytearray()
    sent = bytearray()
    all_in = asyncio.Event()

    def handler(_key, batch):
        for _id, fields in batch:
            got.extend(fields[b"p"])
        if len(got) == 600 * 4:
            all_in.set()

    writer = StreamWriter(client)
    reader = StreamReader(blocking, client, "sbmove:wake:{t1}", handler)
    tasks = [asyncio.create_task(writer.run()), asyncio.create_task(reader.run())]
    reader.add(key)
    try:
        moved = None
        for n in range(600):
            frame = b"%04d" % n
            sent += frame
            writer.append(key, entries.audio(frame, n))
            if n == 200:
                moved = asyncio.create_task(asyncio.to_thread(_move_slot, cluster, key_slot(key.encode())))
            await asyncio.sleep(0.002)
        source, target = await moved
        await asyncio.wait_for(all_in.wait(), 15)
        assert bytes(got) == bytes(sent)  # nothing lost, nothing twice, in order
        with _node_client(target) as now_there:
            assert now_there.exists(key)
        with _node_client(source) as was_there:
            assert was_there.execute_command("CLUSTER", "COUNTKEYSINSLOT", key_slot(key.encode())) == 0
    finally:
        writer.stop()
        reader.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await writer.close()
        await reader.close()
        await client.aclose()
        await blocking.aclose()


async def test_a_stream_added_to_a_slot_already_read_is_read_at_once_not_after_the_block(cluster):
    from switchboard.streams import StreamReader

    client, blocking = _cluster_clients(cluster)
    got: dict[str, bytes] = {}
    arrived = asyncio.Event()

    def handler(key, batch):
        got[key] = batch[-1][1][b"p"]
        arrived.set()

    reader = StreamReader(blocking, client, "sbwake:wake:{t1}", handler, block_ms=30_000)
    task = asyncio.create_task(reader.run())
    first, second = "sbwake:call:{c3}:A:in", "sbwake:call:{c3}:B:in"
    try:
        await client.xadd(first, {b"p": b"one"})
        reader.add(first)
        await asyncio.wait_for(arrived.wait(), 5)
        arrived.clear()
        await asyncio.sleep(0.05)  # the slot's read is blocked again now, for up to 30 s
        await client.xadd(second, {b"p": b"two"})
        reader.add(second)
        await asyncio.wait_for(arrived.wait(), 5)  # 30 s without the slot's wake stream
        assert got == {first: b"one", second: b"two"}
    finally:
        reader.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reader.close()
        await client.delete(first)
        await client.delete(second)
        await client.aclose()
        await blocking.aclose()
